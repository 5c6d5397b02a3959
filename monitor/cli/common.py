"""What every command shares: settings read once, a lazily made engine, output helpers."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import click
import typer
from sqlalchemy import Engine
from sqlalchemy.orm import Session
from typer.core import TyperGroup

from monitor.errors import MonitorError
from monitor.settings import Settings


@dataclass
class State:
    settings: Settings
    _engine: Engine | None = field(default=None, repr=False)

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            from monitor.db.engine import make_engine

            self._engine = make_engine(self.settings)
        return self._engine

    @contextmanager
    def transaction(self):
        """One transaction: committed when the block ends, rolled back on any error."""
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            yield session


def state(ctx: typer.Context) -> State:
    root = ctx.find_root()
    if not isinstance(root.obj, State):
        root.obj = State(Settings())
    return root.obj


class MonitorGroup(TyperGroup):
    """Turns project errors into a message and the documented exit code (2 bad input, 1 other)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MonitorError as e:
            click.secho(f"error: {e}", err=True, fg="red")
            ctx.exit(e.exit_code)


def new_app(help: str) -> typer.Typer:
    return typer.Typer(help=help, cls=MonitorGroup, no_args_is_help=True, add_completion=False,
                       pretty_exceptions_enable=False)


def warn(message: str) -> None:
    typer.secho(f"warning: {message}", err=True, fg="yellow")


def echo_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def table(rows: Iterable[Sequence], headers: Sequence[str]) -> str:
    rows = [["" if v is None else str(v) for v in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    line = lambda r: "  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("alembic", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
