"""Areas, parcels and permits: imports from real and hand-made files, and every kind of bad input."""

from __future__ import annotations

import json

import pyogrio
import pytest
import shapely
import sqlalchemy as sa
from shapely.geometry import Point, Polygon, box

from tests.vectors import geojson, squares, write

# A 2 km x 2 km area near Buenos Aires in UTM 21S (EPSG:32721)
X0, Y0 = 314000.0, 6183400.0
AREA_UTM = box(X0, Y0, X0 + 3000, Y0 + 2000)


def count(engine, table: str) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar()


@pytest.fixture
def area_file(tmp_path):
    return write(tmp_path / "area.gpkg", [AREA_UTM], [{"name": "ba"}], "EPSG:32721", driver="GPKG")


@pytest.fixture
def area(cli, area_file):
    cli("areas", "add", "ba", "--geometry", area_file, "--provider", "local", "--source", "local=/tmp/drops")
    return "ba"


def test_area_add_list_show_remove(cli, engine, area_file):
    out = cli("areas", "add", "ba", "--geometry", area_file, "--cadence", "2w", "--provider",
              "local,stac", "--max-cloud", "35", "--source", "local=/data/drops/ba").stdout
    assert "EPSG:32721" in out
    info = json.loads(cli("areas", "show", "ba").stdout)
    assert info["utm_epsg"] == 32721
    assert info["cadence"] == "2w" and info["providers"] == ["local", "stac"] and info["max_cloud"] == 35
    assert info["sources"] == {"local": "/data/drops/ba"}
    assert abs(info["area_km2"] - 6.0) < 0.006
    listing = cli("areas", "list").stdout
    assert "ba" in listing and "local,stac" in listing
    cli("areas", "remove", "ba")
    assert count(engine, "areas") == 0


def test_area_defaults_come_from_settings(cli, tmp_path):
    f = geojson(tmp_path / "a.geojson", [box(-58.5, -34.6, -58.45, -34.55)])
    cli("areas", "add", "x", "--geometry", f, env={"MONITOR_DEFAULT_CADENCE": "3d",
                                                      "MONITOR_DEFAULT_MAX_CLOUD": "15"})
    info = json.loads(cli("areas", "show", "x").stdout)
    assert info["cadence"] == "3d" and info["max_cloud"] == 15 and info["utm_epsg"] == 32721
    assert info["providers"] == ["stac", "sentinelsat"]


def test_area_multipolygon_in_another_crs(cli, tmp_path):
    # two squares in Web Mercator, northern hemisphere (Port-au-Prince): UTM 18N
    a = box(-8052000, 2101000, -8051000, 2102000)
    b = box(-8050000, 2101000, -8049000, 2102000)
    f = write(tmp_path / "two.shp", [shapely.MultiPolygon([a, b])], [{"n": 1}], "EPSG:3857")
    cli("areas", "add", "pap", "--geometry", f)
    assert json.loads(cli("areas", "show", "pap").stdout)["utm_epsg"] == 32618


@pytest.mark.parametrize("problem", ["missing", "not_vector", "no_crs", "point", "bad_cadence", "bad_provider",
                                     "bad_cloud", "bad_source", "duplicate"])
def test_area_bad_input(cli, engine, tmp_path, area_file, problem):
    args = ["areas", "add", "ba", "--geometry", area_file]
    if problem == "missing":
        args[4] = tmp_path / "nope.geojson"
    elif problem == "not_vector":
        (tmp_path / "x.geojson").write_text("this is not json")
        args[4] = tmp_path / "x.geojson"
    elif problem == "no_crs":
        args[4] = write(tmp_path / "nocrs.shp", [AREA_UTM], [{"n": 1}], None)
    elif problem == "point":
        args[4] = geojson(tmp_path / "pt.geojson", [Point(-58.4, -34.6)])
    elif problem == "bad_cadence":
        args += ["--cadence", "often"]
    elif problem == "bad_provider":
        args += ["--provider", "stac,planet"]
    elif problem == "bad_cloud":
        args += ["--max-cloud", "140"]
    elif problem == "bad_source":
        args += ["--source", "local"]
    elif problem == "duplicate":
        cli(*args)
    result = cli(*args, expect=2)
    assert result.stderr.startswith("error: ")
    if problem in ("missing", "not_vector", "no_crs", "point"):
        assert str(args[4]) in result.stderr
    assert count(engine, "areas") == (1 if problem == "duplicate" else 0)


def test_unknown_area_is_exit_2(cli):
    assert "no area named 'nowhere'" in cli("areas", "show", "nowhere", expect=2).stderr


@pytest.mark.realdata
def test_real_buenos_aires_lots(cli, engine, area, shared_data):
    lots = shared_data / "buenos_aires_lots" / "lots.shp"
    out = cli("parcels", "import", lots, "--area", area, "--id-field", "gid").stdout
    info = pyogrio.read_info(lots)
    assert f"{info['features']} parcels" in out and info["features"] == 159
    assert count(engine, "parcels") == 159
    _m, _f, wkb, fields = pyogrio.raw.read(lots)
    expected = dict(zip((str(g) for g in fields[0]), shapely.area(shapely.from_wkb(wkb))))
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT external_id, area_m2, ST_Area(ST_Transform(geom, 32721)) FROM parcels")).all()
    for ext, stored, measured in rows:
        assert abs(stored - expected[ext]) / expected[ext] < 0.001, ext
        assert abs(measured - expected[ext]) / expected[ext] < 0.001, ext
    # importing again updates, never duplicates
    out = cli("parcels", "import", lots, "--area", area, "--id-field", "gid").stdout
    assert "0 new, 159 updated" in out
    assert count(engine, "parcels") == 159


def test_parcels_upsert_keeps_ids_and_updates_geometry(cli, engine, area, tmp_path):
    geoms = squares(X0 + 100, Y0 + 100, 2, 20)
    f = write(tmp_path / "p.gpkg", geoms, [{"parcel_id": f"P{i}", "use": "res"} for i in range(4)],
              "EPSG:32721", driver="GPKG")
    cli("parcels", "import", f, "--area", area)
    with engine.connect() as conn:
        before = dict(conn.execute(sa.text("SELECT external_id, id FROM parcels")).all())
    bigger = [g.buffer(5, join_style="mitre") for g in geoms[:2]] + [box(X0 + 500, Y0 + 500, X0 + 530, Y0 + 530)]
    f2 = write(tmp_path / "p2.gpkg", bigger, [{"parcel_id": i, "use": "com"} for i in ("P0", "P1", "P9")],
               "EPSG:32721", driver="GPKG")
    assert "1 new, 2 updated" in cli("parcels", "import", f2, "--area", area).stdout
    with engine.connect() as conn:
        rows = {r[0]: r[1:] for r in conn.execute(sa.text(
            "SELECT external_id, id, area_m2, attributes->>'use' FROM parcels"))}
    assert len(rows) == 5
    assert rows["P0"][0] == before["P0"] and abs(rows["P0"][1] - 900) < 1 and rows["P0"][2] == "com"
    assert abs(rows["P2"][1] - 400) < 1 and rows["P2"][2] == "res"


def test_repairable_geometry_is_repaired_with_a_warning(cli, engine, area, tmp_path):
    bowtie = Polygon([(X0 + 10, Y0 + 10), (X0 + 50, Y0 + 50), (X0 + 50, Y0 + 10), (X0 + 10, Y0 + 50)])
    f = write(tmp_path / "bow.gpkg", [bowtie, box(X0, Y0, X0 + 5, Y0 + 5)], [{"id": 1}, {"id": 2}],
              "EPSG:32721", driver="GPKG")
    result = cli("parcels", "import", f, "--area", area)
    assert "warning" in result.stderr and "feature 1" in result.stderr and "repaired" in result.stderr
    assert count(engine, "parcels") == 2
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT bool_and(ST_IsValid(geom)) FROM parcels")).scalar()


@pytest.mark.parametrize("problem,needle", [
    ("missing", "does not exist"), ("not_vector", "not a readable vector file"), ("no_crs", "coordinate reference"),
    ("line", "LineString is not a Polygon"), ("unrepairable", "cannot be repaired"), ("empty", "holds no parcels"),
    ("no_id_field", "has no id field"), ("duplicate_ids", "appears more than once"), ("empty_id", "empty id"),
])
def test_parcel_bad_input_writes_nothing(cli, engine, area, tmp_path, problem, needle):
    good = squares(X0 + 100, Y0 + 100, 2, 20)
    props = [{"parcel_id": f"P{i}"} for i in range(4)]
    path = tmp_path / "bad.geojson"
    crs = "urn:ogc:def:crs:EPSG::32721"
    args = ["--area", area]
    if problem == "missing":
        path = tmp_path / "nope.gpkg"
    elif problem == "not_vector":
        path = tmp_path / "bad.gpkg"
        path.write_bytes(b"\x00\x01 not a geopackage")
    elif problem == "no_crs":
        path = write(tmp_path / "bad.shp", good, props, None)
    elif problem == "line":
        geojson(path, good[:3] + [shapely.LineString([(X0, Y0), (X0 + 10, Y0 + 10)])], props, crs)
    elif problem == "unrepairable":
        flat = Polygon([(X0, Y0), (X0 + 10, Y0), (X0 + 20, Y0), (X0, Y0)])
        geojson(path, good[:3] + [flat], props, crs)
    elif problem == "empty":
        geojson(path, [], [], crs)
    elif problem == "no_id_field":
        geojson(path, good, [{"name": "x"} for _ in good], crs)
    elif problem == "duplicate_ids":
        geojson(path, good, [{"parcel_id": i} for i in ("A", "B", "C", "B")], crs)
    elif problem == "empty_id":
        geojson(path, good, [{"parcel_id": i} for i in ("A", "B", "", "D")], crs)
    result = cli("parcels", "import", path, *args, expect=2)
    assert needle in result.stderr and str(path) in result.stderr
    if problem in ("line", "unrepairable"):
        assert "row 4" in result.stderr
    if problem == "empty_id":
        assert "row 3" in result.stderr and "parcel_id" in result.stderr
    assert count(engine, "parcels") == 0


def _parcels(cli, area, tmp_path, n=3):
    f = write(tmp_path / "parcels.gpkg", squares(X0 + 100, Y0 + 100, 2, 20)[:n],
              [{"parcel_id": f"P{i}"} for i in range(n)], "EPSG:32721", driver="GPKG")
    cli("parcels", "import", f, "--area", area)


def test_permits_csv_and_geojson(cli, engine, area, tmp_path):
    _parcels(cli, area, tmp_path)
    csv = tmp_path / "permits.csv"
    csv.write_text("parcel_id,permit_id,valid_from,valid_to,kind\nP0,B-1,2020-01-01,2021-01-01,new\n"
                   "P1,B-2,2020-03-01,,extension\n")
    assert "2 permits" in cli("permits", "import", csv).stdout
    gj = geojson(tmp_path / "permits.geojson", [None], [{"parcel_id": "P2", "permit_id": "B-3",
                                                         "valid_from": "2022-05-01", "valid_to": None}])
    cli("permits", "import", gj, "--area", area)
    csv.write_text("parcel_id,permit_id,valid_from,valid_to\nP0,B-1,2020-01-01,2021-06-30\n")
    cli("permits", "import", csv)
    with engine.connect() as conn:
        rows = {r[0]: r[1:] for r in conn.execute(sa.text(
            "SELECT permit_number, valid_from::text, valid_to::text, kind FROM permits"))}
    assert rows == {"B-1": ("2020-01-01", "2021-06-30", None), "B-2": ("2020-03-01", None, "extension"),
                    "B-3": ("2022-05-01", None, None)}


@pytest.mark.parametrize("body,needle,row", [
    ("P0,B-1,2020-01-01,\nP7,B-2,2020-01-01,\n", "parcel 'P7' does not exist", "row 3"),
    ("P0,B-1,2021-01-01,2020-01-01\n", "before valid_from", "row 2"),
    ("P0,B-1,2021-01-01,\nP1,B-2,first of may,\n", "'first of may' is not a date", "row 3"),
    ("P0,B-1,,\n", "no valid_from", "row 2"),
    ("P0,B-1,2021-01-01,\nP0,B-1,2021-01-01,\n", "appears twice", None),
])
def test_permit_bad_input_writes_nothing(cli, engine, area, tmp_path, body, needle, row):
    _parcels(cli, area, tmp_path)
    f = tmp_path / "permits.csv"
    f.write_text("parcel_id,permit_id,valid_from,valid_to\n" + body)
    result = cli("permits", "import", f, expect=2)
    assert needle in result.stderr and str(f) in result.stderr
    if row:
        assert row in result.stderr
    assert count(engine, "permits") == 0


def test_permit_file_problems(cli, area, tmp_path):
    f = tmp_path / "p.csv"
    f.write_text("parcel,number\nP0,1\n")
    assert "no valid_from column" in cli("permits", "import", f, expect=2).stderr
    f.write_text("")
    assert "is empty" in cli("permits", "import", f, expect=2).stderr
    assert "does not exist" in cli("permits", "import", tmp_path / "none.csv", expect=2).stderr
    x = tmp_path / "p.xlsx"
    x.write_text("x")
    assert "not a CSV or GeoJSON" in cli("permits", "import", x, expect=2).stderr


def test_area_configure_and_models(cli, engine, area, tmp_path):
    model_dir = tmp_path / "change-model"
    model_dir.mkdir()
    (model_dir / "model.keras").write_bytes(b"")  # registration reads model.json only
    (model_dir / "model.json").write_text(json.dumps({
        "kind": "change", "version": "change-test-1", "bands": ["B04"], "tile": 64, "threshold": 0.5,
        "normalization": {"mean": [0.0, 0.0], "std": [1.0, 1.0]}}))
    info = json.loads(cli("areas", "configure", area, "--cadence", "1w", "--max-cloud", "10", "--inactive",
                          "--source", "stac=https://stac.example.org/v1", "--change-model", model_dir).stdout)
    assert info["cadence"] == "1w" and info["max_cloud"] == 10 and info["active"] is False
    assert info["sources"] == {"local": "/tmp/drops", "stac": "https://stac.example.org/v1"}
    assert info["models"]["change"] is not None
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT kind, version FROM models")).one() == ("change", "change-test-1")
    result = cli("areas", "configure", area, "--segmenter-model", model_dir, expect=2)
    assert "is a change model, not a segmenter model" in result.stderr
    assert "not a model directory" in cli("areas", "configure", area, "--segmenter-model", tmp_path, expect=2).stderr
    (model_dir / "model.json").write_text(json.dumps({"kind": "change", "version": "change-test-2"}))
    # what load_model refuses, the registry refuses too
    assert "field 'bands'" in cli("models", "register", model_dir, expect=2).stderr
    info = json.loads(cli("areas", "configure", area, "--change-model", "").stdout)
    assert info["models"]["change"] is None
