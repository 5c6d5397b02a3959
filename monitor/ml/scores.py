"""Positive-class scores from confusion counts, and the threshold that maximises F1 (NumPy only)."""

from __future__ import annotations

import numpy as np


def confusion(pred: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None) -> dict[str, int]:
    """Counts of true/false positives/negatives of boolean arrays, over ``valid`` pixels only."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ in shape")
    if valid is not None:
        valid = np.asarray(valid, bool)
        pred, truth = pred[valid], truth[valid]
    tp = int(np.count_nonzero(pred & truth))
    fp = int(np.count_nonzero(pred & ~truth))
    fn = int(np.count_nonzero(~pred & truth))
    tn = int(pred.size - tp - fp - fn)
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn}


def add(*cms: dict[str, int]) -> dict[str, int]:
    """The sum of confusion counts."""
    return {k: sum(cm[k] for cm in cms) for k in ("tp", "fp", "fn", "tn")}


def scores(cm: dict[str, int]) -> dict[str, float]:
    """Precision, recall, F1 and IoU of the positive class (0 where undefined, e.g. nothing predicted)."""
    tp, fp, fn = cm["tp"], cm["fp"], cm["fn"]
    ratio = lambda a, b: round(a / b, 4) if b else 0.0  # noqa: E731
    return {"precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn),
            "f1": ratio(2 * tp, 2 * tp + fp + fn), "iou": ratio(tp, tp + fp + fn)}


def best_threshold(prob: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None,
                   candidates: np.ndarray | None = None) -> tuple[float, dict[str, float]]:
    """The candidate threshold (default 0.05 ... 0.95) with the highest F1, and the scores there."""
    prob, truth = np.asarray(prob, np.float32), np.asarray(truth, bool)
    if valid is not None:
        prob, truth = prob[np.asarray(valid, bool)], truth[np.asarray(valid, bool)]
    prob, truth = prob.ravel(), truth.ravel()
    if candidates is None:
        candidates = np.round(np.arange(0.05, 0.951, 0.01), 2)
    # One sort instead of one pass per threshold: counts of positives/negatives at or above each value.
    order = np.argsort(prob)
    p_sorted, t_sorted = prob[order], truth[order]
    pos_above = np.concatenate([np.cumsum(t_sorted[::-1])[::-1], [0]])
    neg_above = np.concatenate([np.cumsum(~t_sorted[::-1])[::-1], [0]])
    n_pos = int(truth.sum())
    best: tuple[float, float, dict[str, float]] = (-1.0, 0.5, {})
    for t in candidates:
        i = int(np.searchsorted(p_sorted, t, side="right"))  # predicted positive: prob > t
        tp, fp = int(pos_above[i]), int(neg_above[i])
        cm = {"tp": tp, "fp": fp, "fn": n_pos - tp, "tn": int(truth.size - n_pos - fp)}
        s = scores(cm)
        if s["f1"] > best[0]:
            best = (s["f1"], float(t), s)
    return best[1], best[2]


THRESHOLD_RULES = ("fixed", "robust_z", "top_quantile", "cva_share")
#: The least and the most of a scene the ``cva_share`` rule makes positive.
SHARE_BOUNDS = (0.0005, 0.15)
#: Robust standard deviations above the median at which ``cva_share`` counts a change-vector outlier.
CVA_SHARE_K = 4.0


def needs_reference(rule: dict | None) -> bool:
    """Whether a threshold rule reads the pair's change-vector map beside the model's own (``cva_share``)."""
    return (rule or {}).get("rule") == "cva_share"


def reference_share(rule: dict, reference: np.ndarray, valid: np.ndarray | None = None) -> float:
    """The share of a scene a ``cva_share`` rule makes positive: ``a`` times the share of the valid pixels
    of ``reference`` (the pair's change-vector map, as ``builtin:cva`` computes it) that are outliers
    (``robust_z`` ``k`` on the odds, as ``builtin:cva``'s rule), within ``SHARE_BOUNDS``. A scene whose
    imagery changed little gets a small share, one that changed much a large one."""
    ref = np.asarray(reference, np.float32)
    keep = np.isfinite(ref) if valid is None else np.asarray(valid, bool) & np.isfinite(ref)
    if not keep.any():
        return SHARE_BOUNDS[0]
    cut = scene_threshold(ref, keep, {"rule": "robust_z", "k": float(rule.get("k", CVA_SHARE_K)), "on": "odds"})
    return float(np.clip(float(rule["a"]) * float((ref[keep] > cut).mean()), *SHARE_BOUNDS))


def scene_threshold(prob: np.ndarray, valid: np.ndarray | None = None, rule: dict | None = None,
                    fixed: float = 0.5, reference: np.ndarray | None = None) -> float:
    """The threshold of one scene's map under a model's threshold ``rule``; a pixel is positive above it.

    ``None`` or ``{"rule": "fixed"}``: ``fixed`` (the model's threshold). ``{"rule": "robust_z", "k": k}``:
    median + k * 1.4826 * MAD of the scene's valid values (k robust standard deviations above the typical
    pixel). ``{"rule": "top_quantile", "q": q}``: the (1 - q) quantile, so that a share q of the scene is
    positive. A scene without valid values gets ``fixed``. With ``"on": "odds"`` (or ``"logit"``)
    robust_z works on p / (1 - p) (or its log) of the probabilities p, and the threshold found there is
    turned back into a probability. ``{"rule": "cva_share", "a": a, "k": k}``: the top share of the scene
    that ``reference_share`` gives from ``reference``, the pair's change-vector map (required): the model
    ranks the pixels, the imagery's own change says how many to take.
    """
    name = (rule or {}).get("rule", "fixed")
    if name not in THRESHOLD_RULES:
        raise ValueError(f"threshold rule {name!r} is not one of {', '.join(THRESHOLD_RULES)}")
    if name == "fixed":
        return float(fixed)
    v = np.asarray(prob, np.float32)
    keep = np.isfinite(v) if valid is None else np.asarray(valid, bool) & np.isfinite(v)
    v = v[keep]
    if v.size == 0:
        return float(fixed)
    if name == "top_quantile":
        return float(np.quantile(v, 1.0 - float(rule["q"])))  # type: ignore[index]
    if name == "cva_share":
        if reference is None:
            raise ValueError("the cva_share rule needs the pair's change-vector map (reference)")
        return float(np.quantile(v, 1.0 - reference_share(rule, reference, valid)))  # type: ignore[arg-type]
    on = rule.get("on", "value")  # type: ignore[union-attr]
    if on not in ("value", "odds", "logit"):
        raise ValueError(f"robust_z works on value, odds or logit, not {on!r}")
    if on != "value":
        v = np.clip(v.astype(np.float64), 1e-9, 1 - 1e-9)
        v = v / (1 - v) if on == "odds" else np.log(v / (1 - v))
    med = float(np.median(v))
    mad = float(np.median(np.abs(v - med)))
    t = med + float(rule["k"]) * 1.4826 * mad  # type: ignore[index]
    if on == "odds":
        return t / (1 + t)
    return float(1 / (1 + np.exp(-t))) if on == "logit" else t
