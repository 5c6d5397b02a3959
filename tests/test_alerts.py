"""Alerts as people meet them: listing, review, GeoJSON, evidence chips, the views for psql/QGIS
and the read-only role."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from monitor.alerts.lifecycle import list_alerts, review, to_geojson
from monitor.db import migrate
from monitor.errors import BadInput, Conflict, NotFound
from tests.test_change import (  # noqa: F401  (world is a fixture)
    D1,
    D2,
    EPSG,
    GRID,
    NEW,
    X0,
    Y0,
    A,
    C,
    N,
    alerts_by_parcel,
    buildings,
    pid,
    q,
    summary,
    world,
)

VIEWS = ("parcel_history", "area_indicators", "open_alerts")


@pytest.fixture
def two_alerts(world, cli, engine):
    """Alerts on parcels A and C of the hand-made world (first seen on D2)."""
    summary(cli, D1, buildings().write(world / "d1.tif"))
    summary(cli, D2, buildings().put(*A, *NEW).put(*C, *NEW).write(world / "d2.tif"))
    rows = alerts_by_parcel(engine)
    return rows[pid(*A)]["id"], rows[pid(*C)]["id"]


def test_list_filters_and_formats(two_alerts, cli):
    a, c = two_alerts
    listing = cli("alerts", "list", "--area", "ba").stdout
    assert pid(*A) in listing and pid(*C) in listing and "probable" in listing
    fc = json.loads(cli("alerts", "list", "--format", "geojson", "--status", "open").stdout)
    assert fc["type"] == "FeatureCollection" and [f["id"] for f in fc["features"]] == [a, c]
    f = fc["features"][0]
    assert f["geometry"]["type"] == "MultiPolygon"
    assert f["properties"]["parcel"] == pid(*A) and f["properties"]["area"] == "ba"
    assert f["properties"]["evidence_before"] == f"/alerts/{a}/evidence/before.png"
    # A's parcel spans x 50..100, y 0..50 m from the area's corner: a bbox around it finds only A
    from shapely.geometry import box

    from monitor.geo import reproject

    bbox = ",".join(f"{v:.7f}" for v in reproject(box(X0 + 55, Y0 + 5, X0 + 95, Y0 + 45), EPSG, 4326).bounds)
    only = json.loads(cli("alerts", "list", "--bbox", bbox, "--format", "geojson").stdout)
    assert [x["id"] for x in only["features"]] == [a]
    assert "no alerts" in cli("alerts", "list", "--since", "2024-03-01").stdout
    assert "no alerts" in cli("alerts", "list", "--until", "2024-02-09").stdout
    assert pid(*C) in cli("alerts", "list", "--since", D2, "--until", D2).stdout
    for args, field in ((["--status", "pending"], "status"), (["--format", "xml"], "format"),
                        (["--bbox", "1,2,3"], "bbox"), (["--since", "yesterday"], "since"),
                        (["--area", "nowhere"], "area")):
        assert field in cli("alerts", "list", *args, expect=2).stderr


def test_review_records_who_when_why_and_keeps_dismissed(two_alerts, cli, engine):
    a, c = two_alerts
    out = cli("alerts", "ack", str(a), "--note", "inspector sent", "--reviewer", "ana").stdout
    assert f"alert {a} acknowledged by ana" in out
    cli("alerts", "confirm", str(a), "--note", "seen on site", "--reviewer", "ana")
    cli("alerts", "dismiss", str(c), "--note", "a greenhouse", env={"USER": "bo"})
    rows = {r[0]: r[1:] for r in q(engine, "SELECT id, status, note, reviewed_by, reviewed_at IS NOT NULL "
                                           "FROM alerts")}
    assert rows[a] == ("confirmed", "seen on site", "ana", True)
    assert rows[c] == ("dismissed", "a greenhouse", "bo", True)
    assert "dismissed" in cli("alerts", "list", "--status", "dismissed").stdout
    assert pid(*C) not in cli("alerts", "list", "--status", "open").stdout
    assert "cannot be acknowledged" in cli("alerts", "ack", str(c), expect=2).stderr
    assert "no alert 999" in cli("alerts", "confirm", "999", expect=2).stderr
    with Session(engine) as s, s.begin():
        with pytest.raises(BadInput):
            review(s, a, "approve", None, "x")
        with pytest.raises(Conflict):
            review(s, a, "ack", None, "x")  # confirmed cannot go back to acknowledged
        with pytest.raises(NotFound):
            review(s, 12345, "ack", None, "x")
        assert [x.id for x in list_alerts(s, status=["dismissed", "confirmed"])] == [a, c]
        assert to_geojson(s, [])["features"] == []


def test_views_draw_in_qgis_and_the_reader_role_reads_only_them(two_alerts, engine):
    with engine.connect() as conn:
        cols = set(conn.execute(sa.text(
            "SELECT f_table_name, f_geometry_column, srid, type FROM geometry_columns "
            "WHERE f_table_name IN ('open_alerts', 'parcel_history')")).all())
        assert cols == {("open_alerts", "geom", 4326, "MULTIPOLYGON"), ("parcel_history", "geom", 4326, "MULTIPOLYGON")}
        conn.execute(sa.text("SET ROLE monitor_reader"))
        assert conn.execute(sa.text("SELECT count(*) FROM open_alerts")).scalar() == 2
        assert conn.execute(sa.text("SELECT count(*) FROM area_indicators")).scalar() == 2
        assert conn.execute(sa.text("SELECT count(*) FROM parcel_history WHERE area = 'ba'")).scalar() == 32
        assert conn.execute(sa.text("SELECT ST_SRID(geom) FROM open_alerts LIMIT 1")).scalar() == 4326
        # the example queries of docs/api.md
        growth = conn.execute(sa.text(
            "SELECT observed_on, round(built_km2::numeric, 3) AS km2, round(built_km2_change::numeric, 4) AS change, "
            "clear_fraction, alerts_raised FROM area_indicators WHERE area = 'ba' ORDER BY observed_on")).all()
        assert [r.alerts_raised for r in growth] == [0, 2] and growth[1].change > 0
        largest = conn.execute(sa.text(
            "SELECT id, parcel, first_seen, round(new_area_m2) AS m2, round(fraction::numeric, 2) AS fraction, "
            "confidence FROM open_alerts WHERE area = 'ba' ORDER BY new_area_m2 DESC LIMIT 20")).all()
        assert {r.parcel for r in largest} == {pid(*A), pid(*C)}
        grown = conn.execute(sa.text(
            "SELECT external_id, max(built_m2) - min(built_m2) AS grown_m2 FROM parcel_history WHERE area = 'ba' "
            "AND clear AND observed_on > '2023-06-01' GROUP BY external_id HAVING max(built_m2) - min(built_m2) > 100 "
            "ORDER BY grown_m2 DESC")).all()
        assert {r.external_id for r in grown} == {pid(*A), pid(*C)}
        for view in VIEWS:
            for privilege in ("INSERT", "UPDATE", "DELETE", "TRUNCATE"):
                assert not conn.execute(sa.text(f"SELECT has_table_privilege('{view}', '{privilege}')")).scalar()
        for sql in ("SELECT * FROM alerts", "SELECT * FROM parcels", "SELECT * FROM detections",
                    "SELECT * FROM api_tokens", "SELECT * FROM scenes", "SELECT * FROM permits"):
            conn.execute(sa.text("SAVEPOINT s"))
            with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
                conn.execute(sa.text(sql))
            conn.execute(sa.text("ROLLBACK TO SAVEPOINT s"))


def test_views_migration_downgrades_cleanly(empty_db_factory):
    engine = sa.create_engine(empty_db_factory("monitor_views"), poolclass=sa.pool.NullPool)
    migrate.upgrade(engine)
    grants = ("SELECT count(*) FROM pg_shdepend d JOIN pg_roles r ON r.oid = d.refobjid "
              "JOIN pg_database b ON b.oid = d.dbid WHERE r.rolname = 'monitor_reader' AND b.datname = current_database()")
    with engine.connect() as conn:
        assert conn.execute(sa.text(grants)).scalar() >= len(VIEWS)
    migrate.downgrade(engine, "0001")
    with engine.connect() as conn:
        assert not set(VIEWS) & set(conn.execute(sa.text(
            "SELECT table_name FROM information_schema.views")).scalars())
        assert conn.execute(sa.text(grants)).scalar() == 0
    migrate.upgrade(engine)  # the role exists (other databases use it): grants are made again
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT has_table_privilege('monitor_reader', 'open_alerts', 'SELECT')")).scalar()
        assert not conn.execute(sa.text("SELECT has_table_privilege('monitor_reader', 'alerts', 'SELECT')")).scalar()
    engine.dispose()
