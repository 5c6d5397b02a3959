"""Shared by the benchmarks: a scratch migrated database and table printing."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from monitor.db import migrate
from monitor.db.engine import database_url
from monitor.settings import Settings


@contextmanager
def scratch_database(prefix: str = "monitor_bench"):
    """A freshly migrated database on the configured server, dropped afterwards."""
    admin = make_url(database_url(Settings())).set(database="postgres")
    name = f"{prefix}_{os.getpid()}"
    admin_engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin_engine.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine = sa.create_engine(admin.set(database=name), poolclass=sa.pool.NullPool)
    try:
        migrate.upgrade(engine)
        yield engine
    finally:
        engine.dispose()
        with admin_engine.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin_engine.dispose()


@contextmanager
def timed(results: dict, key: str):
    t0 = time.perf_counter()
    yield
    results[key] = time.perf_counter() - t0


def print_table(rows: list[list], headers: list[str]) -> None:
    from monitor.cli.common import table

    print(table(rows, headers))
