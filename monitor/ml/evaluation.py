"""Evaluation of a model on a dataset folder: precision, recall, F1 and IoU of the positive class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from monitor.domain import ModelKind, values
from monitor.errors import BadInput
from monitor.ml import scores
from monitor.ml.datasets import load_classifier_split, load_segmenter_split, read_summary, scene_stats, segmenter_scenes
from monitor.ml.inference import DEFAULT_WINDOW, predict_array, rule_reference
from monitor.ml.modelstore import LoadedModel
from monitor.ml.oscd import load_city


def _result(model: LoadedModel, data_dir, cm: dict, **extra) -> dict:
    return {"model": model.version, "kind": model.kind, "data": str(Path(data_dir).resolve()),
            "threshold": model.threshold, **extra, **scores.scores(cm), "confusion": cm}


def evaluate(model: LoadedModel, data_dir: str | Path, *, split: str = "validation", cities: list[str] | None = None,
             batch: int = 8, progress: bool = False, window: int | None = None, overlap: float = 0.25) -> dict:
    """Scores of ``model`` (at its threshold) on ``data_dir``.

    Change datasets: every labelled city (or those named), each whole, plus all of them pooled (the sum
    of their confusion counts). Tile datasets: the tiles of ``split`` (pixels for a segmenter, tiles for a
    classifier). ``window`` and ``overlap`` are those of tiled inference over a change dataset's cities.
    """
    summary = read_summary(data_dir)
    kind = summary.get("kind")
    if kind not in values(ModelKind) or kind != model.kind:
        raise BadInput(f"is a {kind} dataset but model {model.version} is a {model.kind}", file=data_dir)
    if kind == ModelKind.CHANGE:
        return _evaluate_change(model, data_dir, summary, cities, batch, progress, window, overlap)
    if split not in ("train", "validation", "test"):
        raise BadInput("split must be train, validation or test", field="split")
    if split == "test" and not (Path(data_dir) / split).is_dir():
        raise BadInput("has no test part (monitor dataset spacenet7 --validation-rows writes one)", file=data_dir)
    if kind == ModelKind.CLASSIFIER:
        x, y, _ = load_classifier_split(data_dir, split, model.bands)
        valid = None
    else:
        x, y = load_segmenter_split(data_dir, split, model.bands)
        valid = np.all(np.isfinite(x), axis=-1)
    if kind == ModelKind.SEGMENTER and model.per_image:  # each tile by the statistics of its whole scene
        xn = np.empty(x.shape, np.float32)
        for idx, stats in scene_stats(x, segmenter_scenes(data_dir, split)):
            xn[idx] = model.normalize(x[idx], stats)
    else:
        xn = model.normalize(x)
    prob = np.concatenate([model(xn[i:i + batch]) for i in tqdm(range(0, len(xn), batch), desc="evaluate",
                                                                disable=not progress)])
    cm = scores.confusion(prob > model.threshold, y > 0.5, valid)
    return _result(model, data_dir, cm, split=split, tiles=len(x))


def _evaluate_change(model: LoadedModel, data_dir, summary: dict, cities, batch: int, progress: bool,
                     window: int | None, overlap: float) -> dict:
    labelled = [c for c, e in summary["cities"].items() if e.get("labelled")]
    cities = list(cities) if cities else labelled
    unknown = [c for c in cities if c not in labelled]
    if unknown:
        raise BadInput(f"has no labelled city {', '.join(unknown)} (labelled: {', '.join(labelled)})",
                       file=data_dir, field="cities")
    per_city, cms = {}, []
    for c in tqdm(cities, desc="evaluate", unit="city", disable=not progress):
        d = load_city(data_dir, c, model.bands)
        prob = predict_array(model, d["x"], ~d["valid"], batch=batch, window=window or DEFAULT_WINDOW, overlap=overlap)
        threshold = model.threshold_for(prob, d["valid"], rule_reference(model, d["x"], ~d["valid"]))
        cm = scores.confusion(prob > threshold, d["change"] == 1, d["valid"])
        cms.append(cm)
        per_city[c] = {**scores.scores(cm), "threshold": round(threshold, 4), "confusion": cm}
    cm = scores.add(*cms)
    trained_on = (model.meta.get("training") or {}).get("cities") or []
    return {"model": model.version, "kind": model.kind, "data": str(Path(data_dir).resolve()),
            "threshold": model.threshold, "threshold_rule": model.threshold_rule, "cities": per_city,
            "pooled": {**scores.scores(cm), "confusion": cm, "cities": cities},
            "seen_in_training": [c for c in cities if c in trained_on]}
