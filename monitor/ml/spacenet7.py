"""SpaceNet 7 tiles (monthly mosaics and building footprints with persistent ids) as training data.

A tile folder holds ``images/global_monthly_YYYY_MM_mosaic_<tile>.tif`` (R, G, B, alpha; EPSG:3857) and
``labels/global_monthly_YYYY_MM_mosaic_<tile>_Buildings.geojson`` (footprints with an ``Id`` that
persists from month to month). The conversion puts every month on the tile's UTM grid at about the
mosaics' ground resolution: web-mercator "metres" are stretched by 1/cos(latitude), so areas are
measured only after reprojecting the footprints. Alpha 0 becomes no data.

Layout written by ``convert_spacenet7``::

    DS/summary.json                       kind "segmenter", the grid, months, split, counts
    DS/{train,validation}/images/*.tif    uint8 red, green, blue; nodata 0 (tiles named <month>_rRRRR_cCCCC)
    DS/{train,validation}/masks/*.tif     uint8 1 inside a footprint of that month
    DS/{train,validation}/buildings/*.tif uint32 building Id + 1 (0 = none), every touched pixel
    DS/buildings.csv                      id, first_month, last_month, area_m2, lon, lat, part
    DS/change/                            the change layout (``monitor.ml.oscd``) of two months: new buildings

The split is by location: the east ``val_fraction`` of the grid's columns is validation, the rest
training; tiles are cut from each part separately (edge tiles padded with no data), so that no pixel
of one part is in a tile of the other.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import ColorInterp, Resampling
from rasterio.features import rasterize
from rasterio.warp import reproject as warp
from rasterio.warp import transform_bounds
from tqdm import tqdm

from monitor.errors import BadInput
from monitor.geo import reproject, utm_epsg
from monitor.ml.datasets import commit_out, prepare_out
from monitor.ml.oscd import UNKNOWN, write_city, write_summary
from monitor.readers import read_polygons

BANDS = ["red", "green", "blue"]
SIZE_CLASSES = ((0.0, 100.0, "<100"), (100.0, 300.0, "100-300"), (300.0, math.inf, ">300"))
_MONTH = re.compile(r"(?<!\d)(\d{4})_(\d{2})(?!\d)")


@dataclass(frozen=True)
class Month:
    """One month of a tile: ``month`` as YYYY-MM, its mosaic and its footprint file."""

    month: str
    image: Path
    labels: Path


@dataclass(frozen=True)
class UtmGrid:
    """A north-up grid in a UTM zone."""

    epsg: int
    transform: Affine
    width: int
    height: int


def split_column(width: int, val_fraction: float) -> int:
    """The first column of the validation part: the east ``val_fraction`` of ``width`` columns."""
    return width - max(1, int(round(width * val_fraction)))


def size_class(area: float) -> str:
    """The size class (<100, 100-300, >300 m²) of a footprint area."""
    return next(name for lo, hi, name in SIZE_CLASSES if lo <= area < hi)


def find_months(tile_dir: str | Path) -> list[Month]:
    """The months of a SpaceNet 7 tile folder, oldest first; BadInput when there are none or a label is missing."""
    tile_dir = Path(tile_dir)
    images = sorted((tile_dir / "images").glob("*.tif")) if (tile_dir / "images").is_dir() else []
    months = []
    for img in images:
        m = _MONTH.search(img.name)
        if not m:
            raise BadInput("carries no YYYY_MM month in its name", file=img)
        labels = tile_dir / "labels" / f"{img.stem}_Buildings.geojson"
        if not labels.is_file():
            raise BadInput(f"has no footprint file {labels.name} in labels/", file=img)
        months.append(Month(f"{m.group(1)}-{m.group(2)}", img, labels))
    if not months:
        raise BadInput("holds no monthly mosaics (expected images/global_monthly_YYYY_MM_mosaic_*.tif)", file=tile_dir)
    months.sort(key=lambda x: x.month)
    if len({m.month for m in months}) != len(months):
        raise BadInput("holds two mosaics of the same month", file=tile_dir)
    return months


def utm_grid(image: str | Path, resolution_m: float) -> UtmGrid:
    """The UTM grid covering a mosaic, edges on multiples of ``resolution_m``."""
    with rasterio.open(image) as src:
        if src.crs is None:
            raise BadInput("has no coordinate reference system", file=image)
        lon0, lat0, lon1, lat1 = transform_bounds(src.crs, "EPSG:4326", *src.bounds, densify_pts=21)
        epsg = utm_epsg((lon0 + lon1) / 2, (lat0 + lat1) / 2)
        left, bottom, right, top = transform_bounds(src.crs, f"EPSG:{epsg}", *src.bounds, densify_pts=21)
    res = float(resolution_m)
    x0, y0 = math.floor(left / res) * res, math.floor(bottom / res) * res
    x1, y1 = math.ceil(right / res) * res, math.ceil(top / res) * res
    return UtmGrid(epsg, Affine(res, 0.0, x0, 0.0, -res, y1), round((x1 - x0) / res), round((y1 - y0) / res))


def read_mosaic(image: str | Path, grid: UtmGrid) -> tuple[np.ndarray, np.ndarray]:
    """A mosaic's red, green and blue bands on ``grid`` (3, H, W) uint8 and where it has data (alpha > 0)."""
    with rasterio.open(image) as src:
        if src.crs is None:
            raise BadInput("has no coordinate reference system", file=image)
        interp = list(src.colorinterp)
        alpha = next((i for i, c in enumerate(interp, 1) if c == ColorInterp.alpha), None)
        colour = {c: i for i, c in enumerate(interp, 1)}
        if all(c in colour for c in (ColorInterp.red, ColorInterp.green, ColorInterp.blue)):
            idx = [colour[ColorInterp.red], colour[ColorInterp.green], colour[ColorInterp.blue]]
        elif src.count >= 3:
            idx = [1, 2, 3]
        else:
            raise BadInput(f"has {src.count} band(s), not red, green and blue", file=image)
        data = src.read(idx)
        ok = src.read(alpha) > 0 if alpha else np.ones(data.shape[1:], bool)
        src_transform, src_crs = src.transform, src.crs
    out = np.zeros((3, grid.height, grid.width), np.uint8)
    kw = {"src_transform": src_transform, "src_crs": src_crs, "dst_transform": grid.transform,
          "dst_crs": f"EPSG:{grid.epsg}"}
    for k in range(3):
        band = np.where(ok, np.maximum(data[k], 1), 0).astype(np.uint8)  # 0 is reserved for no data
        warp(band, out[k], src_nodata=0, dst_nodata=0, resampling=Resampling.bilinear, init_dest_nodata=True, **kw)
    covered = np.zeros((grid.height, grid.width), np.uint8)
    warp(ok.astype(np.uint8), covered, resampling=Resampling.nearest, **kw)
    valid = (covered > 0) & (out > 0).all(axis=0)
    out[:, ~valid] = 0
    return out, valid


def read_footprints(labels: str | Path, epsg: int) -> tuple[np.ndarray, np.ndarray]:
    """Footprints of one month in the UTM zone ``epsg``: ids (int64) and geometries (object array)."""
    labels = Path(labels)
    try:
        if not json.loads(labels.read_text()).get("features"):
            return np.zeros(0, np.int64), np.zeros(0, object)
    except (OSError, json.JSONDecodeError) as e:
        raise BadInput(f"is not a readable GeoJSON file: {e}", file=labels) from e
    feats = read_polygons(labels, what="building footprints")
    ids = []
    for row, number in zip(feats.rows, feats.numbers):
        value = row.get("Id", row.get("id"))
        if value is None:
            raise BadInput("has no Id", file=labels, row=f"{number} (feature)", field="Id")
        ids.append(int(value))
    return np.asarray(ids, np.int64), np.asarray(reproject(feats.geoms, 4326, f"EPSG:{epsg}"), dtype=object)


def footprint_mask(geoms, grid: UtmGrid, *, all_touched: bool = False, values=None) -> np.ndarray:
    """Footprints burnt into ``grid``: 1 inside (or ``values`` per geometry, as uint32)."""
    shape = (grid.height, grid.width)
    if len(geoms) == 0:
        return np.zeros(shape, np.uint32 if values is not None else np.uint8)
    if values is None:
        return rasterize(((g, 1) for g in geoms), out_shape=shape, transform=grid.transform, fill=0, dtype="uint8",
                         all_touched=all_touched)
    return rasterize(zip(geoms, values), out_shape=shape, transform=grid.transform, fill=0, dtype="uint32",
                     all_touched=all_touched)


def building_table(per_month: dict[str, tuple[np.ndarray, np.ndarray]], epsg: int) -> list[dict]:
    """One row per building Id: the first and last month it is labelled, its area (m²) and centroid
    (lon, lat) in its first month."""
    rows: dict[int, dict] = {}
    for month in sorted(per_month):
        ids, geoms = per_month[month]
        for i, g in zip(ids.tolist(), geoms):
            if i not in rows:
                c = reproject(g.centroid, f"EPSG:{epsg}", 4326)
                rows[i] = {"id": i, "first_month": month, "last_month": month, "area_m2": round(float(g.area), 2),
                           "lon": round(c.x, 7), "lat": round(c.y, 7), "x": float(g.centroid.x),
                           "y": float(g.centroid.y)}
            rows[i]["last_month"] = month
    return [rows[i] for i in sorted(rows)]


def new_buildings(per_month: dict[str, tuple[np.ndarray, np.ndarray]], before: str, after: str) -> tuple[np.ndarray,
                                                                                                        np.ndarray]:
    """Ids and footprints (as labelled at ``after``) of the buildings labelled at ``after`` whose Id no
    month up to ``before`` has."""
    seen: set[int] = set()
    for month, (ids, _) in per_month.items():
        if month <= before:
            seen.update(ids.tolist())
    ids, geoms = per_month[after]
    keep = np.array([i not in seen for i in ids.tolist()], bool)
    return ids[keep], geoms[keep]


def _tiles(c0: int, c1: int, height: int, tile: int) -> list[tuple[int, int]]:
    """(row, col) origins of the tiles covering columns [c0, c1) and every row, the last ones padded."""
    return [(r, c) for r in range(0, height, tile) for c in range(c0, c1, tile)]


def _cut(a: np.ndarray, r: int, c: int, tile: int, c1: int) -> np.ndarray:
    """The tile at (r, c) of a (..., H, W) array, columns stopped at ``c1``, padded with 0."""
    piece = a[..., r:r + tile, c:min(c + tile, c1)]
    pad = [(0, 0)] * (a.ndim - 2) + [(0, tile - piece.shape[-2]), (0, tile - piece.shape[-1])]
    return np.pad(piece, pad)


def convert_spacenet7(src: str | Path, out: str | Path, *, resolution_m: float = 4.0, tile: int = 128,
                      val_fraction: float = 0.2, before: str | None = None, after: str | None = None,
                      validation_rows: tuple[int, int] | None = None, overwrite: bool = False,
                      progress: bool = False) -> dict:
    """Convert a SpaceNet 7 tile folder to segmenter tiles, a change layout and a building table.

    ``before`` and ``after`` (YYYY-MM) choose the months of the change layout (default: the first and
    the last). With ``validation_rows`` (grid rows [r0, r1) of 4 m pixels), the segmenter's validation
    is the tiles of the west that reach into those rows, and the east ``val_fraction`` is written to
    ``test/``, which training never reads. Returns the summary.
    """
    src, out = Path(src), Path(out)
    if tile < 16 or tile % 16:
        raise BadInput("tile must be a multiple of 16 pixels", field="tile")
    if not 0 < val_fraction < 1:
        raise BadInput("validation fraction must be in (0, 1)", field="val_fraction")
    if resolution_m <= 0:
        raise BadInput("resolution must be positive", field="resolution")
    months = find_months(src)
    names = [m.month for m in months]
    before, after = before or names[0], after or names[-1]
    for which, value in (("before", before), ("after", after)):
        if value not in names:
            raise BadInput(f"no month {value} in the tile (it has {', '.join(names)})", field=which)
    if before >= after:
        raise BadInput(f"the before month {before} is not earlier than the after month {after}", field="before")
    grid = utm_grid(months[0].image, resolution_m)
    c_val = split_column(grid.width, val_fraction)
    parts = {"train": (0, c_val), "validation": (c_val, grid.width)}
    band = None
    if validation_rows is not None:
        r0, r1 = validation_rows
        if not 0 <= r0 < r1 <= grid.height:
            raise BadInput(f"validation rows {r0}:{r1} are not within the grid's {grid.height} rows",
                           field="validation_rows")
        band = (r0 // tile * tile, min(-(-r1 // tile) * tile, grid.height))  # whole tiles
        parts = {"train": (0, c_val), "validation": (0, c_val), "test": (c_val, grid.width)}

    def tiles_of(split: str, c0: int, c1: int) -> list[tuple[int, int]]:
        every = _tiles(c0, c1, grid.height, tile)
        if band is None or split == "test":
            return every
        return [(r, c) for r, c in every if (band[0] <= r < band[1]) == (split == "validation")]
    tmp = prepare_out(out, overwrite)
    try:
        per_month: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        images: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        counts = {s: {"tiles": 0, "building_pixels": 0, "pixels": 0} for s in parts}
        profile = {"driver": "GTiff", "height": tile, "width": tile, "crs": f"EPSG:{grid.epsg}",
                   "compress": "deflate"}
        for m in tqdm(months, desc="spacenet7", unit="month", disable=not progress):
            img, valid = read_mosaic(m.image, grid)
            ids, geoms = read_footprints(m.labels, grid.epsg)
            per_month[m.month] = (ids, geoms)
            if m.month in (before, after):
                images[m.month] = (img, valid)
            mask = footprint_mask(geoms, grid)
            idmap = footprint_mask(geoms, grid, all_touched=True, values=ids + 1)
            for split, (c0, c1) in parts.items():
                for sub in ("images", "masks", "buildings"):
                    (tmp / split / sub).mkdir(parents=True, exist_ok=True)
                for r, c in tiles_of(split, c0, c1):
                    v = _cut(valid, r, c, tile, c1)
                    if not v.any():
                        continue
                    name = f"{m.month}_r{r // tile:04d}_c{c // tile:04d}.tif"
                    t = grid.transform * Affine.translation(c, r)
                    with rasterio.open(tmp / split / "images" / name, "w", count=3, dtype="uint8", nodata=0,
                                       transform=t, **profile) as dst:
                        dst.write(_cut(img, r, c, tile, c1))
                        for i, b in enumerate(BANDS, 1):
                            dst.set_band_description(i, b)
                        dst.update_tags(scene=m.month, month=m.month, row=r, col=c)
                    mk = _cut(mask, r, c, tile, c1) * v
                    with rasterio.open(tmp / split / "masks" / name, "w", count=1, dtype="uint8", transform=t,
                                       **profile) as dst:
                        dst.write(mk[None])
                    with rasterio.open(tmp / split / "buildings" / name, "w", count=1, dtype="uint32", transform=t,
                                       **profile) as dst:
                        dst.write(_cut(idmap, r, c, tile, c1)[None])
                        dst.update_tags(month=m.month)
                    counts[split]["tiles"] += 1
                    counts[split]["building_pixels"] += int(mk.sum())
                    counts[split]["pixels"] += int(v.sum())
        rows = building_table(per_month, grid.epsg)
        x_val = grid.transform.c + c_val * resolution_m
        with open(tmp / "buildings.csv", "w", newline="") as f:
            w = csv.DictWriter(f, ["id", "first_month", "last_month", "area_m2", "lon", "lat", "part"])
            w.writeheader()
            for row in rows:
                x, y = row.pop("x"), row.pop("y")
                row_px = (grid.transform.f - y) / resolution_m
                if band is None:
                    part = "validation" if x >= x_val else "train"
                else:
                    part = "test" if x >= x_val else "validation" if band[0] <= row_px < band[1] else "train"
                w.writerow({**row, "part": part})
        new_ids, new_geoms = new_buildings(per_month, before, after)
        (b_img, b_ok), (a_img, a_ok) = images[before], images[after]
        change = footprint_mask(new_geoms, grid)
        change[~(b_ok & a_ok)] = UNKNOWN
        entry = write_city(tmp / "change", src.name, np.moveaxis(b_img, 0, -1), np.moveaxis(a_img, 0, -1), change,
                           crs=f"EPSG:{grid.epsg}", transform=grid.transform, bands=BANDS,
                           dates=(f"{before}-01", f"{after}-01"))
        entry.update(resolution_m=resolution_m, new_buildings=len(new_ids), validation_columns=[c_val, grid.width])
        write_summary(tmp / "change", BANDS, {src.name: entry}, source=str(src.resolve()), resolution_m=resolution_m)
        east = f"the east {val_fraction:g} of the columns"
        layout: dict[str, Any] = {"by": "location", "validation": east, "validation_columns": [c_val, grid.width]}
        if band is not None:
            layout.update(validation=f"rows {band[0]} to {band[1]} of the west", validation_rows=list(band),
                         test=f"{east}, not trained on")
        summary = {
            "kind": "segmenter", "source": str(src.resolve()), "tile": tile, "bands": BANDS, "dtype": "uint8",
            "crs": f"EPSG:{grid.epsg}", "resolution_m": resolution_m, "width": grid.width, "height": grid.height,
            "transform": list(grid.transform)[:6], "months": names,
            "split": layout,
            "tiles": {s: c["tiles"] for s, c in counts.items()},
            "positive_pixel_fraction": {s: round(c["building_pixels"] / c["pixels"], 6) if c["pixels"] else 0.0
                                        for s, c in counts.items()},
            "buildings": {"total": len(rows), **{mo: len(per_month[mo][0]) for mo in names}},
            "change": {"before": before, "after": after, "new_buildings": len(new_ids)},
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
        commit_out(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def read_buildings(data_dir: str | Path) -> dict[int, dict]:
    """``buildings.csv`` of a converted tile, by id."""
    f = Path(data_dir) / "buildings.csv"
    if not f.is_file():
        return {}
    with open(f, newline="") as fh:
        return {int(r["id"]): {**r, "area_m2": float(r["area_m2"])} for r in csv.DictReader(fh)}


def building_recall(data_dir: str | Path, split: str, predicted: np.ndarray) -> dict | None:
    """Share of the labelled buildings of ``split`` whose footprint the predicted masks touch, pooled over
    months (a building counts once per month it is labelled) and by size class; None without ``buildings/``.

    ``predicted`` (N, H, W) bool is in the order ``load_segmenter_split`` loads the image tiles.
    """
    root = Path(data_dir) / split
    if not (root / "buildings").is_dir():
        return None
    areas = {i: r["area_m2"] for i, r in read_buildings(data_dir).items()}
    seen: dict[tuple[str, int], bool] = {}
    for f, pred in zip(sorted((root / "images").glob("*.tif")), predicted):
        with rasterio.open(root / "buildings" / f.name) as src:
            ids, month = src.read(1), src.tags().get("month", "")
        for i in np.unique(ids[ids > 0]).tolist():
            seen.setdefault((month, i - 1), False)
        for i in np.unique(ids[(ids > 0) & pred]).tolist():
            seen[(month, i - 1)] = True
    out: dict = {"buildings": len(seen), "recall": round(sum(seen.values()) / len(seen), 4) if seen else 0.0}
    for _, _, name in SIZE_CLASSES:
        hits = [v for (_, i), v in seen.items() if size_class(areas.get(i, 0.0)) == name]
        out[name] = {"buildings": len(hits), "recall": round(sum(hits) / len(hits), 4) if hits else 0.0}
    return out
