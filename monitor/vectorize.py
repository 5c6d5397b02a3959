"""Probability raster -> building polygons: read, threshold, median filter, drop small regions,
polygonize, merge touching pieces, simplify. Pure: numpy, scipy, rasterio, shapely."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import shapely
from affine import Affine
from pyproj import CRS
from rasterio import features
from rasterio.errors import RasterioIOError, WindowError
from rasterio.warp import Resampling, calculate_default_transform, transform_bounds
from rasterio.warp import reproject as warp
from rasterio.windows import Window, from_bounds
from scipy import ndimage
from shapely.geometry import Polygon, shape
from shapely.geometry.base import BaseGeometry

from monitor.errors import BadInput

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

    Regions are the 8-connected regions of the thresholded mask. The median filter decides what
    is noise: a region none of whose pixels survives it is dropped. A kept region's outline and
    area are those of the unfiltered mask, so the filter never shrinks a building (a 3 x 3-pixel
    block stays 9 pixels, where the filter alone leaves a 5-pixel cross). Regions smaller than
    ``min_area_m2`` are dropped; pieces of one region that touch only at corners are merged into
    one polygon, which is simplified to about the pixel size. ``valid`` (True where the pixel is
    usable) masks nodata and clouds.
    """
    prob = np.asarray(prob)
    if prob.ndim == 3 and prob.shape[0] == 1:
        prob = prob[0]
    raw = binary_mask(prob, threshold=threshold, median_px=0, valid=valid)
    labels, count = ndimage.label(raw, structure=_EIGHT)
    if count == 0:
        return []
    survives = np.ones(count + 1, dtype=bool)
    if median_px and median_px > 1:
        filtered = binary_mask(prob, threshold=threshold, median_px=median_px, valid=valid)
        survives[:] = False
        survives[np.unique(labels[filtered])] = True
    px = pixel_size(transform)
    sizes = np.bincount(labels.ravel(), minlength=count + 1) * px * px
    keep = (sizes >= min_area_m2) & survives
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


@dataclass
class Probability:
    """Band 1 of a probability raster: values (float32, NaN where not valid), where it is valid, its grid."""

    values: np.ndarray
    valid: np.ndarray
    transform: Affine
    crs: CRS


def read_probability(path: str | Path, *, region: BaseGeometry | None = None, crs: CRS | None = None,
                     region_name: str = "the area", clear_path: str | Path | None = None) -> Probability:
    """Band 1 of a probability (float 0..1) or mask (0/1, 0/255 integers) raster.

    Nodata and NaN pixels are not valid: NaN in ``values``, False in ``valid``. With ``region`` (an
    EPSG:4326 geometry) only the window that covers it, plus two pixels, is read; with ``crs`` the
    result is reprojected onto that CRS when the raster has another (nearest for masks, bilinear for
    probabilities). ``clear_path`` is a 0/1 raster on the same grid (a prepared scene's clear mask):
    its 0 pixels are not valid either. Anything else is a ``BadInput`` naming the file.
    """
    path = Path(path)
    try:
        src = rasterio.open(path)
    except RasterioIOError as e:
        raise BadInput(f"not a readable raster: {e}", file=path) from e
    with src:
        if src.crs is None:
            raise BadInput("has no CRS (georeference the raster)", file=path)
        kind = np.dtype(src.dtypes[0])
        if not (np.issubdtype(kind, np.floating) or np.issubdtype(kind, np.integer) or kind == np.bool_):
            raise BadInput(f"has {kind} pixels: expected probabilities 0..1 or a 0/1 mask", file=path)
        win = Window(0, 0, src.width, src.height)
        if region is not None:
            bounds = transform_bounds("EPSG:4326", src.crs, *region.bounds, densify_pts=21)
            box = from_bounds(*bounds, transform=src.transform)
            col0, row0 = math.floor(box.col_off) - 2, math.floor(box.row_off) - 2
            box = Window(col0, row0, math.ceil(box.col_off + box.width) + 2 - col0,
                         math.ceil(box.row_off + box.height) + 2 - row0)
            try:
                win = box.intersection(win)
            except WindowError:
                raise BadInput(f"does not overlap {region_name}", file=path) from None
        try:
            data = src.read(1, window=win)
            valid = src.read_masks(1, window=win) > 0
        except RasterioIOError as e:
            raise BadInput(f"is truncated or corrupt: {e}", file=path) from e
        transform = src.window_transform(win)
        src_crs = CRS.from_user_input(src.crs)
    if clear_path is not None and Path(clear_path).exists():
        with rasterio.open(clear_path) as clear:
            valid &= clear.read(1, window=win) > 0
    if np.issubdtype(data.dtype, np.floating):
        valid &= np.isfinite(data)
        seen = data[valid]
        if seen.size and (seen.min() < 0 or seen.max() > 1):
            raise BadInput(f"holds values {seen.min():g}..{seen.max():g}: expected probabilities 0..1 "
                           "or a 0/1 mask", file=path)
        prob, is_mask = data.astype("float32"), False
    else:
        present = set(np.unique(data[valid]).tolist())
        if present <= {0, 1}:
            prob = data.astype("float32")
        elif present <= {0, 255}:
            prob = (data / 255).astype("float32")
        else:
            raise BadInput(f"holds integer values {sorted(present)[:6]}: expected a 0/1 mask or "
                           "probabilities 0..1", file=path)
        is_mask = True
    prob[~valid] = np.nan
    if crs is not None and src_crs != crs:
        height, width = prob.shape
        left, top = transform @ (0, 0)
        right, bottom = transform @ (width, height)
        dst_transform, w, h = calculate_default_transform(src_crs, crs, width, height,
                                                          left=min(left, right), bottom=min(top, bottom),
                                                          right=max(left, right), top=max(top, bottom))
        out = np.full((h, w), np.nan, dtype="float32")
        warp(prob, out, src_transform=transform, src_crs=src_crs, dst_transform=dst_transform, dst_crs=crs,
             src_nodata=np.nan, dst_nodata=np.nan,
             resampling=Resampling.nearest if is_mask else Resampling.bilinear)
        prob, transform, src_crs = out, dst_transform, crs
    return Probability(prob, np.isfinite(prob), transform, src_crs)
