"""Model directories (``model.keras`` + ``model.json``): saving, loading once per path, normalizing input.

``model.json`` holds ``kind`` (segmenter | classifier | change), ``version``, ``bands`` (per date for a
change model, whose input is before and after stacked), ``normalization`` ({"mean", "std"} per input
channel), ``tile``, ``resolution_m``, ``threshold``, ``inference`` ({"tta": true} when maps are averaged
over the input's flips and rotations), ``training``, ``metrics`` and ``created_at``; it is checked by
``monitor.domain.ModelMeta``, the same check the model registry makes.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import shutil
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from monitor import builtins
from monitor.domain import ModelMeta
from monitor.domain import input_bands as domain_input_bands
from monitor.errors import BadInput, ModelError
from monitor.ml import scores
from monitor.ml.layers import build_cva, custom_objects
from monitor.ml.runtime import inference_policy, keras, tf

CLIP = 10.0  # standardized values beyond this many deviations (saturated pixels) are clipped


def new_version(kind: str) -> str:
    """A unique model version: kind, UTC time, random suffix."""
    return f"{kind}-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"


def input_bands(meta: dict) -> list[str]:
    """Names of the model's input channels: the bands, twice (before, after) for a change model."""
    return domain_input_bands(meta["kind"], meta["bands"])


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
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "model.json").exists():
        raise BadInput("exists and is not a model directory; choose another --out", file=out_dir)
    meta = {**meta, "version": meta.get("version") or new_version(meta["kind"]),
            "created_at": meta.get("created_at") or dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{secrets.token_hex(3)}")
    tmp.mkdir()
    try:
        custom_objects()
        clean = keras().Model.from_config(keras_model.get_config())
        clean.set_weights(keras_model.get_weights())
        clean.save(tmp / "model.keras")
        (tmp / "model.json").write_text(json.dumps(meta, indent=2, default=_jsonable))
        ModelMeta.read(tmp)
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
    keras_model: Any  # as saved: float32, batch normalization separate (what training and Keras users see)
    net: Any = None  # what inference runs: batch normalization folded, under the inference precision
    _fn: Any = field(default=None, repr=False)

    @property
    def kind(self) -> str:
        """segmenter, classifier or change."""
        return self.meta["kind"]

    @property
    def version(self) -> str:
        """The model's version (model.json)."""
        return self.meta["version"]

    @property
    def threshold(self) -> float:
        """Probability above which a pixel (or tile) is positive."""
        return float(self.meta["threshold"])

    @property
    def threshold_rule(self) -> dict | None:
        """The per-scene threshold rule (``model.json`` ``threshold_rule``), or None for the fixed threshold."""
        return self.meta.get("threshold_rule")

    def threshold_for(self, prob: np.ndarray, valid: np.ndarray | None = None,
                      reference: np.ndarray | None = None) -> float:
        """The threshold of one scene's map: ``scores.scene_threshold`` of the model's rule (``reference``:
        the pair's change-vector map, for a rule that reads it)."""
        return scores.scene_threshold(prob, valid, self.threshold_rule, self.threshold, reference)

    @property
    def bands(self) -> list[str]:
        """Input bands in order (per date for a change model)."""
        return list(self.meta["bands"])

    @property
    def tile(self) -> int:
        """Training tile (and smallest inference window), pixels."""
        return int(self.meta["tile"])

    @property
    def channels(self) -> int:
        """Number of input channels."""
        return len(input_bands(self.meta))

    @property
    def depth(self) -> int:
        """Poolings of a U-Net: windows must be multiples of 2**depth (0 for the fixed-size classifier)."""
        return int(self.meta.get("architecture", {}).get("depth", 0))

    @property
    def policy(self) -> str:
        """The Keras dtype policy inference runs under."""
        return _policy_of(self.net if self.net is not None else self.keras_model)

    @property
    def tta(self) -> bool:
        """Whether a map is the mean over the 8 flips and rotations of its input (``inference.tta``)."""
        return bool((self.meta.get("inference") or {}).get("tta")) and self.kind != "classifier"

    @property
    def per_image(self) -> bool:
        """Whether each input image is first standardized by its own statistics (``normalization.per_image``)."""
        return bool(self.meta["normalization"].get("per_image"))

    def normalize(self, x: np.ndarray, stats: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """Raw values (..., C) -> model input. A per-image model needs the whole image's ``stats``
        (``image_stats``); without them the statistics of ``x`` itself are used. For a per-image change
        model, a band that is constant on either date (an empty band, as in some archive products) is
        set to 0 on both dates: it carries no information, and its difference is no change."""
        norm = self.meta["normalization"]
        if not self.per_image:
            return normalize(x, norm["mean"], norm["std"])
        m, s = stats if stats is not None else image_stats(x)
        x = normalize((np.asarray(x, np.float32) - m) / s, norm["mean"], norm["std"])
        if self.kind == "change":
            n = x.shape[-1] // 2
            s = np.asarray(s)
            dead = (s[:n] <= 1e-6) | (s[n:] <= 1e-6)
            if dead.any():
                x[..., :n][..., dead] = 0.0
                x[..., n:][..., dead] = 0.0
        return x

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Normalized (N, H, W, C) float32 -> probabilities, (N, H, W) for maps or (N,) for the classifier.

        With ``tta`` a map is the mean of the maps of the input's 8 flips and rotations, each turned back.
        """
        if not self.tta:
            return self._run(batch)
        out = np.zeros(batch.shape[:3], np.float32)
        for k in range(4):
            for flip in (False, True):
                x = np.rot90(batch, k, axes=(1, 2))
                p = self._run(x[:, :, ::-1] if flip else x)
                out += np.rot90(p[:, :, ::-1] if flip else p, -k, axes=(1, 2))
        return out / 8

    def _run(self, batch: np.ndarray) -> np.ndarray:
        if self._fn is None:
            t = tf()
            net = self.net if self.net is not None else self.keras_model
            self._fn = t.function(lambda x: net(x, training=False),
                                  input_signature=[t.TensorSpec([None, None, None, self.channels], t.float32)])
        out = np.asarray(self._fn(np.ascontiguousarray(batch, np.float32)), np.float32)
        return out[..., 0]


_cache: dict[tuple[str, int, str], LoadedModel] = {}
_lock = threading.Lock()


def load_model(model_dir: str | Path, precision: str = "auto") -> LoadedModel:
    """Load a model directory once per process (again only when its files change).

    ``precision`` of inference: auto (mixed float16 on a GPU, mixed bfloat16 on a CPU with AMX bfloat16
    units, float32 otherwise), float32, mixed (float16) or bfloat16; with auto, a model whose ``model.json``
    names an ``inference.precision`` runs at that one (the small fixed-feature networks run fastest in
    float32 everywhere). Inference runs a copy of the network with batch normalization folded into the
    convolutions before it.
    """
    model_dir = Path(model_dir).resolve()
    meta = ModelMeta.read(model_dir).to_dict()
    if precision == "auto":
        precision = (meta.get("inference") or {}).get("precision", "auto")
    policy = inference_policy(precision)
    key = (str(model_dir), (model_dir / "model.keras").stat().st_mtime_ns, policy)
    with _lock:
        if key in _cache:
            return _cache[key]
        try:
            custom_objects()
            km = keras().saving.load_model(model_dir / "model.keras", compile=False)
        except Exception as e:  # Keras raises ValueError, OSError, zipfile errors, ...
            raise ModelError(f"{model_dir}: cannot load model.keras: {e}") from e
        if km.inputs[0].shape[-1] != len(input_bands(meta)):
            raise ModelError(f"{model_dir}: model.keras takes {km.inputs[0].shape[-1]} channels but model.json "
                             f"names {len(input_bands(meta))}")
        net = fold_batchnorm(km)
        if policy != _policy_of(net):
            net = with_policy(net, policy)
        loaded = LoadedModel(model_dir, meta, km, net)
        _cache[key] = loaded
        return loaded


def cva_model(bands: list[str] | None = None, sigma: float = builtins.CVA_SIGMA, k: float = builtins.CVA_K,
              rule: dict | None = None) -> LoadedModel:
    """An in-memory change-vector-analysis model (``builtin:cva``'s network, or a variant on other bands or
    with another threshold rule)."""
    meta = {**builtins.cva_meta(bands, sigma, k), "version": f"cva-sigma{sigma:g}"}
    if rule is not None:
        meta["threshold_rule"] = rule
    return LoadedModel(Path("."), meta, build_cva(len(meta["bands"]), sigma))


def open_model(ref: str | Path, precision: str = "auto") -> LoadedModel:
    """The loaded model a reference names: the one place where a model directory given on the command
    line, in the settings or by an area becomes a model (see ``load_model``): a model directory or
    ``builtin:<name>`` (``monitor.builtins``)."""
    return load_model(builtins.resolve(ref), precision=precision)


def fold_batchnorm(keras_model, atol: float = 1e-3):
    """The same function for inference with each Conv2D -> BatchNormalization pair merged into one convolution.

    With moving statistics m, v and scale g, offset b, BN(W * x + c) = (g / s) W * x + (g / s)(c - m) + b,
    s = sqrt(v + eps): the kernel and bias absorb the normalization, and one fused convolution, bias
    and ReLU replace four passes over the activations. A model without such pairs, or whose folded copy
    does not reproduce it on a random input, is returned as it is.
    """
    k = keras()
    cfg = keras_model.get_config()
    if not isinstance(cfg, dict) or "layers" not in cfg:
        return keras_model
    layers = {lc["name"]: lc for lc in cfg["layers"]}

    def tensors(node) -> list[dict]:
        """The symbolic tensors (their configs, holding ``keras_history``) a layer's inbound nodes name."""
        if isinstance(node, dict):
            if node.get("class_name") == "__keras_tensor__":
                return [node["config"]]
            return [t for v in node.values() for t in tensors(v)]
        if isinstance(node, (list, tuple)):
            return [t for v in node for t in tensors(v)]
        return []

    def sources(node) -> list[str]:
        return [t["keras_history"][0] for t in tensors(node)]

    consumers = Counter(name for lc in cfg["layers"] for name in sources(lc.get("inbound_nodes", [])))
    outputs = set(np.asarray(cfg.get("output_layers", []), dtype=object).ravel().tolist())
    pairs = {}  # batch normalization layer -> convolution it folds into
    for lc in cfg["layers"]:
        ins = sources(lc.get("inbound_nodes", []))
        if (lc["class_name"] == "BatchNormalization" and len(ins) == 1 and ins[0] in layers and lc["name"] not in outputs
                and layers[ins[0]]["class_name"] == "Conv2D" and consumers.get(ins[0]) == 1
                and layers[ins[0]]["config"].get("activation") in ("linear", None)
                and lc["config"].get("axis") in (-1, 3, [-1], [3])):
            pairs[lc["name"]] = ins[0]
    if not pairs:
        return keras_model

    cfg["layers"] = [lc for lc in cfg["layers"] if lc["name"] not in pairs]
    for lc in cfg["layers"]:
        for t in tensors(lc.get("inbound_nodes", [])):
            if t["keras_history"][0] in pairs:
                t["keras_history"] = [pairs[t["keras_history"][0]], *t["keras_history"][1:]]
        if lc["name"] in pairs.values():
            lc["config"]["use_bias"] = True
    cfg["name"] = f"{keras_model.name}_folded"
    try:
        folded = k.Model.from_config(cfg)
        by_name = {layer.name: layer for layer in keras_model.layers}
        conv_bn = {conv: by_name[bn] for bn, conv in pairs.items()}
        for layer in folded.layers:
            src = by_name[layer.name]
            if layer.name not in conv_bn:
                layer.set_weights(src.get_weights())
                continue
            bn = conv_bn[layer.name]
            kernel = np.asarray(src.kernel, np.float64)
            bias = np.asarray(src.bias, np.float64) if src.use_bias else np.zeros(kernel.shape[-1])
            mean, var = np.asarray(bn.moving_mean, np.float64), np.asarray(bn.moving_variance, np.float64)
            gamma = np.asarray(bn.gamma, np.float64) if bn.scale else np.ones_like(mean)
            beta = np.asarray(bn.beta, np.float64) if bn.center else np.zeros_like(mean)
            f = gamma / np.sqrt(var + bn.epsilon)
            layer.set_weights([(kernel * f).astype(np.float32), ((bias - mean) * f + beta).astype(np.float32)])
        shape = [1] + [d or 64 for d in keras_model.inputs[0].shape[1:]]
        x = np.random.default_rng(0).normal(0, 1, shape).astype(np.float32)
        diff = np.abs(np.asarray(folded(x, training=False)) - np.asarray(keras_model(x, training=False))).max()
    except Exception:  # a layer this folding does not know how to rebuild: run the model as it is
        return keras_model
    return folded if diff <= atol else keras_model


def _policy_of(keras_model) -> str:
    return next((layer.dtype_policy.name for layer in keras_model.layers if layer.weights), "float32")


def with_policy(keras_model, policy: str):
    """The same network and weights under another dtype policy (float32 <-> mixed_float16)."""
    def clone(layer):
        cfg = layer.get_config()
        if layer.name != "probability" and not getattr(layer, "float32_only", False):
            cfg["dtype"] = policy
        return layer.__class__.from_config(cfg)

    new = keras().models.clone_model(keras_model, clone_function=clone)
    new.set_weights(keras_model.get_weights())
    return new
