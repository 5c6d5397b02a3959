"""The imagery's own word on the diff's new construction: the change-vector magnitude between the two
dates a piece was decided on. A segmenter that finds, on a later date, a building it had never found
before makes a "new" piece where the image did not change; this check drops it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
import shapely
from rasterio import features
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from shapely.geometry.base import BaseGeometry

from monitor.geo import reproject


def change_magnitude(after: str | Path, before: str | Path,
                     clear: BaseGeometry | None = None) -> tuple[np.ndarray, np.ndarray, rasterio.Affine, str]:
    """Change-vector magnitude between two images of a place, on ``after``'s grid: each band of each image
    standardized by its mean and standard deviation over the pixels both have (and, with ``clear``, an
    EPSG:4326 geometry, that lie in it), then the Euclidean norm of the difference over the bands they
    share. Returns the magnitude, where it is valid, the grid's transform and CRS (as a string)."""
    with rasterio.open(after) as a:
        x = a.read().astype(np.float32)
        ok = np.all(x != (a.nodata if a.nodata is not None else np.nan), axis=0) & np.all(np.isfinite(x), axis=0)
        transform, crs, shape = a.transform, a.crs, (a.height, a.width)
        with rasterio.open(before) as b:
            same = b.crs == crs and b.transform == transform and (b.height, b.width) == shape
            src = b if same else WarpedVRT(b, crs=crs, transform=transform, width=shape[1], height=shape[0],
                                           resampling=Resampling.bilinear)
            y = src.read().astype(np.float32)
            ok &= np.all(y != (b.nodata if b.nodata is not None else np.nan), axis=0) & np.all(np.isfinite(y), axis=0)
    if clear is not None:
        ok &= features.geometry_mask([reproject(clear, 4326, crs)], shape, transform, invert=True)
    bands = min(len(x), len(y))
    total = np.zeros(shape, np.float32)
    for k in range(bands):
        for img in (x, y):
            v = img[k][ok]
            img[k] = (img[k] - v.mean()) / (v.std() or 1.0) if v.size else 0.0
        total += (x[k] - y[k]) ** 2
    return np.sqrt(total), ok, transform, str(crs)


def robust_cut(magnitude: np.ndarray, valid: np.ndarray, z: float) -> float:
    """``z`` robust standard deviations (1.4826 x the median absolute deviation) above the median of the
    valid magnitudes; infinity where nothing is valid."""
    v = magnitude[valid]
    if v.size == 0:
        return float("inf")
    med = float(np.median(v))
    return med + z * 1.4826 * float(np.median(np.abs(v - med)))


def mean_inside(magnitude: np.ndarray, valid: np.ndarray, transform, geom: BaseGeometry) -> float | None:
    """Mean valid magnitude inside ``geom`` (in the magnitude's CRS; pixel centres, or every pixel it touches
    when it covers no centre); None when no valid pixel is inside."""
    for touched in (False, True):
        inside = features.geometry_mask([geom], magnitude.shape, transform, invert=True, all_touched=touched)
        if inside.any():
            break
    seen = inside & valid
    return float(magnitude[seen].mean()) if seen.any() else None


def unchanged(pieces: list[tuple[int, BaseGeometry]], after: str | Path, before: str | Path, z: float,
              clear: BaseGeometry | None = None) -> list[int]:
    """Ids of ``pieces`` (id, EPSG:4326 geometry) decided between ``before`` and ``after`` whose mean
    change-vector magnitude is under ``robust_cut(z)`` of the scene: construction the imagery does not
    show. A piece without a valid pixel is not judged (kept)."""
    if not pieces:
        return []
    mag, valid, transform, crs = change_magnitude(after, before, clear)
    cut = robust_cut(mag, valid, z)
    out = []
    for i, geom in pieces:
        m = mean_inside(mag, valid, transform, reproject(shapely.force_2d(geom), 4326, crs))
        if m is not None and m < cut:
            out.append(i)
    return out
