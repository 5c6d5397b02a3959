"""Probability raster -> polygons, on hand-made 1 m rasters with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from affine import Affine

from monitor.vectorize import binary_mask, polygonize

X0, Y0 = 314000.0, 6183600.0
T = Affine(1.0, 0.0, X0, 0.0, -1.0, Y0)  # 1 m pixels, north up


def run(prob, **kw):
    args = dict(threshold=0.5, median_px=3, min_area_m2=20.0)
    args.update(kw)
    return polygonize(prob, kw.pop("transform", T), **args)


def canvas(n=100, value=0.0):
    return np.full((n, n), value, dtype="float32")


def test_square_building_keeps_its_area_position_and_probability():
    prob = canvas()
    prob[10:30, 40:60] = 0.9
    [(poly, mean)] = run(prob)
    assert poly.geom_type == "Polygon" and poly.is_valid
    assert abs(poly.area - 400) / 400 < 0.01  # the median filter only nibbles the four corner pixels
    minx, miny, maxx, maxy = poly.bounds
    assert (minx, maxy) == (X0 + 40, Y0 - 10) and (maxx, miny) == (X0 + 60, Y0 - 30)
    assert mean == pytest.approx(0.9, abs=1e-6)


def test_threshold_is_applied():
    prob = canvas()
    prob[10:30, 10:30] = 0.45
    prob[50:70, 50:70] = 0.55
    assert [round(p.centroid.x - X0) for p, _ in run(prob)] == [60]
    assert len(run(prob, threshold=0.4)) == 2


def test_median_filter_and_minimum_area_drop_small_regions():
    prob = canvas()
    prob[5:7, 5:7] = 1.0  # 2 m x 2 m blob: the median filter removes it
    prob[20:24, 20:24] = 1.0  # 4 m x 4 m: survives the filter (12 m2 left), below 20 m2
    prob[50:56, 50:56] = 1.0  # 6 m x 6 m: 32 m2 after the filter
    polys = run(prob)
    assert len(polys) == 1 and 30 <= polys[0][0].area <= 36
    assert len(run(prob, median_px=1, min_area_m2=3)) == 3  # without filter, a low minimum keeps all


def test_median_filter_removes_salt_noise():
    rng = np.random.default_rng(0)
    prob = (rng.random((100, 100)) < 0.05).astype("float32")  # 5 % isolated noisy pixels
    prob[30:60, 30:60] = 1.0
    polys = run(prob)
    assert len(polys) == 1
    assert abs(polys[0][0].area - 900) / 900 < 0.03


def test_pieces_touching_at_a_corner_become_one_polygon():
    prob = canvas()
    prob[10:20, 10:20] = 1.0
    prob[20:30, 20:30] = 1.0  # touches the first only at one corner
    polys = run(prob, median_px=1)
    assert len(polys) == 1
    poly = polys[0][0]
    assert poly.geom_type == "Polygon" and poly.is_valid
    assert poly.area == pytest.approx(200, rel=1e-3)


def test_touching_and_overlapping_rectangles_merge():
    prob = canvas()
    prob[10:20, 10:40] = 1.0
    prob[15:40, 30:40] = 0.8  # an L: overlaps the first rectangle
    [(poly, mean)] = run(prob, median_px=1)
    assert poly.area == pytest.approx(300 + 200, abs=0.01)
    assert 0.8 < mean < 1.0


def test_simplified_to_about_the_pixel_size():
    yy, xx = np.mgrid[:100, :100]
    prob = (((yy - 50) ** 2 + (xx - 50) ** 2) < 30 ** 2).astype("float32")
    [(poly, _)] = run(prob)
    true_area = np.pi * 30 ** 2
    assert abs(poly.area - true_area) / true_area < 0.02
    assert len(poly.exterior.coords) < 60  # the raw staircase has ~240 vertices
    assert poly.is_valid


def test_valid_mask_and_nan_are_not_built():
    prob = canvas()
    prob[10:40, 10:40] = 1.0
    prob[60:90, 60:90] = np.nan
    valid = np.ones_like(prob, dtype=bool)
    valid[:, 25:] = False  # the right part of the building is under a cloud
    [(poly, _)] = run(prob, valid=valid)
    assert poly.bounds[2] <= X0 + 25
    assert binary_mask(prob, threshold=0.5, median_px=1)[70, 70] == np.False_


def test_pixel_size_from_transform():
    prob = canvas(50)
    prob[10:20, 10:20] = 1.0
    t10 = Affine(10.0, 0.0, X0, 0.0, -10.0, Y0)
    [(poly, _)] = polygonize(prob, t10, threshold=0.5, median_px=3, min_area_m2=5000)
    assert abs(poly.area - 10000) / 10000 < 0.05
    assert polygonize(prob, t10, threshold=0.5, median_px=3, min_area_m2=20000) == []


def test_empty_and_bad_shapes():
    assert run(canvas()) == []
    with pytest.raises(ValueError):
        run(np.zeros((2, 3, 3)))
    with pytest.raises(ValueError):
        run(canvas(), valid=np.ones((3, 3), dtype=bool))
