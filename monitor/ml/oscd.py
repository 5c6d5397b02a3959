"""Change datasets: the OSCD conversion and the project's change-training layout.

Layout, one folder per city (or site)::

    DIR/summary.json           kind "change", bands, and per city: dates, size, CRS, change fraction
    DIR/<city>/before.tif      all bands of the first date (uint16 for OSCD), band descriptions B01 ... B12
    DIR/<city>/after.tif       the same bands of the second date, on the same grid
    DIR/<city>/change.tif      uint8: 1 = change, 0 = no change, 255 = unknown (absent for unlabelled cities)

Every file of a city shares the CRS and transform of the city's 10 m grid.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import rasterio
from rasterio.warp import Resampling, reproject
from tqdm import tqdm

from monitor.errors import BadInput
from monitor.ml.datasets import commit_out, prepare_out, read_summary
from monitor.ml.rasters import band_indexes, pixel_size_m

OSCD_BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]
UNKNOWN = 255


def write_city(out_dir: str | Path, name: str, before: np.ndarray, after: np.ndarray, change: np.ndarray | None, *,
               crs, transform, bands: list[str], dates: tuple[str, str] | None = None,
               nodata: float | None = None) -> dict:
    """Write one city of the change layout from (H, W, C) arrays, ``nodata`` marking pixels without data
    in before and after; returns its summary entry."""
    before, after = np.asarray(before), np.asarray(after)
    if before.shape != after.shape or before.ndim != 3 or before.shape[2] != len(bands):
        raise BadInput(f"{name}: before {before.shape} and after {after.shape} must both be (H, W, {len(bands)})")
    h, w, n = before.shape
    d = Path(out_dir) / name
    d.mkdir(parents=True, exist_ok=True)
    profile = {"driver": "GTiff", "height": h, "width": w, "crs": crs, "transform": transform,
               "compress": "deflate", "tiled": True, "blockxsize": 256, "blockysize": 256}
    for fname, arr, date in (("before.tif", before, dates[0] if dates else None),
                             ("after.tif", after, dates[1] if dates else None)):
        with rasterio.open(d / fname, "w", count=n, dtype=arr.dtype, nodata=nodata, **profile) as dst:
            dst.write(np.moveaxis(arr, -1, 0))
            for i, b in enumerate(bands, 1):
                dst.set_band_description(i, b)
            if date:
                dst.update_tags(date=date)
    entry = {"dates": list(dates) if dates else None, "height": h, "width": w,
             "crs": rasterio.crs.CRS.from_user_input(crs).to_string(), "transform": list(transform)[:6],
             "labelled": change is not None}
    if change is not None:
        change = np.asarray(change, np.uint8)
        if change.shape != (h, w):
            raise BadInput(f"{name}: change mask {change.shape} is not on the image grid ({h}, {w})")
        with rasterio.open(d / "change.tif", "w", count=1, dtype="uint8", nodata=UNKNOWN, **profile) as dst:
            dst.write(change[None])
        known = change != UNKNOWN
        entry["change_fraction"] = round(float((change[known] == 1).mean()) if known.any() else 0.0, 6)
    return entry


def write_summary(out_dir: str | Path, bands: list[str], cities: dict[str, dict], **extra) -> dict:
    """Write ``summary.json`` of a change dataset; returns it."""
    summary = {"kind": "change", "bands": bands, "cities": cities, **extra,
               "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    (Path(out_dir) / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _band_file(folder: Path, band: str) -> Path:
    hits = sorted(folder.glob(f"*_{band}.tif")) or sorted(folder.glob(f"{band}.tif"))
    if not hits:
        raise BadInput(f"has no {band} band file (*_{band}.tif)", file=folder)
    return hits[0]


def _read_date(folder: Path, grid: dict) -> np.ndarray:
    """All OSCD bands of one date on the 10 m ``grid``: 10 m bands as they are, 20/60 m ones bilinear."""
    out = np.zeros((grid["height"], grid["width"], len(OSCD_BANDS)), np.uint16)
    for i, band in enumerate(OSCD_BANDS):
        with rasterio.open(_band_file(folder, band)) as src:
            if src.crs is None:
                raise BadInput("has no coordinate reference system", file=src.name)
            if (src.height, src.width) == (grid["height"], grid["width"]) and \
                    src.transform.almost_equals(grid["transform"], precision=1e-9):
                out[..., i] = src.read(1)
                continue
            dst = np.zeros((grid["height"], grid["width"]), np.float32)
            reproject(src.read(1).astype(np.float32), dst, src_transform=src.transform, src_crs=src.crs,
                      dst_transform=grid["transform"], dst_crs=grid["crs"], resampling=Resampling.bilinear)
            out[..., i] = np.clip(np.round(dst), 0, 65535).astype(np.uint16)
    return out


def _dates(city_dir: Path) -> tuple[str, str] | None:
    f = city_dir / "dates.txt"
    if not f.is_file():
        return None
    found = dict(re.findall(r"(date_[12])\s*:\s*(\d{8})", f.read_text()))
    if set(found) != {"date_1", "date_2"}:
        raise BadInput("does not give date_1 and date_2 as YYYYMMDD", file=f)
    first, second = (dt.datetime.strptime(found[k], "%Y%m%d").date().isoformat() for k in ("date_1", "date_2"))
    return first, second


def read_oscd_label(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """An OSCD change map as 0 = no change, 1 = change: the files hold 1/2 (a few copies 0/1)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            a = src.read(1)
    if a.shape != shape:
        raise BadInput(f"is {a.shape[1]}x{a.shape[0]} pixels, the city's 10 m bands are {shape[1]}x{shape[0]}",
                       file=path)
    values = set(np.unique(a).tolist())
    if values <= {1, 2}:
        return (a == 2).astype(np.uint8)
    if values <= {0, 1}:
        return a.astype(np.uint8)
    raise BadInput(f"holds values {sorted(values)}; expected 1/2 (no change/change) or 0/1", file=path)


def find_cities(src: Path) -> list[str]:
    """The cities of an OSCD folder."""
    return sorted(p.name for p in (src / "images").iterdir() if (p / "imgs_1").is_dir() and (p / "imgs_2").is_dir()) \
        if (src / "images").is_dir() else []


def convert_oscd(src: str | Path, out: str | Path, *, cities: list[str] | None = None, overwrite: bool = False,
                 progress: bool = False) -> dict:
    """Convert an OSCD folder (``images/<city>/imgs_1|imgs_2``, ``labels/<city>/cm/<city>-cm.tif``) to ``out``.

    The CRS and transform of every city come from its first date's B02; the labels, which carry none,
    are put on that grid. Cities without a label file are converted unlabelled. Returns the summary.
    """
    src, out = Path(src), Path(out)
    found = find_cities(src)
    if not found:
        raise BadInput("holds no OSCD cities (expected images/<city>/imgs_1 and imgs_2)", file=src)
    if cities:
        missing = sorted(set(cities) - set(found))
        if missing:
            raise BadInput(f"has no city {', '.join(missing)} (found {', '.join(found)})", file=src)
        found = [c for c in found if c in cities]
    tmp = prepare_out(out, overwrite)
    try:
        entries = {}
        for city in tqdm(found, desc="oscd", unit="city", disable=not progress):
            city_dir = src / "images" / city
            with rasterio.open(_band_file(city_dir / "imgs_1", "B02")) as ref:
                if ref.crs is None:
                    raise BadInput("has no coordinate reference system", file=ref.name)
                grid = {"height": ref.height, "width": ref.width, "transform": ref.transform, "crs": ref.crs}
            before, after = _read_date(city_dir / "imgs_1", grid), _read_date(city_dir / "imgs_2", grid)
            label_file = src / "labels" / city / "cm" / f"{city}-cm.tif"
            change = read_oscd_label(label_file, (grid["height"], grid["width"])) if label_file.is_file() else None
            entries[city] = write_city(tmp, city, before, after, change, crs=grid["crs"], transform=grid["transform"],
                                       bands=OSCD_BANDS, dates=_dates(city_dir))
            with rasterio.open(tmp / city / "before.tif") as r:
                entries[city]["resolution_m"] = round(pixel_size_m(r) or 0.0, 2)
        summary = write_summary(tmp, OSCD_BANDS, entries, source=str(src.resolve()), resolution_m=10.0)
        commit_out(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def read_change_summary(data_dir: str | Path) -> dict:
    """The ``summary.json`` of a change dataset, checked to be one."""
    summary = read_summary(data_dir)
    if summary.get("kind") != "change":
        raise BadInput(f"is a {summary.get('kind')} dataset, not a change dataset", file=data_dir)
    return summary


def load_city(data_dir: str | Path, city: str, bands: list[str]) -> dict:
    """One city as arrays: ``x`` (H, W, 2C) float32 raw before+after bands, ``change`` (H, W) uint8 or
    None, ``data`` (H, W) bool (data on both dates) and ``valid`` (data and a known label)."""
    d = Path(data_dir) / city
    parts, valid = [], None
    for name in ("before.tif", "after.tif"):
        f = d / name
        if not f.is_file():
            raise BadInput("is missing", file=f)
        with rasterio.open(f) as s:
            a = s.read(band_indexes(s, bands))
            ok = np.ones(a.shape[1:], bool) if s.nodata is None else ~np.any(a == s.nodata, axis=0)
        valid = ok if valid is None else valid & ok
        parts.append(np.moveaxis(a, 0, -1).astype(np.float32))
    change, data = None, valid
    if (d / "change.tif").is_file():
        with rasterio.open(d / "change.tif") as s:
            change = s.read(1)
        valid = valid & (change != UNKNOWN)
    return {"x": np.concatenate(parts, axis=-1), "change": change, "data": data, "valid": valid}
