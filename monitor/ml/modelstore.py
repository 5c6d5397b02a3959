"""Model directories (``model.keras`` + ``model.json``): saving, loading once per path, normalizing input.

``model.json`` holds ``kind`` (segmenter | classifier | change), ``version``, ``bands`` (per date for a
change model, whose input is before and after stacked), ``normalization`` ({"mean", "std"} per input
channel), ``tile``, ``resolution_m``, ``threshold``, ``training``, ``metrics`` and ``created_at``.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from monitor.errors import BadInput, ModelError

KINDS = ("segmenter", "classifier", "change")
REQUIRED = ("kind", "version", "bands", "normalization", "tile", "threshold")
CLIP = 10.0  # standardized values beyond this many deviations (saturated pixels) are clipped


def new_version(kind: str) -> str:
    """A unique model version: kind, UTC time, random suffix."""
    return f"{kind}-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"


def read_meta(model_dir: str | Path) -> dict:
    """The checked ``model.json`` of a model directory (no TensorFlow involved)."""
    model_dir = Path(model_dir)
    meta_file = model_dir / "model.json"
    if not (model_dir / "model.keras").is_file() or not meta_file.is_file():
        raise BadInput("is not a model directory (needs model.keras and model.json)", file=model_dir)
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as e:
        raise BadInput(f"is not valid JSON: {e}", file=meta_file) from e
    for key in REQUIRED:
        if key not in meta:
            raise BadInput("lacks a required field", file=meta_file, field=key)
    if meta["kind"] not in KINDS:
        raise BadInput(f"kind {meta['kind']!r} is not one of {', '.join(KINDS)}", file=meta_file, field="kind")
    n = len(input_bands(meta))
    norm = meta["normalization"]
    if len(norm.get("mean", [])) != n or len(norm.get("std", [])) != n:
        raise BadInput(f"normalization must have {n} means and stds", file=meta_file, field="normalization")
    return meta


def input_bands(meta: dict) -> list[str]:
    """Names of the model's input channels: the bands, twice (before, after) for a change model."""
    bands = list(meta["bands"])
    return [f"before:{b}" for b in bands] + [f"after:{b}" for b in bands] if meta["kind"] == "change" else bands


def normalize(x: np.ndarray, mean, std) -> np.ndarray:
    """Raw band values (..., channels) -> float32 standardized per channel; NaN -> 0, extremes clipped."""
    x = (np.asarray(x, np.float32) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    np.clip(x, -CLIP, CLIP, out=x)
    return np.nan_to_num(x, copy=False, nan=0.0)


def image_stats(x: np.ndarray, valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of an image (..., C) over its valid, finite pixels."""
    flat = np.asarray(x, np.float32).reshape(-1, x.shape[-1])
    if valid is not None:
        flat = flat[np.asarray(valid, bool).ravel()]
    if len(flat) == 0:
        return np.zeros(x.shape[-1], np.float32), np.ones(x.shape[-1], np.float32)
    mean, std = np.nanmean(flat, axis=0), np.nanstd(flat, axis=0)
    return np.nan_to_num(mean), np.maximum(np.nan_to_num(std, nan=1.0), 1e-6)


def save_model(keras_model, out_dir: str | Path, meta: dict) -> Path:
    """Write ``model.keras`` and ``model.json`` into ``out_dir``, replacing a model already there.

    The directory appears whole or not at all: it is written beside its final place and renamed.
    The optimizer state is not kept (a saved model is for inference and fine-tuning from its weights).
    """
    from monitor.ml.runtime import keras

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "model.json").exists():
        raise BadInput("exists and is not a model directory; choose another --out", file=out_dir)
    meta = {**meta, "version": meta.get("version") or new_version(meta["kind"]),
            "created_at": meta.get("created_at") or dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{secrets.token_hex(3)}")
    tmp.mkdir()
    try:
        clean = keras().Model.from_config(keras_model.get_config())
        clean.set_weights(keras_model.get_weights())
        clean.save(tmp / "model.keras")
        (tmp / "model.json").write_text(json.dumps(meta, indent=2, default=_jsonable))
        read_meta(tmp)
        old = None
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{secrets.token_hex(3)}")
            out_dir.rename(old)
        tmp.rename(out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _jsonable(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, Path):
        return str(v)
    raise TypeError(f"not JSON serializable: {type(v).__name__}")


@dataclass(eq=False)
class LoadedModel:
    """A model ready to run: its metadata and its Keras model, called through one compiled function."""

    path: Path
    meta: dict
    keras_model: Any
    _fn: Any = field(default=None, repr=False)

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    @property
    def version(self) -> str:
        return self.meta["version"]

    @property
    def threshold(self) -> float:
        return float(self.meta["threshold"])

    @property
    def bands(self) -> list[str]:
        return list(self.meta["bands"])

    @property
    def tile(self) -> int:
        return int(self.meta["tile"])

    @property
    def channels(self) -> int:
        return len(input_bands(self.meta))

    @property
    def depth(self) -> int:
        """Poolings of a U-Net: windows must be multiples of 2**depth (0 for the fixed-size classifier)."""
        return int(self.meta.get("architecture", {}).get("depth", 0))

    @property
    def per_image(self) -> bool:
        """Whether each input image is first standardized by its own statistics (``normalization.per_image``)."""
        return bool(self.meta["normalization"].get("per_image"))

    def normalize(self, x: np.ndarray, stats: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """Raw values (..., C) -> model input. A per-image model needs the whole image's ``stats``
        (``image_stats``); without them the statistics of ``x`` itself are used."""
        norm = self.meta["normalization"]
        if self.per_image:
            m, s = stats if stats is not None else image_stats(x)
            x = (np.asarray(x, np.float32) - m) / s
        return normalize(x, norm["mean"], norm["std"])

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Normalized (N, H, W, C) float32 -> probabilities, (N, H, W) for maps or (N,) for the classifier."""
        if self._fn is None:
            from monitor.ml.runtime import tf

            t = tf()
            self._fn = t.function(lambda x: self.keras_model(x, training=False),
                                  input_signature=[t.TensorSpec([None, None, None, self.channels], t.float32)])
        out = np.asarray(self._fn(np.ascontiguousarray(batch, np.float32)), np.float32)
        return out[..., 0]


_cache: dict[tuple[str, int], LoadedModel] = {}
_lock = threading.Lock()


def load_model(model_dir: str | Path, precision: str = "auto") -> LoadedModel:
    """Load a model directory once per process (again only when its files change).

    ``precision``: auto (mixed float16 on a GPU, float32 on CPU), float32 or mixed.
    """
    from monitor.ml.runtime import keras, precision_policy

    model_dir = Path(model_dir).resolve()
    meta = read_meta(model_dir)
    policy = precision_policy(precision)
    key = (str(model_dir), (model_dir / "model.keras").stat().st_mtime_ns, policy)
    with _lock:
        if key in _cache:
            return _cache[key]
        try:
            km = keras().saving.load_model(model_dir / "model.keras", compile=False)
        except Exception as e:  # Keras raises ValueError, OSError, zipfile errors, ...
            raise ModelError(f"{model_dir}: cannot load model.keras: {e}") from e
        if km.inputs[0].shape[-1] != len(input_bands(meta)):
            raise ModelError(f"{model_dir}: model.keras takes {km.inputs[0].shape[-1]} channels but model.json "
                             f"names {len(input_bands(meta))}")
        if policy != _policy_of(km):
            km = with_policy(km, policy)
        loaded = LoadedModel(model_dir, meta, km)
        _cache[key] = loaded
        return loaded


def _policy_of(keras_model) -> str:
    return next((layer.dtype_policy.name for layer in keras_model.layers if layer.weights), "float32")


def with_policy(keras_model, policy: str):
    """The same network and weights under another dtype policy (float32 <-> mixed_float16)."""
    from monitor.ml.runtime import keras

    def clone(layer):
        cfg = layer.get_config()
        if layer.name != "probability":
            cfg["dtype"] = policy
        return layer.__class__.from_config(cfg)

    new = keras().models.clone_model(keras_model, clone_function=clone)
    new.set_weights(keras_model.get_weights())
    return new
