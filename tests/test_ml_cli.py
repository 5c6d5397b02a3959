"""The ML commands end to end: dataset, train, models, predict, evaluate."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio

from tests.ml_synthetic import buildings_scene, change_dataset, saved_model


def test_build_train_predict_evaluate_and_list(cli, tmp_path):
    scene, labels, _ = buildings_scene(tmp_path, size=128, n=12)
    r = cli("dataset", "build", "--scene", scene, "--labels", labels, "--out", tmp_path / "ds", "--tile", 32,
            "--kind", "segmenter")
    assert "segmenter dataset written" in r.stdout and "validation" in r.stdout
    r = cli("train", "segmenter", "--data", tmp_path / "ds", "--epochs", 2, "--depth", 2, "--base-filters", 4,
            "--ema", 0.9)
    assert "saved segmenter model segmenter-" in r.stdout
    models_dir = tmp_path / "home" / "models"
    (model_dir,) = list(models_dir.iterdir())
    meta = json.loads((model_dir / "model.json").read_text())
    version = meta["version"]
    assert model_dir.name == version
    # a dozen training tiles are two batches: an epoch repeats them up to the default 30 batches
    assert meta["training"]["train_tiles"] <= 16 and meta["training"]["steps_per_epoch"] == 30
    assert meta["training"]["ema"] == 0.9

    r = cli("models", "list")
    assert version in r.stdout and "no" in r.stdout.split(version)[1].splitlines()[0]
    cli("models", "list", "--register")
    rows = json.loads(cli("models", "list", "--json").stdout)
    assert [(x["version"], x["registered"], x["kind"]) for x in rows
            if not x["path"].startswith("builtin:")] == [(version, True, "segmenter")]

    r = cli("predict", "--model", model_dir, "--scene", scene, "--out", tmp_path / "p.tif")
    assert "written to" in r.stdout
    with rasterio.open(scene) as s, rasterio.open(tmp_path / "p.tif") as p:
        assert (p.crs, p.transform, p.shape, p.nodata) == (s.crs, s.transform, s.shape, -1)
        assert np.all((p.read(1) >= 0) & (p.read(1) <= 1))
        default = p.read(1)
    cli("predict", "--model", model_dir, "--scene", scene, "--out", tmp_path / "q.tif", "--precision", "float32",
        "--window", "64", "--batch", "2")
    with rasterio.open(tmp_path / "q.tif") as q:
        assert np.abs(q.read(1) - default).mean() < 0.02  # other windows and arithmetic, the same map
    out = json.loads(cli("evaluate", "--model", model_dir, "--data", tmp_path / "ds").stdout)
    assert out["model"] == version and out["split"] == "validation"
    assert set(out) >= {"precision", "recall", "f1", "iou", "confusion"}


def test_errors_exit_2_with_a_message(cli, tmp_path):
    change = saved_model(tmp_path / "change", kind="change", pointwise=True)
    scene, labels, _ = buildings_scene(tmp_path, size=64, n=3)
    r = cli("predict", "--model", change, "--scene", scene, "--out", tmp_path / "p.tif", expect=2)
    assert "--before" in r.stderr and not (tmp_path / "p.tif").exists()
    r = cli("predict", "--model", tmp_path, "--scene", scene, "--out", tmp_path / "p.tif", expect=2)
    assert "not a model directory" in r.stderr
    r = cli("predict", "--model", change, "--scene", scene, "--out", tmp_path / "p.tif", "--precision", "float8",
            expect=2)
    assert "precision" in r.stderr and "float8" in r.stderr
    r = cli("evaluate", "--model", change, "--data", tmp_path, expect=2)
    assert "summary.json" in r.stderr
    r = cli("dataset", "build", "--scene", tmp_path / "none.tif", "--labels", labels, "--out", tmp_path / "x", expect=2)
    assert "none.tif" in r.stderr
    cli("dataset", "build", "--scene", scene, "--labels", labels, "--out", tmp_path / "ds", "--tile", 32,
        "--kind", "segmenter")
    r = cli("train", "segmenter", "--data", tmp_path / "ds", "--out", tmp_path / "m", "--ema", 1.5, expect=2)
    assert "field 'ema'" in r.stderr and not (tmp_path / "m").exists()


def test_every_ml_command_has_help(cli):
    for args in (["dataset", "build"], ["dataset", "oscd"], ["train", "segmenter"], ["train", "classifier"],
                 ["train", "change"], ["models", "list"], ["predict"], ["evaluate"]):
        assert "Usage" in cli(*args, "--help").stdout


@pytest.mark.realdata
def test_oscd_pair_in_change_probability_out(cli, shared_data, tmp_path):
    r = cli("dataset", "oscd", shared_data / "oscd", "--out", tmp_path / "oscd", "--city", "paris")
    assert "paris" in r.stdout and "2016-11-30 / 2017-11-07" in r.stdout
    model = saved_model(tmp_path / "change", kind="change", pointwise=True)
    city = tmp_path / "oscd" / "paris"
    cli("predict", "--model", model, "--scene", city / "after.tif", "--before", city / "before.tif",
        "--out", tmp_path / "paris.tif")
    with rasterio.open(city / "after.tif") as a, rasterio.open(tmp_path / "paris.tif") as p:
        assert (p.crs, p.transform, p.shape) == (a.crs, a.transform, a.shape)
        assert p.crs.to_epsg() == 4326 and p.tags()["model_kind"] == "change"
    out = json.loads(cli("evaluate", "--model", model, "--data", tmp_path / "oscd").stdout)
    assert list(out["cities"]) == ["paris"] and out["pooled"]["cities"] == ["paris"]
    assert sum(out["pooled"]["confusion"].values()) == 408 * 390


def test_train_change_refuses_a_moving_average_it_cannot_use(cli, tmp_path):
    data = change_dataset(tmp_path / "pairs", cities=1, size=64)
    for args, field in ((["--arch", "unet", "--ema", "0.5"], "ema"), (["--ema", "1.5", "--epochs", "1"], "ema"),
                        (["--init", "builtin:oscd-change", "--ema", "0.5"], "init")):
        r = cli("train", "change", "--data", data, "--out", tmp_path / "m", *args, expect=2)
        assert f"field '{field}'" in r.stderr, r.stderr
        assert not (tmp_path / "m" / "model.json").exists()
