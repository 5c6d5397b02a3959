"""The schema: migrations and models agree; upgrade -> downgrade -> upgrade; the private cluster."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from monitor.db import migrate
from monitor.db.tables import metadata

TABLES = {"areas", "parcels", "permits", "scenes", "runs", "detections", "indicators", "changes", "alerts",
          "parcel_changes", "subscriptions", "deliveries", "models", "api_tokens", "parcel_imports", "parcel_versions"}


def test_models_and_migrations_agree(engine):
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"include_object": migrate.include_object, "compare_type": True})
        diff = compare_metadata(ctx, metadata)
    assert diff == [], f"models and migrations differ: {diff}"


def test_upgrade_downgrade_upgrade(empty_db_factory):
    engine = sa.create_engine(empty_db_factory("monitor_mig"), poolclass=sa.pool.NullPool)
    migrate.upgrade(engine)
    assert migrate.current(engine) == migrate.head()
    names = set(sa.inspect(engine).get_table_names())
    assert TABLES <= names
    migrate.downgrade(engine, "base")
    assert migrate.current(engine) is None
    assert not (TABLES & set(sa.inspect(engine).get_table_names()))
    migrate.upgrade(engine)
    assert TABLES <= set(sa.inspect(engine).get_table_names())
    engine.dispose()


def test_every_geometry_has_a_gist_index(engine):
    with engine.connect() as conn:
        geom_cols = conn.execute(sa.text(
            "SELECT f_table_name, f_geometry_column, srid FROM geometry_columns "
            "WHERE f_table_schema = 'public' AND f_table_name IN (SELECT tablename FROM pg_tables)")).all()
        gist = conn.execute(sa.text(
            "SELECT tablename, indexdef FROM pg_indexes WHERE schemaname = 'public' AND indexdef ILIKE '%gist%'"
        )).all()
    assert {t for t, _c, _s in geom_cols} >= {"areas", "parcels", "scenes", "detections", "changes", "alerts"}
    for table, column, srid in geom_cols:
        assert srid == 4326, (table, column)
        assert any(t == table and f"({column})" in d for t, d in gist), f"no GiST index on {table}.{column}"


def test_timestamps_have_time_zones(engine):
    with engine.connect() as conn:
        naive = conn.execute(sa.text(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public' "
            "AND data_type = 'timestamp without time zone'")).all()
    assert naive == []


def test_cli_db_commands(cli):
    assert f"current: {migrate.head()}" in cli("db", "current").stdout
    cli("db", "downgrade", "base")
    assert "base" in cli("db", "current").stdout
    assert f"revision {migrate.head()}" in cli("db", "upgrade").stdout
