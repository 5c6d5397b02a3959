"""Alembic, driven from code: ``monitor db upgrade|downgrade|current``."""

from __future__ import annotations

import io
import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from geoalchemy2 import alembic_helpers
from sqlalchemy import Engine

ROOT = Path(__file__).resolve().parents[2]

# Tables that live in the database but are not ours to migrate.
FOREIGN_TABLES = {"spatial_ref_sys", "apscheduler_jobs"}


def include_object(obj, name, type_, reflected, compare_to):
    """The autogenerate filter: our tables only, with GeoAlchemy2's handling of spatial indexes."""
    if type_ == "table" and name in FOREIGN_TABLES:
        return False
    return alembic_helpers.include_object(obj, name, type_, reflected, compare_to)


def alembic_config(url: str) -> Config:
    logging.getLogger("alembic").setLevel(logging.WARNING)
    ini = ROOT / "alembic.ini"
    cfg = Config(str(ini), stdout=io.StringIO())
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    cfg.attributes["url"] = url
    return cfg


def _url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def upgrade(engine: Engine, revision: str = "head") -> None:
    command.upgrade(alembic_config(_url(engine)), revision)


def downgrade(engine: Engine, revision: str) -> None:
    command.downgrade(alembic_config(_url(engine)), revision)


def current(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head() -> str | None:
    return ScriptDirectory.from_config(alembic_config("")).get_current_head()
