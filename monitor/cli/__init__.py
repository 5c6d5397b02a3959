"""The ``monitor`` command. Each command group lives in a module of its own."""

from __future__ import annotations

import typer

from monitor import __version__
from monitor.cli import access, areas, daemon, db, ml, pipeline_cmd, results, scenes, settings_cmd, settlements
from monitor.cli.common import State, new_app, setup_logging
from monitor.settings import from_environment

app = new_app("Watch land parcels from space and report new construction without a building permit.")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"monitor {__version__}")
        raise typer.Exit()


@app.callback()
def _root(ctx: typer.Context,
          version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    settings = from_environment()
    setup_logging(settings.log_level)
    ctx.obj = State(settings)


app.add_typer(db.app, name="db")
app.add_typer(areas.areas, name="areas")
app.add_typer(areas.parcels, name="parcels")
app.add_typer(areas.permits, name="permits")
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
app.add_typer(settlements.app, name="settlements")
app.command("run")(daemon.run)
app.add_typer(access.tokens, name="tokens")
app.add_typer(access.subscriptions, name="subscriptions")
app.command("demo")(pipeline_cmd.demo)
app.command("settings")(settings_cmd.show_settings)


def main() -> None:
    """The ``monitor`` command."""
    app()

