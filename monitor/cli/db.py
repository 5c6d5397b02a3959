"""``monitor db``: schema migrations and the private PostGIS cluster."""

from __future__ import annotations

import os
import shutil
import sys

import typer

from monitor.cli.common import new_app, state
from monitor.db import migrate
from monitor.db.embedded import Cluster
from monitor.db.engine import libpq_target
from monitor.errors import ConfigError
from monitor.redact import redact

app = new_app("Create, migrate and inspect the database.")


@app.command()
def upgrade(ctx: typer.Context, revision: str = typer.Argument("head", help="Target revision.")) -> None:
    """Create or migrate the schema up to REVISION (default: the newest)."""
    engine = state(ctx).engine
    migrate.upgrade(engine, revision)
    typer.echo(f"database at revision {migrate.current(engine)}")


@app.command()
def downgrade(ctx: typer.Context, revision: str = typer.Argument(..., help="Target revision; 'base' drops everything.")) -> None:
    """Migrate the schema down to REVISION ('base' removes the whole schema)."""
    engine = state(ctx).engine
    migrate.downgrade(engine, revision)
    typer.echo(f"database at revision {migrate.current(engine) or 'base'}")


@app.command()
def current(ctx: typer.Context) -> None:
    """Print the schema revision of the database and the newest one this code knows."""
    rev = migrate.current(state(ctx).engine)
    head = migrate.head()
    typer.echo(f"current: {rev or 'base (empty)'}\nhead:    {head}")
    if rev != head:
        typer.echo("run `monitor db upgrade` to migrate")


@app.command()
def url(ctx: typer.Context,
        show_password: bool = typer.Option(False, "--show-password",
                                           help="Print the password too (for psql); masked otherwise.")) -> None:
    """Print the database URL in use (starting the private cluster if needed), for psql/QGIS."""
    engine_url = state(ctx).engine.url
    typer.echo(engine_url.render_as_string(hide_password=False) if show_password
               else redact(engine_url.render_as_string(hide_password=True)))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def psql(ctx: typer.Context,
         args: list[str] = typer.Argument(None, help="Passed on to psql, after `--`: "
                                          "monitor db psql -- -c 'SELECT 1'.")) -> None:
    """Run psql on the database in use (starting the private cluster if needed); the password goes to
    psql through PGPASSWORD and is never printed."""
    program = shutil.which("psql")
    if program is None:
        raise ConfigError("psql was not found on PATH: install the PostgreSQL client (e.g. `apt-get install "
                          "postgresql-client`), or connect another client to `monitor db url --show-password`")
    target, password = libpq_target(state(ctx).engine.url)
    env = dict(os.environ)
    env.pop("PGPASSWORD", None)
    if password:
        env["PGPASSWORD"] = password
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(program, [program, f"--dbname={target}", *(args or [])], env)


@app.command()
def stop(ctx: typer.Context) -> None:
    """Stop the private PostGIS cluster (no effect with DATABASE_URL)."""
    s = state(ctx).settings
    if s.database_url:
        typer.echo("DATABASE_URL is set: there is no private cluster to stop")
        return
    typer.echo("stopped" if Cluster(s).stop() else "not running")
