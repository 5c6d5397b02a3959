"""The real OSCD pairs: conversion (georeferencing, labels, bands), a short training, evaluation by hand."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import rasterio
from scipy.ndimage import maximum_filter, minimum_filter

from monitor.errors import BadInput
from monitor.ml import scores
from monitor.ml.evaluation import evaluate
from monitor.ml.inference import NODATA, predict_raster
from monitor.ml.modelstore import load_model
from monitor.ml.oscd import OSCD_BANDS, convert_oscd, load_city, write_city, write_summary
from monitor.ml.training import train_change

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def oscd(shared_data):
    return shared_data / "oscd"


@pytest.fixture(scope="module")
def converted(oscd, tmp_path_factory):
    out = tmp_path_factory.mktemp("oscd") / "data"
    convert_oscd(oscd, out, cities=["paris", "mumbai"])
    return out


def _raw(oscd, city, date, band):
    f = next((oscd / "images" / city / date).glob(f"*_{band}.tif"))
    with rasterio.open(f) as s:
        return s.read(1), s.transform, s.crs


def _label(oscd, city):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(oscd / "labels" / city / "cm" / f"{city}-cm.tif") as s:
            return s.read(1)


def test_conversion_keeps_grid_dates_and_band_order(converted, oscd):
    summary = json.loads((converted / "summary.json").read_text())
    assert summary["kind"] == "change" and summary["bands"] == OSCD_BANDS
    assert sorted(summary["cities"]) == ["mumbai", "paris"]
    paris = summary["cities"]["paris"]
    assert paris["dates"] == ["2016-11-30", "2017-11-07"]
    assert (paris["height"], paris["width"]) == (408, 390)
    assert paris["change_fraction"] == pytest.approx(458 / (408 * 390), abs=1e-6)  # 0.3 %
    b02, transform, crs = _raw(oscd, "paris", "imgs_1", "B02")
    for name, date in (("before.tif", "imgs_1"), ("after.tif", "imgs_2")):
        with rasterio.open(converted / "paris" / name) as s:
            assert s.crs == crs == rasterio.crs.CRS.from_epsg(4326)
            assert s.transform == transform and (s.height, s.width) == (408, 390)
            assert list(s.descriptions) == OSCD_BANDS and s.dtypes[0] == "uint16"
            for band in ("B02", "B03", "B04", "B08"):  # 10 m bands are copied exactly
                np.testing.assert_array_equal(s.read(OSCD_BANDS.index(band) + 1), _raw(oscd, "paris", date, band)[0])
    with rasterio.open(converted / "paris" / "before.tif") as s:
        assert s.read(OSCD_BANDS.index("B02") + 1)[0, 0] == 1376
        b05 = s.read(OSCD_BANDS.index("B05") + 1).astype(float)
        b01 = s.read(OSCD_BANDS.index("B01") + 1).astype(float)
    raw05 = _raw(oscd, "paris", "imgs_1", "B05")[0].astype(float)
    assert raw05[10, 10] == 783
    # 20 m bands resampled (bilinear) onto the 10 m grid: a 10 m pixel lies within the range of its 20 m
    # pixel's 3x3 neighbourhood, and the 2x2 blocks follow the 20 m pixels closely
    lo = np.kron(minimum_filter(raw05, 3), np.ones((2, 2)))
    hi = np.kron(maximum_filter(raw05, 3), np.ones((2, 2)))
    assert np.all((b05 >= lo - 1) & (b05 <= hi + 1))
    blocks = b05.reshape(204, 2, 195, 2).mean(axis=(1, 3))
    assert np.corrcoef(blocks.ravel(), raw05.ravel())[0, 1] > 0.95
    raw01 = _raw(oscd, "paris", "imgs_1", "B01")[0].astype(float)
    assert abs(b01.mean() - raw01.mean()) / raw01.mean() < 0.02


def test_labels_are_georeferenced_and_recoded(converted, oscd):
    raw = _label(oscd, "paris")
    assert set(np.unique(raw)) == {1, 2}
    with rasterio.open(converted / "paris" / "change.tif") as s:
        change = s.read(1)
        assert s.crs == rasterio.crs.CRS.from_epsg(4326)
        assert s.transform == _raw(oscd, "paris", "imgs_1", "B02")[1]
        # the first changed pixel of Paris (row 5, column 243) and where it lies
        assert change[5, 243] == 1 and raw[5, 243] == 2 and change[5, 242] == 0
        x, y = s.xy(5, 243)
    assert x == pytest.approx(2.33848, abs=1e-5) and y == pytest.approx(48.84442, abs=1e-5)
    np.testing.assert_array_equal(change, (raw == 2).astype(np.uint8))
    mumbai = load_city(converted, "mumbai", ["B04", "B08"])
    assert mumbai["x"].shape == (858, 557, 4) and mumbai["change"][4, 253] == 1
    assert mumbai["valid"].all()


def test_conversion_refuses_what_it_cannot_use(oscd, tmp_path):
    with pytest.raises(BadInput, match="no city atlantis"):
        convert_oscd(oscd, tmp_path / "out", cities=["atlantis"])
    with pytest.raises(BadInput, match="holds no OSCD cities"):
        convert_oscd(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def mumbai_crop(converted, tmp_path_factory):
    """The densest 160 x 160 window of change in Mumbai (16 % change), as a change dataset of its own."""
    d = load_city(converted, "mumbai", OSCD_BANDS)
    r, c = slice(57, 217), slice(124, 284)
    with rasterio.open(converted / "mumbai" / "before.tif") as s:
        t = s.window_transform(rasterio.windows.Window(124, 57, 160, 160))
        crs = s.crs
    out = tmp_path_factory.mktemp("crop")
    n = len(OSCD_BANDS)
    x = d["x"][r, c].astype(np.uint16)
    entry = write_city(out, "mumbai", x[..., :n], x[..., n:], d["change"][r, c], crs=crs, transform=t,
                       bands=OSCD_BANDS)
    write_summary(out, OSCD_BANDS, {"mumbai": entry})
    return out


@pytest.fixture(scope="module")
def crop_model(mumbai_crop, tmp_path_factory):
    d = train_change(mumbai_crop, tmp_path_factory.mktemp("m") / "model", bands=["B02", "B03", "B04", "B08"],
                     epochs=6, steps_per_epoch=12, patch=32, batch=8, depth=2, base_filters=8, lr=3e-3, seed=0,
                     val_fraction=0.25)
    return load_model(d)


def test_short_training_on_a_real_crop_learns(mumbai_crop, crop_model):
    assert crop_model.tta and crop_model.meta["inference"] == {"tta": True}
    r = evaluate(crop_model, mumbai_crop)
    p = json.loads((mumbai_crop / "summary.json").read_text())["cities"]["mumbai"]["change_fraction"]
    chance_f1 = 2 * p / (1 + p)  # what answering "change" everywhere would score
    assert r["pooled"]["f1"] > chance_f1 + 0.15, (r["pooled"], chance_f1)


def test_evaluate_matches_a_confusion_matrix_counted_by_hand(mumbai_crop, crop_model, tmp_path):
    model = crop_model
    city = mumbai_crop / "mumbai"
    out = predict_raster(model, city / "after.tif", tmp_path / "prob.tif", before=city / "before.tif")
    with rasterio.open(out) as p, rasterio.open(city / "change.tif") as t, rasterio.open(city / "after.tif") as a:
        assert (p.crs, p.transform, p.shape) == (a.crs, a.transform, a.shape)
        prob, truth = p.read(1), t.read(1) == 1
    assert (prob != NODATA).all()
    pred = prob > model.threshold
    tp, fp = int((pred & truth).sum()), int((pred & ~truth).sum())
    fn, tn = int((~pred & truth).sum()), int((~pred & ~truth).sum())
    r = evaluate(model, mumbai_crop)
    assert r["cities"]["mumbai"]["confusion"] == {"tp": tp, "fp": fp, "fn": fn, "tn": tn}
    assert r["pooled"]["precision"] == round(tp / (tp + fp), 4) if tp + fp else 0.0
    assert r["pooled"]["recall"] == round(tp / (tp + fn), 4)
    assert r["pooled"]["f1"] == round(2 * tp / (2 * tp + fp + fn), 4)
    assert r["pooled"]["iou"] == round(tp / (tp + fp + fn), 4)
    assert r["pooled"] == {**scores.scores(r["cities"]["mumbai"]["confusion"]),
                           "confusion": r["cities"]["mumbai"]["confusion"], "cities": ["mumbai"]}
