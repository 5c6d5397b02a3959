"""The imagery check of the diff's new construction: change-vector magnitude between the two dates."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from shapely.geometry import box

from monitor.change.imagery_check import change_magnitude, robust_cut, unchanged
from monitor.geo import reproject

EPSG = 32611
X0, Y0 = 470000.0, 3670000.0
GRID = from_origin(X0, Y0, 4.0, 4.0)


def _write(path, bands: np.ndarray, transform=GRID):
    with rasterio.open(path, "w", driver="GTiff", width=bands.shape[2], height=bands.shape[1], count=len(bands),
                       dtype="uint16", crs=f"EPSG:{EPSG}", transform=transform, nodata=0) as dst:
        dst.write(bands)
    return path


def _cell(col: int, row: int, n: int = 4):
    """An EPSG:4326 box over n x n pixels from (col, row)."""
    return reproject(box(X0 + 4 * col, Y0 - 4 * (row + n), X0 + 4 * (col + n), Y0 - 4 * row), f"EPSG:{EPSG}", 4326)


@pytest.fixture
def pair(tmp_path):
    rng = np.random.default_rng(3)
    before = rng.integers(800, 1200, (3, 64, 64)).astype("uint16")
    after = (before * 1.3 + rng.integers(-20, 20, (3, 64, 64))).astype("uint16")  # another season, same place
    after[:, 10:14, 10:14] = 4000  # a new roof
    after[:, 40:44, 40:44] = 0  # no data on the after date
    return _write(tmp_path / "after.tif", after), _write(tmp_path / "before.tif", before)


def test_new_roof_is_kept_and_unchanged_ground_dropped(pair):
    after, before = pair
    pieces = [(1, _cell(10, 10)), (2, _cell(30, 20)), (3, _cell(40, 40))]
    # 2: the segmenter "finds" something where the image only changed by its season; 3: nothing seen there
    assert unchanged(pieces, after, before, z=3.0) == [2]
    assert unchanged(pieces, after, before, z=1e6) == [1, 2]  # an impossible cut drops every piece seen
    assert unchanged([], after, before, z=3.0) == []


def test_magnitude_is_standardized_and_masked(pair, tmp_path):
    after, before = pair
    mag, valid, _t, crs = change_magnitude(after, before)
    assert crs == f"EPSG:{EPSG}" and not valid[40:44, 40:44].any() and valid.sum() == 64 * 64 - 16
    assert np.median(mag[valid]) < 1.0 < 5.0 < mag[10:14, 10:14].min()  # a brightening season is not change
    # a clear region limits the valid pixels; a before image on another grid is warped onto the after's
    _m, in_clear, _t, _c = change_magnitude(after, before, clear=_cell(0, 0, 32))
    assert in_clear.sum() == 32 * 32
    with rasterio.open(before) as src:
        data = src.read()
    shifted = _write(tmp_path / "shifted.tif", np.pad(data, ((0, 0), (0, 8), (8, 0)), constant_values=0),
                     from_origin(X0 - 32, Y0, 4.0, 4.0))
    mag2, valid2, _t, _c = change_magnitude(after, shifted)
    assert np.allclose(mag2[valid2], mag[valid2], atol=1e-3)
    assert robust_cut(mag, np.zeros_like(valid), 3.0) == float("inf")


def test_reference_image_matches_the_season_a_year_back():
    import datetime as dt

    from monitor.change.diff import reference_image
    from monitor.db.tables import Scene

    def scene(day: str) -> Scene:
        return Scene(acquired_at=dt.datetime.fromisoformat(day + "T10:00:00+00:00"))

    # quarterly mosaics, newest first as the diff remembers them
    earlier = [scene(d) for d in ("2019-10-01", "2019-07-01", "2019-04-01", "2019-01-01", "2018-10-01",
                                  "2018-07-01", "2018-04-01", "2018-01-01")]
    oldest = earlier[-1]
    jan20, jul19, oct18 = scene("2020-01-01"), scene("2019-07-01"), scene("2018-10-01")
    assert reference_image(jan20, earlier, same_season=False) is oldest
    # January 2020: January 2019 and January 2018 match the season; the older of the two
    assert reference_image(jan20, earlier, same_season=True) is oldest
    assert reference_image(jul19, earlier[2:], same_season=True).acquired_at.date() == dt.date(2018, 7, 1)
    # nothing a year old yet: the oldest
    assert reference_image(oct18, earlier[5:], same_season=True) is oldest
    # late December matches early January across the new year
    dec = scene("2019-12-28")
    assert reference_image(dec, earlier[3:], same_season=True).acquired_at.date() == dt.date(2018, 1, 1)


def test_a_piece_the_segmenter_saw_faintly_before_is_not_new(engine, settings):
    """MONITOR_FAINT_MEMORY_SHARE: a new piece whose place an earlier date's segmenter raster gave at least
    that share of its threshold is dropped; a place it gave nothing to is kept; a date without a raster
    has no say."""
    import datetime as dt

    from geoalchemy2.shape import from_shape
    from shapely.geometry import MultiPolygon
    from sqlalchemy.orm import Session

    from monitor.change.diff import drop_seen_faintly
    from monitor.db.tables import Change, Scene
    from monitor.inventory.areas import add_area, area_spec

    footprint = _cell(0, 0, 40)
    with Session(engine) as s, s.begin():
        area = add_area(s, area_spec(settings, "faint", providers="local"), footprint)
        scenes = [Scene(area_id=area.id, provider="local", product_id=f"p{i}", status="processed",
                        acquired_at=dt.datetime(2024, 1 + i, 1, tzinfo=dt.UTC)) for i in range(3)]
        s.add_all(scenes)
        s.flush()
        old, unseen, now = scenes
        faint, never = _cell(4, 4, 6), _cell(20, 20, 6)
        pieces = [Change(area_id=area.id, scene_id=now.id, observed_on=dt.date(2024, 3, 1), source="diff",
                         area_m2=576.0, geom=from_shape(MultiPolygon([g]), srid=4326)) for g in (faint, never)]
        s.add_all(pieces)
        s.flush()
        # the oldest date's raster: 0.3 where the first piece is (under its threshold 0.5), 0.05 elsewhere
        prob = np.full((1, 40, 40), 0.05, np.float32)
        prob[0, 4:10, 4:10] = 0.3
        folder = settings.probability_dir(area.id)
        folder.mkdir(parents=True)
        with rasterio.open(folder / f"{old.id}_segmenter_v1.tif", "w", driver="GTiff", width=40, height=40, count=1,
                           dtype="float32", crs=f"EPSG:{EPSG}", transform=GRID, nodata=-1) as dst:
            dst.write(prob)
            dst.update_tags(threshold="0.5")
        earlier = [unseen, old]  # newest first; the middle date has no raster
        assert drop_seen_faintly(s, now, earlier, folder, 0.7) == set()  # 0.3 < 0.7 x 0.5
        assert drop_seen_faintly(s, now, earlier, folder, 0.5) == {pieces[0].id}  # 0.3 >= 0.25
        assert s.query(Change).filter(Change.scene_id == now.id).count() == 1
