"""Crops of the real SpaceNet 7 tile, for tests that need a small tile folder in the same layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import rasterio
import shapely
from rasterio.windows import Window
from rasterio.windows import bounds as window_bounds
from shapely.geometry import shape

from monitor.ml.spacenet7 import find_months

TILE = "L15-0357E-1223N_1429_3296_13"


def crop_tile(src: Path, out: Path, *, col: int, row: int, size: int, months: list[str] | None = None,
              alpha_zero: dict[str, Window] | None = None) -> Path:
    """A ``size`` x ``size`` crop (in mosaic pixels, from ``col``, ``row``) of a tile folder, with the
    footprints that touch it; ``alpha_zero`` sets alpha to 0 over a window of the crop in some months."""
    (out / "images").mkdir(parents=True)
    (out / "labels").mkdir()
    win = Window(col, row, size, size)
    for m in find_months(src):
        if months and m.month not in months:
            continue
        with rasterio.open(m.image) as s:
            data = s.read(window=win)
            profile = {**s.profile, "width": size, "height": size, "transform": s.window_transform(win)}
            interp = s.colorinterp
            box = shapely.box(*window_bounds(win, s.transform))
        if alpha_zero and m.month in alpha_zero:
            z = alpha_zero[m.month]
            data[3, z.row_off:z.row_off + z.height, z.col_off:z.col_off + z.width] = 0
        with rasterio.open(out / "images" / m.image.name, "w", **profile) as d:
            d.write(data)
            d.colorinterp = interp
        gj = json.loads(m.labels.read_text())
        gj["features"] = [f for f in gj["features"] if f["geometry"] and shape(f["geometry"]).intersects(box)]
        (out / "labels" / m.labels.name).write_text(json.dumps(gj))
    return out


def bright_is_built(path: Path, tile: int = 32) -> Path:
    """A real Keras segmenter with a fixed rule: bright pixels (roofs, bare ground) are built."""
    from monitor.ml.modelstore import save_model
    from monitor.ml.runtime import keras

    k = keras()
    inputs = k.Input((None, None, 3))
    model = k.Model(inputs, k.layers.Conv2D(1, 1, activation="sigmoid")(inputs))
    model.layers[-1].set_weights([np.full((1, 1, 3, 1), 3.0, "float32"), np.full(1, -4.0, "float32")])
    meta = {"kind": "segmenter", "version": "segmenter-rgb-rule", "bands": ["red", "green", "blue"],
            "normalization": {"mean": [71.0, 67.0, 46.0], "std": [32.0, 25.0, 21.0]}, "tile": tile,
            "threshold": 0.5, "resolution_m": 4.0, "architecture": {"depth": 0}}
    return save_model(model, path, meta)
