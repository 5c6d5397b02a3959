"""Probability raster -> building polygons: threshold, median filter, drop small regions,
polygonize, merge touching pieces, simplify. Pure: numpy, scipy, rasterio.features, shapely."""

from __future__ import annotations

import math

import numpy as np
import shapely
from affine import Affine
from rasterio import features
from scipy import ndimage
from shapely.geometry import Polygon, shape

# Pieces that touch only at a corner are joined by a buffer this fraction of a pixel wide.
_JOIN_PX = 1e-3
# Douglas-Peucker tolerance, in pixels: removes the staircase of diagonal edges but keeps the
# corners of rectangles (a whole pixel would cut them).
_SIMPLIFY_PX = 0.75
_EIGHT = np.ones((3, 3), dtype=bool)


def pixel_size(transform: Affine) -> float:
    """Side of a square pixel of the same area, in CRS units."""
    return math.sqrt(abs(transform.a * transform.e - transform.b * transform.d))


def binary_mask(prob: np.ndarray, *, threshold: float, median_px: int,
                valid: np.ndarray | None = None) -> np.ndarray:
    """Threshold, median-filter and clip a probability raster to a boolean mask."""
    prob = np.asarray(prob)
    if prob.ndim == 3 and prob.shape[0] == 1:
        prob = prob[0]
    if prob.ndim != 2:
        raise ValueError(f"expected a 2-D probability raster, got shape {prob.shape}")
    with np.errstate(invalid="ignore"):
        mask = np.isfinite(prob) & (prob >= threshold)
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        if valid.shape != mask.shape:
            raise ValueError(f"valid mask shape {valid.shape} differs from the raster's {mask.shape}")
        mask &= valid
    if median_px and median_px > 1:
        mask = ndimage.median_filter(mask.view(np.uint8), size=int(median_px)).astype(bool)
        if valid is not None:
            mask &= valid
    return mask


def polygonize(prob: np.ndarray, transform: Affine, *, threshold: float, median_px: int,
               min_area_m2: float, valid: np.ndarray | None = None) -> list[tuple[Polygon, float]]:
    """Polygons (in the raster's metric CRS) of the regions above ``threshold``, with their mean
    probability.

    Regions are 8-connected after the median filter; regions smaller than ``min_area_m2`` are
    dropped; pieces of one region that touch only at corners are merged into one polygon, which
    is simplified to about the pixel size. ``valid`` (True where the pixel is usable) masks
    nodata and clouds.
    """
    prob = np.asarray(prob)
    if prob.ndim == 3 and prob.shape[0] == 1:
        prob = prob[0]
    mask = binary_mask(prob, threshold=threshold, median_px=median_px, valid=valid)
    labels, count = ndimage.label(mask, structure=_EIGHT)
    if count == 0:
        return []
    px = pixel_size(transform)
    sizes = np.bincount(labels.ravel(), minlength=count + 1) * px * px
    keep = sizes >= min_area_m2
    keep[0] = False
    ids = np.nonzero(keep)[0]
    if ids.size == 0:
        return []
    values = np.where(np.isfinite(prob), prob, 0).astype("float64")
    means = dict(zip(ids.tolist(), np.atleast_1d(ndimage.mean(values, labels, ids)).tolist()))
    pieces: dict[int, list] = {}
    for geom, value in features.shapes(labels.astype("int32"), mask=keep[labels], transform=transform,
                                       connectivity=4):
        pieces.setdefault(int(value), []).append(shape(geom))
    out: list[tuple[Polygon, float]] = []
    for label in ids.tolist():
        parts = pieces.get(label)
        if not parts:
            continue
        geom = parts[0] if len(parts) == 1 else shapely.union_all(parts)
        if geom.geom_type != "Polygon":
            geom = geom.buffer(_JOIN_PX * px, join_style="mitre")
        geom = geom.simplify(_SIMPLIFY_PX * px, preserve_topology=True)
        if geom.geom_type != "Polygon" or geom.is_empty:
            geom = shapely.make_valid(geom)
            polys = [g for g in getattr(geom, "geoms", [geom]) if g.geom_type == "Polygon" and not g.is_empty]
            out.extend((g, float(means[label])) for g in polys)
            continue
        out.append((geom, float(means[label])))
    return out
