"""Tiny models learn small synthetic tasks through the real dataset builders, trainers and evaluation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio

from monitor.domain import ModelMeta
from monitor.errors import BadInput
from monitor.ml.datasets import build_tiles
from monitor.ml.evaluation import evaluate
from monitor.ml.inference import classify_tiles
from monitor.ml.modelstore import load_model
from monitor.ml.training import train_change, train_classifier, train_segmenter, validation_rows
from tests.ml_synthetic import BANDS, buildings_scene, change_dataset, settlement_scene


def _loss_fell(model_dir) -> None:
    meta = ModelMeta.read(model_dir).to_dict()
    assert meta["training"]["epochs_run"] >= 1
    assert meta["training"]["best_epoch"] is not None


def test_segmenter_learns_roofs(tmp_path):
    scene, labels, _ = buildings_scene(tmp_path, size=256, n=40)
    build_tiles(scene, labels, tmp_path / "seg", kind="segmenter", tile=32, val_fraction=0.25)
    d = train_segmenter(tmp_path / "seg", tmp_path / "model", epochs=6, depth=2, base_filters=8, batch=8,
                        lr=3e-3, seed=1)
    meta = ModelMeta.read(d).to_dict()
    assert meta["kind"] == "segmenter" and meta["bands"] == BANDS and meta["tile"] == 32
    assert len(meta["normalization"]["mean"]) == 4 and 0 < meta["threshold"] < 1
    # roofs cover ~10 % of pixels: chance F1 is about 0.2
    r = evaluate(load_model(d, precision="float32"), tmp_path / "seg")  # the arithmetic training scored with
    assert r["f1"] > 0.7 and r["iou"] > 0.5, r
    assert r["f1"] == meta["metrics"]["validation"]["f1"]


def test_upsampled_segmenter_with_tta_answers_on_the_input_grid(tmp_path):
    scene, labels, _ = buildings_scene(tmp_path, size=256, n=40)
    build_tiles(scene, labels, tmp_path / "seg", kind="segmenter", tile=32, val_fraction=0.25)
    d = train_segmenter(tmp_path / "seg", tmp_path / "model", epochs=6, depth=2, base_filters=8, batch=8,
                        lr=3e-3, seed=1, upsample=2, tta=True)
    meta = ModelMeta.read(d).to_dict()
    assert meta["architecture"]["upsample"] == 2 and meta["tile"] == 32 and meta["inference"]["tta"] is True
    model = load_model(d, precision="float32")
    assert model.tta
    x = np.zeros((1, 48, 80, len(BANDS)), np.float32)
    assert model(x).shape[:3] == (1, 48, 80)  # enlarged inside, averaged back to the input's pixels
    r = evaluate(model, tmp_path / "seg")
    assert r["f1"] > 0.7 and r["iou"] > 0.5, r
    # the threshold and the scores of model.json are those of the averaged maps inference makes
    assert r["f1"] == meta["metrics"]["validation"]["f1"]


def test_classifier_learns_which_tiles_have_roofs(tmp_path):
    scene, labels, _ = settlement_scene(tmp_path, tiles=10, tile=32, seed=3)
    s = build_tiles(scene, labels, tmp_path / "clf", kind="classifier", tile=32, val_fraction=0.3)
    val = s["tiles"]["validation"]
    assert val["true"] >= 10 and val["false"] >= 10
    d = train_classifier(tmp_path / "clf", tmp_path / "model", backbone="small", dense=16, epochs=12, batch=16,
                         lr=0.01, seed=0)
    meta = ModelMeta.read(d).to_dict()
    assert meta["architecture"]["backbone"] == "small" and meta["tile"] == 32
    r = evaluate(load_model(d, precision="float32"), tmp_path / "clf")
    # always answering "true" would score F1 = 2p / (1 + p), p the share of true tiles (about 0.67 here)
    p = val["true"] / (val["true"] + val["false"])
    assert r["f1"] >= 0.9 > 2 * p / (1 + p) + 0.15, r
    assert r["f1"] == meta["metrics"]["validation"]["f1"]
    # trained from scratch, each tile was standardized by its scene: a date 8 % brighter in every band
    # reads the same
    assert meta["normalization"]["per_image"] is True and meta["training"]["per_image"] is True
    with rasterio.open(scene) as src:
        profile, data = src.profile, src.read()
    brighter = tmp_path / "brighter.tif"
    with rasterio.open(brighter, "w", **profile) as dst:
        dst.write(np.round(data * 1.08).astype(data.dtype))
    model = load_model(d, precision="float32")
    same, _ = classify_tiles(model, scene)
    bright, _ = classify_tiles(model, brighter)
    assert np.abs(same - bright).max() < 0.02


def test_classifier_options_are_checked(tmp_path):
    scene, labels, _ = settlement_scene(tmp_path, tiles=4, tile=16, seed=1)
    build_tiles(scene, labels, tmp_path / "clf", kind="classifier", tile=16, val_fraction=0.3)
    # ImageNet weights expect their own normalization, not a per-scene one
    with pytest.raises(BadInput, match="--global"):
        train_classifier(tmp_path / "clf", tmp_path / "m", weights=tmp_path / "imagenet.h5", per_image=True)


def test_change_model_learns_new_roofs_and_repeats_with_a_seed(tmp_path):
    data = change_dataset(tmp_path / "pairs", cities=2, size=128)
    kw = dict(epochs=4, steps_per_epoch=15, patch=32, batch=8, depth=2, base_filters=8, seed=5, lr=3e-3)
    d1 = train_change(data, tmp_path / "m1", **kw)
    meta = ModelMeta.read(d1).to_dict()
    assert meta["kind"] == "change" and meta["bands"] == ["B02", "B03", "B04", "B08"]
    assert len(meta["normalization"]["mean"]) == 8 and meta["normalization"]["per_image"]
    assert meta["training"]["cities"] == ["site0", "site1"]
    r = evaluate(load_model(d1), data)
    assert set(r["cities"]) == {"site0", "site1"} and r["seen_in_training"] == ["site0", "site1"]
    assert r["pooled"]["f1"] > 0.6, r  # change covers ~2 % of pixels: chance F1 is about 0.04
    d2 = train_change(data, tmp_path / "m2", **kw)
    assert json.loads((d2 / "model.json").read_text())["metrics"] == meta["metrics"]
    a, b = load_model(d1).keras_model.get_weights(), load_model(d2).keras_model.get_weights()
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_validation_rows_hold_change_and_leave_trainable_parts():
    change = np.zeros((200, 50), np.uint8)
    change[150:160, 10:20] = 1
    v0, v1 = validation_rows(change, np.ones_like(change, bool), 0.2, 32)
    assert v1 - v0 == 40 and change[v0:v1].any()
    assert v0 == 0 or v0 >= 32
    assert v1 == 200 or 200 - v1 >= 32


def test_trainers_refuse_unusable_input(tmp_path):
    data = change_dataset(tmp_path / "pairs", cities=1, size=64)
    with pytest.raises(BadInput, match="B12"):
        train_change(data, tmp_path / "m", bands=["B02", "B12"])
    with pytest.raises(BadInput, match="nowhere"):
        train_change(data, tmp_path / "m", cities=["nowhere"])
    with pytest.raises(BadInput, match="not a change dataset|summary.json"):
        train_change(tmp_path, tmp_path / "m")
    with pytest.raises(BadInput, match="segmenter"):
        train_segmenter(data, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_change_patches_move_the_earlier_date_by_at_most_the_shift():
    from monitor.ml.training import _ChangeSampler

    rng = np.random.default_rng(0)
    image = rng.normal(0, 1, (80, 80, 3)).astype(np.float32)
    x = np.concatenate([image, image], axis=-1)  # two identical dates
    y = np.zeros((80, 80), np.float32)
    y[40, 40] = 1
    moves = set()
    for shift in (0, 2):
        sampler = _ChangeSampler([(x, y)], patch=32, change_share=0.5, shift=shift)
        for _ in range(60):
            p, _m = sampler.sample(rng)
            before, after = p[..., :3], p[..., 3:]
            found = [(dy, dx) for dy in range(-shift, shift + 1) for dx in range(-shift, shift + 1)
                     if np.array_equal(np.roll(after, (dy, dx), axis=(0, 1)), before)]
            assert found, "the earlier date is the later one moved by at most the shift"
            moves.add((shift, found[0] != (0, 0) if shift else False))
    assert moves == {(0, False), (2, False), (2, True)}  # unmoved without shift; with it, some moved, some not


def test_epochs_are_scored_and_kept_with_the_moving_average_of_the_weights():
    from monitor.ml.runtime import keras
    from monitor.ml.training import _callbacks

    k = keras()
    x, y = np.linspace(-1, 1, 32, dtype=np.float32)[:, None], np.linspace(0, 2, 32, dtype=np.float32)[:, None]
    start = [np.array([[0.3]], np.float32), np.array([0.1], np.float32)]

    def fit(ema: float):
        model = k.Sequential([k.Input((1,)), k.layers.Dense(1)])
        model.set_weights(start)
        model.compile(optimizer=k.optimizers.SGD(0.1), loss="mse")
        after_batch, scored = [], []

        class Seen(k.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                after_batch.append([w.copy() for w in self.model.get_weights()])

            def on_epoch_end(self, epoch, logs=None):
                scored.append([w.copy() for w in self.model.get_weights()])
                logs["val_f1"] = 1.0 - epoch  # the first epoch is the best

        cbs = _callbacks(monitor="val_f1", patience=5, epochs=2, progress=False, time_limit_s=None, first=[Seen()],
                         ema=ema)
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0, callbacks=cbs)
        return after_batch, scored, model.get_weights()

    after_batch, scored, kept = fit(0.5)
    average = [w.copy() for w in after_batch[0]]
    for weights in after_batch[1:4]:  # the 4 batches of the first epoch
        average = [0.5 * a + 0.5 * w for a, w in zip(average, weights)]
    for got, want in zip(scored[0], average):
        np.testing.assert_allclose(got, want, rtol=1e-6)  # the epoch is scored with the average
    for got, want in zip(kept, average):
        np.testing.assert_allclose(got, want, rtol=1e-6)  # the best epoch's average is what is kept
    plain_after_batch, plain_scored, plain_kept = fit(0.0)
    for got, want in zip(after_batch, plain_after_batch):  # training itself goes on from the raw weights
        np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    assert not np.allclose(plain_kept[0], kept[0])
    with pytest.raises(BadInput, match="ema"):
        _callbacks(monitor="val_f1", patience=5, epochs=2, progress=False, time_limit_s=None, ema=1.5)


def test_averaged_epochs_are_compared_once_the_untrained_network_has_faded_from_the_average():
    from monitor.ml.training import first_averaged_epoch

    assert 0.99 ** (10 * 50) < 0.01 <= 0.99 ** (9 * 50)  # the 10th epoch of 50 steps is the first
    assert first_averaged_epoch(0.99, 50, 30) == 9
    assert first_averaged_epoch(0.99, 50, 2) == 1  # a short run still keeps its last epoch
    assert first_averaged_epoch(0.0, 50, 30) == 0  # raw weights: every epoch counts
    with pytest.raises(BadInput, match="ema"):
        first_averaged_epoch(-0.1, 50, 30)
