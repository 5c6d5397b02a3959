"""Small synthetic scenes, labels and models for the ML tests: real GeoTIFFs and vector files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from shapely.geometry import box

from tests.vectors import geojson

BANDS = ["B04", "B03", "B02", "B08"]
CRS = "EPSG:32616"
ORIGIN = (733000.0, 3725000.0)


def write_scene(path: Path, data_hwc: np.ndarray, *, transform: Affine | None = None, bands=BANDS,
                nodata=None, crs: str = CRS, describe: bool = True) -> Path:
    h, w, c = data_hwc.shape
    transform = transform or Affine(1.0, 0, ORIGIN[0], 0, -1.0, ORIGIN[1])
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=c, dtype=data_hwc.dtype, crs=crs,
                       transform=transform, nodata=nodata) as dst:
        dst.write(np.moveaxis(data_hwc, -1, 0))
        if describe:
            for i, b in enumerate(bands[:c], 1):
                dst.set_band_description(i, b)
    return path


def buildings_scene(folder: Path, size: int = 256, n: int = 24, seed: int = 0) -> tuple[Path, Path, list]:
    """A 1 m scene of noisy ground with bright rectangular roofs, and the roofs as polygons (GeoJSON)."""
    rng = np.random.default_rng(seed)
    data = rng.normal(1000, 60, (size, size, len(BANDS)))
    polys = []
    for _ in range(n):
        w, h = rng.integers(6, 16, 2)
        c, r = rng.integers(0, size - w), rng.integers(0, size - h)
        data[r:r + h, c:c + w] += 700
        x0, y1 = ORIGIN[0] + c, ORIGIN[1] - r
        polys.append(box(x0, y1 - h, x0 + w, y1))
    scene = write_scene(folder / "scene.tif", np.clip(data, 0, 65535).astype(np.uint16))
    labels = geojson(folder / "roofs.geojson", polys, crs="urn:ogc:def:crs:EPSG::32616")
    return scene, labels, polys


def settlement_scene(folder: Path, tiles: int = 10, tile: int = 32, share: float = 0.5, seed: int = 0):
    """A scene of ``tiles`` x ``tiles`` tiles, about ``share`` of them holding a bright roof near their centre,
    and those roofs as polygons (GeoJSON): a tile classification task."""
    rng = np.random.default_rng(seed)
    size = tiles * tile
    data = rng.normal(1000, 60, (size, size, len(BANDS)))
    polys = []
    for r0 in range(0, size, tile):
        for c0 in range(0, size, tile):
            if rng.random() >= share:
                continue
            w, h = rng.integers(tile // 3, tile // 2, 2)
            r = r0 + rng.integers(tile // 4, tile - h - tile // 4 + 1)
            c = c0 + rng.integers(tile // 4, tile - w - tile // 4 + 1)
            data[r:r + h, c:c + w] += 700
            x0, y1 = ORIGIN[0] + c, ORIGIN[1] - r
            polys.append(box(x0, y1 - h, x0 + w, y1))
    scene = write_scene(folder / "scene.tif", np.clip(data, 0, 65535).astype(np.uint16))
    return scene, geojson(folder / "settlements.geojson", polys, crs="urn:ogc:def:crs:EPSG::32616"), polys


def change_pair(size: int, seed: int, n_new: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Before/after (H, W, 4) uint16 with a few new bright roofs after, and their change mask."""
    rng = np.random.default_rng(seed)
    ground = rng.normal(1000, 50, (size, size, len(BANDS)))
    before = ground + rng.normal(0, 20, ground.shape)
    after = ground + rng.normal(0, 20, ground.shape)
    change = np.zeros((size, size), np.uint8)
    for _ in range(n_new):
        w, h = rng.integers(4, 10, 2)
        c, r = rng.integers(0, size - w), rng.integers(0, size - h)
        after[r:r + h, c:c + w] += 600
        change[r:r + h, c:c + w] = 1
    cast = lambda a: np.clip(a, 0, 65535).astype(np.uint16)  # noqa: E731
    return cast(before), cast(after), change


def change_dataset(folder: Path, cities: int = 2, size: int = 128, seed: int = 0) -> Path:
    from monitor.ml.oscd import write_city, write_summary

    folder.mkdir(parents=True, exist_ok=True)
    entries = {}
    for i in range(cities):
        b, a, ch = change_pair(size, seed + i)
        t = Affine(10.0, 0, ORIGIN[0] + 5000 * i, 0, -10.0, ORIGIN[1])
        entries[f"site{i}"] = write_city(folder, f"site{i}", b, a, ch, crs=CRS, transform=t, bands=BANDS,
                                         dates=("2020-01-01", "2021-01-01"))
    write_summary(folder, BANDS, entries, resolution_m=10.0)
    return folder


def saved_model(folder: Path, kind: str = "segmenter", *, channels: int = 4, depth: int = 2, base: int = 4,
                tile: int = 32, seed: int = 0, pointwise: bool = False, per_image: bool = False, bands=BANDS) -> Path:
    """An untrained model directory: a small U-Net, or a 1x1-convolution (tile-invariant) model."""
    from monitor.ml.modelstore import save_model
    from monitor.ml.runtime import keras, seed_everything
    from monitor.ml.unet import build_unet

    seed_everything(seed)
    n_in = channels * (2 if kind == "change" else 1)
    if pointwise:
        k = keras()
        inp = k.Input((None, None, n_in))
        x = k.layers.Conv2D(3, 1, activation="tanh")(inp)
        out = k.layers.Conv2D(1, 1, activation="sigmoid", name="probability")(x)
        model, arch = k.Model(inp, out), {"type": "pointwise", "depth": 0}
    else:
        model = build_unet(n_in, depth=depth, base_filters=base, dropout=0.0)
        arch = {"type": "unet", "depth": depth, "base_filters": base}
    meta = {"kind": kind, "bands": list(bands[:channels]), "tile": tile, "threshold": 0.5, "resolution_m": 1.0,
            "normalization": {"mean": [0.0 if per_image else 1000.0] * n_in,
                              "std": [1.0 if per_image else 100.0] * n_in, "per_image": per_image},
            "architecture": arch,
            "training": {}, "metrics": {}}
    return save_model(model, folder, meta)
