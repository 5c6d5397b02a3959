"""Web-Mercator map tiles (XYZ, 256 px PNG) of prepared scene files, for the review page's map.

True colour comes from the band descriptions (B04, B03, B02 for Sentinel-2; red, green, blue or
R, G, B otherwise), else the colour interpretation, else the first three bands; a one-band file
is grey. The stretch is the scene's own: between the 2nd and 98th percentiles over the whole scene,
so that neighbouring tiles match and each date looks its best. In true colour the three bands share
one stretch (the lowest low and the highest high), which keeps the colours' balance: a roof or a
field keeps its hue from one date to the next. Other bands are stretched each on its own; 0..1
floats (probabilities) are drawn as they are. Nodata and masked pixels are transparent.

A scene's style (bands, stretch, bounds, zoom levels) is computed once per file and kept in
memory, keyed by the file's path, size and modification time.
"""

from __future__ import annotations

import functools
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import RasterioIOError
from rio_tiler.errors import RioTilerError, TileOutsideBounds
from rio_tiler.io import Reader

from monitor.errors import ImageryError, NotFound

TILE_PX = 256
STRETCH_PERCENTILES = (2.0, 98.0)
STATS_MAX_PX = 1024  # the percentiles are taken on a decimated read of at most this many pixels a side
RGB_NAMES = (("B04", "B03", "B02"), ("RED", "GREEN", "BLUE"), ("R", "G", "B"))


@dataclass(frozen=True)
class SceneStyle:
    """How a scene file is drawn: which bands (1-based), their names, the stretch of each, and where
    and at which zoom levels it has tiles."""

    indexes: tuple[int, ...]
    bands: tuple[str, ...]
    rendering: str  # true colour | first three bands | grey
    stretch: tuple[tuple[float, float], ...]
    bounds: tuple[float, float, float, float]  # lon/lat
    minzoom: int
    maxzoom: int


def choose_bands(descriptions, colorinterp, count: int) -> tuple[tuple[int, ...], str]:
    """Band indexes (1-based) to draw and how: true colour from band names or colour
    interpretation, else the first three bands, else the first band in grey."""
    names = [(d or "").strip().upper() for d in descriptions]
    for rgb in RGB_NAMES:
        if all(n in names for n in rgb):
            return tuple(names.index(n) + 1 for n in rgb), "true colour"
    if count >= 3 and tuple(colorinterp[:3]) == (ColorInterp.red, ColorInterp.green, ColorInterp.blue):
        return (1, 2, 3), "true colour"
    if count >= 3:
        return (1, 2, 3), "first three bands"
    return (1,), "grey"


def stretch_of(band: np.ma.MaskedArray) -> tuple[float, float]:
    """The (low, high) a band is stretched between."""
    values = band.compressed().astype("float64")
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    if np.issubdtype(band.dtype, np.floating) and values.min() >= 0 and values.max() <= 1:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(values, STRETCH_PERCENTILES))
    if hi <= lo:
        lo, hi = float(values.min()), float(max(values.max(), values.min() + 1))
    return lo, hi


def _open_error(path: str, e: Exception) -> Exception:
    if not Path(path).is_file():
        return NotFound("the scene's file is missing on the server", field="scene_id")
    return ImageryError(f"{path}: cannot read the scene file: {e}")


@functools.lru_cache(maxsize=128)
def _style(path: str, _size: int, _mtime_ns: int) -> SceneStyle:
    try:
        with rasterio.open(path) as src:
            if src.crs is None:
                raise ImageryError(f"{path}: has no CRS")
            indexes, rendering = choose_bands(src.descriptions, src.colorinterp, src.count)
            scale = max(1.0, max(src.width, src.height) / STATS_MAX_PX)
            shape = (len(indexes), max(1, round(src.height / scale)), max(1, round(src.width / scale)))
            data = src.read(list(indexes), out_shape=shape, masked=True, resampling=Resampling.nearest)
            names = tuple(src.descriptions[i - 1] or f"band {i}" for i in indexes)
        with Reader(path) as reader:
            bounds = tuple(float(v) for v in reader.get_geographic_bounds("EPSG:4326"))
            minzoom, maxzoom = int(reader.minzoom), int(reader.maxzoom)
    except (RasterioIOError, RioTilerError) as e:
        raise _open_error(path, e) from e
    stretch = [stretch_of(band) for band in data]
    if rendering == "true colour":
        stretch = [(min(lo for lo, _ in stretch), max(hi for _, hi in stretch))] * len(stretch)
    return SceneStyle(indexes=indexes, bands=names, rendering=rendering, stretch=tuple(stretch),
                      bounds=bounds, minzoom=min(minzoom, maxzoom), maxzoom=maxzoom)  # type: ignore[arg-type]


def scene_style(path: str | os.PathLike) -> SceneStyle:
    """The style of a scene file (cached while the file is unchanged)."""
    path = str(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise NotFound("the scene's file is missing on the server", field="scene_id") from None
    return _style(path, st.st_size, st.st_mtime_ns)


def render_tile(path: str | os.PathLike, z: int, x: int, y: int) -> bytes | None:
    """The PNG of tile z/x/y (Web Mercator, XYZ numbering), or None where the scene has no pixels."""
    style = scene_style(path)
    try:
        with Reader(str(path)) as reader:
            image = reader.tile(x, y, z, tilesize=TILE_PX, indexes=style.indexes)
    except TileOutsideBounds:
        return None
    except (RasterioIOError, RioTilerError) as e:
        raise _open_error(str(path), e) from e
    if not image.mask.any():
        return None
    image = image.rescale(in_range=style.stretch)
    bands = np.asarray(image.data, dtype=np.uint8)
    alpha = np.asarray(image.mask, dtype=np.uint8)
    pixels = np.dstack([bands[0], alpha] if len(bands) == 1 else [*bands[:3], alpha])
    out = io.BytesIO()
    Image.fromarray(pixels, "LA" if len(bands) == 1 else "RGBA").save(out, format="PNG")
    return out.getvalue()
