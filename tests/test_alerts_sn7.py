"""The SpaceNet 7 alert bench: its scoring against a hand-computed case, and the whole pipeline over
three months of a crop of the real tile (dates from the file names, EPSG:3857 onto UTM, alpha as the
clear mask, an RGB model fed red, green and blue by colour interpretation)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window
from sqlalchemy import select

from bench.alerts_sn7 import (
    Truth,
    bench_settings,
    months_between,
    pipeline_alerts,
    reference_alerts,
    rules,
    score,
)
from monitor.db.engine import transaction
from monitor.db.tables import Scene
from monitor.ml.modelstore import save_model
from monitor.ml.runtime import keras
from tests.sn7 import TILE, bright_is_built, crop_tile


def test_scoring_of_a_hand_computed_case():
    # seven parcels: a, b, c changed (3+ new-building pixels), d has 2 (not changed), e, f and g none;
    # e and f have nothing ever built, g only an old building
    parcels = {"a": {"new_px": 10}, "b": {"new_px": 3}, "c": {"new_px": 7}, "d": {"new_px": 2, "built_px": 9},
               "e": {"new_px": 0, "built_px": 0}, "f": {"new_px": 0, "built_px": 0}, "g": {"new_px": 0, "built_px": 5}}
    # alerts on a (right), c (right), d, e and g (wrong); "z" is outside the scored part and ignored
    alerts = {"a": "2018-10", "c": "2019-07", "d": "2019-01", "e": "2018-04", "g": "2019-04", "z": "2018-04"}
    buildings = [
        {"first_month": "2018-07", "parcels": ["a"]},       # alerted 2018-10: 3 months
        {"first_month": "2019-01", "parcels": ["b", "c"]},  # c alerted 2019-07: 6 months
        {"first_month": "2019-04", "parcels": ["b"]},       # missed
        {"first_month": "2019-01", "parcels": ["d", "a"]},  # first alert on its parcels 2018-10: -3 months
    ]
    r = score(parcels, buildings, alerts, min_px=3, area_km2=0.5)
    assert r == {"parcels": 7, "changed": 3, "alerted": 5, "true_alerts": 2, "precision": 0.4, "recall": 0.6667,
                 "false_alerts_per_km2": 6.0, "false_alerts_unbuilt": 1, "false_alerts_beside_new": 1,
                 "false_alerts_old_building": 1, "new_buildings": 4, "building_recall": 0.75,
                 "median_delay_months": 3}
    assert months_between("2018-10", "2020-01") == 15
    assert score(parcels, [], {}, min_px=3, area_km2=0.5)["precision"] == 0.0



def test_reported_rules_carry_the_environment_settings(tmp_path, monkeypatch):
    # the two rules of the SpaceNet 7 measurement, set in the environment, are reported with the scores
    monkeypatch.setenv("MONITOR_CHANGE_MIN_Z", "1")
    monkeypatch.setenv("MONITOR_ALERT_MIN_SIGHTINGS", "2")
    reported = rules(bench_settings(tmp_path, 3))
    assert reported["change_min_z"] == 1.0
    assert reported["alert_min_sightings"] == 2
    assert reported["alert_min_m2"] == pytest.approx(48.0)

@pytest.fixture
def rgb_rule_model(tmp_path):
    return bright_is_built(tmp_path / "rule", tile=64)


@pytest.mark.realdata
@pytest.mark.slow
def test_pipeline_over_three_months_of_a_crop(shared_data, engine, db_url, tmp_path, rgb_rule_model):
    months = ["2018-01", "2018-07", "2020-01"]
    src = crop_tile(shared_data / "spacenet7" / TILE, tmp_path / "tile", col=640, row=336, size=192, months=months,
                    alpha_zero={"2018-07": Window(0, 0, 96, 192)})  # no data over the west half in July
    truth = Truth(src, 25.0, "all")
    assert [m.month for m in truth.months] == months
    assert truth.grid.epsg == 32611 and truth.parcels and truth.buildings
    settings = bench_settings(tmp_path / "home", 3).model_copy(update={"database_url": db_url})
    alerts, confirmed, run = pipeline_alerts(engine, settings, truth, str(rgb_rule_model), tmp_path / "work")
    assert run == {"scenes": 3, "processed": 3, "errors": []}
    with transaction(engine) as s:
        scenes = s.scalars(select(Scene).order_by(Scene.acquired_at)).all()
        dates = [sc.acquired_at.date() for sc in scenes]
        files = [str(sc.file_path) for sc in scenes]
        clouds = [sc.cloud_cover for sc in scenes]
    assert dates == [dt.date(2018, 1, 1), dt.date(2018, 7, 1), dt.date(2020, 1, 1)]
    assert clouds[0] < 5 and clouds[2] < 5 and 40 < clouds[1] < 60  # alpha 0 over half of July's crop
    with rasterio.open(files[0]) as p:
        assert p.crs.to_epsg() == 32611 and p.res == (4.0, 4.0)
        assert p.descriptions == ("B02", "B03", "B04")  # blue, green, red by their Sentinel-2 names
        bands = p.read(masked=True)
    means = [float(b.mean()) for b in bands]
    assert means[2] > means[0] + 15  # red is brighter than blue on this tile: the bands were not swapped
    r = score(truth.parcels, truth.buildings, alerts, min_px=3, area_km2=truth.area_km2)
    assert r["alerted"] == len(alerts) > 0 and 0 <= r["precision"] <= 1 and r["changed"] > 0
    assert set(alerts.values()) <= {"2018-07", "2020-01"}  # the first month is the baseline
    assert set(confirmed) <= set(alerts) and set(confirmed.values()) <= {"2018-07"}  # seen again in 2020-01
    ref = score(truth.parcels, truth.buildings, reference_alerts(truth), min_px=3, area_km2=truth.area_km2)
    assert ref["alerted"] > 0 and ref["parcels"] == len(truth.cells)



def test_alerts_may_ask_more_new_area_than_makes_a_parcel_changed(tmp_path):
    # the truth counts a parcel changed at 3 pixels of 4 m (48 m2); the alert floor follows it unless given
    assert bench_settings(tmp_path, 3).min_area_m2("alert", 4.0) == pytest.approx(48.0)
    assert bench_settings(tmp_path, 3, 82.0).min_area_m2("alert", 4.0) == 82.0
    assert rules(bench_settings(tmp_path, 3, 82.0))["alert_min_m2"] == 82.0

@pytest.mark.realdata
def test_the_bench_leaves_its_parcel_grid_for_a_users_own_area(shared_data, tmp_path, capsys):
    import json

    from bench.alerts_sn7 import main

    src = crop_tile(shared_data / "spacenet7" / TILE, tmp_path / "tile", col=640, row=336, size=96,
                    months=["2018-01", "2020-01"])
    main(["--data", str(src), "--part", "all", "--out", str(tmp_path / "work")])  # the reference only
    grid = json.loads((tmp_path / "work" / "parcels.geojson").read_text())["features"]
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(grid) == printed["reference"]["parcels"] > 0
    assert len({f["properties"]["parcel_id"] for f in grid}) == len(grid)


@pytest.mark.realdata
def test_the_band_a_threshold_is_chosen_on_is_the_west_rows_of_the_model_split(shared_data, tmp_path):
    src = crop_tile(shared_data / "spacenet7" / TILE, tmp_path / "tile", col=640, row=336, size=96,
                    months=["2018-01", "2020-01"])
    truth = Truth(src, 25.0, "all")
    parcels, buildings, km2 = truth.scored(truth.where("band", (0, 40)))
    # rows 0 to 40 of 4 m are the top 160 m: cells whose centres lie 12.5 to 137.5 m down, 6 grid rows,
    # each as many cells as have their centre west of the east fifth
    west = {n for n, box in truth.cells.items() if box.centroid.x < truth.x_split}
    assert set(parcels) == {n for n in west if int(n[1:5]) < 6}
    assert km2 == pytest.approx(len(parcels) * 625 / 1e6)
    whole, _, _ = truth.scored(truth.where("all"))
    assert 0 < len(parcels) < len(whole) and all(set(b["parcels"]) & set(whole) for b in buildings)


@pytest.fixture
def rgb_change_rule_model(tmp_path):
    """A real Keras change model with a fixed rule: a pixel brighter after than before is change."""
    k = keras()
    inputs = k.Input((None, None, 6))
    outputs = k.layers.Conv2D(1, 1, activation="sigmoid")(inputs)
    model = k.Model(inputs, outputs)
    model.layers[-1].set_weights([np.array([-1, -1, -1, 1, 1, 1], "float32").reshape(1, 1, 6, 1) * 2,
                                  np.full(1, -1.0, "float32")])
    meta = {"kind": "change", "version": "change-rgb-rule", "bands": ["red", "green", "blue"],
            "normalization": {"mean": [71.0, 67.0, 46.0] * 2, "std": [32.0, 25.0, 21.0] * 2}, "tile": 64,
            "threshold": 0.5, "resolution_m": 4.0, "architecture": {"depth": 0}}
    return save_model(model, tmp_path / "change-rule", meta)


@pytest.mark.realdata
@pytest.mark.slow
def test_thresholds_are_chosen_on_the_band_and_scored_on_the_part(shared_data, db_url, tmp_path, capsys,
                                                                  monkeypatch, rgb_change_rule_model):
    import json

    from bench.alerts_sn7 import f1, main

    src = crop_tile(shared_data / "spacenet7" / TILE, tmp_path / "tile", col=640, row=336, size=96,
                    months=["2018-01", "2020-01"])
    meta_file = rgb_change_rule_model / "model.json"
    meta = json.loads(meta_file.read_text())
    meta["training"] = {"split": {"tile": {"validation_rows": [0, 60], "held_out_columns": [92, 115]}}}
    meta_file.write_text(json.dumps(meta))
    monkeypatch.setenv("DATABASE_URL", db_url)
    main(["--data", str(src), "--model", str(rgb_change_rule_model), "--part", "all", "--thresholds", "0.7,0.95",
          "--out", str(tmp_path / "work")])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    band, sweep = printed["choice"]["band"], printed["sweep"]
    assert [b["threshold"] for b in band] == [s["threshold"] for s in sweep] == [0.7, 0.95]
    assert printed["choice"]["rows"] == [0, 60]
    best = max(band, key=lambda b: (b["f1"], b["threshold"]))
    assert printed["choice"]["chosen"] == printed["model"]["threshold"] == best["threshold"]
    assert all(b["f1"] == f1(b) for b in band)
    chosen = next(s for s in sweep if s["threshold"] == best["threshold"])
    assert (printed["model"]["precision"], printed["model"]["recall"]) == (chosen["precision"], chosen["recall"])
    assert sweep[0]["alerted"] > sweep[1]["alerted"]  # a lower threshold alerts more parcels
    assert band[0]["alerted"] >= band[1]["alerted"] and band[0]["changed"] == band[1]["changed"]
    assert json.loads(meta_file.read_text())["threshold"] == 0.5  # the model itself is left as it was
    kept = json.loads((tmp_path / "work" / f"threshold-{best['threshold']}" / "model" / "model.json").read_text())
    assert kept["threshold"] == best["threshold"] and kept["version"] == meta["version"]


@pytest.mark.realdata
@pytest.mark.slow
def test_passes_share_the_probability_rasters_of_their_models(shared_data, db_url, tmp_path, capsys, monkeypatch,
                                                             rgb_change_rule_model):
    import json

    from bench.alerts_sn7 import main

    src = crop_tile(shared_data / "spacenet7" / TILE, tmp_path / "tile", col=640, row=336, size=96,
                    months=["2018-01", "2018-07", "2020-01"])
    meta_file = rgb_change_rule_model / "model.json"
    meta = json.loads(meta_file.read_text())
    meta["training"] = {"split": {"tile": {"validation_rows": [0, 60], "held_out_columns": [92, 115]}}}
    meta_file.write_text(json.dumps(meta))
    monkeypatch.setenv("DATABASE_URL", db_url)
    pool = tmp_path / "pool"

    def run(thresholds: str, out: str) -> dict:
        main(["--data", str(src), "--model", str(rgb_change_rule_model), "--part", "all", "--thresholds", thresholds,
              "--rasters", str(pool), "--out", str(tmp_path / out)])
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    def rasters(out: str, threshold: float) -> dict[str, int]:
        folder = tmp_path / out / f"threshold-{threshold}" / "home" / "data" / "probability" / "1"
        return {f.name: f.stat().st_ino for f in folder.glob("*.tif")}

    first = run("0.6,0.95", "first")
    pooled = {f.name: f.stat().st_ino for f in pool.glob("*.tif")}
    images = sorted(f.name for f in (src / "images").glob("*.tif"))  # in date order by their names
    assert json.loads((pool / "scenes.json").read_text()) == {str(i + 1): n for i, n in enumerate(images)}
    assert {"2_change_change-rgb-rule.tif", "3_change_change-rgb-rule.tif"} <= set(pooled)
    assert rasters("first", 0.6).items() <= pooled.items()  # the pool holds the very files the first pass made
    assert rasters("first", 0.95).items() <= pooled.items()  # and the second pass read them, made none again
    again = run("0.6", "again")
    assert {f.name: f.stat().st_ino for f in pool.glob("*.tif")} == pooled
    assert rasters("again", 0.6).items() <= pooled.items()
    swept = next(r for r in first["sweep"] if r["threshold"] == 0.6)
    assert (again["model"]["precision"], again["model"]["recall"], again["model"]["alerted"]) == (
        swept["precision"], swept["recall"], swept["alerted"])
    (pool / "scenes.json").write_text(json.dumps({"1": images[0], "2": images[2]}))
    with pytest.raises(SystemExit) as stop:
        run("0.6", "months")
    assert stop.value.code == 2 and f"--rasters {pool}: its rasters are of other months" in capsys.readouterr().err


def test_thresholds_need_the_rows_the_model_chose_its_own_on(tmp_path, rgb_change_rule_model, capsys):
    from bench.alerts_sn7 import band_rows

    with pytest.raises(SystemExit) as stop:
        band_rows(rgb_change_rule_model, "tile")
    assert stop.value.code == 2 and "model.json records no validation rows for tile" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["0.5,x", "0.5,1.5", ""])
def test_thresholds_that_are_not_numbers_between_0_and_1_exit_2(bad, capsys):
    from bench.alerts_sn7 import main

    with pytest.raises(SystemExit) as e:
        main(["--thresholds", bad, "--model", "m"])
    assert e.value.code == 2 and "--thresholds" in capsys.readouterr().err


def test_the_recall_rule_keeps_the_highest_threshold_that_reaches_the_recall_with_a_margin():
    from bench.alerts_sn7 import choose, required_recall

    def band(recall, precision):
        return {"recall": recall, "precision": precision, "changed": 44, "alerted": 0}

    on_band = {0.3: band(0.80, 0.30), 0.4: band(0.64, 0.45), 0.5: band(0.57, 0.55), 0.6: band(0.40, 0.70)}
    assert required_recall(0.5, 44) == pytest.approx(0.5 + (0.25 / 44) ** 0.5)  # 0.5754
    assert choose(on_band, ("recall", 0.5)) == 0.4  # 0.57 at 0.5 falls short of 0.5754
    assert choose(on_band, ("recall", 0.3)) == 0.6  # 0.40 >= 0.3 + 0.069
    assert choose(on_band, ("recall", 0.9)) == 0.3  # none reaches 0.945: the highest band recall
    assert choose(on_band, ("f1", None)) == 0.5  # F1 0.4400, 0.5246, 0.5605, 0.5091


@pytest.mark.parametrize("bad", ["recall", "recall:1", "recall:x", "f2", "f1:0.5"])
def test_a_choice_rule_that_is_not_f1_or_recall_between_0_and_1_exits_2(bad, capsys):
    from bench.alerts_sn7 import main

    with pytest.raises(SystemExit) as e:
        main(["--choose", bad, "--model", "m"])
    assert e.value.code == 2 and "--choose" in capsys.readouterr().err
