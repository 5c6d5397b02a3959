"""Fine-tuning a change model on a small change dataset: ``monitor train change --init MODEL``.

The typical dataset is ``monitor dataset feedback``'s: a few chips around reviewed alerts, confirmed
ones with their change as the mask, dismissed ones with none. The parent's network (any trainable
architecture: features or unet), its bands and its input normalization are kept; its weights are the
starting point, trained with a low learning rate for a few short epochs on patches of the chips. The
targets are the reviewers' labels where they judged (the mask's 0 and 1) and, where nobody did (255),
the parent's own probability: the model learns what the verdicts say and keeps its parent's answer
elsewhere, so that dismissals alone do not simply teach it to see less. Patches are flipped and
rotated, get a random gain and offset per band and date and have their dates swapped half the time;
half of them are centred near a change pixel where there are any. Each chip keeps a band of rows for
validation.

The threshold: per-scene rules (``top_quantile`` flags a share of every scene whatever the model
says, ``robust_z`` the outliers of every scene) cannot learn from dismissals that a place has no
change. So the threshold is chosen among the parent's rule, the fixed probability and the usual
per-scene rules by pooled F1 on the validation rows when these hold change pixels (confirmed
alerts); when they hold none (only dismissals), F1 is 0 for every rule and choosing by it would be
arbitrary, and choosing by false positives alone would pick a threshold that flags nothing: the
model then keeps the parent's own fixed threshold (the one its training chose on labelled change),
applied as a fixed rule. None of the parent's training data is mixed in (it is not shipped): the
parent's answers on the unjudged pixels, the low learning rate and the few steps are what keep the
model near its parent.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from monitor import builtins
from monitor.errors import BadInput
from monitor.ml import scores, training
from monitor.ml.changenet import RULES, _sample, choose_rule
from monitor.ml.inference import predict_array
from monitor.ml.modelstore import LoadedModel, cva_model, image_stats, open_model, save_model
from monitor.ml.oscd import load_city, read_change_summary
from monitor.ml.runtime import keras, seed_everything

# The defaults of a fine-tuning run, beside those of training from scratch (docs/models.md).
EPOCHS = 8
STEPS = 20
LR = 3e-4
PATCH = 32
PATIENCE = 4


def _clone(keras_model):
    """A trainable copy of a model (the loaded one is shared by every user of ``open_model``)."""
    copy = keras().Model.from_config(keras_model.get_config())
    copy.set_weights(keras_model.get_weights())
    return copy


def fine_tune_change(data_dir: str | Path, out_dir: str | Path, init: str | Path, *, epochs: int = EPOCHS,
                     steps_per_epoch: int = STEPS, batch: int = 16, patch: int = PATCH, lr: float = LR,
                     pos_weight: float = 3.0, change_share: float = 0.5, jitter: float = 0.05, swap: float = 0.5,
                     val_fraction: float = 0.25, patience: int = PATIENCE, seed: int = 0,
                     time_limit_s: float | None = 600, progress: bool = False, version: str | None = None) -> Path:
    """Fine-tune the change model ``init`` (a model directory or ``builtin:NAME``) on the change dataset
    ``data_dir``; returns the new model directory, whose ``model.json`` names its parent."""
    t0 = time.perf_counter()
    parent = open_model(init, precision="float32")
    if parent.kind != "change":
        raise BadInput(f"is a {parent.kind} model, not a change model", field="init")
    summary = read_change_summary(data_dir)
    bands = parent.bands
    missing = [b for b in bands if b not in summary["bands"]]
    if missing:
        raise BadInput(f"lacks the band(s) {', '.join(missing)} the model {parent.version} reads (it has "
                       f"{', '.join(summary['bands'])})", file=data_dir, field="bands")
    sites = [c for c, e in summary["cities"].items() if e.get("labelled")]
    if not sites:
        raise BadInput("has no labelled site to fine-tune on", file=data_dir)
    model = _clone(parent.keras_model)
    if not model.trainable_weights:
        raise BadInput(f"{builtins.reference(parent.path)} has no trainable weights to fine-tune", field="init")
    depth = parent.depth
    if patch % 2 ** depth:
        raise BadInput(f"patch {patch} is not a multiple of 2**depth = {2 ** depth}", field="patch")
    meta = {k: v for k, v in parent.meta.items() if k not in ("training", "metrics", "created_at")}
    meta.update(version=version, tile=patch)
    live = LoadedModel(Path(out_dir), {**meta, "inference": {"tta": False}}, model)
    raw, data, truth, valid, held, split, parts = {}, {}, {}, {}, {}, {}, []
    for c in sites:
        d = load_city(data_dir, c, bands)
        x = live.normalize(d["x"], image_stats(d["x"], d["data"]))
        x[~d["data"]] = 0.0
        # what nobody judged keeps the parent's answer (its probability as a soft target)
        anchor = predict_array(parent, d["x"], ~d["data"], window=512)
        y = np.where(d["valid"], d["change"] == 1, np.clip(anchor, 0.0, 1.0)).astype(np.float32)
        y[~d["data"]] = 0.0
        h, w = y.shape
        if h < patch or w < patch:
            raise BadInput(f"site {c} is {w}x{h} pixels, smaller than the {patch}-pixel patch", file=data_dir,
                           field="patch")
        v0, v1 = training.validation_rows(d["change"], d["valid"], val_fraction, patch)
        split[c] = {"validation_rows": [v0, v1]}
        data[c] = d["data"]
        raw[c], truth[c], valid[c] = d["x"], d["valid"] & (d["change"] == 1), d["valid"]
        held[c] = np.zeros_like(d["valid"])
        held[c][v0:v1] = True
        for a, b in ((0, v0), (v1, h)):
            if b - a >= patch:
                parts.append((x[a:b], y[a:b], np.argwhere(d["valid"][a:b] & (d["change"][a:b] == 1))))
    if not parts:
        raise BadInput(f"no site leaves {patch} rows for training beside its validation rows", field="patch")
    val_idx = {c: held[c] & valid[c] for c in sites}
    with_change = any(truth[c][val_idx[c]].any() for c in sites)

    def maps(m: LoadedModel) -> dict[str, np.ndarray]:
        return {c: predict_array(m, raw[c], ~data[c], window=512) for c in sites}

    cva = cva_model(parent.bands)
    references = {c: predict_array(cva, raw[c], ~data[c], window=512) for c in sites}

    def held_scores(m: LoadedModel, rule: dict, fixed: float) -> dict:
        ms = maps(m)
        cms = [scores.confusion(ms[c] > scores.scene_threshold(ms[c], valid[c], rule, fixed, references[c]),
                                truth[c], val_idx[c]) for c in sites]
        total = scores.add(*cms)
        n = sum(total.values())
        return {**scores.scores(total), "positive_share": round((total["tp"] + total["fp"]) / n, 6) if n else 0.0}

    parent_rule = parent.threshold_rule or {"rule": "fixed"}
    before = held_scores(parent, parent_rule, parent.threshold)
    k = keras()

    class ValScore(k.callbacks.Callback):  # type: ignore[name-defined]
        """``val_score``: best F1 over thresholds on the validation rows, or, with no change there, minus
        the share of them above the parent's fixed threshold."""

        def on_epoch_end(self, epoch, logs=None):
            ms = maps(live)
            p = np.concatenate([ms[c][val_idx[c]] for c in sites])
            t = np.concatenate([truth[c][val_idx[c]] for c in sites])
            value = scores.best_threshold(p, t)[1]["f1"] if with_change else -float((p > parent.threshold).mean())
            if logs is not None:
                logs["val_score"] = value

    seed_everything(seed)
    training._compile(model, training.bce_dice(pos_weight), k.optimizers.Adam(lr), [training._f1_metric()])

    def batches():
        rng = np.random.default_rng(seed)
        while True:
            pairs = [_sample(parts, patch, change_share, jitter, swap, rng) for _ in range(batch)]
            yield np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])[..., None]

    cbs = training._callbacks(monitor="val_score", patience=patience, epochs=epochs, progress=progress,
                              time_limit_s=time_limit_s, first=[ValScore()])
    history = model.fit(batches(), steps_per_epoch=steps_per_epoch, epochs=epochs, callbacks=cbs, verbose=0,
                        shuffle=False)
    if with_change:
        final = maps(live)
        fixed, _ = scores.best_threshold(np.concatenate([final[c][val_idx[c]] for c in sites]),
                                         np.concatenate([truth[c][val_idx[c]] for c in sites]))
        candidates = [parent_rule] + [r for r in RULES if r != parent_rule]
        rule, _ = choose_rule(final, truth, valid, held, fixed, rules=candidates, references=references)
        chosen_by = "pooled F1 on the validation rows"
    else:
        fixed, rule = parent.threshold, {"rule": "fixed"}
        chosen_by = "the parent's fixed threshold (no change pixels in the validation rows)"
    after = held_scores(live, rule, fixed)
    counts = summary.get("counts") or {}
    meta.update(threshold=fixed, threshold_rule=None if rule["rule"] == "fixed" else rule,
                parent={"model": builtins.reference(parent.path), "version": parent.version,
                        "threshold": parent.threshold, "threshold_rule": parent.threshold_rule},
                training={"recipe": "fine-tune", "init": builtins.reference(parent.path),
                          "data": str(Path(data_dir).resolve()), "sites": sites, "counts": counts,
                          "split": split, "patch": patch, "batch": batch, "steps_per_epoch": steps_per_epoch,
                          "lr": lr, "pos_weight": pos_weight, "change_share": change_share, "jitter": jitter,
                          "swap": swap, "val_fraction": val_fraction, "seed": seed, "threshold_chosen_by": chosen_by,
                          **training._summary_of_run(cbs, history, t0)},
                metrics={"validation": {**after, "parent": before}})
    return save_model(model, out_dir, meta)
