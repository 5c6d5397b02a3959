"""Alerts as GIS files (GeoJSON, GeoPackage, CSV, FlatGeobuf) from the CLI and the API, read back with
pyogrio; the views QGIS draws every layer from, as the read-only role sees them."""

from __future__ import annotations

import json
import re
from urllib.parse import urlsplit

import numpy as np
import pyogrio
import pytest
import shapely
import sqlalchemy as sa
from geoalchemy2.shape import to_shape
from sqlalchemy.orm import Session

from monitor.db.tables import Alert, Parcel
from tests.test_api import make_api
from tests.test_change import (  # noqa: F401  (world is a fixture)
    D1,
    D2,
    NEW,
    A,
    B,
    C,
    alerts_by_parcel,
    buildings,
    permits,
    pid,
    summary,
    world,
)

FORMATS = ("geojson", "gpkg", "csv", "fgb")
SUFFIX = {"geojson": "geojson", "gpkg": "gpkg", "csv": "csv", "fgb": "fgb"}
COLUMNS = {"id", "area", "parcel", "first_seen", "last_seen", "new_area_m2", "fraction", "confidence", "status",
           "permits", "evidence_before", "evidence_after"}


@pytest.fixture
def alerted(world, cli, engine):
    """New buildings on A (its permit expired the day before), B (a valid permit) and C (none)."""
    permits(cli, world / "permits.csv", [(pid(*A), "A-2023-5", "2023-01-01", "2024-02-09"),
                                         (pid(*B), "B-2024-17", "2024-01-01", "")])
    summary(cli, D1, buildings().write(world / "d1.tif"))
    summary(cli, D2, buildings().put(*A, *NEW).put(*B, *NEW).put(*C, *NEW).write(world / "d2.tif"))
    rows = alerts_by_parcel(engine)
    assert set(rows) == {pid(*A), pid(*C)}
    return rows[pid(*A)]["id"], rows[pid(*C)]["id"]


def _read(path):
    """Fields, geometries and rows; a GeoJSON feature's id member is its FID (the alert id)."""
    meta, fids, wkb, data = pyogrio.raw.read(path, return_fids=True)
    rows = [dict(zip(meta["fields"], values)) for values in zip(*data)]
    if "id" not in meta["fields"]:
        meta["fields"] = [*meta["fields"], "id"]
        for row, fid in zip(rows, fids):
            row["id"] = fid
    # FlatGeobuf keeps features in the order of its spatial index: back to the alerts' order
    order = sorted(range(len(rows)), key=lambda i: int(rows[i]["id"]))
    return meta, shapely.from_wkb(wkb)[order], [rows[i] for i in order]


def _decimals(text: str) -> int:
    return max(len(d) for d in re.findall(r"-?\d+\.(\d+)", text))


def _truth(engine, ids):
    with Session(engine) as s:
        alerts = [s.get(Alert, i) for i in ids]
        parcels = [s.get(Parcel, a.parcel_id) for a in alerts]
        return [to_shape(a.geom) for a in alerts], [to_shape(p.geom) for p in parcels]


def test_cli_writes_every_format_read_back_with_pyogrio(alerted, cli, engine, tmp_path):
    a, c = alerted
    construction, outlines = _truth(engine, [a, c])
    for fmt in FORMATS:
        _check_file(cli, tmp_path, fmt, a, c, construction, outlines)


def _check_file(cli, tmp_path, fmt, a, c, construction, outlines):
    """One format written by the CLI, read back with pyogrio."""
    out = tmp_path / "out" / f"alerts.{SUFFIX[fmt]}"
    cli("alerts", "list", "--area", "ba", "--format", fmt, "--out", out, "--parcel-geometry")
    meta, geoms, rows = _read(out)
    assert pyogrio.read_info(out)["features"] == 2
    assert fmt == "csv" or meta["crs"] == "EPSG:4326"
    assert COLUMNS | {"parcel_wkt"} <= set(meta["fields"])
    assert [int(r["id"]) for r in rows] == [a, c]
    assert [r["parcel"] for r in rows] == [pid(*A), pid(*C)]
    assert rows[0]["permits"] == "A-2023-5" and not rows[1]["permits"]  # the permit's own number
    assert str(rows[0]["first_seen"])[:10] == D2
    assert rows[0]["evidence_after"] == f"/alerts/{a}/evidence/after.png"  # an API path, not a server path
    if fmt == "csv":
        geoms = shapely.from_wkt([r["WKT"] for r in rows])
    coords = shapely.get_coordinates(geoms)
    assert np.allclose(coords, np.round(coords, 7), rtol=0, atol=1e-11)  # 7 decimals
    for got, want in zip(geoms, construction):
        assert got.geom_type == "MultiPolygon" and shapely.hausdorff_distance(got, want) < 2e-7
    for row, want in zip(rows, outlines):
        parcel = shapely.from_wkt(row["parcel_wkt"])
        assert shapely.hausdorff_distance(parcel, want) < 2e-7 and _decimals(row["parcel_wkt"]) <= 7
    if fmt in ("geojson", "csv"):
        assert _decimals(out.read_text()) <= 7


def test_cli_prints_text_formats_and_refuses_bad_options(alerted, cli, tmp_path):
    a, c = alerted
    fc = json.loads(cli("alerts", "list", "--format", "geojson", "--status", "open").stdout)
    assert [f["id"] for f in fc["features"]] == [a, c]
    assert fc["features"][0]["properties"]["evidence_before"] == f"/alerts/{a}/evidence/before.png"
    assert "parcel_wkt" not in fc["features"][0]["properties"]
    csv = cli("alerts", "list", "--format", "csv").stdout.splitlines()
    assert csv[0].startswith("WKT,id,") and len(csv) == 3
    empty = tmp_path / "none.gpkg"
    cli("alerts", "list", "--since", "2030-01-01", "--format", "gpkg", "--out", empty)
    meta, _geoms, rows = _read(empty)
    assert rows == [] and COLUMNS <= set(meta["fields"])  # the same columns with nothing to write
    for args, words in ((("--format", "gpkg"), "give --out"), (("--format", "shp"), "not one of"),
                        (("--out", tmp_path / "x.txt"), "need a file --format")):
        r = cli("alerts", "list", *args, expect=2)
        assert words in r.output
    assert not (tmp_path / "x.txt").exists()


def test_api_f_gives_the_same_files_with_signed_links(alerted, settings, engine, tmp_path):
    a, c = alerted
    api = make_api(settings, engine)
    for fmt in FORMATS:
        r = api.get("/alerts", params={"area": "ba", "f": fmt, "parcel_geometry": "true"})
        assert r.status_code == 200, r.text
        assert r.headers["content-disposition"] == f'attachment; filename="alerts.{SUFFIX[fmt]}"'
        path = tmp_path / f"got.{SUFFIX[fmt]}"
        path.write_bytes(r.content)
        meta, _geoms, rows = _read(path)
        assert [int(x["id"]) for x in rows] == [a, c] and "parcel_wkt" in meta["fields"]
        link = rows[0]["evidence_after"]
        assert urlsplit(link).path == f"/alerts/{a}/evidence/after.png" and "sig=" in link
        assert str(tmp_path) not in r.content.decode("latin-1")
    assert api.get("/alerts", params={"f": "shp"}).status_code == 422
    assert api.get("/alerts", params={"f": "csv"}, headers={}).status_code == 401


def test_every_layer_has_a_view_for_qgis_and_the_reader_role(alerted, engine):
    layers = {"area_parcels": 16, "area_detections": None, "area_changes": 3, "scene_footprints": 2}
    with engine.connect() as conn:
        cols = set(conn.execute(sa.text(
            "SELECT f_table_name, f_geometry_column, srid, type FROM geometry_columns "
            f"WHERE f_table_name IN ({', '.join(repr(v) for v in layers)})")).all())
        assert cols == {(v, "geom", 4326, "MULTIPOLYGON") for v in layers} | {
            ("scene_footprints", "clear_geom", 4326, "MULTIPOLYGON")}
        conn.execute(sa.text("SET ROLE monitor_reader"))
        for view, count in layers.items():
            got = conn.execute(sa.text(f"SELECT count(*) FROM {view} WHERE area = 'ba'")).scalar()
            assert got == count if count is not None else got > 16
        row = conn.execute(sa.text("SELECT permits, open_alert FROM area_parcels WHERE external_id = :p"),
                           dict(p=pid(*A))).one()
        assert row.permits == "A-2023-5" and row.open_alert == alerted[0]
        # parcel_history names the permit that covered B's construction by its own number
        permit = conn.execute(sa.text("SELECT permit_id FROM parcel_history WHERE external_id = :p AND "
                                      "observed_on = :d"), dict(p=pid(*B), d=D2)).scalar()
        assert permit == "B-2024-17"
        assert "evidence" not in conn.execute(sa.text("SELECT * FROM open_alerts LIMIT 1")).keys()
        footprints = conn.execute(sa.text("SELECT observed_on, footprint_known FROM scene_footprints "
                                          "ORDER BY observed_on")).all()
        assert [str(d) for d, _k in footprints] == [D1, D2] and all(k for _d, k in footprints)
