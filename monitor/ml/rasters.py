"""Raster helpers shared by datasets, training and inference: band lookup by name, pixel size, grids."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import rasterio

from monitor.builtins import canonical_band
from monitor.errors import BadInput


def open_raster(path: str | Path):
    """Open a raster for reading; BadInput naming the file when it cannot be."""
    path = Path(path)
    if not path.is_file():
        raise BadInput("raster does not exist", file=path)
    try:
        return rasterio.open(path)
    except rasterio.errors.RasterioIOError as e:
        raise BadInput(f"not a readable raster: {e}", file=path) from e


def band_names(src) -> list[str]:
    """The bands' descriptions (B02, ...), or band1, band2, ... for a file that has none."""
    if not any(src.descriptions):
        return [f"band{i}" for i in range(1, src.count + 1)]
    return [d or f"band{i}" for i, d in enumerate(src.descriptions, 1)]


def band_indexes(src, wanted: list[str]) -> list[int]:
    """1-based indexes of the ``wanted`` bands, found by description (a Sentinel-2 name or its common name:
    B02/blue, B03/green, B04/red, B08/nir); by position when the file has none."""
    if not any(src.descriptions):
        if src.count < len(wanted):
            raise BadInput(f"has {src.count} bands without names, the model needs {len(wanted)} "
                           f"({', '.join(wanted)})", file=src.name)
        return list(range(1, len(wanted) + 1))
    names = band_names(src)
    keys = [canonical_band(n) or n.lower() for n in names]

    def find(b: str) -> int | None:
        key = canonical_band(b) or b.lower()
        return keys.index(key) + 1 if key in keys else None

    found = {b: find(b) for b in wanted}
    missing = [b for b, i in found.items() if i is None]
    if missing:
        raise BadInput(f"lacks band(s) {', '.join(missing)} (it has {', '.join(names)})", file=src.name)
    return [int(found[b]) for b in wanted]  # type: ignore[arg-type]


def pixel_size_m(src) -> float | None:
    """Mean pixel side in metres (geographic CRSs measured at the raster's centre); None without a CRS."""
    if src.crs is None:
        return None
    a, e = abs(src.transform.a), abs(src.transform.e)
    if src.crs.is_geographic:
        lat = math.radians(src.transform.f + src.transform.e * src.height / 2)
        return float((a * math.cos(lat) + e) / 2 * 111_320.0)
    factor = src.crs.linear_units_factor[1] if src.crs.linear_units_factor else 1.0
    return float((a + e) / 2 * factor)


def same_grid(a, b) -> bool:
    """Whether two rasters share CRS, size and transform."""
    return (a.crs == b.crs and a.width == b.width and a.height == b.height
            and a.transform.almost_equals(b.transform, precision=1e-9))


def valid_mask(src, data_chw: np.ndarray) -> np.ndarray:
    """(H, W) True where every band holds data: not the nodata value, not NaN."""
    valid = np.ones(data_chw.shape[1:], bool)
    if src.nodata is not None and not np.isnan(src.nodata):
        valid &= ~np.any(data_chw == src.nodata, axis=0)
    if np.issubdtype(data_chw.dtype, np.floating):
        valid &= ~np.any(np.isnan(data_chw), axis=0)
    return valid

