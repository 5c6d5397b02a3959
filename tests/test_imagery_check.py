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
