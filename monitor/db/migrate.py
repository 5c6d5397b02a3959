"""Alembic, driven from code: ``monitor db upgrade|downgrade|current``.

The migration scripts are the repository's ``migrations/`` folder, which the wheel ships as the
package ``monitor._migrations``; they are found through importlib.resources, so an installed wheel
migrates its database as a checkout does. ``alembic.ini`` at the top of the repository serves those
who run ``alembic`` themselves.
"""

from __future__ import annotations

import io
import logging
from importlib import resources
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from geoalchemy2 import alembic_helpers
from sqlalchemy import Engine

MIGRATIONS_PACKAGE = "monitor._migrations"
# Tables that live in the database but are not ours to migrate.
FOREIGN_TABLES = {"spatial_ref_sys", "apscheduler_jobs"}


def include_object(obj, name, type_, reflected, compare_to):
    """The autogenerate filter: our tables only, with GeoAlchemy2's handling of spatial indexes."""
    if type_ == "table" and name in FOREIGN_TABLES:
        return False
    return alembic_helpers.include_object(obj, name, type_, reflected, compare_to)


def alembic_config(url: str) -> Config:
    """An Alembic configuration for ``url``, built in code: the scripts are found with importlib.resources, so an
    installed wheel migrates as a checkout does.
    """
    logging.getLogger("alembic").setLevel(logging.WARNING)
    cfg = Config(stdout=io.StringIO())
    cfg.set_main_option("script_location", str(script_location()))
    cfg.set_main_option("path_separator", "os")
    cfg.attributes["url"] = url
    return cfg


def script_location() -> Path:
    """The folder of the migration scripts (``env.py``, ``versions/``): the installed package, or the
    ``migrations/`` folder of a checkout whose editable install predates that package."""
    try:
        return Path(str(resources.files(MIGRATIONS_PACKAGE)))
    except ModuleNotFoundError:
        checkout = Path(__file__).resolve().parents[2] / "migrations"
        if (checkout / "env.py").is_file():
            return checkout
        raise


def _url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate the schema up to ``revision``."""
    command.upgrade(alembic_config(_url(engine)), revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Migrate the schema down to ``revision`` ('base' removes it)."""
    command.downgrade(alembic_config(_url(engine)), revision)


def current(engine: Engine) -> str | None:
    """The database's schema revision (None: no schema)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head() -> str | None:
    """The newest revision this code knows."""
    return ScriptDirectory.from_config(alembic_config("")).get_current_head()
