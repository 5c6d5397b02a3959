"""The default change model: a small network over fixed change features, trained to hold up on unseen cities.

Each image is standardized per band by its own statistics (which removes most radiometric differences
between dates, sensors and places). Inside the network (``layers.build_feature_net``) fixed layers
compute the difference of the dates, the change-vector magnitude smoothed at 1, 2 and 4 pixels, and
texture at 1.5 pixels (the local spread of the difference, of each date, and its change: construction
changes the fine structure of a place where crops, water and seasons mostly change its colour); one
3x3 convolution and two 1x1 convolutions learn the rest, about 3,200 weights in all.
Training patches get a random flip or rotation, their own gain and offset per band and date, and a
random swap of the dates; half of them are centred near a change pixel. Each city keeps a band of rows
for validation: each epoch is scored with a moving average of the weights (``EMA``; the raw weights
jump from batch to batch, and the epoch a small validation band chose among them was mostly that
noise), the epoch with the best validation F1 is kept, and the threshold rule (a fixed
probability, or a per-scene ``robust_z``, ``top_quantile`` or ``cva_share`` rule, see
``scores.scene_threshold``) is the one with the best pooled F1 on those bands, each city's threshold
computed from its whole map. ``cva_share`` takes the top share of a scene that the pair's own
change-vector outliers suggest (a scene whose imagery changed little gets few positives): on unseen
cities it beat a fixed share of every scene (docs/results.md).

Also here: ``save_cva``, which writes the ``builtin:cva`` model directory.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from monitor import builtins
from monitor.errors import BadInput
from monitor.ml import scores, training
from monitor.ml.inference import predict_array
from monitor.ml.layers import build_cva, build_feature_net, mean_of
from monitor.ml.modelstore import LoadedModel, cva_model, image_stats, save_model
from monitor.ml.oscd import load_city, read_change_summary
from monitor.ml.runtime import keras, precision_policy, seed_everything

FEATURE_BANDS = ["B02", "B03", "B04", "B08"]
SIGMAS = (1.0, 2.0, 4.0)
TEXTURE = (1.5,)
EMA = 0.99  # weight of the past in the moving average of the weights: about two epochs of 50 batches
RULES = ([{"rule": "fixed"}] + [{"rule": "robust_z", "k": k} for k in (3.0, 4.0, 5.0, 6.0, 8.0, 10.0)]
         + [{"rule": "top_quantile", "q": q} for q in (0.01, 0.015, 0.02, 0.03, 0.04)]
         + [{"rule": "cva_share", "a": a, "k": scores.CVA_SHARE_K} for a in (0.25, 0.3, 0.4, 0.5, 0.6, 0.75, 1.0)])


def save_cva(out_dir: str | Path, bands: list[str] | None = None, sigma: float = builtins.CVA_SIGMA,
             k: float = builtins.CVA_K, metrics: dict | None = None) -> Path:
    """Write the change-vector-analysis model (``builtin:cva``, or a variant) as a model directory;
    ``metrics`` (measured scores) go into its ``model.json``."""
    meta = {**builtins.cva_meta(bands, sigma, k), "metrics": metrics or {}}
    return save_model(build_cva(len(meta["bands"]), sigma), out_dir, meta)


def standardized(d: dict) -> np.ndarray:
    """A city's (H, W, 2C) bands standardized per image and band over its valid pixels, invalid pixels 0."""
    m, s = image_stats(d["x"], d["valid"])
    x = np.clip((d["x"] - m) / s, -10, 10).astype(np.float32)
    x[~d["valid"]] = 0.0
    return x


def _sample(parts, patch: int, change_share: float, jitter: float, swap: float, rng: np.random.Generator):
    """One augmented training patch (x, y) from ``parts`` [(x, y, change pixel coordinates)]."""
    with_change = [i for i, p in enumerate(parts) if len(p[2])]
    if with_change and rng.random() < change_share:
        i = with_change[int(rng.integers(len(with_change)))]
        x, y, ch = parts[i]
        cy, cx = ch[rng.integers(len(ch))]
        r = int(np.clip(cy - rng.integers(patch), 0, x.shape[0] - patch))
        c = int(np.clip(cx - rng.integers(patch), 0, x.shape[1] - patch))
    else:
        sizes = np.array([p[0].shape[0] * p[0].shape[1] for p in parts], float)
        x, y, _ = parts[int(rng.choice(len(parts), p=sizes / sizes.sum()))]
        r, c = int(rng.integers(x.shape[0] - patch + 1)), int(rng.integers(x.shape[1] - patch + 1))
    x, y = x[r:r + patch, c:c + patch], y[r:r + patch, c:c + patch]
    k = int(rng.integers(4))
    x, y = np.rot90(x, k), np.rot90(y, k)
    if rng.random() < 0.5:
        x, y = x[:, ::-1], y[:, ::-1]
    n = x.shape[-1] // 2
    if jitter:
        x = x * (1 + rng.normal(0, jitter, x.shape[-1])) + rng.normal(0, jitter, x.shape[-1])
    if rng.random() < swap:
        x = np.concatenate([x[..., n:], x[..., :n]], axis=-1)
    return x.astype(np.float32), y.astype(np.float32)


def choose_rule(maps: dict[str, np.ndarray], truth: dict[str, np.ndarray], valid: dict[str, np.ndarray],
                held: dict[str, np.ndarray], fixed: float, rules: list[dict] | None = None,
                references: dict[str, np.ndarray] | None = None) -> tuple[dict, dict]:
    """The threshold rule with the best pooled F1 over the ``held`` pixels of each city, each city's threshold
    computed from its whole map (and, for a rule that reads it, its change-vector map in ``references``;
    without them such rules are not tried); returns the rule and its scores."""
    best: tuple[float, dict, dict] = (-1.0, {}, {})
    for rule in rules or RULES:
        if scores.needs_reference(rule) and references is None:
            continue
        cms = []
        for c, p in maps.items():
            t = scores.scene_threshold(p, valid[c], rule, fixed, (references or {}).get(c))
            cms.append(scores.confusion(p > t, truth[c], valid[c] & held[c]))
        s = scores.scores(scores.add(*cms))
        if s["f1"] > best[0]:
            best = (s["f1"], rule, s)
    return best[1], best[2]


def train_change_features(data_dir: str | Path, out_dir: str | Path, *, cities: list[str] | None = None,
                          bands: list[str] | None = None, epochs: int = 30, steps_per_epoch: int = 50,
                          batch: int = 16, patch: int = 64, filters: int = 16, dropout: float = 0.1,
                          lr: float = 3e-3, pos_weight: float = 3.0, change_share: float = 0.5, jitter: float = 0.1,
                          swap: float = 0.5, val_fraction: float = 0.2, patience: int = 8, seed: int = 0,
                          time_limit_s: float | None = 1500, progress: bool = False, precision: str = "float32",
                          version: str | None = None, sigmas: tuple[float, ...] = SIGMAS,
                          texture: tuple[float, ...] = TEXTURE, texture_skip: bool = True,
                          dates: bool = True, members: int = 1, ema: float = EMA) -> Path:
    """Train the feature network on a change dataset (``monitor dataset oscd``); returns the model directory.

    With ``members`` > 1 that many networks are trained, with seeds ``seed``, ``seed + 1``, ..., each
    with its own early stopping and an equal share of ``time_limit_s``, and the model is their mean
    (one Keras network averaging them); its threshold and rule are chosen on the mean's maps.

    A city whose summary entry names ``validation_columns`` (``monitor dataset spacenet7``'s location split)
    is trained on the columns before them only: the held-out part is left to evaluation.

    ``sigmas``, ``texture``, ``texture_skip`` and ``dates`` shape the network (``layers.build_feature_net``).
    With ``ema`` in (0, 1) epochs are scored and kept with an exponential moving average of the weights
    (``training._callbacks``), from the first epoch whose average has forgotten the untrained network
    (``training.first_averaged_epoch``: the 10th with 0.99 and 50 steps an epoch).
    """
    if members < 1:
        raise BadInput("must be at least 1", field="members")
    training.checked_ema(ema)
    t0 = time.perf_counter()
    summary = read_change_summary(data_dir)
    labelled = [c for c, e in summary["cities"].items() if e.get("labelled")]
    cities = list(cities) if cities else labelled
    unknown = [c for c in cities if c not in labelled]
    if unknown or not cities:
        raise BadInput(f"has no labelled city {', '.join(unknown)} (labelled: {', '.join(labelled)})",
                       file=data_dir, field="cities")
    bands = training._bands_of(summary, bands or [b for b in FEATURE_BANDS if b in summary["bands"]], data_dir)
    parts, maps_in, truth, valid, held, split, references = [], {}, {}, {}, {}, {}, {}
    cva = cva_model(bands)
    for c in cities:
        d = load_city(data_dir, c, bands)
        held_out = summary["cities"][c].get("validation_columns")
        if held_out:
            d = {k: None if v is None else v[:, :held_out[0]] for k, v in d.items()}
        references[c] = predict_array(cva, d["x"], ~d["valid"], window=512)
        x = standardized(d)
        y = ((d["change"] == 1) & d["valid"]).astype(np.float32)
        v0, v1 = training.validation_rows(d["change"], d["valid"], val_fraction, patch)
        split[c] = {"validation_rows": [v0, v1], **({"held_out_columns": held_out} if held_out else {})}
        maps_in[c], truth[c], valid[c] = x, y > 0, d["valid"]
        held[c] = np.zeros_like(d["valid"])
        held[c][v0:v1] = True
        for a, b in ((0, v0), (v1, x.shape[0])):
            if b - a >= patch and x.shape[1] >= patch:
                parts.append((x[a:b], y[a:b], np.argwhere(y[a:b] > 0)))
    if not parts:
        raise BadInput(f"no training part of the cities is at least {patch}x{patch} pixels", field="patch")
    n = len(bands)
    meta = {
        "version": version, "kind": "change", "bands": bands, "input": "before and after stacked band-wise",
        "normalization": {"mean": [0.0] * 2 * n, "std": [1.0] * 2 * n, "per_image": True}, "tile": patch,
        "resolution_m": summary.get("resolution_m"), "threshold": 0.5,
        "architecture": {"type": "features", "depth": 0, "sigmas": list(sigmas), "filters": filters,
                         "dropout": dropout, "texture": list(texture), "dates": dates,
                         **({"members": members} if members > 1 else {})},
        "inference": {"tta": False, "precision": "float32"},
    }
    k = keras()
    val_idx = {c: held[c] & valid[c] for c in cities}
    val_truth = np.concatenate([truth[c][slice(*split[c]["validation_rows"])].ravel() for c in cities])
    val_valid = np.concatenate([val_idx[c][slice(*split[c]["validation_rows"])].ravel() for c in cities])

    def val_predict(live: LoadedModel) -> np.ndarray:
        return np.concatenate([predict_array(live, maps_in[c][slice(*split[c]["validation_rows"])],
                                             ~valid[c][slice(*split[c]["validation_rows"])], window=512).ravel()
                               for c in cities])

    def batches(member_seed: int):
        rng = np.random.default_rng(member_seed)
        while True:
            pairs = [_sample(parts, patch, change_share, jitter, swap, rng) for _ in range(batch)]
            yield np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])[..., None]

    nets, runs = [], []
    for i in range(members):
        member_seed = seed + i
        seed_everything(member_seed)
        net = build_feature_net(n, sigmas=tuple(sigmas), filters=filters, dropout=dropout,
                                policy=precision_policy(precision), texture=tuple(texture),
                                texture_skip=texture_skip, dates=dates)
        training._compile(net, training.bce_dice(pos_weight), k.optimizers.Adam(lr), [training._f1_metric()])
        live = LoadedModel(Path(out_dir), meta, net)
        cbs = training._callbacks(monitor="val_f1", patience=patience, epochs=epochs, progress=progress,
                                  time_limit_s=time_limit_s / members if time_limit_s else None, ema=ema,
                                  start_from_epoch=training.first_averaged_epoch(ema, steps_per_epoch, epochs),
                                  first=[training._val_f1_callback(lambda live=live: val_predict(live), val_truth,
                                                                   val_valid)])
        history = net.fit(batches(member_seed), steps_per_epoch=steps_per_epoch, epochs=epochs, callbacks=cbs,
                          verbose=0, shuffle=False)
        nets.append(net)
        runs.append({"seed": member_seed, **training._summary_of_run(cbs, history, t0)})
    model = nets[0] if members == 1 else mean_of(nets)
    live = LoadedModel(Path(out_dir), meta, model)
    maps = {c: predict_array(live, maps_in[c], ~valid[c], window=512) for c in cities}
    fixed, _ = scores.best_threshold(np.concatenate([maps[c][val_idx[c]] for c in cities]),
                                     np.concatenate([truth[c][val_idx[c]] for c in cities]))
    rule, val = choose_rule(maps, truth, valid, held, fixed, references=references)
    per_city = {}
    for c in cities:
        t = scores.scene_threshold(maps[c], valid[c], rule, fixed, references[c])
        per_city[c] = scores.scores(scores.confusion(maps[c] > t, truth[c], val_idx[c]))
    meta.update(threshold=fixed, threshold_rule=None if rule["rule"] == "fixed" else rule, training={
        "recipe": "features", "data": str(Path(data_dir).resolve()), "cities": cities, "split": split,
        "patch": patch, "batch": batch, "steps_per_epoch": steps_per_epoch, "lr": lr, "pos_weight": pos_weight,
        "change_share": change_share, "jitter": jitter, "swap": swap, "val_fraction": val_fraction, "seed": seed,
        "ema": ema, **{k_: v for k_, v in runs[0].items() if k_ != "seed"}, "seconds": round(time.perf_counter() - t0, 1),
        **({"members": runs} if members > 1 else {})},
        metrics={"validation": {**val, "cities": per_city}})
    return save_model(model, out_dir, meta)
