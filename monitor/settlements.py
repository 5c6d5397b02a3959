"""Tile probabilities -> settlement polygons: median filter, threshold, union of the positive
tiles' rectangles (or the threshold's crossing between tile centres), simplify. Pure: numpy, scipy,
shapely, rasterio's polygonizer.

The classifier runs on a grid of overlapping tiles (``monitor.ml.inference.classify_tiles`` with
``span`` > 1): cell ``(r, c)`` of the grid holds the probability of the tile whose top-left corner
is the cell's, and a tile covers ``span`` x ``span`` cells, so neighbouring tiles overlap. The grid
is median-filtered over 3 x 3 cells (cells without a probability, NaN, are left out of their
neighbours' medians and stay without one), thresholded, and the rectangles of the positive tiles
are merged into polygons, each with the mean probability of its tiles.

With ``interpolate`` the polygons follow the threshold's crossing between tile centres instead: the
smoothed grid is interpolated bilinearly between the centres of its tiles on a finer grid, and the
outline of the sub-cells at or above the threshold is the polygon (marching squares, drawn on
sub-cells). The whole squares of tiles just above the threshold then no longer count in full.
"""

from __future__ import annotations

import warnings

import numpy as np
import rasterio.features
import shapely
from affine import Affine
from shapely.geometry import Polygon, box

# Douglas-Peucker tolerance, in grid cells: a union of rectangles is already rectilinear, this
# only drops the vertices left in the middle of straight edges.
SIMPLIFY_CELLS = 0.01


def median_grid(probs: np.ndarray, size: int = 3) -> np.ndarray:
    """The ``size`` x ``size`` median of a probability grid, NaN cells left out (and kept NaN)."""
    grid = np.asarray(probs, dtype="float64")
    if grid.ndim != 2:
        raise ValueError(f"expected a 2-D grid of tile probabilities, got shape {grid.shape}")
    if size <= 1 or grid.size == 0:
        return grid.copy()
    # edges: the window is cut at the grid's border (the cells outside are left out, like NaN)
    padded = np.pad(grid, size // 2, constant_values=np.nan)
    windows = np.lib.stride_tricks.sliding_window_view(padded, (size, size))
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # windows with no probability at all
        out = np.nanmedian(windows.reshape(*grid.shape, size * size), axis=-1)
    out[np.isnan(grid)] = np.nan
    return out


def _linear_weights(n: int, sub: int) -> np.ndarray:
    """(n * sub, n) weights of linear interpolation between n cell centres at the centres of
    ``sub`` sub-cells a cell (held constant past the first and the last centre)."""
    pos = np.clip((np.arange(n * sub) + 0.5) / sub - 0.5, 0, n - 1)
    lo = np.minimum(np.floor(pos).astype(int), max(n - 2, 0))
    frac = pos - lo
    w = np.zeros((n * sub, n), np.float32)
    rows = np.arange(n * sub)
    w[rows, lo] = 1 - frac
    if n > 1:
        w[rows, lo + 1] += frac
    return w


def interpolated_mask(grid: np.ndarray, threshold: float, sub: int) -> np.ndarray:
    """Where the bilinear interpolation of ``grid`` between its cells' centres is at or above
    ``threshold``, on ``sub`` x ``sub`` sub-cells per cell (the sub-cells nearest a NaN cell are out)."""
    ny, nx = grid.shape
    missing = np.isnan(grid)
    filled = np.where(missing, 0.0, grid).astype(np.float32)
    up = _linear_weights(ny, sub) @ filled @ _linear_weights(nx, sub).T
    return (up >= threshold) & ~np.repeat(np.repeat(missing, sub, axis=0), sub, axis=1)


def tile_polygons(probs: np.ndarray, transform: Affine, *, span: int = 2, threshold: float = 0.5,
                  median: int = 3, centres: bool = False, interpolate: int = 0) -> list[tuple[Polygon, float]]:
    """Settlement polygons (in the grid's CRS) of a grid of overlapping tile probabilities, each with
    the mean probability of the tiles that make it up.

    ``transform`` maps grid (col, row) to the CRS; a tile covers ``span`` x ``span`` cells from its
    cell's top-left corner. A tile is positive where the ``median`` x ``median`` median of the grid
    is at or above ``threshold``: an isolated positive tile among negative ones is dropped, a gap of
    one negative tile inside a settlement is filled. The rectangles of the positive tiles are merged
    (overlapping and edge-sharing rectangles into one polygon) and simplified.

    A tile is called settlement when about half of it is, so the whole rectangles of the positive
    tiles reach half a tile past a settlement's edge. With ``centres`` each positive tile keeps only
    the one-cell square at its centre, the ground it is nearest to (neighbouring centres share
    edges): the polygons then measure the settlement's area without that outward bias.

    With ``interpolate`` > 0 (sub-cells per cell; ``centres`` is then implied) a polygon's edge runs
    where the smoothed probability, interpolated linearly between neighbouring tiles' centres, crosses
    ``threshold``: a tile just above the threshold beside one far below it gives only the part of its
    square on its side of the crossing.
    """
    if span < 1:
        raise ValueError(f"a tile spans at least one cell, not {span}")
    raw = np.asarray(probs, dtype="float64")
    smooth = median_grid(raw, median)
    with np.errstate(invalid="ignore"):
        positive = np.argwhere(smooth >= threshold)
    if len(positive) == 0:
        return []
    cell = max(abs(transform.a), abs(transform.e))
    if interpolate > 0:
        mask = interpolated_mask(smooth, threshold, interpolate)
        # sub-cell (0, 0) starts half a cell before the first tile's centre, span / 2 cells in
        shift = span / 2 - 0.5
        sub = transform * Affine.translation(shift, shift) * Affine.scale(1 / interpolate)
        shapes = rasterio.features.shapes(mask.astype("uint8"), mask=mask, transform=sub)
        merged = shapely.union_all([shapely.geometry.shape(g) for g, _ in shapes])
        if merged.is_empty:
            return []
        merged = merged.simplify(SIMPLIFY_CELLS * cell)
    rects = []
    lo, hi = ((span - 1) / 2, (span + 1) / 2) if centres else (0, span)
    for r, c in positive:
        x0, y0 = transform * (c + lo, r + lo)
        x1, y1 = transform * (c + hi, r + hi)
        rects.append(box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))
    if interpolate <= 0:
        merged = shapely.union_all(rects).simplify(SIMPLIFY_CELLS * cell)
    parts = [g for g in getattr(merged, "geoms", [merged]) if isinstance(g, Polygon) and not g.is_empty]
    centres = shapely.points([((r.bounds[0] + r.bounds[2]) / 2, (r.bounds[1] + r.bounds[3]) / 2) for r in rects])
    values = np.array([raw[r, c] if np.isfinite(raw[r, c]) else smooth[r, c] for r, c in positive])
    out = []
    for part in parts:
        inside = shapely.contains(part, centres)
        out.append((part, float(values[inside].mean()) if inside.any() else float(values.mean())))
    return out
