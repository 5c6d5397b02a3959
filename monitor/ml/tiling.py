"""Window geometry of tiled inference and the weights that blend overlapping windows (NumPy only)."""

from __future__ import annotations

import numpy as np


def starts(length: int, tile: int, stride: int) -> list[int]:
    """Offsets of windows of ``tile`` every ``stride`` covering ``length``; the last one ends at the edge."""
    if stride < 1 or tile < 1:
        raise ValueError("tile and stride must be positive")
    if length <= tile:
        return [0]
    out = list(range(0, length - tile, stride))
    out.append(length - tile)
    return out


def blend_weights(tile: int, margin: int) -> np.ndarray:
    """(tile, tile) weights: 1 inside, falling linearly towards the window's sides over ``margin`` pixels.

    Window borders, where a convolutional network sees the least context, count least; where several
    windows overlap the result is their weighted mean, so neighbouring windows cross-fade without a seam.
    Weights stay positive so that a pixel only one window covers still gets its value.
    """
    i = np.arange(tile, dtype=np.float32)
    edge = np.minimum(i, tile - 1 - i) + 1
    ramp = np.clip(edge / (margin + 1), 1e-3, 1.0) if margin > 0 else np.ones(tile, np.float32)
    return np.outer(ramp, ramp).astype(np.float32)

