"""Preparation: a fetched product -> an analysis-ready Cloud-Optimized GeoTIFF on the area's grid.

The bands the models need are read from a SAFE zip (JP2), per-band GeoTIFFs (OSCD, STAC COG
assets) or one multi-band raster (a local drop), resampled and reprojected onto the area's grid
(finer source pixels are averaged, coarser ones interpolated bilinearly, so 20 m bands come out at
10 m), cropped to the area plus its margin and written as a tiled, compressed COG with nodata 0
and each band's name as its description. A ``.clear.tif`` sidecar on the same grid marks the
valid, cloud-free pixels of the area (from the scene classification layer where there is one,
else from nodata and masks); the cloud/nodata fraction over the area comes from it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
import shapely
from affine import Affine
from rasterio import features, windows
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import RasterioError
from rasterio.io import MemoryFile
from rasterio.warp import reproject as warp
from rasterio.warp import transform_bounds
from shapely.geometry import MultiPolygon, shape
from shapely.geometry.base import BaseGeometry

from monitor.builtins import canonical_band
from monitor.domain import SKIP_BAND
from monitor.errors import ImageryError, NoCRS, SceneTooLarge, UnnamedBands
from monitor.geo import as_multipolygon, reproject
from monitor.imagery.base import Band, Product, band_sort_key
from monitor.imagery.fetch import file_hashes
from monitor.imagery.grid import Grid

# Scene classification (Sentinel-2 L2A) classes that count as clear ground: dark area pixels,
# vegetation, not vegetated, water, unclassified, snow/ice. The others are no data,
# saturated/defective, cloud shadow, medium/high probability cloud and thin cirrus.
SCL_CLEAR = (2, 4, 5, 6, 7, 11)
# DEFLATE level 3 writes four times faster than the default 6 for about 5 % more bytes.
COG_OPTIONS = {"compress": "DEFLATE", "level": 3, "blocksize": 512, "bigtiff": "IF_SAFER",
               "num_threads": "ALL_CPUS", "overview_resampling": "AVERAGE"}


@dataclass
class Prepared:
    """A prepared scene: the COG, its clear-mask sidecar, the cloud/nodata % over the area and the
    clear part of the area (EPSG:4326; None when nothing is clear)."""

    path: Path
    clear_path: Path
    cloud_cover: float
    clear_geom: MultiPolygon | None
    checksum: str  # SHA-256 of the COG
    size_bytes: int
    bands: list[str | None]
    unusable: str | None = None  # why the scene cannot be used at all, whatever its cloud cover


def clear_path_for(path: str | Path) -> Path:
    """The clear-mask sidecar of a prepared COG: ``<stem>.clear.tif`` beside it."""
    path = Path(path)
    return path.with_name(path.stem + ".clear.tif")


# --- where the bands are -----------------------------------------------------------------------

_SAFE_BAND = re.compile(r"GRANULE/[^/]+/IMG_DATA/(?:R(\d+)m/)?[^/]*_(B\d[\dA]|SCL)(?:_(\d+)m)?\.jp2$")


def safe_product(zip_path: Path, bands: list[str]) -> Product:
    """The bands (finest resolution available) and SCL of a Sentinel-2 SAFE zip (L1C or L2A)."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError) as e:
        raise ImageryError(f"{Path(zip_path).name} is not a readable zip archive: {e}") from e
    found: dict[str, dict[int, list[str]]] = {}
    for n in names:
        m = _SAFE_BAND.search(n)
        if m:
            res = int(m.group(1) or m.group(3) or 0)
            found.setdefault(m.group(2), {}).setdefault(res, []).append(f"/vsizip/{zip_path}/{n}")
    missing = [b for b in bands if b not in found]
    if missing:
        have = ", ".join(sorted((b for b in found if b != "SCL"), key=band_sort_key)) or "none"
        raise ImageryError(f"{Path(zip_path).name} holds no Sentinel-2 band {', '.join(missing)} "
                           f"(bands found: {have})")

    def finest(name: str) -> Band:
        by_res = found[name]
        return Band(name, sorted(by_res[min(by_res)]))

    return Product([finest(b) for b in bands], scl=finest("SCL") if "SCL" in found else None,
                   zero_is_nodata=True)


def raster_bands(path: Path, wanted: list[str]) -> list[Band]:
    """The bands of one multi-band raster: the wanted ones where its band descriptions name them
    all, else every band that is not an alpha band. Each is named by its description, or by its
    colour interpretation where the file marks red, green and blue (RGB imagery), else unnamed."""
    try:
        with rasterio.open(path) as src:
            descs, interp, count = src.descriptions, src.colorinterp, src.count
    except RasterioError as e:
        raise ImageryError(f"{Path(path).name} is not a readable raster: {e}") from e
    names = [canonical_band(d) for d in descs]
    if not any(names) and {ColorInterp.red, ColorInterp.green, ColorInterp.blue} <= set(interp):
        names = [canonical_band(ci.name) for ci in interp]
    wanted = list(dict.fromkeys(canonical_band(b) or b for b in wanted))  # blue and B02 are one band
    if wanted and all(b in names for b in wanted):
        idx = [names.index(b) + 1 for b in wanted]
    else:
        idx = [i for i in range(1, count + 1) if interp[i - 1] != ColorInterp.alpha] or list(range(1, count + 1))
    return [Band(names[i - 1], [str(path)], i) for i in idx]


def name_bands(product: Product, band_order: Sequence[str] | None, wanted: Sequence[str]) -> Product:
    """The product's bands with Sentinel-2 names, the wanted ones first in their order.

    Bands named by the file (descriptions, RGB colour interpretation) keep their names; a file
    whose bands carry no names needs the area's band order (one name per band of the file, ``-``
    for a band to skip); without one the scene fails with ``UnnamedBands``: imagery is never read
    by position. The band order lists every band of the file, or every band but its alpha bands."""
    bands = product.bands
    if not all(b.name for b in bands):
        files = sorted({Path(p).name for b in bands for p in b.paths})
        if not band_order:
            raise UnnamedBands(
                f"{', '.join(files)}: its bands carry no names (no band descriptions), so which is red, "
                "green, blue or near infrared is unknown: give the area its band order, e.g. "
                "`monitor areas configure NAME --band-order B04,B03,B02,B08`")
        with rasterio.open(bands[0].paths[0]) as src:
            count = src.count
        path = bands[0].paths
        if len(band_order) == count:  # every band of the file, alpha bands included
            bands = [Band(n, path, i) for i, n in enumerate(band_order, 1) if n != SKIP_BAND]
        elif len(band_order) == len(bands):  # the bands that are not alpha bands
            bands = [Band(n, b.paths, b.index) for n, b in zip(band_order, bands) if n != SKIP_BAND]
        else:
            raise ImageryError(f"{', '.join(files)} has {count} bands ({len(bands)} besides alpha) but the area's "
                               f"band order names {len(band_order)} ({','.join(band_order)})")
    by_name = {b.name: b for b in bands}
    wanted = list(dict.fromkeys(canonical_band(w) or w for w in wanted))
    chosen = [by_name[w] for w in wanted if w in by_name] or bands
    return dataclasses.replace(product, bands=chosen)


# --- onto the grid -----------------------------------------------------------------------------

def _source_window(src, grid: Grid):
    """The window of ``src`` that covers the grid (padded by a few pixels), or None."""
    left, bottom, right, top = transform_bounds(rasterio.crs.CRS.from_epsg(grid.crs), src.crs, *grid.bounds,
                                                densify_pts=21)
    win = windows.from_bounds(left, bottom, right, top, transform=src.transform)
    col0, row0 = math.floor(win.col_off) - 2, math.floor(win.row_off) - 2
    col1, row1 = math.ceil(win.col_off + win.width) + 2, math.ceil(win.row_off + win.height) + 2
    win = windows.Window(col0, row0, col1 - col0, row1 - row0)
    try:
        return win.intersection(windows.Window(0, 0, src.width, src.height))
    except windows.WindowError:
        return None


def _metres(src) -> float:
    """The source's finest pixel size in metres (about 111 km a degree for a geographic CRS: only to
    compare resolutions)."""
    return min(src.res) * (111_000 if src.crs.is_geographic else 1)


def check_size(product: Product, grid: Grid, *, max_pixels: float, max_ratio: float) -> None:
    """Refuse, from the raster headers alone (no pixel is read), a product whose file declares more
    than ``max_pixels`` pixels, or whose part over the area would be read as more than ``max_ratio``
    source pixels per pixel of the area's grid (a source read decimated from its overviews counts at
    the overview's size). A file much smaller than its declared size (sparse) passes when it is
    within both: only the window over the area is ever read."""
    paths = dict.fromkeys(p for b in [*product.bands, *([product.scl] if product.scl else [])] for p in b.paths)
    for path in paths:
        try:
            with rasterio.open(path) as src:
                width, height, crs = src.width, src.height, src.crs
                declared = width * height
                if declared > max_pixels:
                    raise SceneTooLarge(f"{_short(path)} declares {width} x {height} = {declared:.3g} pixels, more "
                                        f"than MONITOR_MAX_SCENE_PIXELS ({max_pixels:.3g}); it was not read")
                if crs is None:
                    continue  # refused when it is read: no CRS
                win = _source_window(src, grid)
                if win is None or win.width < 1 or win.height < 1:
                    continue
                step = max(1, int(grid.resolution / (2 * _metres(src))))
                factor = max([f for f in src.overviews(1) if f <= step], default=1)
                read = (win.width / factor) * (win.height / factor)
                res_m = _metres(src)
        except RasterioError as e:
            raise ImageryError(f"cannot read {_short(path)}: {e}") from e
        needed = grid.width * grid.height
        if read > max_ratio * needed:
            raise SceneTooLarge(
                f"{_short(path)}: its part over the area is {int(win.width)} x {int(win.height)} pixels of "
                f"{res_m:.3g} m ({read:.3g} pixels to read{' from overview 1/%d' % factor if factor > 1 else ''}), "
                f"{read / needed:.3g} times the {grid.width} x {grid.height} pixels of the area's {grid.resolution:g} m "
                f"grid, more than MONITOR_MAX_SCENE_PIXEL_RATIO ({max_ratio:g}); it was not read (give the file "
                "overviews, e.g. `gdaladdo`, or the area a finer --resolution)")


def _warp_file(path: str, indexes: list[int], grid: Grid, *, categorical: bool, zero_is_nodata: bool):
    """Bands ``indexes`` of one file on the grid, and where that file has valid data."""
    try:
        with rasterio.open(path) as src:
            if src.crs is None:
                raise NoCRS(f"{_short(path)} has no CRS (not georeferenced)")
            dtype = np.result_type(*[src.dtypes[i - 1] for i in indexes])
            out = np.zeros((len(indexes), *grid.shape), dtype=dtype)
            valid = np.zeros(grid.shape, dtype=bool)
            win = _source_window(src, grid)
            if win is None or win.width < 1 or win.height < 1:
                return out, valid, src.descriptions
            src_res = _metres(src)
            # A source much finer than the grid (very-high-resolution imagery) is read decimated to
            # about twice the grid's resolution, from its overviews where it has them, so memory
            # follows the grid, not the source.
            step = max(1, int(grid.resolution / (2 * src_res)))
            shape = (math.ceil(win.height / step), math.ceil(win.width / step))
            how = Resampling.nearest if categorical else Resampling.average
            data = src.read(indexes, window=win, out_shape=(len(indexes), *shape), resampling=how)
            mask = (src.read_masks(indexes, window=win, out_shape=(len(indexes), *shape)) > 0).any(axis=0)
            for i, ci in enumerate(src.colorinterp, 1):
                if ci == ColorInterp.alpha and i not in indexes:
                    mask &= src.read(i, window=win, out_shape=shape) > 0
            if zero_is_nodata:
                mask &= (data != 0).all(axis=0)
            if np.issubdtype(data.dtype, np.floating):  # NaN and infinities are no data, whatever the nodata tag
                mask &= np.isfinite(data).all(axis=0)
            src_transform = src.window_transform(win) * Affine.scale(win.width / shape[1], win.height / shape[0])
            src_res *= step
            src_crs = src.crs
            descriptions = src.descriptions
    except RasterioError as e:
        raise ImageryError(f"cannot read {_short(path)}: {e}") from e
    finer = src_res < grid.resolution * 0.99
    if categorical:
        resampling = Resampling.mode if finer else Resampling.nearest
    else:
        resampling = Resampling.average if finer else Resampling.bilinear
    # Invalid source pixels become the fill value so that they never blend into valid ones.
    fill = 0
    data = np.where(mask, data, fill).astype(dtype, copy=False)
    for k in range(len(indexes)):
        warp(data[k], out[k], src_transform=src_transform, src_crs=src_crs, src_nodata=fill,
             dst_transform=grid.transform, dst_crs=f"EPSG:{grid.crs}", dst_nodata=fill, resampling=resampling,
             init_dest_nodata=True)
    if zero_is_nodata:  # invalid pixels were warped as 0, the nodata value: the data is its own mask
        return out, (out != 0).all(axis=0), descriptions
    coverage = np.zeros(grid.shape, dtype=np.uint8)
    warp(mask.astype(np.uint8), coverage, src_transform=src_transform, src_crs=src_crs,
         dst_transform=grid.transform, dst_crs=f"EPSG:{grid.crs}", resampling=Resampling.nearest)
    return out, coverage > 0, descriptions


def _short(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def _warp_band(band: Band, grid: Grid, *, categorical: bool, zero_is_nodata: bool):
    """One band on the grid (granules of a multi-granule product mosaicked) and its valid pixels."""
    acc, valid = None, np.zeros(grid.shape, dtype=bool)
    for p in band.paths:
        data, v, _ = _warp_file(p, [band.index], grid, categorical=categorical, zero_is_nodata=zero_is_nodata)
        if acc is None:
            acc = data[0]
        else:
            acc = np.where(v & ~valid, data[0], acc)
        valid |= v
    return acc, valid


def area_mask(area_4326: BaseGeometry, grid: Grid) -> np.ndarray:
    """Pixels of the grid inside the area (pixel centres; every touched pixel for a tiny area)."""
    geom = reproject(area_4326, 4326, grid.crs)
    inside = features.geometry_mask([geom], grid.shape, grid.transform, invert=True)
    if not inside.any():
        inside = features.geometry_mask([geom], grid.shape, grid.transform, invert=True, all_touched=True)
    return inside


def clear_polygons(clear: np.ndarray, grid: Grid, area_4326: BaseGeometry) -> MultiPolygon | None:
    """The clear pixels' region inside the area, as an EPSG:4326 MultiPolygon (None when nothing is clear)."""
    polys = [shape(g) for g, _ in features.shapes(clear.astype(np.uint8), mask=clear, transform=grid.transform)]
    if not polys:
        return None
    geom = reproject(shapely.union_all(polys), grid.crs, 4326)
    geom = as_multipolygon(shapely.intersection(shapely.make_valid(geom), area_4326))
    return None if geom.is_empty else geom


def _write_cog(path: Path, stack: np.ndarray, grid: Grid, *, nodata, descriptions, resampling: str) -> None:
    tmp = path.with_name(path.name + ".part")
    profile = dict(driver="GTiff", width=grid.width, height=grid.height, count=stack.shape[0],
                   dtype=stack.dtype, crs=f"EPSG:{grid.crs}", transform=grid.transform, nodata=nodata)
    try:
        with MemoryFile() as mem:
            with mem.open(**profile) as ds:
                ds.write(stack)
                for i, d in enumerate(descriptions, 1):
                    if d:
                        ds.set_band_description(i, d)
            with mem.open() as ds:
                rasterio.shutil.copy(ds, tmp, driver="COG", **{**COG_OPTIONS, "overview_resampling": resampling},
                                     predictor="2" if np.issubdtype(stack.dtype, np.integer) else "3")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def prepare(product: Product, grid: Grid, area_4326: BaseGeometry, out: Path) -> Prepared:
    """Put ``product`` on ``grid``, write ``out`` (COG) and its ``.clear.tif`` sidecar."""
    if not product.bands:
        raise ImageryError("the product has no bands to prepare")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    arrays, names = [], []
    valid = np.ones(grid.shape, dtype=bool)
    # Bands of one file are read together; files are combined so that a pixel is valid only where
    # every file has data.
    by_file: dict[tuple[str, ...], list[Band]] = {}
    for b in product.bands:
        by_file.setdefault(tuple(b.paths), []).append(b)
    warped: dict[int, np.ndarray] = {}
    for paths, group in by_file.items():
        if len(paths) == 1:
            data, v, _ = _warp_file(paths[0], [b.index for b in group], grid, categorical=False,
                                        zero_is_nodata=product.zero_is_nodata)
            for k, b in enumerate(group):
                warped[id(b)] = data[k]
        else:
            for b in group:
                warped[id(b)], v = _warp_band(b, grid, categorical=False, zero_is_nodata=product.zero_is_nodata)
        valid &= v
    for b in product.bands:
        arrays.append(warped[id(b)])
        names.append(b.name)
    stack = np.stack(arrays).astype(np.result_type(*arrays), copy=False)
    inside = area_mask(area_4326, grid)
    clear = valid & inside
    if product.scl is not None:
        scl, scl_valid = _warp_band(product.scl, grid, categorical=True, zero_is_nodata=True)
        lut = np.zeros(256, dtype=bool)
        lut[list(SCL_CLEAR)] = True
        clear &= scl_valid & lut[scl.astype(np.uint8)]
    for band in stack:
        if np.issubdtype(stack.dtype, np.integer):
            # 0 is nodata in the output, so a valid pixel that happens to be 0 becomes 1.
            np.maximum(band, 1, out=band)
        band *= valid
    cloud = 100.0 * (1.0 - clear.sum() / max(int(inside.sum()), 1))
    unusable = unusable_reason(stack, clear, names)
    clear_file = clear_path_for(out)
    try:
        _write_cog(out, stack, grid, nodata=0, descriptions=names, resampling="AVERAGE")
        _write_cog(clear_file, clear.astype(np.uint8)[None], grid, nodata=None, descriptions=["clear"],
                   resampling="NEAREST")
        digest = file_hashes(out, {"sha256"})["sha256"]
    except Exception:
        out.unlink(missing_ok=True)
        clear_file.unlink(missing_ok=True)
        raise
    return Prepared(out, clear_file, round(float(cloud), 4), clear_polygons(clear, grid, area_4326), digest,
                    out.stat().st_size, names, unusable)


def unusable_reason(stack: np.ndarray, clear: np.ndarray, names: Sequence[str | None]) -> str | None:
    """Why a prepared scene holds no usable imagery over the area, or None: no valid pixel there, or one
    value everywhere in every band (a fill, a failed export). A single empty band (a missing NIR) is
    left to the models, which read a band constant on either date as no change."""
    if not clear.any():
        return "no valid pixel over the area (all nodata, NaN or masked)"
    flat = [(band[clear].min(), band[clear].max()) for band in stack]
    if all(lo == hi for lo, hi in flat):
        values = ", ".join(f"{names[i] or i + 1}={lo:g}" for i, (lo, _hi) in enumerate(flat))
        return f"every band has one value everywhere over the area ({values})"
    return None
