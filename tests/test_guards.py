"""Real-imagery guards: areas measured without bias, minimums in pixels of the scene, unusable and
suspect dates, models of another resolution refused, and crops that come and go kept out of the
confirmed alerts."""

from __future__ import annotations

import datetime as dt
import json
import shutil

import numpy as np
import pytest
import rasterio
from affine import Affine
from prometheus_client import CollectorRegistry
from shapely.geometry import box

from monitor.db.engine import transaction
from monitor.db.tables import Area
from monitor.domain import resolution_fits
from monitor.errors import ModelMismatch
from monitor.imagery.service import fetch_scene, search_scenes
from monitor.metrics import Metrics
from monitor.pipeline import check_resolutions
from monitor.settings import Settings
from monitor.vectorize import polygonize
from tests.test_change import D1, NEW, A, B, C, buildings, pid, q, subscribe
from tests.test_change import world as world  # noqa: F401  (the fixture)
from tests.test_imagery_local import make_area

T10 = Affine(10.0, 0.0, 314000.0, 0.0, -10.0, 6184000.0)  # 10 m pixels


@pytest.mark.parametrize("side", [1, 2, 3, 4, 5])
def test_blocks_of_one_to_five_pixels_measure_their_true_area(side):
    """The median filter decides what is noise; a kept block keeps its whole outline."""
    prob = np.zeros((40, 40), dtype="float32")
    prob[10:10 + side, 20:20 + side] = 0.9
    settings = Settings(_env_file=None)
    polys = polygonize(prob, T10, threshold=0.5, median_px=3, min_area_m2=settings.min_area_m2("region", 10.0))
    if side < 3:  # a 3-pixel median filter removes 1 x 1 and 2 x 2 blocks: noise at 10 m
        assert polys == []
    else:
        [(poly, _mean)] = polys
        assert poly.area == pytest.approx(side * side * 100.0, abs=1e-6)  # 3 x 3 pixels: 900 m2, not 500
        assert poly.bounds == pytest.approx((314200.0, 6184000.0 - 100 - side * 10, 314200.0 + side * 10,
                                             6184000.0 - 100))


def test_minimum_areas_follow_the_scene_pixels():
    s = Settings(_env_file=None)
    # at 10 m the m2 defaults were below one pixel: three pixels now
    assert (s.min_area_m2("region", 10), s.min_area_m2("change", 10), s.min_area_m2("alert", 10)) == (300, 300, 300)
    # at 2 m (the demo world) and 1 m the m2 floors still hold
    assert (s.min_area_m2("region", 2), s.min_area_m2("alert", 2), s.min_area_m2("alert", 1)) == (20, 50, 50)
    s = Settings(_env_file=None, alert_min_px=10, min_region_m2=500)
    assert (s.min_area_m2("alert", 4), s.min_area_m2("region", 10)) == (160, 500)


class _Model:
    def __init__(self, resolution_m):
        self.meta, self.version, self.path = {"resolution_m": resolution_m}, "seg-1", "/models/seg-1"


def test_a_model_of_another_resolution_is_refused():
    assert resolution_fits(10, 10) and resolution_fits(10, 14.9) and resolution_fits(2, 2.5)
    assert not resolution_fits(2, 10) and not resolution_fits(10, 4) and resolution_fits(None, 10)
    check_resolutions({"segmenter": _Model(10.0), "change": None}, 10.0, "ba")
    with pytest.raises(ModelMismatch) as e:
        check_resolutions({"segmenter": _Model(2.0)}, 10.0, "ba")
    assert "trained on 2 m pixels" in str(e.value) and "10 m pixels" in str(e.value)
    assert "--allow-resolution-mismatch" in str(e.value)


@pytest.mark.realdata
def test_nan_and_constant_dates_are_skipped_never_baseline(engine, settings, shared_data, tmp_path):
    """An all-NaN float GeoTIFF between two copies of the real Buenos Aires scene: skipped, with the reason."""
    drops = tmp_path / "drops"
    drops.mkdir()
    src = shared_data / "buenos_aires_lots" / "after.tif"
    shutil.copy(src, drops / "ba_20180101.tif")
    shutil.copy(src, drops / "ba_20180301.tif")
    with rasterio.open(src) as ds:
        profile = {**ds.profile, "dtype": "float32", "nodata": None, "count": 4}
        bounds = ds.bounds
    with rasterio.open(drops / "ba_20180201.tif", "w", **profile) as dst:
        dst.write(np.full((4, profile["height"], profile["width"]), np.nan, dtype="float32"))
    with rasterio.open(drops / "ba_20180215.tif", "w", **{**profile, "dtype": "uint16"}) as dst:
        dst.write(np.full((4, profile["height"], profile["width"]), 1200, dtype="uint16"))
    area_utm = box(bounds.left + 300, bounds.bottom + 300, bounds.right - 300, bounds.top - 300)
    area_id = make_area(engine, area_utm=area_utm, sources={"local": str(drops)}, max_cloud=100)
    with transaction(engine) as s:
        s.get(Area, area_id).band_order = ["B04", "B03", "B02", "-"]
        new = search_scenes(s, s.get(Area, area_id), settings, Metrics(), since=dt.date(2017, 1, 1))
    metrics = Metrics(CollectorRegistry())
    done = {x.product_id: fetch_scene(engine, x.id, settings, metrics) for x in new}
    assert {k: v.status for k, v in done.items()} == {
        "ba_20180101.tif": "prepared", "ba_20180201.tif": "skipped", "ba_20180215.tif": "skipped",
        "ba_20180301.tif": "prepared"}
    assert done["ba_20180201.tif"].status_reason == ("unusable: no valid pixel over the area "
                                                     "(all nodata, NaN or masked)")
    assert done["ba_20180215.tif"].status_reason == ("unusable: every band has one value everywhere over the "
                                                     "area (B02=1200, B03=1200, B04=1200)")
    assert metrics.registry.get_sample_value("monitor_scenes_skipped_total",
                                             {"area": "ba", "provider": "local", "reason": "unusable"}) == 2
    assert not any(p.name.startswith("20180201") for p in (settings.data_dir / "scenes" / str(area_id)).iterdir())


def _imp(cli, day, path, **env):
    return json.loads(cli("detections", "import", "--area", "ba", "--date", day, path, "--json",
                          env={"MONITOR_SHIFT_TOLERANCE_M": "1.5", "MONITOR_MIN_CHANGE_M2": "20",
                               "MONITOR_ALERT_MIN_M2": "50", **env}).stdout)


def test_a_date_where_much_of_the_area_changes_is_suspect(world, cli, engine):  # noqa: F811
    _imp(cli, D1, buildings().write(world / "d1.tif"))
    everywhere = buildings()
    for i in range(4):
        for j in range(4):
            everywhere.put(i, j, 20, 20, 28, 28)  # 16 x 784 m2 = 31 % of the area "new": a season, not building
    out = _imp(cli, "2024-02-10", everywhere.write(world / "d2.tif"))
    assert out["suspect"].startswith("suspect: 31% of the area's clear land changed at once")
    assert sum(out["alerts"].values()) == 0 and q(engine, "SELECT count(*) FROM alerts")[0][0] == 0
    assert q(engine, "SELECT status FROM scenes WHERE id = :i", i=out["scene_id"])[0][0] == "suspect"
    # the next date is compared with the first, never with the suspect one
    later = _imp(cli, "2024-03-10", buildings().put(*A, *NEW).write(world / "d3.tif"))
    assert later["previous_date"] == D1 and later["alerts"]["created"] == 1
    # with a higher limit the same date is an ordinary one
    again = _imp(cli, "2024-02-10", world / "d2.tif", MONITOR_MAX_CHANGE_SHARE="0.5")
    assert again["suspect"] is None and again["alerts"]["created"] >= 15
    assert q(engine, "SELECT count(*) FROM alerts")[0][0] == 16


def test_a_field_that_comes_and_goes_is_never_confirmed(world, cli, engine):  # noqa: F811
    """A field green, brown, green (detected as built when green) beside a building that appears and stays."""
    subscribe(engine)  # a subscriber to probable alerts
    cli("subscriptions", "add", "http://127.0.0.1:9/confirmed-only", "--secret", "s",  # the default: confirmed
        env={"MONITOR_ALLOW_PRIVATE_URLS": "true"})
    field = (10, 30, 30, 15)  # 450 m2 of parcel B
    days = ["2024-01-10", "2024-02-10", "2024-02-20", "2024-03-15", "2024-04-10"]
    frames = [buildings(),
              buildings().put(*B, *field).put(*C, *NEW),  # green field; a new house
              buildings().put(*C, *NEW),  # the field ploughed: brown
              buildings().put(*B, *field).put(*C, *NEW),  # green again
              buildings().put(*C, *NEW)]
    for k, (day, frame) in enumerate(zip(days, frames)):
        _imp(cli, day, frame.write(world / f"s{k}.tif"))
    rows = q(engine, "SELECT p.external_id, a.status, a.confidence, a.first_seen::text FROM alerts a "
                     "JOIN parcels p ON p.id = a.parcel_id ORDER BY a.id")
    # the field green again is not new: it was seen "built" on an earlier date (the diff remembers)
    assert rows == [(pid(*B), "reverted", "probable", days[1]), (pid(*C), "new", "confirmed", days[1])]
    # the house was seen again 10 days later (too soon to confirm), then 34 days later: confirmed
    by_sub = q(engine, "SELECT s.url, p.external_id, d.event FROM deliveries d JOIN subscriptions s ON "
                       "s.id = d.subscription_id JOIN alerts a ON a.id = d.alert_id JOIN parcels p ON "
                       "p.id = a.parcel_id ORDER BY d.id")
    confirmed_only = [(parcel, event) for url, parcel, event in by_sub if url.endswith("confirmed-only")]
    assert confirmed_only == [(pid(*C), "alert.escalated")]
    probable = [(parcel, event) for url, parcel, event in by_sub if url.endswith("/hook")]
    assert probable == [(pid(*B), "alert.created"), (pid(*C), "alert.created"), (pid(*B), "alert.reverted"),
                        (pid(*C), "alert.escalated")]
    assert q(engine, "SELECT count(*) FROM scenes WHERE status = 'processed'")[0][0] == 5


@pytest.mark.realdata
def test_the_real_pair_with_a_model_of_another_resolution(cli, engine, shared_data, tmp_path):
    """The Buenos Aires pair (10 m) and a 1 m segmenter: refused, naming both, until the area allows it."""
    from tests.ml_synthetic import saved_model

    drops = tmp_path / "drops"
    drops.mkdir()
    src = shared_data / "buenos_aires_lots"
    shutil.copy(src / "before.tif", drops / "ba_20170101.tif")
    shutil.copy(src / "after.tif", drops / "ba_20190101.tif")
    with rasterio.open(src / "before.tif") as ds:
        b = ds.bounds
    area = tmp_path / "area.geojson"
    from tests.vectors import write
    write(area, [box(b.left + 300, b.bottom + 300, b.right - 300, b.top - 300)], [{"name": "ba"}], "EPSG:32721")
    model = saved_model(tmp_path / "seg1m", channels=3, bands=["B04", "B03", "B02"], per_image=True)
    cli("areas", "add", "ba", "--geometry", area, "--provider", "local", "--source", f"local={drops}",
        "--band-order", "B04,B03,B02,-", "--max-cloud", "50")
    cli("areas", "configure", "ba", "--segmenter-model", model)
    out = json.loads(cli("process", "--area", "ba", expect=1).stdout)
    assert out["processed"] == 0 and len(out["errors"]) == 2
    assert all("trained on 1 m pixels and the scene has 10 m pixels" in e for e in out["errors"])
    shown = json.loads(cli("areas", "configure", "ba", "--allow-resolution-mismatch").stdout)
    assert shown["allow_resolution_mismatch"] is True and shown["band_order"] == ["B04", "B03", "B02", "-"]
    q_ = "UPDATE scenes SET next_attempt_at = NULL"
    with engine.begin() as conn:
        conn.exec_driver_sql(q_)
    out = json.loads(cli("process", "--area", "ba").stdout)
    assert out["processed"] == 2 and out["errors"] == []


def _rule_change_model(folder):
    """A real Keras change model whose weights encode a rule: B02 brighter by 800 than before is change."""
    from monitor.ml.modelstore import save_model
    from monitor.ml.runtime import keras

    k = keras()
    inputs = k.Input((None, None, 2))
    outputs = k.layers.Conv2D(1, 1, activation="sigmoid")(inputs)
    model = k.Model(inputs, outputs)
    model.layers[-1].set_weights([np.array([-2.0, 2.0], "float32").reshape(1, 1, 2, 1), np.full(1, -4.0, "float32")])
    meta = {"kind": "change", "version": "change-rule", "bands": ["B02"], "tile": 32, "threshold": 0.5,
            "normalization": {"mean": [1000.0, 1000.0], "std": [100.0, 100.0]}, "resolution_m": 10.0,
            "architecture": {"depth": 0}}
    return save_model(model, folder, meta)


def test_a_change_model_field_that_comes_and_goes_is_never_confirmed(cli, engine, tmp_path):
    """The same season through the pipeline with a change model alone: its alerts are seen again by
    running it from each alert's baseline to the new date."""
    from tests.vectors import squares, write

    x0, y0 = 314000.0, 6183400.0
    area = write(tmp_path / "area.gpkg", [box(x0, y0, x0 + 200, y0 + 200)], [{"name": "ba"}], "EPSG:32721",
                 driver="GPKG")
    parcels = write(tmp_path / "parcels.gpkg", squares(x0, y0, 4, 50),
                    [{"parcel_id": f"P{k % 4}{k // 4}"} for k in range(16)], "EPSG:32721", driver="GPKG")
    drops = tmp_path / "drops"
    drops.mkdir()
    cli("areas", "add", "ba", "--geometry", area, "--provider", "local", "--source", f"local={drops}",
        "--resolution", "10")
    cli("parcels", "import", parcels, "--area", "ba")
    cli("areas", "configure", "ba", "--change-model", _rule_change_model(tmp_path / "rule"))
    private = {"MONITOR_ALLOW_PRIVATE_URLS": "true"}  # the receivers are on this machine
    cli("subscriptions", "add", "http://127.0.0.1:9/confirmed-only", "--secret", "s", env=private)
    cli("subscriptions", "add", "http://127.0.0.1:9/hook", "--secret", "s", "--min-confidence", "probable", env=private)

    def scene(day: str, field: bool, house: bool) -> None:
        # 600 m x 600 m at 10 m from (x0 - 200, y0 + 400); a little texture (a constant scene is no imagery)
        img = (1000 + np.random.default_rng(len(day)).integers(-20, 20, (60, 60))).astype("uint16")
        rows = lambda ym, h: slice(int((y0 + 400 - ym - h) / 10), int((y0 + 400 - ym) / 10))  # noqa: E731
        cols = lambda xm, w: slice(int((xm - x0 + 200) / 10), int((xm - x0 + 200 + w) / 10))  # noqa: E731
        if field:  # parcel P10 (50..100 m east), 40 m x 30 m
            img[rows(y0 + 10, 30), cols(x0 + 55, 40)] = 1800
        if house:  # parcel P20, 30 m x 30 m
            img[rows(y0 + 10, 30), cols(x0 + 110, 30)] = 1800
        profile = dict(driver="GTiff", width=60, height=60, count=1, dtype="uint16", crs="EPSG:32721",
                       transform=Affine(10, 0, x0 - 200, 0, -10, y0 + 400))
        with rasterio.open(drops / f"ba_{day.replace('-', '')}.tif", "w", **profile) as dst:
            dst.write(img, 1)
            dst.set_band_description(1, "B02")
        out = json.loads(cli("process", "--area", "ba").stdout)
        assert out["processed"] == 1 and out["errors"] == [], out

    days = ["2024-01-10", "2024-02-10", "2024-02-20", "2024-03-15", "2024-04-10"]
    for day, field, house in zip(days, (False, True, False, True, False), (False, True, True, True, True)):
        scene(day, field, house)
    rows = q(engine, "SELECT p.external_id, a.status, a.confidence, a.first_seen::text, a.source FROM alerts a "
                     "JOIN parcels p ON p.id = a.parcel_id ORDER BY a.id")
    assert rows == [("P10", "reverted", "probable", days[1], "change_model"),
                    ("P20", "new", "confirmed", days[1], "change_model"),
                    ("P10", "reverted", "probable", days[3], "change_model")]
    by_sub = q(engine, "SELECT s.url, p.external_id, d.event FROM deliveries d JOIN subscriptions s ON "
                       "s.id = d.subscription_id JOIN alerts a ON a.id = d.alert_id JOIN parcels p ON "
                       "p.id = a.parcel_id ORDER BY d.id")
    assert [(p, e) for url, p, e in by_sub if url.endswith("confirmed-only")] == [("P20", "alert.escalated")]


def _rule_segmenter(folder):
    """A real Keras segmenter whose weights encode a rule: B03 over 1500 is building."""
    from monitor.ml.modelstore import save_model
    from monitor.ml.runtime import keras

    k = keras()
    inputs = k.Input((None, None, 1))
    model = k.Model(inputs, k.layers.Conv2D(1, 1, activation="sigmoid")(inputs))
    model.layers[-1].set_weights([np.full((1, 1, 1, 1), 4.0, "float32"), np.zeros(1, "float32")])
    meta = {"kind": "segmenter", "version": "segmenter-rule", "bands": ["B03"], "tile": 32, "threshold": 0.5,
            "normalization": {"mean": [1500.0], "std": [100.0]}, "resolution_m": 10.0, "architecture": {"depth": 0}}
    return save_model(model, folder, meta)


def test_a_change_model_that_needs_a_building_keeps_the_house_not_the_field(cli, engine, tmp_path):
    """With MONITOR_CHANGE_NEEDS_BUILDING an area's change model raises alerts only where its segmenter
    sees a building on the date: a field that brightened is dropped, a new house kept, and a building
    there on both dates stays no alert. Without it, the change model and the diff each raise theirs."""
    from tests.vectors import squares, write

    x0, y0 = 314000.0, 6183400.0
    area = write(tmp_path / "area.gpkg", [box(x0, y0, x0 + 200, y0 + 200)], [{"name": "a"}], "EPSG:32721",
                 driver="GPKG")
    parcels = write(tmp_path / "parcels.gpkg", squares(x0, y0, 4, 50),
                    [{"parcel_id": f"P{k % 4}{k // 4}"} for k in range(16)], "EPSG:32721", driver="GPKG")
    change_model, segmenter = _rule_change_model(tmp_path / "change"), _rule_segmenter(tmp_path / "segmenter")
    drops = tmp_path / "drops"
    drops.mkdir()
    for name in ("gated", "union"):
        cli("areas", "add", name, "--geometry", area, "--provider", "local", "--source", f"local={drops}",
            "--resolution", "10")
        cli("parcels", "import", parcels, "--area", name)
        cli("areas", "configure", name, "--change-model", change_model, "--segmenter-model", segmenter)
    rows = slice(int((400 - 40) / 10), int((400 - 10) / 10))  # 10..40 m north of y0
    cols = {p: slice(int((200 + 55 * k) / 10), int((200 + 55 * k + 30) / 10)) for k, p in enumerate(("P00", "P10", "P20", "P30"))}
    for day, after in (("2024-01-10", False), ("2024-02-10", True)):
        img = (1000 + np.random.default_rng(len(day)).integers(-20, 20, (2, 60, 60))).astype("uint16")
        img[1, rows, cols["P30"]] = 1800  # a building on both dates
        if after:
            img[0, rows, cols["P10"]] = 1800  # a field that brightened
            img[:, rows, cols["P20"]] = 1800  # a new house
        profile = dict(driver="GTiff", width=60, height=60, count=2, dtype="uint16", crs="EPSG:32721",
                       transform=Affine(10, 0, x0 - 200, 0, -10, y0 + 400))
        with rasterio.open(drops / f"a_{day.replace('-', '')}.tif", "w", **profile) as dst:
            dst.write(img)
            dst.descriptions = ("B02", "B03")
        for name, env in (("gated", {"MONITOR_CHANGE_NEEDS_BUILDING": "true"}), ("union", {})):
            out = json.loads(cli("process", "--area", name, env=env).stdout)
            assert out["processed"] == 1 and out["errors"] == [], out
    alerted = q(engine, "SELECT ar.name, p.external_id, a.source FROM alerts a JOIN parcels p ON "
                        "p.id = a.parcel_id JOIN areas ar ON ar.id = a.area_id ORDER BY 1, 2")
    assert [r for r in alerted if r[0] == "gated"] == [("gated", "P20", "change_model")]
    assert [r[:2] for r in alerted if r[0] == "union"] == [("union", "P10"), ("union", "P20")]

def test_a_building_missed_on_one_date_is_not_new_when_seen_again(world, cli, engine):  # noqa: F811
    """The segmenter misses an old building on one date (no cloud: a miss); found again, it is no new one."""
    _imp(cli, D1, buildings().write(world / "m1.tif"))
    missed = buildings()
    missed.put(*A, 5, 5, 12, 12, value=0)  # A's old building not detected on this date
    _imp(cli, "2024-02-10", missed.write(world / "m2.tif"))
    again = _imp(cli, "2024-03-10", buildings().put(*C, *NEW).write(world / "m3.tif"))
    assert again["previous_date"] == "2024-02-10"
    # only C's building is new: A's was seen on the first date
    assert again["alerts"]["created"] == 1
    assert q(engine, "SELECT p.external_id FROM alerts a JOIN parcels p ON p.id = a.parcel_id") == [(pid(*C),)]


@pytest.mark.realdata
def test_scenes_that_failed_for_want_of_a_band_order_are_fetched_once_it_is_given(cli, shared_data, tmp_path):
    from tests.vectors import write

    drops = tmp_path / "drops"
    drops.mkdir()
    src = shared_data / "buenos_aires_lots"
    shutil.copy(src / "before.tif", drops / "ba_20170101.tif")
    with rasterio.open(src / "before.tif") as ds:
        b = ds.bounds
    area = write(tmp_path / "area.geojson", [box(b.left + 300, b.bottom + 300, b.right - 300, b.top - 300)],
                 [{"name": "ba"}], "EPSG:32721")
    cli("areas", "add", "ba", "--geometry", area, "--provider", "local", "--source", f"local={drops}")
    cli("scenes", "search", "--area", "ba")
    cli("scenes", "fetch", "--area", "ba", expect=None)
    listed = json.loads(cli("scenes", "list", "--area", "ba", "--json").stdout)
    assert [s["status"] for s in listed] == ["failed"] and "--band-order" in listed[0]["status_reason"]
    cli("areas", "configure", "ba", "--band-order", "B04,B03,B02,B08")
    cli("scenes", "fetch", "--area", "ba", expect=None)
    assert [s["status"] for s in json.loads(cli("scenes", "list", "--area", "ba", "--json").stdout)] == ["prepared"]
