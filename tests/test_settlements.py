"""Tile probabilities to settlement polygons, on hand-made grids with a known answer."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest
import shapely
import sqlalchemy as sa
from affine import Affine
from prometheus_client import CollectorRegistry
from shapely.geometry import box
from sqlalchemy.orm import Session

from monitor.readers import read_polygons
from monitor.settlements import median_grid, tile_polygons
from tests.test_change import world  # noqa: F401  (a fixture)

# a grid of 10 m cells with its top-left corner at (1000, 2000); tiles of 2 x 2 cells (20 m, stride 10 m)
T = Affine(10.0, 0.0, 1000.0, 0.0, -10.0, 2000.0)


def cells(r0: int, c0: int, r1: int, c1: int) -> object:
    """The ground of grid cells rows r0..r1-1, columns c0..c1-1."""
    return box(1000 + 10 * c0, 2000 - 10 * r1, 1000 + 10 * c1, 2000 - 10 * r0)


def test_overlapping_rectangles_merge_and_an_isolated_tile_is_dropped():
    g = np.zeros((10, 12))
    g[2:5, 2:5] = 0.9  # a 3 x 3 block of positive tiles
    g[3:6, 4:7] = 0.7  # a second block overlapping the first (shares the tile at row 3-4, column 4)
    g[8, 10] = 0.95  # a single positive tile among negatives: noise
    polys = tile_polygons(g, T, span=2, threshold=0.5)
    assert len(polys) == 1
    poly, prob = polys[0]
    # the median filter drops the blocks' outer corners (four of their nine neighbours are positive);
    # the tiles that survive span 2 x 2 cells each and their rectangles merge into one polygon
    # a tile survives where at least 5 of the 9 tiles around it are positive
    pos = np.pad(g >= 0.5, 1)
    kept = [(r, c) for r in range(10) for c in range(12) if pos[r:r + 3, c:c + 3].sum() >= 5]
    assert (2, 2) not in kept and (5, 6) not in kept and (8, 10) not in kept and (3, 4) in kept
    assert len(kept) == 12
    expected = None
    for r, c in kept:
        rect = cells(r, c, r + 2, c + 2)
        expected = rect if expected is None else expected.union(rect)
    assert poly.equals(expected)
    assert poly.area == pytest.approx(expected.area)
    # nothing of the isolated tile's rectangle is left
    assert not poly.intersects(cells(8, 10, 10, 12))
    # the mean probability of the kept tiles
    assert prob == pytest.approx(float(np.mean([g[r, c] for r, c in kept])))
    # only the tiles' centres: the 12 one-cell squares half a cell in from each kept tile's corner
    [(centred, same)] = tile_polygons(g, T, span=2, threshold=0.5, centres=True)
    assert centred.area == pytest.approx(12 * 100) and same == pytest.approx(prob)
    assert centred.equals(shapely.union_all([box(1005 + 10 * c, 1985 - 10 * r, 1015 + 10 * c, 1995 - 10 * r)
                                             for r, c in kept]))


def test_two_overlapping_tiles_make_one_rectangle():
    g = np.zeros((6, 6))
    g[1:4, 1:4] = 0.8  # the 3 x 3 block keeps its cross of five tiles
    g[1, 1] = g[1, 3] = g[3, 1] = g[3, 3] = 0.0
    g[2, 2] = 0.6
    # plus: the same block with corners at 0.8 keeps only the centre cross: one polygon, a plus sign
    polys = tile_polygons(g, T, span=1, threshold=0.5)
    assert len(polys) == 1
    assert polys[0][0].equals(cells(2, 2, 3, 3))  # only the centre has 5 of 9 positive neighbours
    # two tiles of 2 x 2 cells, one cell apart: their rectangles overlap and merge into one 3 x 2 rectangle
    g = np.zeros((6, 6))
    g[2:4, 2:4] = 0.9
    polys = tile_polygons(g, T, span=2, threshold=0.5, median=1)
    assert len(polys) == 1
    assert polys[0][0].equals(cells(2, 2, 5, 5)) and len(polys[0][0].exterior.coords) == 5
    assert polys[0][1] == pytest.approx(0.9)


def test_separate_settlements_stay_separate_and_nan_cells_are_left_out():
    g = np.full((8, 14), 0.1)
    g[1:6, 1:5] = 0.8
    g[1:6, 8:13] = 0.6
    g[0:8, 6] = np.nan  # a column without data (cloud) between them
    polys = sorted(tile_polygons(g, T, span=2, threshold=0.5), key=lambda p: p[0].bounds[0])
    assert len(polys) == 2
    assert polys[0][1] == pytest.approx(0.8) and polys[1][1] == pytest.approx(0.6)
    assert not polys[0][0].intersects(polys[1][0])
    # a NaN cell has no probability and is never positive; a lone negative tile inside a settlement is filled
    m = median_grid(np.where(np.arange(25).reshape(5, 5) == 12, 0.0, 0.9))
    assert m[2, 2] == pytest.approx(0.9)
    m = median_grid(np.array([[np.nan, 0.9], [0.9, 0.9]]))
    assert np.isnan(m[0, 0]) and m[1, 1] == pytest.approx(0.9)


def test_interpolated_polygons_follow_the_threshold_crossing_between_tile_centres():
    # a band of settlement four tiles wide across the whole grid: columns 3..6 at 1, the rest at 0
    g = np.zeros((10, 12))
    g[:, 3:7] = 1.0
    # tile centres are one cell in (span 2); the probability runs linearly from 0 at column 2's centre
    # to 1 at column 3's, so it crosses 0.25 a quarter of a cell past column 2's centre: the band
    # reaches from column 2.25 to 6.75 (tile-centre units), from the first row's centre less half a
    # cell to the last row's plus half a cell
    [(poly, prob)] = tile_polygons(g, T, span=2, threshold=0.25, interpolate=8)
    assert poly.equals(box(1000 + 10 * 3.25, 2000 - 10 * 10.5, 1000 + 10 * 7.75, 2000 - 10 * 0.5))
    assert poly.area == pytest.approx(4.5 * 10 * 100) and prob == pytest.approx(1.0)
    # a higher threshold is crossed nearer the settlement: 3.5 columns instead of the centres' 4
    [(poly, _)] = tile_polygons(g, T, span=2, threshold=0.75, interpolate=8)
    assert poly.area == pytest.approx(3.5 * 10 * 100)
    [(squares, _)] = tile_polygons(g, T, span=2, threshold=0.75, centres=True)
    assert squares.area == pytest.approx(4 * 10 * 100)
    # a tile just above the threshold beside ones far below gives only its side of the crossing
    g[:, 7] = 0.3
    [(poly, prob)] = tile_polygons(g, T, span=2, threshold=0.25, interpolate=8)
    # 0.3 at column 7's centre, 0 at column 8's: 0.25 is crossed at 7 + 1/6, the last sub-cell whose
    # centre is before it ends at 7.125
    assert poly.bounds[2] == pytest.approx(1000 + 10 * (1 + 7.125))
    assert prob == pytest.approx((4 * 1.0 + 0.3) / 5)
    # a cell without data is left out with the sub-cells nearest it, and splits nothing else
    g = np.zeros((10, 12))
    g[:, 3:7] = 1.0
    g[0, 4] = np.nan
    [(poly, _)] = tile_polygons(g, T, span=2, threshold=0.25, interpolate=8, median=1)
    assert not poly.intersects(box(1000 + 10 * 4.5 + 1, 1995 - 9, 1000 + 10 * 5.5 - 1, 1995 - 1))
    assert poly.area == pytest.approx(4.5 * 10 * 100 - 100 - 2 * (0.5 * 0.25 * 100), abs=50)


def test_nothing_positive_gives_no_polygon():
    assert tile_polygons(np.zeros((4, 4)), T) == []
    assert tile_polygons(np.full((3, 3), np.nan), T) == []
    with pytest.raises(ValueError):
        tile_polygons(np.zeros(4), T)


# --- the layer per date in PostGIS, on the hand-made 1 m world of test_change (area 'ba', 200 m x 200 m)

def _layers(world, engine, settings):
    """Three dates; on the second a cloud covers parcel C (x 148..202, y -2..52 from the area's corner)."""
    from monitor import change
    from monitor.db.tables import Area, Scene
    from monitor.metrics import Metrics
    from tests.test_change import EPSG, X0, Y0, C, buildings

    def b(x0, y0, x1, y1):
        return box(X0 + x0, Y0 + y0, X0 + x1, Y0 + y1)

    seen = {
        # a settlement across parcels B and C, and a small one in the north-west
        dt.date(2024, 1, 10): [(b(100, 0, 190, 40), 0.9), (b(10, 150, 40, 180), 0.7)],
        # under the cloud the classifier sees nothing; the small one shrank
        dt.date(2024, 2, 10): [(b(100, 0, 148, 45), 0.8), (b(10, 150, 35, 180), 0.6)],
        # clear again: the first grew, the small one is gone, a new one appeared
        dt.date(2024, 3, 10): [(b(100, 0, 195, 45), 0.9), (b(10, 60, 40, 90), 0.75)],
    }
    metrics = Metrics(CollectorRegistry())
    layers = {}
    with Session(engine, expire_on_commit=False) as session, session.begin():
        area = session.scalar(sa.select(Area))
        for k, (day, polys) in enumerate(seen.items()):
            canvas = buildings().cloud(*C) if k == 1 else buildings()
            sid = change.import_detections(session, area, day, canvas.write(world / f"{day}.tif"), None, settings,
                                           metrics=metrics).summary["scene_id"]
            scene = session.get(Scene, sid)
            for _ in range(2):  # stored again: replaced, not added
                layers[day] = change.store_settlements(session, area, scene, polys, EPSG, "clf-1")
            change.record_indicators(session, area, scene, settlement_km2=layers[day].km2, metrics=metrics,
                                     settlement_carried_km2=layers[day].carried_km2)
    return layers


def test_cloudy_part_keeps_the_last_clear_layer_and_growth_is_reported(world, cli, engine, settings, tmp_path):
    layers = _layers(world, engine, settings)
    d1, d2, d3 = sorted(layers)
    assert layers[d1].polygons == 2 and layers[d1].km2 == pytest.approx((3600 + 900) / 1e6, rel=1e-6)
    assert layers[d1].carried_km2 == 0
    # the cloudy date: the clear part seen (48 m x 45 m) joined with the first date's settlement under
    # the cloud (42 m x 40 m), not counted as no settlement
    assert layers[d2].polygons == 2
    assert layers[d2].km2 == pytest.approx((48 * 45 + 42 * 40 + 750) / 1e6, rel=1e-4)
    assert layers[d2].carried_km2 == pytest.approx(42 * 40 / 1e6, rel=1e-4)
    assert layers[d3].km2 == pytest.approx((95 * 45 + 900) / 1e6, rel=1e-6) and layers[d3].carried_km2 == 0
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT observed_on, count(*) FROM settlements GROUP BY 1 ORDER BY 1")).all()
        assert [n for _d, n in rows] == [2, 2, 2]
        [ind] = conn.execute(sa.text("SELECT settlement_km2, settlement_carried_km2 FROM area_indicators "
                                     "WHERE observed_on = :d"), {"d": d2}).all()
        assert ind == pytest.approx((layers[d2].km2, layers[d2].carried_km2))
        # the reader role sees the layer through its view, not the table
        conn.execute(sa.text("SET ROLE monitor_reader"))
        big = conn.execute(sa.text("SELECT round(area_m2), round(carried_share::numeric, 3), probability, model_version, "
                                   "GeometryType(geom), ST_SRID(geom) FROM area_settlements WHERE area = 'ba' "
                                   "AND observed_on = :d ORDER BY area_m2 DESC LIMIT 1"), {"d": d2}).one()
        assert (big[0], float(big[1])) == (48 * 45 + 42 * 40, round(1680 / 3840, 3)) and big[3:] == ("clf-1", "MULTIPOLYGON", 4326)
        # the probability is the area-weighted mean of what was seen (0.8) and what was carried over (0.9)
        assert big[2] == pytest.approx((2160 * 0.8 + 1680 * 0.9) / 3840, rel=1e-3)
        with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
            conn.execute(sa.text("SELECT * FROM settlements"))

    listing = cli("settlements", "list", "--area", "ba", "--date", d2.isoformat()).stdout
    assert "2 settlements, 0.0046 km2, 0.0017 km2 carried over" in listing
    assert "clf-1" in listing and "0.44" in listing  # the carried share of the large one
    doc = json.loads(cli("settlements", "list", "--area", "ba", "--format", "geojson").stdout)
    assert {f["properties"]["observed_on"] for f in doc["features"]} == {d3.isoformat()}  # the newest by default
    assert sorted(f["properties"]["area_m2"] for f in doc["features"]) == [900.0, 4275.0]
    gpkg = tmp_path / "layer.gpkg"
    cli("settlements", "list", "--area", "ba", "--date", d1.isoformat(), "--format", "gpkg", "--out", gpkg)
    layer = read_polygons(gpkg)
    assert len(layer) == 2 and layer.crs.to_epsg() == 4326 and {r["observed_on"] for r in layer.rows} == {d1.isoformat()}
    assert sorted(round(r["area_m2"]) for r in layer.rows) == [900, 3600]
    bad = cli("settlements", "list", "--area", "ba", "--date", "2024-02-11", expect=2)
    assert "no settlement layer on 2024-02-11" in bad.stderr
    assert "--out" in cli("settlements", "list", "--area", "ba", "--format", "gpkg", expect=2).stderr

    growth = json.loads(cli("settlements", "growth", "--area", "ba", "--json").stdout)
    summary = sorted((g["previous_on"], g["change"], round(g["change_km2"] * 1e6)) for g in growth)
    assert summary == [(d1.isoformat(), "grew", 240), (d1.isoformat(), "shrank", -150),
                       (d2.isoformat(), "appeared", 900), (d2.isoformat(), "disappeared", -750),
                       (d2.isoformat(), "grew", 435)]
    assert "appeared" in cli("settlements", "growth", "--area", "ba").stdout


def test_api_serves_the_layer_as_geojson(world, engine, settings):
    from tests.test_api import make_api

    layers = _layers(world, engine, settings)
    d1, d2, _d3 = sorted(layers)
    api = make_api(settings, engine)
    doc = api.get("/areas/ba/settlements", params={"date": d2.isoformat()}).json()
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) == 2
    big = doc["features"][0]
    assert big["geometry"]["type"] == "MultiPolygon" and big["properties"]["carried_m2"] == pytest.approx(1680, abs=0.5)
    newest = api.get("/areas/ba/settlements").json()["features"]
    assert {f["properties"]["observed_on"] for f in newest} == {"2024-03-10"}
    assert api.get("/areas/ba/settlements", params={"date": "2024-02-11"}).status_code == 404
    assert api.get("/areas/nope/settlements").status_code == 404
    assert api.get("/areas/ba/settlements", headers={}).status_code == 401
    growth = api.get("/areas/ba/settlements/growth").json()
    assert [g["change"] for g in growth if g["previous_on"] == d1.isoformat()] == ["grew", "shrank"]


# --- settlement growth through the alert path, on the same 1 m world

def test_settlement_growth_over_a_parcel_is_judged_like_construction(world, cli, engine, settings):
    from monitor import change
    from monitor.db.tables import Area
    from monitor.metrics import Metrics
    from monitor.pipeline import judge_scene
    from tests.test_change import (
        EPSG,
        X0,
        Y0,
        B,
        C,
        G,
        alerts_by_parcel,
        buildings,
        deliveries,
        permits,
        pid,
        q,
        subscribe,
    )

    def b(x0, y0, x1, y1):
        return box(X0 + x0, Y0 + y0, X0 + x1, Y0 + y1)

    d1, d2, d3 = dt.date(2024, 1, 10), dt.date(2024, 2, 10), dt.date(2024, 3, 10)
    layers = {
        d1: [b(100, 0, 140, 40)],  # on parcel B (x 100..150)
        d2: [b(100, 0, 190, 40)],  # grew over the rest of B (permitted) and onto C (x 150..200): 40 m x 40 m
        d3: [b(100, 0, 190, 40), b(150, 60, 180, 90)],  # still there, and a new one on G (north of C)
    }
    permits(cli, world / "permits.csv", [(pid(*B), "BP-1", "2024-01-01", "2024-12-31")])
    subscribe(engine)
    metrics = Metrics(CollectorRegistry())

    def run(day):
        with Session(engine) as session, session.begin():
            area = session.scalar(sa.select(Area))
            sid = change.import_detections(session, area, day, buildings().write(world / f"{day}.tif"), None, settings,
                                           metrics=metrics).summary["scene_id"]
        polys = {"crs": f"EPSG:{EPSG}", "version": "clf-1", "polygons": [[shapely.to_wkb(g, hex=True), 0.9]
                                                                          for g in layers[day]]}
        return judge_scene(engine, sid, settings, polys, metrics=metrics)

    def settlement_changes():
        return q(engine, "SELECT observed_on, previous_on, round(area_m2), model_version FROM changes "
                         "WHERE source = 'settlement' ORDER BY observed_on, area_m2")

    # off by default: the layers are stored, nothing is judged from them
    assert run(d1) == [] and run(d2) == []
    assert settlement_changes() == [] and alerts_by_parcel(engine) == {}
    shown = json.loads(cli("areas", "configure", "ba", "--settlement-alerts").stdout)
    assert shown["settlement_alerts"] is True

    # on: the second date judged again; its growth over B is permitted, over C it is an alert
    events = run(d2)
    assert [e for _a, e in events] == ["alert.created"]
    assert settlement_changes() == [(d2, d1, 2000, "clf-1")]  # 50 m x 40 m: 10 m on B, 40 m on C
    alerts = alerts_by_parcel(engine)
    assert set(alerts) == {pid(*C)}
    c = alerts[pid(*C)]
    assert (c["source"], c["model_version"], c["status"], c["confidence"]) == ("settlement", "clf-1", "new", "probable")
    assert c["new_area_m2"] == pytest.approx(1600, rel=1e-3) and c["first_seen"] == d2
    verdicts = dict(q(engine, "SELECT p.external_id, pc.verdict FROM parcel_changes pc JOIN parcels p ON "
                              "p.id = pc.parcel_id JOIN changes x ON x.id = pc.change_id WHERE x.source = 'settlement'"))
    assert verdicts == {pid(*B): "permitted", pid(*C): "alert"}
    assert deliveries(engine) == [(pid(*C), "alert.created")]
    # judged again: nothing is raised twice
    assert run(d2) == [] and len(settlement_changes()) == 1

    # a month later: C's settlement is still in the layer (confirmed); the new one on G is an alert
    events = run(d3)
    alerts = alerts_by_parcel(engine)
    assert {k: a["source"] for k, a in alerts.items()} == {pid(*C): "settlement", pid(*G): "settlement"}
    assert alerts[pid(*C)]["confidence"] == "confirmed" and alerts[pid(*C)]["last_seen"] == d3
    assert alerts[pid(*G)]["new_area_m2"] == pytest.approx(900, rel=1e-3)
    assert sorted(e for _a, e in events) == ["alert.created", "alert.escalated"]
    assert sorted(deliveries(engine)[1:]) == [(pid(*C), "alert.escalated"), (pid(*G), "alert.created")]
    # the change of the third date is only the new ground: what any earlier layer held is not new
    assert settlement_changes()[1:] == [(d3, d2, 900, "clf-1")]
    # the diff's changes are untouched: the buildings never moved
    assert q(engine, "SELECT count(*) FROM changes WHERE source = 'diff'") == [(0,)]


def test_settlement_alerts_are_an_area_setting_in_the_api(world, engine, settings):
    from tests.test_api import make_api

    api = make_api(settings, engine)
    assert api.get("/areas/ba").json()["settlement_alerts"] is False
    r = api.patch("/areas/ba", json={"settlement_alerts": True})
    assert r.status_code == 200 and r.json()["settlement_alerts"] is True
    assert api.patch("/areas/ba", json={"cadence": "3d"}).json()["settlement_alerts"] is True  # unset: kept
    assert api.patch("/areas/ba", json={"settlement_alerts": "maybe"}).status_code == 422
    assert api.patch("/areas/ba", json={"settlement_alerts": False}, headers=api.read).status_code == 403
