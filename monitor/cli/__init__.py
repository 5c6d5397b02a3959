"""The ``monitor`` command. Each command group lives in a module of its own."""

from __future__ import annotations

import typer

from monitor import __version__
from monitor.cli.common import State, new_app, setup_logging
from monitor.settings import Settings

app = new_app("Watch land parcels from space and report new construction without a building permit.")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"monitor {__version__}")
        raise typer.Exit()


@app.callback()
def _root(ctx: typer.Context,
          version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    settings = Settings()
    setup_logging(settings.log_level)
    ctx.obj = State(settings)


def _register() -> None:
    from monitor.cli import daemon, db, ml, pipeline_cmd, registry, results, scenes, settings_cmd

    app.add_typer(db.app, name="db")
    app.add_typer(registry.areas, name="areas")
    app.add_typer(registry.parcels, name="parcels")
    app.add_typer(registry.permits, name="permits")
    app.add_typer(scenes.app, name="scenes")
    app.add_typer(ml.dataset, name="dataset")
    app.add_typer(ml.train, name="train")
    app.add_typer(ml.models, name="models")
    app.command("predict")(ml.predict)
    app.command("evaluate")(ml.evaluate)
    app.add_typer(results.detections, name="detections")
    app.command("process")(pipeline_cmd.process)
    app.add_typer(results.alerts, name="alerts")
    app.add_typer(results.history, name="history")
    app.command("run")(daemon.run)
    app.add_typer(daemon.tokens, name="tokens")
    app.add_typer(daemon.subscriptions, name="subscriptions")
    app.command("demo")(pipeline_cmd.demo)
    app.command("settings")(settings_cmd.show_settings)

_register()


def main() -> None:
    app()

