"""Detections -> diff -> judge -> alerts, on a hand-made 1 m world with known answers, and on the
real Buenos Aires pair."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest
import rasterio
import sqlalchemy as sa
from rasterio.transform import from_origin
from shapely.geometry import box
from sqlalchemy.orm import Session

from monitor.db.tables import Subscription
from tests.vectors import squares, write

EPSG = 32721
X0, Y0 = 314000.0, 6183400.0  # the area's lower-left corner, UTM 21S
SIDE, PARCEL, MARGIN = 200, 50, 10
N = SIDE + 2 * MARGIN
GRID = from_origin(X0 - MARGIN, Y0 + SIDE + MARGIN, 1.0, 1.0)
NODATA = 255
# Thresholds of a 1 m world: the shift tolerance is about one pixel.
ENV = {"MONITOR_SHIFT_TOLERANCE_M": "1.5", "MONITOR_MIN_REGION_M2": "20", "MONITOR_MEDIAN_FILTER_PX": "3",
       "MONITOR_MIN_CHANGE_M2": "20", "MONITOR_ALERT_MIN_M2": "50", "MONITOR_ALERT_MIN_FRACTION": "0"}
D1, D2, D3 = "2024-01-10", "2024-02-10", "2024-03-10"


def pid(i: int, j: int) -> str:
    return f"P{i}{j}"


class Canvas:
    """A 1 m mask over the area (and a margin); boxes are placed in metres from a parcel's corner."""

    def __init__(self) -> None:
        self.a = np.zeros((N, N), dtype=np.uint8)

    def put(self, i: int, j: int, x: float, y: float, w: int, h: int, value: int = 1) -> Canvas:
        col = int(MARGIN + i * PARCEL + x)
        row = int(N - (MARGIN + j * PARCEL + y) - h)
        self.a[row:row + h, col:col + w] = value
        return self

    def cloud(self, i: int, j: int) -> Canvas:
        return self.put(i, j, -2, -2, PARCEL + 4, PARCEL + 4, NODATA)

    def write(self, path):
        with rasterio.open(path, "w", driver="GTiff", width=N, height=N, count=1, dtype="uint8", crs=f"EPSG:{EPSG}",
                           transform=GRID, nodata=NODATA) as dst:
            dst.write(self.a, 1)
        return path


def buildings(shift: tuple[int, int] = (0, 0)) -> Canvas:
    """Every parcel's existing 12 m x 12 m building, optionally shifted by whole pixels."""
    c = Canvas()
    for i in range(4):
        for j in range(4):
            c.put(i, j, 5 + shift[0], 5 + shift[1], 12, 12)
    return c


@pytest.fixture
def world(cli, tmp_path):
    """The area 'ba' with 4 x 4 parcels of 50 m x 50 m, P<i><j>."""
    area = write(tmp_path / "area.gpkg", [box(X0, Y0, X0 + SIDE, Y0 + SIDE)], [{"name": "ba"}], f"EPSG:{EPSG}",
                 driver="GPKG")
    cli("areas", "add", "ba", "--geometry", area, "--provider", "local")
    geoms = squares(X0, Y0, 4, PARCEL)
    ids = [pid(k % 4, k // 4) for k in range(16)]
    parcels = write(tmp_path / "parcels.gpkg", geoms, [{"parcel_id": i} for i in ids], f"EPSG:{EPSG}", driver="GPKG")
    cli("parcels", "import", parcels, "--area", "ba")
    return tmp_path


def permits(cli, path, rows):
    path.write_text("parcel_id,permit_id,valid_from,valid_to\n" + "\n".join(",".join(r) for r in rows) + "\n")
    cli("permits", "import", path, "--area", "ba")


def imp(cli, day, path, *extra, expect=0):
    return cli("detections", "import", "--area", "ba", "--date", day, path, "--json", *extra, env=ENV, expect=expect)


def summary(cli, day, path, *extra):
    return json.loads(imp(cli, day, path, *extra).stdout)


def alerts_by_parcel(engine) -> dict[str, dict]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT p.external_id, a.* FROM alerts a JOIN parcels p ON p.id = a.parcel_id ORDER BY a.id")).mappings()
        return {r["external_id"]: dict(r) for r in rows}


def q(engine, sql: str, **params):
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).all()


def subscribe(engine):
    with Session(engine) as s, s.begin():
        s.add(Subscription(url="http://127.0.0.1:9/hook", secret="s3cret", min_confidence="probable"))


def deliveries(engine) -> list[tuple[str, str]]:
    return [tuple(r) for r in q(engine, "SELECT p.external_id, d.event FROM deliveries d JOIN alerts a ON a.id = "
                                        "d.alert_id JOIN parcels p ON p.id = a.parcel_id ORDER BY d.id")]


A, B, C, D, E, F, G, H, I, J = ((1, 0), (2, 0), (3, 0), (0, 1), (1, 1), (2, 1), (3, 1), (0, 2), (1, 2), (2, 2))
NEW = (25, 25, 20, 20)  # a new 20 m x 20 m building, 8 m from the parcel's existing one


def test_three_dates_with_known_answers(world, cli, engine):
    subscribe(engine)
    permits(cli, world / "permits.csv", [
        (pid(*B), "B-valid", "2024-02-01", "2024-12-31"),
        (pid(*C), "C-expired", "2023-06-01", "2024-01-31"),
    ])
    d1 = buildings().cloud(*F)  # F's existing building is under a cloud on the first date
    s1 = summary(cli, D1, d1.write(world / "d1.tif"))
    assert s1["previous_date"] is None and s1["changes"] == 0 and s1["detections"] == 15

    d2 = buildings(shift=(1, -1))  # every existing building moved by one pixel: misregistration
    for parcel in (A, B, C, E, H, I):
        d2.put(*parcel, *NEW)
    d2.put(*D, 30, 30, 2, 2)  # a 2 m x 2 m blob
    d2.put(*J, 30, 30, 6, 6)  # 36 m2: a change, below the 50 m2 alert threshold
    d2.cloud(*E).cloud(*G)  # E's new building and G's old one are not seen on this date
    s2 = summary(cli, D2, d2.write(world / "d2.tif"))
    assert s2["previous_date"] == D1
    assert s2["alerts"] == {"created": 4, "updated": 0, "escalated": 0, "resolved": 0, "reverted": 0}

    alerts = alerts_by_parcel(engine)
    assert set(alerts) == {pid(*A), pid(*C), pid(*H), pid(*I)}  # not B (permit), D (blob), E/G (cloud), F, J
    for a in alerts.values():
        assert abs(a["new_area_m2"] - 400) / 400 < 0.05
        assert a["fraction"] == pytest.approx(a["new_area_m2"] / 2500)
        assert (a["status"], a["confidence"], str(a["first_seen"]), str(a["last_seen"])) == ("new", "probable", D2, D2)
    verdicts = dict(q(engine, "SELECT p.external_id, pc.verdict FROM parcel_changes pc JOIN parcels p "
                              "ON p.id = pc.parcel_id"))
    assert verdicts == {pid(*A): "alert", pid(*C): "alert", pid(*H): "alert", pid(*I): "alert",
                        pid(*B): "permitted", pid(*J): "below_threshold"}
    [(permit,)] = q(engine, "SELECT pm.permit_number FROM parcel_changes pc JOIN permits pm ON pm.id = pc.permit_id")
    assert permit == "B-valid"
    # every change polygon carries both dates
    assert set(q(engine, "SELECT observed_on::text, previous_on::text FROM changes")) == {(D2, D1)}
    assert sorted(deliveries(engine)) == sorted((pid(*p), "alert.created") for p in (A, C, H, I))

    # the same date again: nothing new
    again = summary(cli, D2, world / "d2.tif")
    assert again["alerts"] == {"created": 0, "updated": 0, "escalated": 0, "resolved": 0, "reverted": 0}
    assert again["scene_id"] == s2["scene_id"] and again["changes"] == s2["changes"]
    assert alerts_by_parcel(engine).keys() == alerts.keys()
    assert q(engine, "SELECT count(*) FROM alerts")[0][0] == 4
    assert q(engine, "SELECT count(*) FROM parcel_changes")[0][0] == 6
    assert len(deliveries(engine)) == 4

    # a permit for C issued after its construction was first seen resolves C's alert on the next date
    permits(cli, world / "permits2.csv", [(pid(*C), "C-late", "2024-02-20", "")])
    d3 = buildings()
    for parcel in (A, C, E, I):
        d3.put(*parcel, *NEW)  # H's construction is gone; I is under a cloud; E now visible
    d3.cloud(*I)
    s3 = summary(cli, D3, d3.write(world / "d3.tif"))
    assert s3["alerts"] == {"created": 1, "updated": 0, "escalated": 1, "resolved": 1, "reverted": 1}
    alerts = alerts_by_parcel(engine)
    assert (alerts[pid(*A)]["confidence"], str(alerts[pid(*A)]["last_seen"])) == ("confirmed", D3)
    assert alerts[pid(*C)]["status"] == "resolved" and "C-late" in alerts[pid(*C)]["note"]
    # H's construction is gone on a clear date: withdrawn, as a crop or ploughing would be
    assert (alerts[pid(*H)]["status"], alerts[pid(*H)]["confidence"], str(alerts[pid(*H)]["last_seen"])) == (
        "reverted", "probable", D2)
    assert (alerts[pid(*I)]["confidence"], str(alerts[pid(*I)]["last_seen"])) == ("probable", D2)
    # E was built under D2's cloud: compared with D1, the newest date that saw it clear
    e = alerts[pid(*E)]
    assert str(e["first_seen"]) == D3 and abs(e["new_area_m2"] - 400) / 400 < 0.05
    assert set(q(engine, "SELECT previous_on::text FROM changes WHERE observed_on = :d", d=D3)) == {(D1,)}
    # G's building, hidden on D2, is not new on D3 (nor F's, hidden on D1, on D2)
    assert pid(*G) not in alerts and pid(*F) not in alerts
    assert sorted(deliveries(engine)[4:]) == sorted([(pid(*A), "alert.escalated"), (pid(*C), "alert.resolved"),
                                                     (pid(*E), "alert.created"), (pid(*H), "alert.reverted")])
    assert len(summary(cli, D3, world / "d3.tif")["alert_ids"]) == 0
    assert len(deliveries(engine)) == 8


def test_a_later_date_updates_the_open_alert(world, cli, engine):
    summary(cli, D1, buildings().write(world / "d1.tif"))
    summary(cli, D2, buildings().put(*A, *NEW).write(world / "d2.tif"))
    first = alerts_by_parcel(engine)[pid(*A)]
    s3 = summary(cli, D3, buildings().put(*A, *NEW).put(*A, 25, 2, 20, 10).write(world / "d3.tif"))
    assert s3["alerts"] == {"created": 0, "updated": 1, "escalated": 1, "resolved": 0, "reverted": 0}
    later = alerts_by_parcel(engine)
    assert list(later) == [pid(*A)] and later[pid(*A)]["id"] == first["id"]
    a = later[pid(*A)]
    assert abs(a["new_area_m2"] - 600) / 600 < 0.05
    assert (str(a["first_seen"]), str(a["last_seen"]), a["confidence"]) == (D2, D3, "confirmed")


def test_expired_permit_and_fraction_threshold(world, cli, engine):
    permits(cli, world / "p.csv", [(pid(*A), "old", "2023-01-01", "2024-02-09")])
    summary(cli, D1, buildings().write(world / "d1.tif"))
    d2 = buildings().put(*A, *NEW).put(*B, 30, 30, 10, 10)
    s2 = summary(cli, D2, d2.write(world / "d2.tif"))
    assert set(alerts_by_parcel(engine)) == {pid(*A), pid(*B)}  # the permit expired the day before
    # with a 10 % fraction required, B's 100 m2 on 2500 m2 (4 %) is below the threshold
    env = {**ENV, "MONITOR_ALERT_MIN_FRACTION": "0.1"}
    cli("alerts", "dismiss", str(alerts_by_parcel(engine)[pid(*B)]["id"]), "--note", "shed", env=env)
    cli("detections", "import", "--area", "ba", "--date", D2, world / "d2.tif", env=env)
    assert dict(q(engine, "SELECT p.external_id, pc.verdict FROM parcel_changes pc JOIN parcels p "
                          "ON p.id = pc.parcel_id")) == {pid(*A): "alert", pid(*B): "below_threshold"}
    assert s2["alerts"]["created"] == 2


def test_dismissed_alert_is_not_raised_again_for_the_same_date(world, cli, engine):
    summary(cli, D1, buildings().write(world / "d1.tif"))
    summary(cli, D2, buildings().put(*A, *NEW).write(world / "d2.tif"))
    alert = alerts_by_parcel(engine)[pid(*A)]
    cli("alerts", "dismiss", str(alert["id"]), "--note", "a greenhouse")
    assert summary(cli, D2, world / "d2.tif")["alerts"]["created"] == 0
    rows = alerts_by_parcel(engine)
    assert rows[pid(*A)]["status"] == "dismissed" and q(engine, "SELECT count(*) FROM alerts")[0][0] == 1
    assert q(engine, "SELECT alert_id FROM parcel_changes")[0][0] == alert["id"]


def _reproject_to(src_path, dst_path, crs: str, resampling):
    from rasterio.warp import calculate_default_transform, reproject

    with rasterio.open(src_path) as src:
        mask = src.read(1)
        data = np.where(mask == NODATA, np.nan, 0.1 + 0.8 * mask).astype("float32")  # probabilities 0.1 / 0.9
        transform, w, h = calculate_default_transform(src.crs, crs, src.width, src.height, *src.bounds)
        out = np.full((h, w), np.nan, dtype="float32")
        reproject(data, out, src_transform=src.transform, src_crs=src.crs, dst_transform=transform, dst_crs=crs,
                  src_nodata=np.nan, dst_nodata=np.nan, resampling=resampling)
    with rasterio.open(dst_path, "w", driver="GTiff", width=w, height=h, count=1, dtype="float32", crs=crs,
                       transform=transform, nodata=np.nan) as dst:
        dst.write(out, 1)
    return dst_path


def test_probability_raster_in_another_crs(world, cli, engine):
    from rasterio.warp import Resampling

    summary(cli, D1, _reproject_to(buildings().write(world / "u1.tif"), world / "d1.tif", "EPSG:3857",
                                   Resampling.bilinear))
    d2 = buildings().put(*A, *NEW)
    s2 = summary(cli, D2, _reproject_to(d2.write(world / "u2.tif"), world / "d2.tif", "EPSG:3857",
                                        Resampling.bilinear), "--threshold", "0.5")
    assert s2["alerts"]["created"] == 1
    a = alerts_by_parcel(engine)[pid(*A)]
    assert abs(a["new_area_m2"] - 400) / 400 < 0.05


def test_indicators_and_history(world, cli, engine):
    summary(cli, D1, buildings().cloud(*F).write(world / "d1.tif"))
    summary(cli, D2, buildings().put(*A, *NEW).write(world / "d2.tif"))
    rows = json.loads(cli("history", "area", "ba", "--json").stdout)
    assert [r["observed_on"] for r in rows] == [D1, D2]
    # 15 then 16 buildings of 12 x 12 m (less the median filter's corners), plus 400 m2 on D2
    assert rows[0]["built_km2"] * 1e6 == pytest.approx(15 * 144, rel=0.03)
    assert rows[1]["built_km2"] * 1e6 == pytest.approx(16 * 144 + 400, rel=0.03)
    assert rows[1]["built_km2_change"] == pytest.approx(rows[1]["built_km2"] - rows[0]["built_km2"])
    assert rows[0]["clear_fraction"] == pytest.approx(1 - (54 * 54) / 40000, abs=1e-6)  # F's cloud is 54 m wide
    assert rows[1]["clear_fraction"] == pytest.approx(1.0)
    assert (rows[1]["changes"], rows[1]["alerts_raised"]) == (1, 1)
    hist = json.loads(cli("history", "parcel", pid(*A), "--json").stdout)
    assert [(h["observed_on"], h["verdict"]) for h in hist] == [(D1, None), (D2, "alert")]
    assert hist[0]["built_m2"] == pytest.approx(144, rel=0.03)
    assert hist[1]["built_m2"] == pytest.approx(544, rel=0.03) and abs(hist[1]["new_m2"] - 400) < 20
    assert [h["clear"] for h in json.loads(cli("history", "parcel", pid(*F), "--json").stdout)] == [False, True]
    table = cli("history", "parcel", pid(*A)).stdout
    assert D2 in table and "alert" in table
    assert "no parcel" in cli("history", "parcel", "nope", expect=2).stderr
    assert "no area" in cli("history", "area", "nope", expect=2).stderr


@pytest.mark.parametrize("problem", ["missing", "not_raster", "no_crs", "values", "outside", "date", "threshold",
                                     "area"])
def test_import_bad_input(world, cli, engine, problem):
    good = buildings().write(world / "good.tif")
    args = ["detections", "import", "--area", "ba", "--date", D1, good]
    if problem == "missing":
        args[-1] = world / "nope.tif"
    elif problem == "not_raster":
        (world / "x.tif").write_text("not a tiff")
        args[-1] = world / "x.tif"
    elif problem == "no_crs":
        with rasterio.open(world / "nocrs.tif", "w", driver="GTiff", width=4, height=4, count=1, dtype="uint8") as d:
            d.write(np.zeros((4, 4), "uint8"), 1)
        args[-1] = world / "nocrs.tif"
    elif problem == "values":
        c = Canvas()
        c.a[:] = 7
        args[-1] = c.write(world / "sevens.tif")
    elif problem == "outside":
        with rasterio.open(world / "far.tif", "w", driver="GTiff", width=10, height=10, count=1, dtype="uint8",
                           crs=f"EPSG:{EPSG}", transform=from_origin(X0 + 5000, Y0, 1, 1)) as d:
            d.write(np.ones((10, 10), "uint8"), 1)
        args[-1] = world / "far.tif"
    elif problem == "date":
        args[5] = "2024-13-01"
    elif problem == "threshold":
        args += ["--threshold", "1.5"]
    elif problem == "area":
        args[3] = "nowhere"
    err = cli(*args, expect=2).stderr
    assert "error:" in err
    expected = {"missing": "nope.tif", "not_raster": "x.tif", "no_crs": "CRS", "values": "0/1", "outside": "overlap",
                "date": "date", "threshold": "threshold", "area": "nowhere"}[problem]
    assert expected in err
    assert q(engine, "SELECT count(*) FROM scenes")[0][0] == 0
    assert q(engine, "SELECT count(*) FROM detections")[0][0] == 0


@pytest.mark.realdata
def test_buenos_aires_pair_through_diff_and_judge(cli, engine, shared_data, tmp_path):
    ba = shared_data / "buenos_aires_lots"
    masks = []
    for name in ("before", "after"):
        with rasterio.open(ba / f"{name}.tif") as src:
            rgb = src.read([1, 2, 3]).astype("float64").mean(axis=0)
            profile = dict(driver="GTiff", width=src.width, height=src.height, count=1, dtype="uint8", crs=src.crs,
                           transform=src.transform)
        mask = (rgb > np.percentile(rgb, 90)).astype("uint8")  # bright roofs and pavement: a simple rule
        path = tmp_path / f"{name}_mask.tif"
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(mask, 1)
        masks.append(path)
        bounds = src.bounds
    area = write(tmp_path / "area.gpkg", [box(*bounds)], [{"name": "ba"}], f"EPSG:{EPSG}", driver="GPKG")
    cli("areas", "add", "ba", "--geometry", area, "--provider", "local")
    # 2 of the 159 lots lie beyond the imagery
    cli("parcels", "import", ba / "lots.shp", "--area", "ba", "--id-field", "gid", "--allow-outside")
    env = {"MONITOR_MIN_REGION_M2": "200"}  # two 10 m pixels
    cli("detections", "import", "--area", "ba", "--date", "2017-01-01", masks[0], env=env)
    out = json.loads(cli("detections", "import", "--area", "ba", "--date", "2018-01-01", masks[1], "--json",
                         env=env).stdout)
    assert out["detections"] > 10 and out["changes"] > 0
    outside = q(engine, "SELECT count(*) FROM changes c JOIN areas a ON a.id = c.area_id WHERE "
                        "ST_Area(ST_Transform(ST_Difference(c.geom, a.footprint), a.utm_epsg)) > 0.01")[0][0]
    assert outside == 0
    [(n_changes, bad_area)] = q(engine, "SELECT count(*), count(*) FILTER (WHERE area_m2 < 20) FROM changes")
    assert n_changes == out["changes"] and bad_area == 0
    judged = q(engine, "SELECT count(DISTINCT parcel_id) FROM parcel_changes")[0][0]
    assert judged > 0
    assert q(engine, "SELECT count(*) FROM alerts")[0][0] == out["alerts"]["created"]
    if out["alerts"]["created"]:
        listing = json.loads(cli("alerts", "list", "--area", "ba", "--format", "geojson").stdout)
        assert len(listing["features"]) == out["alerts"]["created"]


def test_change_model_polygons_and_metrics(world, cli, engine, settings):
    from prometheus_client import CollectorRegistry

    from monitor import change
    from monitor.db.tables import Area, Scene
    from monitor.metrics import Metrics
    from monitor.settings import Settings

    s = Settings(**{**settings.model_dump(), "shift_tolerance_m": 1.5, "min_region_m2": 20, "median_filter_px": 3,
                    "min_change_m2": 20, "alert_min_m2": 50, "alert_min_fraction": 0})
    metrics = Metrics(CollectorRegistry())
    with Session(engine, expire_on_commit=False) as session, session.begin():
        area = session.scalar(sa.select(Area))
        for day, canvas in ((dt.date(2024, 1, 10), buildings()),
                            (dt.date(2024, 2, 10), buildings().put(*A, *NEW).cloud(*C))):
            out = change.import_detections(session, area, day, canvas.write(world / f"{day}.tif"), None, s,
                                           metrics=metrics).summary
        assert out["alerts"]["created"] == 1
        scene = session.get(Scene, out["scene_id"])
        corner = lambda i, j, x, y, w, h: box(X0 + i * 50 + x, Y0 + j * 50 + y, X0 + i * 50 + x + w,  # noqa: E731
                                              Y0 + j * 50 + y + h)
        polys = [(corner(*A, *NEW), 0.8),  # the same construction as the diff found: not counted twice
                 (corner(*B, *NEW), 0.9),  # only the change model sees this one
                 (corner(*C, *NEW), 0.9)]  # under the cloud of this date: dropped
        assert change.store_change_polygons(session, area, scene, polys, EPSG, "chg-1", metrics=metrics) == 2
        assert change.store_change_polygons(session, area, scene, polys, EPSG, "chg-1", metrics=metrics) == 2
        events = change.judge(session, area, scene, s, metrics=metrics)
        # B is new; A's alert has the same outline from both (areas come from the unfiltered masks): no update
        assert sorted((a.source, a.model_version, e) for a, e in events) == [("change_model", "chg-1", "alert.created")]
        ind = change.record_indicators(session, area, scene, settlement_km2=0.0123, metrics=metrics)
    alerts = alerts_by_parcel(engine)
    assert set(alerts) == {pid(*A), pid(*B)}
    assert abs(alerts[pid(*A)]["new_area_m2"] - 400) / 400 < 0.05
    assert abs(alerts[pid(*B)]["new_area_m2"] - 400) / 400 < 0.01
    assert q(engine, "SELECT count(*) FROM changes WHERE source = 'change_model'")[0][0] == 2
    sample = metrics.registry.get_sample_value
    assert sample("monitor_detections_total", {"area": "ba"}) == 16 + 16
    assert sample("monitor_changes_total", {"area": "ba"}) == 1 + 2 + 2
    assert sample("monitor_alert_events_total", {"area": "ba", "event": "created", "confidence": "probable"}) == 2
    assert sample("monitor_open_alerts", {"area": "ba"}) == 2
    assert sample("monitor_built_up_km2", {"area": "ba"}) == pytest.approx(ind.built_km2)
    assert sample("monitor_settlement_km2", {"area": "ba"}) == 0.0123
    # C is a corner parcel: its 54 m cloud reaches 2 m beyond the area on two sides
    assert ind.settlement_km2 == 0.0123 and ind.clear_fraction == pytest.approx(1 - 52 * 52 / 40000, abs=1e-6)


def test_alerts_wait_for_a_second_sighting(world, cli, engine):
    """MONITOR_ALERT_MIN_SIGHTINGS=2: new construction raises its alert only when a later clear date sees it
    again, dated from the first sighting; one seen once is dropped as flicker."""
    env = {**ENV, "MONITOR_ALERT_MIN_SIGHTINGS": "2"}

    def run(day, canvas, name):
        return json.loads(cli("detections", "import", "--area", "ba", "--date", day, canvas.write(world / name),
                              "--json", env=env).stdout)

    subscribe(engine)
    run(D1, buildings(), "d1.tif")
    s2 = run(D2, buildings().put(*A, *NEW).put(*B, *NEW).put(*H, *NEW), "d2.tif")
    assert s2["alerts"]["created"] == 0 and alerts_by_parcel(engine) == {}
    verdicts = dict(q(engine, "SELECT p.external_id, pc.verdict FROM parcel_changes pc JOIN parcels p "
                              "ON p.id = pc.parcel_id"))
    assert verdicts == {pid(*A): "unconfirmed", pid(*B): "unconfirmed", pid(*H): "unconfirmed"}

    # A seen again; H gone on a clear date (flicker); B under a cloud; I new on this date
    s3 = run(D3, buildings().put(*A, *NEW).put(*B, *NEW).cloud(*B).put(*I, *NEW), "d3.tif")
    assert s3["alerts"]["created"] == 1
    alerts = alerts_by_parcel(engine)
    assert list(alerts) == [pid(*A)]
    a = alerts[pid(*A)]
    assert (str(a["first_seen"]), str(a["last_seen"]), a["confidence"], a["status"]) == (D2, D3, "confirmed", "new")
    assert abs(a["new_area_m2"] - 400) / 400 < 0.05 and a["fraction"] == pytest.approx(a["new_area_m2"] / 2500)
    verdicts = dict(q(engine, "SELECT p.external_id || ' ' || pc.observed_on, pc.verdict FROM parcel_changes pc "
                              "JOIN parcels p ON p.id = pc.parcel_id"))
    assert verdicts == {f"{pid(*A)} {D2}": "alert", f"{pid(*B)} {D2}": "unconfirmed", f"{pid(*H)} {D2}": "vanished",
                        f"{pid(*I)} {D3}": "unconfirmed"}
    assert deliveries(engine) == [(pid(*A), "alert.created")]

    # B is seen again once clear, and dated from its first sighting; I too; nothing is raised twice
    d4 = "2024-04-10"
    s4 = run(d4, buildings().put(*A, *NEW).put(*B, *NEW).put(*I, *NEW), "d4.tif")
    assert s4["alerts"]["created"] == 2
    alerts = alerts_by_parcel(engine)
    assert {p: (str(a["first_seen"]), str(a["last_seen"])) for p, a in alerts.items()} == {
        pid(*A): (D2, d4), pid(*B): (D2, d4), pid(*I): (D3, d4)}
    assert pid(*H) not in alerts
    assert run(d4, buildings().put(*A, *NEW).put(*B, *NEW).put(*I, *NEW), "d4.tif")["alerts"]["created"] == 0
    assert q(engine, "SELECT count(*) FROM alerts")[0][0] == 3


# An alert's outline and the next date's construction on its parcel, from a pass over the real SpaceNet 7 tile:
# the second, cut by the parcel line, ends in a spike, and the union of the two is a polygon and a line.
SN7_ALERT = ("MULTIPOLYGON(((-117.16718196802468 33.121563052376736,-117.16731053362946 33.12152679907658,"
             "-117.16735327475112 33.121454580188754,-117.16737474795002 33.121472591716795,-117.16737500460977 "
             "33.121607894176734,-117.16718205347964 33.12160815313704,-117.16718196802468 33.121563052376736)))")
SN7_NEXT = ("MULTIPOLYGON(((-117.16731053362946 33.12152679907658,-117.16726758724123 33.121490775984725,"
            "-117.16731025996481 33.12138247645559,-117.16722450412611 33.12138259156651,-117.16722450412598 "
            "33.12138259149551,-117.16737457684353 33.12138239008366,-117.16737485061387 33.12152671267652,"
            "-117.16731053362946 33.12152679907658)))")


def test_an_alert_takes_in_the_next_dates_construction_as_polygons_only(world, cli, engine):
    from monitor.db.queries import sql

    imp(cli, D1, buildings().write(world / "d1.tif"))
    imp(cli, D2, buildings().put(*A, *NEW).write(world / "d2.tif"))
    (alert_id, parcel_id), = q(engine, "SELECT id, parcel_id FROM alerts")
    with Session(engine) as s, s.begin():
        s.execute(sa.text("UPDATE alerts SET geom = ST_GeomFromText(:g, 4326) WHERE id = :id"),
                  {"g": SN7_ALERT, "id": alert_id})
        s.execute(sa.text("CREATE TEMP TABLE _judge_parcels AS SELECT CAST(:p AS int) AS parcel_id, "
                          "ST_GeomFromText(:g, 4326) AS g, 2500.0 AS parcel_m2"), {"p": parcel_id, "g": SN7_NEXT})
        grown = s.execute(sa.text(sql("judge_update")), {"ids": [alert_id], "epsg": 32611, "day": dt.date(2024, 3, 10),
                                                          "replace": False}).all()
    assert [r[0] for r in grown] == [alert_id]
    (kind, area_m2), = q(engine, "SELECT GeometryType(geom), new_area_m2 FROM alerts")
    assert kind == "MULTIPOLYGON"
    (a, b), = q(engine, "SELECT ST_Area(ST_Transform(ST_GeomFromText(:a, 4326), 32611)), "
                        "ST_Area(ST_Transform(ST_GeomFromText(:b, 4326), 32611))", a=SN7_ALERT, b=SN7_NEXT)
    assert max(a, b) < area_m2 < a + b  # both outlines, their overlap once
