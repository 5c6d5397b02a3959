"""SpaceNet 7 conversion on the real tile: masks match the footprints, areas in true square metres,
alpha as no data, a location split, new buildings between two months."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import rasterio
from pyproj import Geod
from rasterio.windows import Window
from shapely.geometry import shape
from typer.testing import CliRunner

from monitor.cli import app
from monitor.errors import BadInput
from monitor.geo import reproject
from monitor.ml.spacenet7 import convert_spacenet7, find_months
from tests.sn7 import TILE, bright_is_built, crop_tile

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def tile_dir(shared_data):
    return shared_data / "spacenet7" / TILE


@pytest.fixture(scope="module")
def converted(tile_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("sn7") / "ds"
    return out, convert_spacenet7(tile_dir, out, tile=128)


def _labels(tile_dir, month):
    m = next(x for x in find_months(tile_dir) if x.month == month)
    return json.loads(m.labels.read_text())["features"]


def _mosaic(ds, split, month, sub):
    """The tiles of one month and split put back together: {(row, col): array}."""
    out = {}
    for f in sorted((ds / split / sub).glob(f"{month}_*.tif")):
        with rasterio.open(f) as s:
            out[(int(s.transform.f), int(s.transform.c))] = (s.read(), s.transform)
    return out


def test_real_tile_months_grid_and_split(converted):
    ds, s = converted
    assert s["months"] == ["2018-01", "2018-04", "2018-07", "2018-10", "2019-01", "2019-04", "2019-07", "2019-10",
                           "2020-01"]
    assert s["crs"] == "EPSG:32611" and s["resolution_m"] == 4.0
    # 1024 mosaic pixels of 4.78 web-mercator metres are about 4,100 m on the ground at 33.1 N
    assert 1000 <= s["width"] <= 1050 and 1000 <= s["height"] <= 1050
    assert s["buildings"]["2018-01"] == 4634 and s["buildings"]["2020-01"] == 4910
    c0 = s["split"]["validation_columns"][0]
    assert c0 == s["width"] - round(s["width"] * 0.2)
    x_split = s["transform"][2] + c0 * 4.0
    for split in ("train", "validation"):
        for f in (ds / split / "images").glob("*.tif"):
            with rasterio.open(f) as src:
                left = src.bounds.left
                valid = src.read(1) > 0
            cols = np.nonzero(valid.any(axis=0))[0]
            if split == "train":
                assert left + 4.0 * (cols.max() + 1) <= x_split + 1e-6
            else:
                assert left >= x_split - 1e-6
            assert (ds / split / "masks" / f.name).is_file() and (ds / split / "buildings" / f.name).is_file()
    assert s["tiles"]["train"] == len(list((ds / "train" / "images").glob("*.tif"))) > 0
    assert s["tiles"]["validation"] == len(list((ds / "validation" / "images").glob("*.tif"))) > 0
    assert json.loads((ds / "summary.json").read_text())["kind"] == "segmenter"


def test_masks_cover_the_footprints_area_in_square_metres(converted, tile_dir):
    ds, s = converted
    month = "2019-01"
    px = sum(int(a.sum()) for split in ("train", "validation") for a, _ in _mosaic(ds, split, month, "masks").values())
    geod = Geod(ellps="WGS84")
    feats = _labels(tile_dir, month)
    geoms = [shape(f["geometry"]) for f in feats]
    true_m2 = sum(abs(geod.geometry_area_perimeter(reproject(g, 3857, 4326))[0]) for g in geoms)
    mercator_m2 = sum(g.area for g in geoms)
    assert 1.35 < mercator_m2 / true_m2 < 1.45  # what measuring in EPSG:3857 would get wrong
    assert px * 16.0 == pytest.approx(true_m2, rel=0.05)


def test_building_table_areas_and_first_months(converted, tile_dir):
    ds, s = converted
    with open(ds / "buildings.csv", newline="") as f:
        rows = {int(r["id"]): r for r in csv.DictReader(f)}
    assert len(rows) == s["buildings"]["total"]
    geod = Geod(ellps="WGS84")
    first = {f["properties"]["Id"]: f for f in _labels(tile_dir, "2018-01")}
    for i in list(first)[:200]:
        g = shape(first[i]["geometry"])
        true = abs(geod.geometry_area_perimeter(reproject(g, 3857, 4326))[0])
        assert float(rows[i]["area_m2"]) == pytest.approx(true, rel=0.002)
        assert float(rows[i]["area_m2"]) == pytest.approx(first[i]["properties"]["area"] * 0.7, rel=0.03)
        assert rows[i]["first_month"] == "2018-01"
    late = {f["properties"]["Id"] for f in _labels(tile_dir, "2020-01")} - {
        i for m in ("2018-01", "2018-04", "2018-07", "2018-10", "2019-01", "2019-04", "2019-07", "2019-10")
        for i in (f["properties"]["Id"] for f in _labels(tile_dir, m))}
    assert late and all(rows[i]["first_month"] == "2020-01" for i in late)
    assert {r["part"] for r in rows.values()} == {"train", "validation"}


def test_change_layout_holds_the_new_buildings(converted, tile_dir):
    ds, s = converted
    new = {f["properties"]["Id"] for f in _labels(tile_dir, "2020-01")} - {
        f["properties"]["Id"] for f in _labels(tile_dir, "2018-01")}
    assert s["change"] == {"before": "2018-01", "after": "2020-01", "new_buildings": len(new)}
    assert len(new) == 282
    with rasterio.open(ds / "change" / TILE / "change.tif") as c, \
            rasterio.open(ds / "change" / TILE / "before.tif") as b:
        change = c.read(1)
        assert b.descriptions == ("red", "green", "blue") and b.crs.to_epsg() == 32611
    assert set(np.unique(change).tolist()) <= {0, 1, 255}
    geoms = [shape(f["geometry"]) for f in _labels(tile_dir, "2020-01") if f["properties"]["Id"] in new]
    m2 = sum(reproject(g, 3857, 32611).area for g in geoms)
    assert (change == 1).sum() * 16.0 == pytest.approx(m2, rel=0.1)
    assert json.loads((ds / "change" / "summary.json").read_text())["kind"] == "change"


def test_change_training_leaves_the_held_out_columns_alone(converted, tmp_path):
    import shutil

    from monitor.ml.changenet import train_change_features

    ds, _ = converted
    copy = shutil.copytree(ds / "change", tmp_path / "change")
    summary = json.loads((copy / "summary.json").read_text())
    summary["cities"][TILE]["validation_columns"] = [40, summary["cities"][TILE]["width"]]
    (copy / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(BadInput, match="no training part"):  # 40 columns are left, narrower than a patch
        train_change_features(copy, tmp_path / "m", patch=64, epochs=1)


def test_alpha_zero_is_no_data(tile_dir, tmp_path):
    src = crop_tile(tile_dir, tmp_path / "crop", col=300, row=300, size=160, months=["2018-01", "2018-04"],
                    alpha_zero={"2018-04": Window(0, 0, 80, 160)})  # the western half of the crop
    s = convert_spacenet7(src, tmp_path / "ds", tile=64, val_fraction=0.25)
    assert s["months"] == ["2018-01", "2018-04"]
    for month, west_valid in (("2018-01", True), ("2018-04", False)):
        imgs = {**_mosaic(tmp_path / "ds", "train", month, "images"),
                **_mosaic(tmp_path / "ds", "validation", month, "images")}
        masks = {**_mosaic(tmp_path / "ds", "train", month, "masks"),
                 **_mosaic(tmp_path / "ds", "validation", month, "masks")}
        west = east = 0
        masked_west = 0
        for key, (a, t) in imgs.items():
            cols = t.c + 4.0 * (np.arange(a.shape[2]) + 0.5)
            valid = (a > 0).all(axis=0)
            boundary = s["transform"][2] + s["width"] * 4.0 / 2
            west += int(valid[:, cols < boundary - 12].sum())
            east += int(valid[:, cols > boundary + 12].sum())
            masked_west += int(masks[key][0][0][:, cols < boundary - 12].sum())
        assert east > 5000
        assert (west > 5000) if west_valid else (west == 0 and masked_west == 0)


def test_cli_and_bad_input(tile_dir, tmp_path):
    src = crop_tile(tile_dir, tmp_path / "crop", col=0, row=0, size=96, months=["2018-01", "2020-01"])
    r = CliRunner().invoke(app, ["dataset", "spacenet7", str(src), "--out", str(tmp_path / "ds"), "--tile", "32"])
    assert r.exit_code == 0, r.output
    assert "2 months on EPSG:32611" in r.output and (tmp_path / "ds" / "buildings.csv").is_file()
    with pytest.raises(BadInput, match="no month 2019-01"):
        convert_spacenet7(src, tmp_path / "ds2", before="2019-01")
    r = CliRunner().invoke(app, ["dataset", "spacenet7", str(tmp_path), "--out", str(tmp_path / "ds3")])
    assert r.exit_code == 2 and "monthly mosaics" in r.output
    assert not (tmp_path / "ds3").exists() and not (tmp_path / "ds2").exists()


def test_a_band_of_the_west_can_be_the_validation_and_the_east_a_test_part(tile_dir, tmp_path):
    src = crop_tile(tile_dir, tmp_path / "crop", col=300, row=300, size=192, months=["2018-01", "2020-01"])
    r = CliRunner().invoke(app, ["dataset", "spacenet7", str(src), "--out", str(tmp_path / "ds"), "--tile", "32",
                                 "--validation-rows", "40:70"])
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "ds" / "summary.json").read_text())
    assert s["split"]["validation_rows"] == [32, 96]  # whole tiles of 32 rows that reach into rows 40 to 70
    top = s["transform"][5]

    def rows(split):
        return {round((top - t.f) / 4.0) for _, t in _mosaic(tmp_path / "ds", split, "2018-01", "images").values()}

    def cols(split):
        return {round((t.c - s["transform"][2]) / 4.0) for _, t in
                _mosaic(tmp_path / "ds", split, "2018-01", "images").values()}

    c0 = s["split"]["validation_columns"][0]
    assert rows("validation") == {32, 64} and not rows("train") & {32, 64}
    assert max(cols("train") | cols("validation")) < c0 <= min(cols("test"))
    assert s["tiles"]["test"] > 0 and set(s["tiles"]) == {"train", "validation", "test"}
    with open(tmp_path / "ds" / "buildings.csv") as f:
        parts = {row["part"] for row in csv.DictReader(f)}
    assert parts == {"train", "validation", "test"}
    # the test part is scored like the others, and a dataset without one says so
    model = bright_is_built(tmp_path / "rule")
    r = CliRunner().invoke(app, ["evaluate", "--model", str(model), "--data", str(tmp_path / "ds"), "--split", "test"])
    assert r.exit_code == 0, r.output
    assert 0 < json.loads(r.output[r.output.index("{"):])["iou"] < 1
    CliRunner().invoke(app, ["dataset", "spacenet7", str(src), "--out", str(tmp_path / "plain"), "--tile", "32"])
    r = CliRunner().invoke(app, ["evaluate", "--model", str(model), "--data", str(tmp_path / "plain"), "--split",
                                 "test"])
    assert r.exit_code == 2 and "has no test part" in r.output
    for bad in ("70:40", "a:b", "0:5000"):
        r = CliRunner().invoke(app, ["dataset", "spacenet7", str(src), "--out", str(tmp_path / "bad"),
                                     "--validation-rows", bad])
        assert r.exit_code == 2 and "validation_rows" in r.output, r.output
    assert not (tmp_path / "bad").exists()

