"""Built-in models: model directories shipped inside the package, named ``builtin:<name>``.

A reference to a model (``--model``, ``--change-model``, ``MONITOR_CHANGE_MODEL``, an area's model) is
either a model directory or ``builtin:<name>``; ``resolve`` turns either into the directory to read.

- ``builtin:cva``: change vector analysis, no training. Each image is standardized per band by its own
  statistics, the per-pixel L2 norm of the difference of the red, green and blue bands is smoothed by a
  Gaussian of ``CVA_SIGMA`` pixels, and a pixel is change where that magnitude exceeds the scene's
  median + k * 1.4826 * MAD (the ``robust_z`` threshold rule, k = ``CVA_K``). The map holds m / (1 + m)
  of the magnitude m, so that it is in 0..1 like every probability map; the rule works on m.
- ``builtin:oscd-change``: a small network trained on the nine labelled OSCD cities (Sentinel-2, 10 m);
  rebuilt by ``python -m bench.ship_oscd``.
"""

from __future__ import annotations

import re
from pathlib import Path

from monitor.errors import BadInput

PREFIX = "builtin:"
SHIPPED = Path(__file__).resolve().parent / "ml" / "shipped"

CVA_BANDS = ["B02", "B03", "B04"]
CVA_SIGMA = 1.5
CVA_K = 6.0

# Canonical names of Sentinel-2 bands and the common names other sources give them.
BAND_ALIASES = {"B02": "blue", "B03": "green", "B04": "red", "B08": "nir"}
_S2_OF_COMMON = {common: s2 for s2, common in BAND_ALIASES.items()}
_S2_NAME = re.compile(r"^B\d[\dA]$")


def canonical_band(name: str | None) -> str | None:
    """The Sentinel-2 name a band name stands for (``B04``, ``b04``, ``red`` -> B04), or None."""
    if not name:
        return None
    name = name.strip()
    if _S2_NAME.match(name.upper()):
        return name.upper()
    return _S2_OF_COMMON.get(name.lower())


def cva_meta(bands: list[str] | None = None, sigma: float = CVA_SIGMA, k: float = CVA_K) -> dict:
    """``model.json`` of the change-vector-analysis model."""
    bands = list(bands or CVA_BANDS)
    n = 2 * len(bands)
    return {
        "kind": "change", "version": "builtin-cva-1", "bands": bands, "input": "before and after stacked band-wise",
        "normalization": {"mean": [0.0] * n, "std": [1.0] * n, "per_image": True}, "tile": 64,
        "resolution_m": None, "threshold": 0.5,
        "threshold_rule": {"rule": "robust_z", "k": k, "on": "odds"},
        "architecture": {"type": "cva", "depth": 0, "sigma": sigma},
        "inference": {"tta": False, "precision": "float32"},
        "description": "change vector analysis: per-image standardized bands, L2 norm of the difference, "
                       f"Gaussian smoothing (sigma {sigma} px), change above the scene's median + {k:g} x 1.4826 x MAD",
    }


def is_builtin(ref: str | Path | None) -> bool:
    """Whether ``ref`` names a built-in model."""
    return ref is not None and str(ref).startswith(PREFIX)


def names() -> list[str]:
    """The built-in models' names (``cva``, ``oscd-change``, ...)."""
    return sorted(p.parent.name for p in SHIPPED.glob("*/model.json")) if SHIPPED.is_dir() else []


def resolve(ref: str | Path) -> Path:
    """The model directory ``ref`` names: a built-in's shipped directory, or ``ref`` itself."""
    if not is_builtin(ref):
        return Path(ref)
    name = str(ref)[len(PREFIX):]
    if name not in names():
        raise BadInput(f"no built-in model {name!r} (built-ins: {', '.join(PREFIX + n for n in names())})",
                       field="model")
    return SHIPPED / name


def reference(model_dir: str | Path) -> str:
    """How to name a model directory: ``builtin:<name>`` for a shipped one, else its resolved path."""
    path = Path(model_dir).resolve()
    if path.parent == SHIPPED and path.name in names():
        return PREFIX + path.name
    return str(path)
