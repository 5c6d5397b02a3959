"""Tile datasets from a scene and polygons: the real SpaceNet tile and footprints, layouts, splits, errors."""

from __future__ import annotations

import json

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from affine import Affine
from rasterio.windows import Window

from monitor.errors import BadInput
from monitor.ml.datasets import build_tiles
from tests.ml_synthetic import buildings_scene
from tests.vectors import geojson


@pytest.fixture(scope="module")
def spacenet(shared_data):
    d = shared_data / "spacenet_atlanta"
    _, _, wkb, _ = pyogrio.raw.read(d / "geotiff_labels.geojson")
    return d / "sample_geotiff.tif", d / "geotiff_labels.geojson", shapely.from_wkb(wkb)


@pytest.mark.realdata
def test_spacenet_classifier_tiles_are_true_where_buildings_are(tmp_path, spacenet):
    scene, labels, polys = spacenet
    s = build_tiles(scene, labels, tmp_path / "ds", kind="classifier", tile=128, val_fraction=0.2)
    assert s["polygons"] == 43 and s["tile"] == 128 and s["crs"] == "EPSG:32616"
    assert s["resolution_m"] == pytest.approx(0.5)
    assert s["left_out_px"] == {"right": 900 - 7 * 128, "bottom": 900 - 7 * 128}
    files = {p.name: p for p in (tmp_path / "ds").glob("*/*/*.tif")}
    assert len(files) == 49
    counts = {split: {c: len(list((tmp_path / "ds" / split / c).glob("*.tif"))) for c in ("true", "false")}
              for split in ("train", "validation")}
    assert counts == s["tiles"] == json.loads((tmp_path / "ds" / "summary.json").read_text())["tiles"]
    with rasterio.open(scene) as src:
        image = src.read(1)
        for name, path in files.items():
            r, c = int(name[1:5]), int(name[7:11])
            with rasterio.open(path) as t:
                assert t.crs == src.crs and (t.width, t.height) == (128, 128)
                assert t.transform == src.transform @ Affine.translation(c * 128, r * 128)
                np.testing.assert_array_equal(t.read(1), image[r * 128:(r + 1) * 128, c * 128:(c + 1) * 128])
                tile_box = shapely.box(*t.bounds)
            label = path.parent.name
            assert label == ("true" if shapely.intersects(polys, tile_box).any() and
                             shapely.area(shapely.intersection(polys, tile_box)).sum() > 0 else "false"), name
    assert counts["train"]["true"] + counts["validation"]["true"] >= 10


@pytest.mark.realdata
def test_spacenet_masks_match_the_footprints(tmp_path, spacenet):
    scene, labels, polys = spacenet
    s = build_tiles(scene, labels, tmp_path / "ds", kind="segmenter", tile=300, val_fraction=0.2)
    assert sum(sum(v.values()) for v in s["tiles"].values()) == 9
    total_px, checked = 0, 0
    covered = shapely.box(*rasterio.open(scene).bounds)
    for img in (tmp_path / "ds").glob("*/images/*.tif"):
        mask_file = img.parent.parent / "masks" / img.name
        with rasterio.open(img) as t, rasterio.open(mask_file) as m:
            assert (m.transform, m.crs, m.shape) == (t.transform, t.crs, t.shape)
            mask = m.read(1)
            assert set(np.unique(mask)) <= {0, 1}
            total_px += int(mask.sum())
            for p in polys:
                pt = p.representative_point()
                row, col = m.index(pt.x, pt.y)
                if 0 <= row < 300 and 0 <= col < 300 and p.buffer(-0.75).contains(pt):
                    assert mask[row, col] == 1, (img.name, pt)
                    checked += 1
            edge = shapely.box(*m.bounds).boundary.buffer(0.5)
            rows, cols = np.nonzero(mask)
            xs, ys = rasterio.transform.xy(m.transform, rows, cols)
            inside = shapely.contains_xy(shapely.union_all(polys).buffer(0.5), xs, ys)
            assert inside.all() or shapely.intersects(edge, shapely.points(xs, ys)[~inside]).all()
    assert checked >= 30
    area = shapely.union_all(shapely.intersection(polys, covered)).area
    assert total_px * 0.25 == pytest.approx(area, rel=0.03)


def test_split_is_stratified_and_repeatable(tmp_path):
    scene, labels, _ = buildings_scene(tmp_path, size=256, n=12)
    a = build_tiles(scene, labels, tmp_path / "a", tile=32, val_fraction=0.25, seed=7)
    build_tiles(scene, labels, tmp_path / "b", tile=32, val_fraction=0.25, seed=7)
    names = lambda d: sorted(p.relative_to(d).as_posix() for p in d.rglob("*.tif"))  # noqa: E731
    assert names(tmp_path / "a") == names(tmp_path / "b")
    t = a["tiles"]
    for label in ("true", "false"):
        n = t["train"][label] + t["validation"][label]
        assert t["validation"][label] == round(n * 0.25)
    build_tiles(scene, labels, tmp_path / "c", tile=32, val_fraction=0.25, seed=8)
    assert names(tmp_path / "c") != names(tmp_path / "a")


def test_min_cover_and_nodata_tiles(tmp_path):
    scene, labels, polys = buildings_scene(tmp_path, size=128, n=6)
    with rasterio.open(scene, "r+") as s:
        s.nodata = 0
        s.write(np.zeros((4, 32, 32), np.uint16), window=Window(0, 0, 32, 32))
    loose = build_tiles(scene, labels, tmp_path / "loose", tile=32, min_cover=0.0)
    strict = build_tiles(scene, labels, tmp_path / "strict", tile=32, min_cover=0.05)
    assert loose["skipped_without_data"] == 1 and sum(sum(v.values()) for v in loose["tiles"].values()) == 15
    n_true = lambda s: s["tiles"]["train"]["true"] + s["tiles"]["validation"]["true"]  # noqa: E731
    assert n_true(strict) < n_true(loose)


def test_bad_input_is_refused_and_nothing_is_written(tmp_path):
    scene, labels, _ = buildings_scene(tmp_path, size=64, n=3)
    with pytest.raises(BadInput, match="smaller than one 128-pixel tile"):
        build_tiles(scene, labels, tmp_path / "out", tile=128)
    assert not (tmp_path / "out").exists()
    with pytest.raises(BadInput, match="nothing.geojson.*does not exist"):
        build_tiles(scene, tmp_path / "nothing.geojson", tmp_path / "out")
    with pytest.raises(BadInput, match="kind"):
        build_tiles(scene, labels, tmp_path / "out", kind="detector")
    build_tiles(scene, labels, tmp_path / "out", tile=32)
    with pytest.raises(BadInput, match="not empty.*--overwrite"):
        build_tiles(scene, labels, tmp_path / "out", tile=32)
    build_tiles(scene, labels, tmp_path / "out", tile=16, overwrite=True)
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["tile"] == 16
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    lines = geojson(tmp_path / "lines.geojson", [shapely.LineString([(733000, 3724990), (733010, 3724980)])],
                    crs="urn:ogc:def:crs:EPSG::32616")
    with pytest.raises(BadInput, match="lines.geojson"):
        build_tiles(scene, lines, tmp_path / "x", tile=32)


@pytest.mark.realdata
def test_east_split_holds_out_the_easternmost_tiles(tmp_path, spacenet):
    scene, labels, _ = spacenet
    s = build_tiles(scene, labels, tmp_path / "ds", kind="segmenter", tile=128, val_fraction=0.3, split="east")
    cols = {split: {int(f.stem.split("_c")[1]) for f in (tmp_path / "ds" / split / "images").glob("*.tif")}
            for split in ("train", "validation")}
    assert cols == {"train": {0, 1, 2, 3, 4}, "validation": {5, 6}}  # 7 columns of tiles, 30 % of them east
    assert s["split"] == "east" and sum(s["tiles"]["validation"].values()) == 14
    with pytest.raises(BadInput, match="split must be"):
        build_tiles(scene, labels, tmp_path / "ds2", kind="segmenter", tile=128, split="north")
