"""Test fixtures: a real PostGIS (private cluster or DATABASE_URL's server), one database per test
cloned from a migrated template, the CLI run in-process, and the real data in ../shared/data."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from monitor.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MONITOR_SHARED_DATA", ROOT.parent / "shared" / "data"))
_counter = itertools.count()


def pytest_collection_modifyitems(config, items):
    if SHARED.is_dir():
        return
    skip = pytest.mark.skip(reason=f"real data folder {SHARED} is absent (it is present in CI)")
    for item in items:
        if "realdata" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return SHARED


def _admin_url():
    """The admin URL of the tests' server, and the private cluster this session started (None when it
    was running already or DATABASE_URL names the server)."""
    url = os.environ.get("DATABASE_URL")
    if url:
        from monitor.db.engine import database_url

        return make_url(database_url(Settings(database_url=url))).set(database="postgres"), None
    from monitor.db.embedded import Cluster

    # a cluster of the tests' own (one per port), beside (not inside) the one `monitor` commands use in
    # this checkout
    port = int(os.environ.get("MONITOR_TEST_PG_PORT", "55433"))
    cluster = Cluster(Settings(home=ROOT / ".monitor" / f"test-{port}", pg_port=port))
    started = not cluster.running()
    cluster.ensure()
    return make_url(cluster.admin_url()), cluster if started else None


def _exec(url: sa.URL, sql: str) -> None:
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        conn.execute(sa.text(sql))
    engine.dispose()


@pytest.fixture(scope="session")
def pg_admin_url():
    """The tests' server; a private cluster this session started is stopped when the session ends, so
    that it does not hold its port after the tests."""
    url, started = _admin_url()
    yield url
    if started is not None:
        started.stop()


@pytest.fixture(scope="session")
def empty_db_factory(pg_admin_url):
    """Makes empty databases (PostGIS not yet enabled) and drops them at the end."""
    made = []

    def make(prefix: str = "monitor_test", template: str | None = None) -> sa.URL:
        name = f"{prefix}_{os.getpid()}_{next(_counter)}"
        tmpl = f' TEMPLATE "{template}"' if template else ""
        _exec(pg_admin_url, f'CREATE DATABASE "{name}"{tmpl}')
        made.append(name)
        return pg_admin_url.set(database=name)

    yield make
    for name in made:
        _exec(pg_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def template_db(empty_db_factory) -> str:
    from monitor.db import migrate

    url = empty_db_factory("monitor_tmpl")
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    migrate.upgrade(engine)
    engine.dispose()
    return url.database


@pytest.fixture
def db_url(empty_db_factory, template_db) -> str:
    """A migrated database of this test's own."""
    return empty_db_factory("monitor_test", template=template_db).render_as_string(hide_password=False)


@pytest.fixture
def engine(db_url):
    engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
    yield engine
    engine.dispose()


@pytest.fixture
def settings(db_url, tmp_path) -> Settings:
    return Settings(database_url=db_url, home=tmp_path / "home")


class Cli:
    """Runs ``monitor`` in-process against the test's database and home folder."""

    def __init__(self, db_url: str, home: Path) -> None:
        self.env = {"DATABASE_URL": db_url, "MONITOR_HOME": str(home), "MONITOR_LOG_LEVEL": "WARNING"}
        self.runner = CliRunner()

    def __call__(self, *args: str, expect: int | None = 0, env: dict | None = None):
        from monitor.cli import app

        result = self.runner.invoke(app, [str(a) for a in args], env={**self.env, **(env or {})},
                                    catch_exceptions=False)
        if expect is not None:
            assert result.exit_code == expect, (
                f"`monitor {' '.join(map(str, args))}` exited {result.exit_code}, expected {expect}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
        return result


@pytest.fixture
def cli(db_url, tmp_path) -> Cli:
    return Cli(db_url, tmp_path / "home")
