"""Training of the three model kinds; each returns the saved model directory.

Common discipline: a fixed seed makes a run repeat; the weights of the best validation epoch are kept
(early stopping with patience restores them); the decision threshold is the one with the best F1 on
validation data; ``model.json`` records bands, normalization, tile, threshold, data and metrics.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from monitor.errors import BadInput
from monitor.ml import scores
from monitor.ml.classifier import IMAGENET_BGR_MEAN, build_classifier
from monitor.ml.datasets import (
    classifier_scenes,
    load_classifier_split,
    load_segmenter_split,
    read_summary,
    scene_stats,
    segmenter_scenes,
)
from monitor.ml.inference import predict_array
from monitor.ml.modelstore import LoadedModel, image_stats, normalize, save_model
from monitor.ml.oscd import load_city, read_change_summary
from monitor.ml.runtime import keras, precision_policy, seed_everything, tf
from monitor.ml.spacenet7 import building_recall
from monitor.ml.unet import build_unet

log = logging.getLogger(__name__)

# The 10 m and 20 m bands: what Sentinel-2 L1C and L2A products share at a useful resolution
# (B01, B09 and B10 are 60 m atmospheric bands, and B10 is absent from L2A).
DEFAULT_CHANGE_BANDS = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]


# ---------------------------------------------------------------- losses, metrics, callbacks

def bce_dice(pos_weight: float = 1.0, eps: float = 1e-6):
    """Binary cross-entropy (positives weighted by ``pos_weight``) plus soft Dice loss over the batch."""
    ops = keras().ops

    def loss(y_true, y_pred):
        y_true = ops.cast(y_true, "float32")
        y_pred = ops.clip(ops.cast(y_pred, "float32"), eps, 1 - eps)
        bce = -ops.mean(pos_weight * y_true * ops.log(y_pred) + (1 - y_true) * ops.log(1 - y_pred))
        inter = ops.sum(y_true * y_pred)
        dice = 1 - (2 * inter + 1) / (ops.sum(y_true) + ops.sum(y_pred) + 1)
        return bce + dice

    return loss


def _f1_metric(threshold: float = 0.5):
    k = keras()
    ops = k.ops

    class F1(k.metrics.Metric):  # type: ignore[name-defined]
        def __init__(self, name="f1", **kw):
            super().__init__(name=name, **kw)
            self.counts = self.add_variable(shape=(3,), initializer="zeros", name="counts")

        def update_state(self, y_true, y_pred, sample_weight=None):
            p = ops.cast(ops.reshape(y_pred, (-1,)) > threshold, "float32")
            t = ops.cast(ops.reshape(y_true, (-1,)) > 0.5, "float32")
            self.counts.assign_add(ops.stack([ops.sum(p * t), ops.sum(p * (1 - t)), ops.sum((1 - p) * t)]))

        def result(self):
            tp, fp, fn = self.counts[0], self.counts[1], self.counts[2]
            return 2 * tp / ops.maximum(2 * tp + fp + fn, 1.0)

        def reset_state(self):
            self.counts.assign(ops.zeros((3,)))

    return F1()


def _callbacks(*, monitor: str, patience: int, epochs: int, progress: bool, time_limit_s: float | None,
               first: list | None = None, start_from_epoch: int = 0, ema: float = 0.0) -> list:
    """Early stopping on ``monitor`` (restoring the best epoch's weights), a time limit and a progress bar,
    after the ``first`` callbacks (those that add ``monitor`` to the logs). With ``ema`` in (0, 1) the
    weights are also averaged after every batch (an exponential moving average, ``ema`` the weight of
    the past): each epoch is scored, and the best kept, with the averaged weights, while training goes
    on from the raw ones. The average smooths out the step-to-step noise of small batches, so that the
    epoch chosen on a small validation set depends less on that noise."""
    k = keras()

    class Progress(k.callbacks.Callback):  # type: ignore[name-defined]
        def on_train_begin(self, logs=None):
            self.bar = tqdm(total=epochs, unit="epoch", desc="train", disable=not progress)

        def on_epoch_end(self, epoch, logs=None):
            self.bar.set_postfix({k_: f"{v:.4f}" for k_, v in (logs or {}).items() if k_ in
                                  ("loss", "f1", "accuracy", "val_loss", "val_f1", "val_accuracy")})
            self.bar.update(1)

        def on_train_end(self, logs=None):
            self.bar.close()

    class TimeLimit(k.callbacks.Callback):  # type: ignore[name-defined]
        def on_train_begin(self, logs=None):
            self.t0 = time.monotonic()
            self.hit = False

        def on_train_batch_end(self, batch, logs=None):
            if time_limit_s and time.monotonic() - self.t0 > time_limit_s:
                self.hit = True
                self.model.stop_training = True

    stop = k.callbacks.EarlyStopping(monitor=monitor, mode="max", patience=patience, restore_best_weights=True,
                                     start_from_epoch=start_from_epoch)
    if not checked_ema(ema):
        return [*(first or []), stop, TimeLimit(), Progress()]
    averaged: dict[str, list] = {}

    class AveragedIn(k.callbacks.Callback):  # type: ignore[name-defined]
        def on_train_batch_end(self, batch, logs=None):
            weights = self.model.get_weights()
            if "ema" not in averaged:
                averaged["ema"] = [w.copy() for w in weights]
                return
            for avg, w in zip(averaged["ema"], weights):
                avg *= ema
                avg += (1.0 - ema) * w

        def on_epoch_end(self, epoch, logs=None):
            averaged["raw"] = self.model.get_weights()
            self.model.set_weights(averaged["ema"])

    class AveragedOut(k.callbacks.Callback):  # type: ignore[name-defined]
        def on_epoch_end(self, epoch, logs=None):
            self.model.set_weights(averaged["raw"])

    return [AveragedIn(), *(first or []), stop, AveragedOut(), TimeLimit(), Progress()]


def checked_ema(ema: float) -> float:
    """``ema`` if it is a weight of the past that a moving average can use (0 for none), else ``BadInput``."""
    if not 0.0 <= ema < 1.0:
        raise BadInput(f"{ema} is not in [0, 1)", field="ema")
    return ema


def first_averaged_epoch(ema: float, steps_per_epoch: int, epochs: int) -> int:
    """The first epoch (0-based) whose moving average of the weights holds under 1 % of the weights it
    started from (``ema ** steps < 0.01``): before it, the average is still partly the untrained network,
    and its epochs are not compared. At most the last epoch; 0 without an average."""
    if not checked_ema(ema):
        return 0
    steps = math.log(0.01) / math.log(ema)
    return min(max(0, math.ceil(steps / steps_per_epoch) - 1), epochs - 1)


def _val_f1_callback(predict, truth: np.ndarray, valid: np.ndarray):
    """Adds ``val_f1`` (the best F1 over thresholds on validation data) to each epoch's logs."""
    k = keras()

    class ValF1(k.callbacks.Callback):  # type: ignore[name-defined]
        def on_epoch_end(self, epoch, logs=None):
            _, s = scores.best_threshold(predict(), truth, valid)
            if logs is not None:
                logs["val_f1"] = s["f1"]

    return ValF1()


def _summary_of_run(cbs: list, history, t0: float) -> dict:
    stop = next(c for c in cbs if isinstance(c, keras().callbacks.EarlyStopping))
    limit = next(c for c in cbs if type(c).__name__ == "TimeLimit")
    return {"epochs_run": len(history.epoch), "best_epoch": (stop.best_epoch + 1) if stop.best_weights else None,
            "stopped": "time limit" if limit.hit else ("early stopping" if stop.stopped_epoch else "epochs"),
            "seconds": round(time.perf_counter() - t0, 1)}


def _stats(x: np.ndarray, channels: int, max_px: int = 2_000_000, seed: int = 0) -> tuple[list[float], list[float]]:
    """Per-channel mean and std over the finite values of ``x`` (..., C), from a sample of pixels."""
    flat = x.reshape(-1, channels)
    if len(flat) > max_px:
        flat = flat[np.random.default_rng(seed).choice(len(flat), max_px, replace=False)]
    mean = np.nanmean(flat, axis=0)
    std = np.nanstd(flat, axis=0)
    if np.any(~np.isfinite(mean)):
        raise BadInput("a band holds no valid value in the training data")
    return mean.astype(float).tolist(), np.maximum(std, 1e-6).astype(float).tolist()


def _augment(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One of the 8 flips/rotations of a square patch, applied alike to image and mask."""
    k = int(rng.integers(4))
    x, y = np.rot90(x, k, axes=(0, 1)), np.rot90(y, k, axes=(0, 1))
    if rng.random() < 0.5:
        x, y = x[:, ::-1], y[:, ::-1]
    return x, y


def _compile(model, loss, optimizer, metrics) -> None:
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics, jit_compile=False)


def _batched_call(model, x: np.ndarray, batch: int = 16, tta: bool = False) -> np.ndarray:
    """Probabilities of normalized inputs through one compiled call of ``model``, batch by batch; with
    ``tta`` each map the mean over the 8 flips and rotations of its input, as inference makes it."""
    n = model.inputs[0].shape[-1]
    run = LoadedModel(Path("."), {"kind": "segmenter", "bands": [str(i) for i in range(n)],
                                  "inference": {"tta": tta}}, model)
    return np.concatenate([run(x[i:i + batch]) for i in range(0, len(x), batch)])


def _bands_of(summary: dict, bands: list[str] | None, data_dir) -> list[str]:
    have = summary.get("bands") or []
    if not bands:
        return list(have)
    missing = [b for b in bands if b not in have]
    if missing:
        raise BadInput(f"has no band(s) {', '.join(missing)} (it has {', '.join(have)})", file=data_dir, field="bands")
    return list(bands)


# ---------------------------------------------------------------- segmenter

SEGMENTER_EMA = 0.98  # weight of the past in the moving average of the weights: about 50 batches

def train_segmenter(data_dir: str | Path, out_dir: str | Path, *, epochs: int = 50, seed: int = 0,
                    bands: list[str] | None = None, depth: int = 4, base_filters: int = 16, dropout: float = 0.1,
                    upsample: int = 1, batch: int = 8, lr: float = 1e-3, pos_weight: float = 1.0, patience: int = 10,
                    min_steps: int = 200, epoch_steps: int = 30, per_image: bool = True, tta: bool = False,
                    progress: bool = False, precision: str = "auto", time_limit_s: float | None = None,
                    ema: float = SEGMENTER_EMA, version: str | None = None) -> Path:
    """U-Net on ``dataset build --kind segmenter`` (or ``dataset spacenet7``) tiles; loss BCE + Dice; returns
    the model directory.

    An epoch is one pass over the training tiles, and at least ``epoch_steps`` batches (further passes,
    each in a new order): on a few dozen tiles a pass is a handful of steps, and ``epochs`` and
    ``patience`` counted in such passes would stop training before it has learnt anything.

    With ``per_image`` every tile is first standardized by the band statistics of the scene it was cut
    from (its ``scene`` tag), as inference standardizes a whole scene: this takes out the brightness
    of a date or a sensor, and makes 8-bit RGB and 16-bit panchromatic tiles alike. Epochs are
    compared on the best F1 over thresholds on the validation tiles' valid pixels, and not before
    ``min_steps`` training steps: the first epochs of a small dataset are noise. When the dataset has
    ``buildings/`` rasters (``dataset spacenet7``), ``model.json`` also reports building-level recall
    on validation by size class. With ``tta`` the model's maps are the mean over the 8 flips and
    rotations of its input (8 times the inference time), and the threshold and validation scores are
    those of such maps. With ``ema`` in (0, 1) epochs are scored and kept with a moving average of the
    weights (``_callbacks``), from the first epoch whose average has forgotten the untrained network.
    """
    t0 = time.perf_counter()
    checked_ema(ema)
    summary = read_summary(data_dir)
    if summary.get("kind") != "segmenter":
        raise BadInput(f"is a {summary.get('kind')} dataset; build one with --kind segmenter", file=data_dir)
    bands = _bands_of(summary, bands, data_dir)
    tile = int(summary["tile"])
    if tile % 2 ** depth:
        raise BadInput(f"tile {tile} is not a multiple of 2**depth = {2 ** depth}", field="depth")
    x_tr, y_tr = load_segmenter_split(data_dir, "train", bands)
    x_va, y_va = load_segmenter_split(data_dir, "validation", bands)
    valid = np.all(np.isfinite(x_va), axis=-1)
    if per_image:
        for x, split in ((x_tr, "train"), (x_va, "validation")):
            for idx, (m, sd) in scene_stats(x, segmenter_scenes(data_dir, split)):
                x[idx] = (x[idx] - m) / sd
    mean, std = _stats(x_tr, len(bands), seed=seed)
    x_tr, x_va = normalize(x_tr, mean, std), normalize(x_va, mean, std)
    seed_everything(seed)
    k = keras()
    model = build_unet(len(bands), depth=depth, base_filters=base_filters, dropout=dropout, upsample=upsample,
                       policy=precision_policy(precision), name="segmenter")
    _compile(model, bce_dice(pos_weight), k.optimizers.Adam(lr),
             [_f1_metric(), k.metrics.BinaryIoU(target_class_ids=[1], threshold=0.5, name="iou")])
    steps_per_pass = max(1, math.ceil(len(x_tr) / batch))
    steps = max(steps_per_pass, epoch_steps)

    def batches():
        rng = np.random.default_rng(seed)
        while True:
            order = rng.permutation(len(x_tr))
            for i in range(steps_per_pass):
                idx = order[i * batch:(i + 1) * batch]
                pairs = [_augment(x_tr[j], y_tr[j], rng) for j in idx]
                yield (np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])[..., None])

    start = max(0, math.ceil(min_steps / steps) - 1,  # the first epoch whose end is at least min_steps in
                first_averaged_epoch(ema, steps, epochs))
    cbs = _callbacks(monitor="val_f1", patience=patience, epochs=epochs, progress=progress, time_limit_s=time_limit_s,
                     first=[_val_f1_callback(lambda: _batched_call(model, x_va, batch), y_va > 0.5, valid)],
                     start_from_epoch=start, ema=ema)
    history = model.fit(batches(), steps_per_epoch=steps, epochs=epochs, callbacks=cbs, verbose=0, shuffle=False)
    prob = _batched_call(model, x_va, batch, tta=tta)
    threshold, pixel_scores = scores.best_threshold(prob, y_va > 0.5, valid)
    val: dict = dict(pixel_scores)
    recall = building_recall(data_dir, "validation", (prob > threshold) & valid)
    if recall is not None:
        val["building_recall"] = recall
    normalization = {"mean": mean, "std": std, **({"per_image": True} if per_image else {})}
    meta = {
        "version": version, "kind": "segmenter", "bands": bands, "normalization": normalization,
        "tile": tile,
        "resolution_m": summary.get("resolution_m"), "threshold": threshold,
        "architecture": {"type": "unet", "depth": depth, "base_filters": base_filters, "dropout": dropout,
                         "upsample": upsample},
        "inference": {"tta": tta},
        "training": {"data": str(Path(data_dir).resolve()), "train_tiles": len(x_tr), "validation_tiles": len(x_va),
                     "positive_pixel_fraction": round(float(y_tr.mean()), 6), "batch": batch, "lr": lr,
                     "pos_weight": pos_weight, "min_steps": min_steps, "per_image": per_image, "seed": seed,
                     "steps_per_epoch": steps, "ema": ema, **_summary_of_run(cbs, history, t0)},
        "metrics": {"validation": val},
    }
    return save_model(model, out_dir, meta)


# ---------------------------------------------------------------- classifier

def train_classifier(data_dir: str | Path, out_dir: str | Path, *, epochs: int = 50, seed: int = 0,
                     bands: list[str] | None = None, backbone: str = "resnet50", weights: str | Path | None = None,
                     freeze: int = 60, dense: int = 1024, dropout: float = 0.5, batch: int = 8, lr: float = 1e-4,
                     patience: int = 10, per_image: bool | None = None, gain: float = 0.0, progress: bool = False,
                     precision: str = "auto", time_limit_s: float | None = None, version: str | None = None) -> Path:
    """The settlement classifier on ``DIR/{train,validation}/{true,false}/`` tiles.

    SGD (momentum 0.9), binary cross-entropy, augmentation (horizontal flip, zoom 0.3, shifts 0.3,
    rotation 30 degrees, nearest fill), best validation accuracy kept, early stopping. ``gain`` > 0
    also multiplies each training tile's bands by their own random factors (1 + N(0, ``gain``)), as a
    brighter or darker date, another sun angle or haze would.

    With ``per_image`` (the default without ``weights``) every tile is first standardized by the band
    statistics of the scene it was cut from (its ``scene`` tag), as ``classify_tiles`` standardizes a
    whole scene: a date that is brighter or darker in every band reads like the training dates.
    ImageNet ``weights`` expect their own normalization and take no per-image standardization.
    """
    t0 = time.perf_counter()
    summary = read_summary(data_dir)
    if summary.get("kind") != "classifier":
        raise BadInput(f"is a {summary.get('kind')} dataset; build one with --kind classifier", file=data_dir)
    per_image = not weights if per_image is None else per_image
    if per_image and weights:
        raise BadInput("pretrained weights expect their own normalization; train them with --global",
                       field="per_image")
    bands = _bands_of(summary, bands, data_dir)
    x_tr, y_tr, _ = load_classifier_split(data_dir, "train", bands)
    x_va, y_va, _ = load_classifier_split(data_dir, "validation", bands)
    tile = x_tr.shape[1]
    if per_image:
        for x, split in ((x_tr, "train"), (x_va, "validation")):
            for idx, (m, sd) in scene_stats(x, classifier_scenes(data_dir, split)):
                x[idx] = (x[idx] - m) / sd
    if weights:
        mean, std = IMAGENET_BGR_MEAN, [1.0, 1.0, 1.0]
    else:
        log.warning("no --weights file given: the %s backbone starts from random weights", backbone)
        mean, std = _stats(x_tr, len(bands), seed=seed)
    x_tr, x_va = normalize(x_tr, mean, std), normalize(x_va, mean, std)
    seed_everything(seed)
    k = keras()
    model = build_classifier(len(bands), tile, backbone=backbone, weights=weights, freeze=freeze, dense=dense,
                             dropout=dropout, policy=precision_policy(precision))
    L = k.layers
    augment = k.Sequential([
        L.RandomFlip("horizontal", seed=seed),
        L.RandomZoom(0.3, fill_mode="nearest", seed=seed + 1),
        L.RandomTranslation(0.3, 0.3, fill_mode="nearest", seed=seed + 2),
        L.RandomRotation(30 / 360, fill_mode="nearest", seed=seed + 3),
    ])
    t = tf()
    # a gain g on raw values is z * g + (g - 1) * mean / std on standardized ones
    ratio = t.constant(np.asarray(mean, np.float32) / np.asarray(std, np.float32))

    def radiometry(x):
        g = t.random.normal((t.shape(x)[0], 1, 1, len(bands)), 0.0, gain)
        return x * (1 + g) + g * ratio

    train = (t.data.Dataset.from_tensor_slices((x_tr, y_tr)).shuffle(len(x_tr), seed=seed).batch(batch)
             .map(lambda x, y: (augment(radiometry(x) if gain > 0 else x, training=True), y)))
    _compile(model, "binary_crossentropy", k.optimizers.SGD(lr, momentum=0.9), ["accuracy"])
    cbs = _callbacks(monitor="val_accuracy", patience=patience, epochs=epochs, progress=progress,
                     time_limit_s=time_limit_s)
    history = model.fit(train, validation_data=(x_va, y_va), epochs=epochs, callbacks=cbs, verbose=0, shuffle=False)
    prob = _batched_call(model, x_va, batch)
    threshold, val = scores.best_threshold(prob, y_va > 0.5)
    val["accuracy"] = round(float(np.mean((prob > threshold) == (y_va > 0.5))), 4)
    meta = {
        "version": version, "kind": "classifier", "bands": bands,
        "normalization": {"mean": list(mean), "std": list(std), **({"per_image": True} if per_image else {})},
        "tile": tile,
        "resolution_m": summary.get("resolution_m"), "threshold": threshold,
        "architecture": {"type": "classifier", "backbone": backbone, "freeze": freeze, "dense": dense,
                         "dropout": dropout, "pretrained": str(weights) if weights else None},
        "training": {"data": str(Path(data_dir).resolve()), "train_tiles": {"true": int(y_tr.sum()),
                     "false": int(len(y_tr) - y_tr.sum())}, "validation_tiles": {"true": int(y_va.sum()),
                     "false": int(len(y_va) - y_va.sum())}, "batch": batch, "lr": lr, "per_image": per_image,
                     "gain": gain, "seed": seed,
                     **_summary_of_run(cbs, history, t0)},
        "metrics": {"validation": val},
    }
    return save_model(model, out_dir, meta)


# ---------------------------------------------------------------- change

def validation_rows(change: np.ndarray, valid: np.ndarray, fraction: float, patch: int) -> tuple[int, int]:
    """Rows [v0, v1) of a city held out for validation: a band of ``fraction`` of its height whose change
    fraction is closest to the city's, leaving training parts either empty or at least ``patch`` rows."""
    h = change.shape[0]
    vh = max(1, int(round(h * fraction)))
    per_row = np.array([(change[r][valid[r]] == 1).sum() for r in range(h)], float)
    px_row = valid.sum(axis=1).astype(float)
    target = per_row.sum() / max(px_row.sum(), 1)
    best, best_err = (h - vh, h), math.inf
    for v0 in range(0, h - vh + 1, max(1, h // 100)):
        v1 = v0 + vh
        if (0 < v0 < patch) or (0 < h - v1 < patch):
            continue
        err = abs(per_row[v0:v1].sum() / max(px_row[v0:v1].sum(), 1) - target)
        if err < best_err:
            best, best_err = (v0, v1), err
    return best


class _ChangeSampler:
    """Random training patches of the change model: a ``change_share`` of them centred near a change pixel."""

    def __init__(self, parts: list[tuple[np.ndarray, np.ndarray]], patch: int, change_share: float,
                 jitter: float = 0.0, shift: int = 0) -> None:
        self.parts = [(x, y) for x, y in parts if x.shape[0] >= patch and x.shape[1] >= patch]
        if not self.parts:
            raise BadInput(f"no training part of the cities is at least {patch}x{patch} pixels", field="patch")
        self.patch = patch
        self.change_share = change_share
        self.jitter = jitter
        self.shift = shift
        self.sizes = np.array([x.shape[0] * x.shape[1] for x, _ in self.parts], float)
        self.changes = [np.argwhere(y == 1) for _, y in self.parts]
        self.n_change = np.array([len(c) for c in self.changes], float)

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        p = self.patch
        if self.n_change.sum() and rng.random() < self.change_share:
            i = int(rng.choice(len(self.parts), p=self.n_change / self.n_change.sum()))
            cy, cx = self.changes[i][rng.integers(len(self.changes[i]))]
            x, y = self.parts[i]
            r = int(np.clip(cy - rng.integers(p), 0, x.shape[0] - p))
            c = int(np.clip(cx - rng.integers(p), 0, x.shape[1] - p))
        else:
            i = int(rng.choice(len(self.parts), p=self.sizes / self.sizes.sum()))
            x, y = self.parts[i]
            r, c = int(rng.integers(x.shape[0] - p + 1)), int(rng.integers(x.shape[1] - p + 1))
        x, y = _augment(x[r:r + p, c:c + p], y[r:r + p, c:c + p], rng)
        if self.shift and rng.random() < 0.5:
            # the earlier date moved by up to ``shift`` pixels: misregistration between dates is no change
            n = x.shape[-1] // 2
            dy, dx = rng.integers(-self.shift, self.shift + 1, 2)
            x = np.concatenate([np.roll(x[..., :n], (int(dy), int(dx)), axis=(0, 1)), x[..., n:]], axis=-1)
        if self.jitter:
            # each date its own gain and offset per band: a radiometric difference between dates is no change
            gain = 1 + rng.normal(0, self.jitter, x.shape[-1])
            offset = rng.normal(0, self.jitter, x.shape[-1])
            x = (x * gain + offset).astype(np.float32)
        return x, y


def train_change(data_dir: str | Path, out_dir: str | Path, *, epochs: int = 60, seed: int = 0,
                 cities: list[str] | None = None, bands: list[str] | None = None, patch: int = 64, batch: int = 16,
                 steps_per_epoch: int = 60, depth: int = 4, base_filters: int = 16, dropout: float = 0.2,
                 lr: float = 1e-3, pos_weight: float = 2.0, change_share: float = 0.5, val_fraction: float = 0.2,
                 per_image: bool = True, jitter: float = 0.0, shift: int = 0, patience: int = 15, progress: bool = False,
                 precision: str = "auto", time_limit_s: float | None = 900, tta: bool = True,
                 version: str | None = None) -> Path:
    """Early-fusion U-Net over before and after stacked band-wise, on the change layout (``dataset oscd``).

    Each city keeps a band of rows for validation; patches come from the rest, half of them around
    change pixels, flipped and rotated. With ``per_image`` every image is first standardized by its own
    band statistics, which removes radiometric differences between dates and places. ``jitter`` adds a
    random gain and offset per band and date to training patches. ``shift`` moves the earlier date of half
    the training patches by up to that many pixels, so that misregistration is not taken for change.
    ``time_limit_s`` stops training early
    (the best epoch so far is kept). ``cities`` default to every labelled city of the dataset. With
    ``tta`` the model's maps are the mean over the 8 flips and rotations of its input (8 times the
    inference work); epochs are compared without it, the threshold is chosen with it.
    """
    t0 = time.perf_counter()
    summary = read_change_summary(data_dir)
    labelled = [c for c, e in summary["cities"].items() if e.get("labelled")]
    cities = list(cities) if cities else labelled
    unknown = [c for c in cities if c not in labelled]
    if unknown:
        raise BadInput(f"has no labelled city {', '.join(unknown)} (labelled: {', '.join(labelled)})",
                       file=data_dir, field="cities")
    if not cities:
        raise BadInput("has no labelled city to train on", file=data_dir)
    bands = _bands_of(summary, bands or [b for b in DEFAULT_CHANGE_BANDS if b in summary["bands"]], data_dir)
    if patch % 2 ** depth:
        raise BadInput(f"patch {patch} is not a multiple of 2**depth = {2 ** depth}", field="patch")
    data = {c: load_city(data_dir, c, bands) for c in cities}
    n = len(bands)
    if per_image:
        for d in data.values():
            m, sd = image_stats(d["x"], d["valid"])
            d["x"] = (d["x"] - m) / sd
    pixels = np.concatenate([d["x"][d["valid"]] for d in data.values()])
    mean, std = _stats(np.concatenate([pixels[:, :n], pixels[:, n:]]), n, seed=seed)
    mean, std = mean + mean, std + std  # one statistic per band, shared by both dates
    del pixels
    train_parts, val_parts, split = [], [], {}
    for c, d in data.items():
        x = normalize(d["x"], mean, std)
        x[~d["valid"]] = 0.0
        y = np.where(d["valid"], d["change"], 0).astype(np.float32)
        v0, v1 = validation_rows(d["change"], d["valid"], val_fraction, patch)
        split[c] = {"validation_rows": [v0, v1]}
        val_parts.append((c, d["x"][v0:v1], d["change"][v0:v1] == 1, d["valid"][v0:v1]))
        for a, b in ((0, v0), (v1, x.shape[0])):
            if b - a >= patch:
                train_parts.append((x[a:b], y[a:b]))
    sampler = _ChangeSampler(train_parts, patch, change_share, jitter, shift)
    seed_everything(seed)
    k = keras()
    model = build_unet(2 * n, depth=depth, base_filters=base_filters, dropout=dropout,
                       policy=precision_policy(precision), name="change")
    _compile(model, bce_dice(pos_weight), k.optimizers.Adam(lr), [_f1_metric()])
    meta = {
        "version": version, "kind": "change", "bands": bands, "input": "before and after stacked band-wise",
        "normalization": {"mean": mean, "std": std}, "tile": patch, "resolution_m": summary.get("resolution_m"),
        "threshold": 0.5,
        "architecture": {"type": "unet", "depth": depth, "base_filters": base_filters, "dropout": dropout},
    }
    live = LoadedModel(Path(out_dir), meta, model)  # validation strips are already standardized per image
    if per_image:
        meta = {**meta, "normalization": {"mean": mean, "std": std, "per_image": True}}

    def val_predict(model_: LoadedModel = live) -> np.ndarray:
        return np.concatenate([predict_array(model_, xv, ~vv).ravel() for _, xv, _, vv in val_parts])

    val_truth = np.concatenate([t.ravel() for _, _, t, _ in val_parts])
    val_valid = np.concatenate([v.ravel() for _, _, _, v in val_parts])

    def batches():
        rng = np.random.default_rng(seed)
        while True:
            pairs = [sampler.sample(rng) for _ in range(batch)]
            yield np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])[..., None]

    cbs = _callbacks(monitor="val_f1", patience=patience, epochs=epochs, progress=progress, time_limit_s=time_limit_s,
                     first=[_val_f1_callback(val_predict, val_truth, val_valid)])
    history = model.fit(batches(), steps_per_epoch=steps_per_epoch, epochs=epochs, callbacks=cbs, verbose=0,
                        shuffle=False)
    meta["inference"] = {"tta": tta}
    prob = val_predict(LoadedModel(live.path, {**live.meta, "inference": meta["inference"]}, model))
    threshold, val = scores.best_threshold(prob, val_truth, val_valid)
    per_city, i = {}, 0
    for c, _, t, v in val_parts:
        p = prob[i:i + t.size].reshape(t.shape)
        i += t.size
        per_city[c] = scores.scores(scores.confusion(p > threshold, t, v))
    meta.update(threshold=threshold, training={
        "data": str(Path(data_dir).resolve()), "cities": cities, "split": split, "patch": patch, "batch": batch,
        "steps_per_epoch": steps_per_epoch, "lr": lr, "pos_weight": pos_weight, "change_share": change_share,
        "val_fraction": val_fraction, "per_image": per_image, "jitter": jitter, "shift": shift, "seed": seed,
        "change_fraction": {c: summary["cities"][c].get("change_fraction") for c in cities},
        **_summary_of_run(cbs, history, t0)},
        metrics={"validation": {**val, "cities": per_city}})
    return save_model(model, out_dir, meta)
