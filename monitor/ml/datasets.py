"""Tile datasets cut from a scene and labelled polygons, for the classifier and the segmenter.

Layouts (every tile a GeoTIFF keeping the scene's CRS and its own transform, tiles named rRRRR_cCCCC):

- classifier: ``DIR/train/{true,false}/``, ``DIR/validation/{true,false}/``; a tile is true when the
  polygons cover more than ``min_cover`` of it.
- segmenter: ``DIR/{train,validation}/images/`` and ``DIR/{train,validation}/masks/`` (uint8, 1 inside
  a polygon) with the same names.

``DIR/summary.json`` records the source, tile size, bands, resolution and the counts per split and class.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import shapely
from rasterio.features import rasterize
from rasterio.windows import Window
from rasterio.windows import transform as window_transform
from tqdm import tqdm

from monitor.domain import ModelKind
from monitor.errors import BadInput
from monitor.geo import reproject
from monitor.ml.modelstore import image_stats
from monitor.ml.rasters import band_indexes, band_names, open_raster, pixel_size_m, valid_mask
from monitor.readers import read_polygons

SPLITS = ("train", "validation")
KINDS = (ModelKind.CLASSIFIER, ModelKind.SEGMENTER)  # the model kinds trained on tiles


def _split(names: list[str], fraction: float, rng: np.random.Generator) -> set[str]:
    """Names drawn for validation: ``fraction`` of them, at least one when there are two or more."""
    if not names or fraction <= 0:
        return set()
    n = int(round(len(names) * fraction))
    n = min(max(n, 1 if len(names) >= 2 else 0), len(names) - 1)
    return set(rng.permutation(sorted(names))[:n].tolist())


def prepare_out(out: Path, overwrite: bool) -> Path:
    """A fresh temporary folder beside ``out``; ``commit_out`` renames it into place."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise BadInput("exists and is not empty (pass --overwrite to replace it)", file=out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{secrets.token_hex(3)}")
    tmp.mkdir()
    return tmp


def commit_out(tmp: Path, out: Path) -> None:
    """Rename the finished temporary folder into place, replacing ``out``."""
    if out.exists():
        old = out.with_name(f".{out.name}.old-{secrets.token_hex(3)}")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


def build_tiles(scene: str | Path, labels: str | Path, out: str | Path, *, kind: str = "classifier",
                tile: int = 256, min_cover: float = 0.0, val_fraction: float = 0.2, seed: int = 0,
                split: str = "random", overwrite: bool = False, progress: bool = False) -> dict:
    """Partition ``scene`` into whole ``tile`` x ``tile`` tiles, label them from ``labels``, write ``out``.

    The right and bottom remainders narrower than a tile are left out (their widths are in the
    summary); tiles without any data are skipped. The ``random`` split is stratified by class (tiles
    with and without polygons) and fixed by ``seed``; the ``east`` split holds out the easternmost
    columns of tiles, ``val_fraction`` of them (at least one), so that validation is a place the
    training never saw. Returns the summary.
    """
    if kind not in KINDS:
        raise BadInput(f"kind must be one of {', '.join(KINDS)}", field="kind")
    if tile < 8:
        raise BadInput("tile must be at least 8 pixels", field="tile")
    if not 0 <= val_fraction < 1:
        raise BadInput("validation fraction must be in [0, 1)", field="val_fraction")
    if split not in ("random", "east"):
        raise BadInput("split must be random or east", field="split")
    scene, labels, out = Path(scene), Path(labels), Path(out)
    feats = read_polygons(labels, what="label polygons")
    with open_raster(scene) as src:
        if src.crs is None:
            raise BadInput("has no coordinate reference system", file=scene)
        polys = np.asarray(reproject(feats.geoms, 4326, src.crs), dtype=object)
        tree = shapely.STRtree(polys)
        ny, nx = src.height // tile, src.width // tile
        if ny == 0 or nx == 0:
            raise BadInput(f"is {src.width}x{src.height} pixels, smaller than one {tile}-pixel tile", file=scene)
        names = band_names(src)
        ix = band_indexes(src, names)
        tiles: dict[str, dict] = {}
        skipped = 0
        tmp = prepare_out(out, overwrite)
        try:
            staged = tmp / "_staged"
            staged.mkdir()
            profile = {"driver": "GTiff", "height": tile, "width": tile, "count": src.count, "dtype": src.dtypes[0],
                       "crs": src.crs, "nodata": src.nodata}
            for r, c in tqdm([(r, c) for r in range(ny) for c in range(nx)], desc="tiles", unit="tile",
                             disable=not progress):
                win = Window(c * tile, r * tile, tile, tile)
                data = src.read(ix, window=win)
                valid = valid_mask(src, data)
                if not valid.any():
                    skipped += 1
                    continue
                t = window_transform(win, src.transform)
                box = shapely.box(*rasterio.windows.bounds(win, src.transform))
                hits = polys[tree.query(box, predicate="intersects")]
                pieces = shapely.intersection(hits, box)
                cover = float(shapely.union_all(pieces).area / box.area) if len(hits) else 0.0
                name = f"r{r:04d}_c{c:04d}"
                with rasterio.open(staged / f"{name}.tif", "w", **{**profile, "transform": t}) as dst:
                    dst.write(data)
                    if any(src.descriptions):
                        for i, b in enumerate(names, 1):
                            dst.set_band_description(i, b)
                    dst.update_tags(cover=f"{cover:.6f}", scene=scene.name, row=r, col=c)
                info: dict[str, Any] = {"cover": cover, "positive": cover > min_cover}
                if kind == "segmenter":
                    mask = rasterize(((p, 1) for p in pieces), out_shape=(tile, tile), transform=t, fill=0,
                                     dtype="uint8") if len(hits) else np.zeros((tile, tile), np.uint8)
                    with rasterio.open(staged / f"{name}.mask.tif", "w", driver="GTiff", height=tile, width=tile,
                                       count=1, dtype="uint8", crs=src.crs, transform=t) as dst:
                        dst.write(mask[None])
                    info["mask_pixels"] = int(mask.sum())
                tiles[name] = info
            rng = np.random.default_rng(seed)
            pos = [n for n, i in tiles.items() if i["positive"]]
            neg = [n for n, i in tiles.items() if not i["positive"]]
            if split == "east":
                first = nx - min(max(1, int(round(nx * val_fraction))), nx - 1) if val_fraction > 0 else nx
                val = {n for n in tiles if int(n.split("_c")[1]) >= first}
            else:
                val = _split(pos, val_fraction, rng) | _split(neg, val_fraction, rng)
            counts = {s: {"true": 0, "false": 0} for s in SPLITS}
            mask_px = {s: [0, 0] for s in SPLITS}
            for name, info in tiles.items():
                part = "validation" if name in val else "train"
                label = "true" if info["positive"] else "false"
                counts[part][label] += 1
                if kind == "classifier":
                    dest = tmp / part / label
                    dest.mkdir(parents=True, exist_ok=True)
                    (staged / f"{name}.tif").rename(dest / f"{name}.tif")
                else:
                    for sub, f in (("images", f"{name}.tif"), ("masks", f"{name}.mask.tif")):
                        dest = tmp / part / sub
                        dest.mkdir(parents=True, exist_ok=True)
                        (staged / f).rename(dest / f"{name}.tif")
                    mask_px[part][0] += info["mask_pixels"]
                    mask_px[part][1] += tile * tile
            staged.rmdir()
            summary = {
                "kind": kind, "scene": str(scene.resolve()), "labels": str(labels.resolve()),
                "polygons": len(polys), "tile": tile, "bands": names, "dtype": src.dtypes[0],
                "crs": src.crs.to_string(), "resolution_m": pixel_size_m(src), "min_cover": min_cover,
                "val_fraction": val_fraction, "split": split, "seed": seed, "tiles": counts,
                "skipped_without_data": skipped,
                "left_out_px": {"right": src.width - nx * tile, "bottom": src.height - ny * tile},
                "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            }
            if kind == "segmenter":
                summary["positive_pixel_fraction"] = {s: round(a / b, 6) if b else 0.0 for s, (a, b) in mask_px.items()}
            (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
            commit_out(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return summary


def read_summary(data_dir: str | Path) -> dict:
    """The ``summary.json`` of a dataset folder."""
    f = Path(data_dir) / "summary.json"
    if not f.is_file():
        raise BadInput("is not a dataset folder (no summary.json; build one with `monitor dataset build` "
                       "or `monitor dataset oscd`)", file=data_dir)
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise BadInput(f"is not valid JSON: {e}", file=f) from e


def _read_tile(path: Path, bands: list[str]) -> tuple[np.ndarray, np.ndarray]:
    with rasterio.open(path) as src:
        d = src.read(band_indexes(src, bands))
        return np.moveaxis(d, 0, -1).astype(np.float32), valid_mask(src, d)


def load_classifier_split(data_dir: str | Path, split: str,
                          bands: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Raw tiles (N, H, W, C) float32, labels (N,) float32 and file names of ``split`` (true and false)."""
    xs, ys, names = [], [], []
    for label, y in (("true", 1.0), ("false", 0.0)):
        for f in sorted((Path(data_dir) / split / label).glob("*.tif")):
            x, valid = _read_tile(f, bands)
            x[~valid] = np.nan
            xs.append(x)
            ys.append(y)
            names.append(f"{label}/{f.name}")
    if not xs:
        raise BadInput(f"has no tiles in {split}/true or {split}/false", file=data_dir)
    return np.stack(xs), np.asarray(ys, np.float32), names


def load_segmenter_split(data_dir: str | Path, split: str, bands: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Raw image tiles (N, H, W, C) float32 (NaN where no data) and masks (N, H, W) float32 of ``split``."""
    xs, ys = [], []
    root = Path(data_dir) / split
    for f in sorted((root / "images").glob("*.tif")):
        m = root / "masks" / f.name
        if not m.is_file():
            raise BadInput("has no mask beside it in masks/", file=f)
        x, valid = _read_tile(f, bands)
        x[~valid] = np.nan
        with rasterio.open(m) as src:
            ys.append(src.read(1).astype(np.float32))
        xs.append(x)
    if not xs:
        raise BadInput(f"has no tiles in {split}/images", file=data_dir)
    return np.stack(xs), np.stack(ys)


def _scene_tags(files) -> np.ndarray:
    out = []
    for f in files:
        with rasterio.open(f) as src:
            out.append(src.tags().get("scene", ""))
    return np.asarray(out, dtype=object)


def segmenter_scenes(data_dir: str | Path, split: str) -> np.ndarray:
    """The scene each image tile of ``split`` was cut from (its ``scene`` tag; "" when untagged), in the
    order ``load_segmenter_split`` loads them."""
    return _scene_tags(sorted((Path(data_dir) / split / "images").glob("*.tif")))


def classifier_scenes(data_dir: str | Path, split: str) -> np.ndarray:
    """The scene each tile of ``split`` was cut from (its ``scene`` tag; "" when untagged), in the order
    ``load_classifier_split`` loads them."""
    root = Path(data_dir) / split
    return _scene_tags([f for label in ("true", "false") for f in sorted((root / label).glob("*.tif"))])


def scene_stats(x: np.ndarray, scenes: np.ndarray):
    """For each scene: the indexes of its tiles in ``x`` (N, H, W, C; NaN where no data) and its
    per-band statistics over them, as per-image normalization computes them over a whole scene."""
    for scene in sorted(set(scenes.tolist())):
        idx = np.nonzero(scenes == scene)[0]
        yield idx, image_stats(x[idx], np.all(np.isfinite(x[idx]), axis=-1))
