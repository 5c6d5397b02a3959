"""What every command shares: settings read once, a lazily made engine, output helpers."""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import overload

import click
import typer
from sqlalchemy import Engine
from sqlalchemy.orm import Session
from typer.core import TyperGroup

from monitor.db.engine import make_engine
from monitor.errors import BadInput, MonitorError
from monitor.redact import RedactingFilter, redact
from monitor.settings import Settings, from_environment
from monitor.text import table

__all__ = ["State", "echo_json", "new_app", "setup_logging", "state", "table", "warn"]


@dataclass
class State:
    """What the commands of one invocation share: the settings, and an engine made on first use."""

    settings: Settings
    _engine: Engine | None = field(default=None, repr=False)

    @property
    def engine(self) -> Engine:
        """The database engine (the private cluster is started on first use when DATABASE_URL is unset)."""
        if self._engine is None:
            self._engine = make_engine(self.settings)
        return self._engine

    @contextmanager
    def transaction(self):
        """One transaction: committed when the block ends, rolled back on any error."""
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            yield session


@overload
def parse_date(value: str, field: str) -> dt.date: ...
@overload
def parse_date(value: str | None, field: str) -> dt.date | None: ...
def parse_date(value: str | None, field: str) -> dt.date | None:
    """An ISO date given on the command line (None stays None); anything else is bad input naming ``field``."""
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise BadInput(f"{value!r} is not a date (use YYYY-MM-DD)", field=field) from None


def state(ctx: typer.Context) -> State:
    """The invocation's ``State``, made from the environment when the root callback did not run."""
    root = ctx.find_root()
    if not isinstance(root.obj, State):
        root.obj = State(from_environment())
    return root.obj


class MonitorGroup(TyperGroup):
    """Turns project errors into a message and the documented exit code (2 bad input, 1 other)."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)  # type: ignore[arg-type]
        except MonitorError as e:
            click.secho(f"error: {redact(e)}", err=True, fg="red")
            ctx.exit(e.exit_code)


def new_app(help: str) -> typer.Typer:
    """A command group that reports project errors with the documented exit codes."""
    return typer.Typer(help=help, cls=MonitorGroup, no_args_is_help=True, add_completion=False,
                       pretty_exceptions_enable=False)


def warn(message: str) -> None:
    """Print a warning on stderr."""
    typer.secho(f"warning: {message}", err=True, fg="yellow")


def echo_json(obj) -> None:
    """Print ``obj`` as indented JSON (dates and paths as strings)."""
    typer.echo(json.dumps(obj, indent=2, default=str))


def setup_logging(level: str) -> None:
    """Log to stderr at ``level``, keeping chatty libraries at WARNING, secrets masked (``redact``)."""
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
    for noisy in ("alembic", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
