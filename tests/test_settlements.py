"""Tile probabilities to settlement polygons, on hand-made grids with a known answer."""

from __future__ import annotations

import numpy as np
import pytest
from affine import Affine
from shapely.geometry import box

from monitor.settlements import median_grid, tile_polygons

# a grid of 10 m cells with its top-left corner at (1000, 2000); tiles of 2 x 2 cells (20 m, stride 10 m)
T = Affine(10.0, 0.0, 1000.0, 0.0, -10.0, 2000.0)


def cells(r0: int, c0: int, r1: int, c1: int) -> object:
    """The ground of grid cells rows r0..r1-1, columns c0..c1-1."""
    return box(1000 + 10 * c0, 2000 - 10 * r1, 1000 + 10 * c1, 2000 - 10 * r0)


def test_overlapping_rectangles_merge_and_an_isolated_tile_is_dropped():
    g = np.zeros((10, 12))
    g[2:5, 2:5] = 0.9  # a 3 x 3 block of positive tiles
    g[3:6, 4:7] = 0.7  # a second block overlapping the first (shares the tile at row 3-4, column 4)
    g[8, 10] = 0.95  # a single positive tile among negatives: noise
    polys = tile_polygons(g, T, span=2, threshold=0.5)
    assert len(polys) == 1
    poly, prob = polys[0]
    # the median filter drops the blocks' outer corners (four of their nine neighbours are positive);
    # the tiles that survive span 2 x 2 cells each and their rectangles merge into one polygon
    # a tile survives where at least 5 of the 9 tiles around it are positive
    pos = np.pad(g >= 0.5, 1)
    kept = [(r, c) for r in range(10) for c in range(12) if pos[r:r + 3, c:c + 3].sum() >= 5]
    assert (2, 2) not in kept and (5, 6) not in kept and (8, 10) not in kept and (3, 4) in kept
    assert len(kept) == 12
    expected = None
    for r, c in kept:
        rect = cells(r, c, r + 2, c + 2)
        expected = rect if expected is None else expected.union(rect)
    assert poly.equals(expected)
    assert poly.area == pytest.approx(expected.area)
    # nothing of the isolated tile's rectangle is left
    assert not poly.intersects(cells(8, 10, 10, 12))
    # the mean probability of the kept tiles
    assert prob == pytest.approx(float(np.mean([g[r, c] for r, c in kept])))


def test_two_overlapping_tiles_make_one_rectangle():
    g = np.zeros((6, 6))
    g[1:4, 1:4] = 0.8  # the 3 x 3 block keeps its cross of five tiles
    g[1, 1] = g[1, 3] = g[3, 1] = g[3, 3] = 0.0
    g[2, 2] = 0.6
    # plus: the same block with corners at 0.8 keeps only the centre cross: one polygon, a plus sign
    polys = tile_polygons(g, T, span=1, threshold=0.5)
    assert len(polys) == 1
    assert polys[0][0].equals(cells(2, 2, 3, 3))  # only the centre has 5 of 9 positive neighbours
    # two tiles of 2 x 2 cells, one cell apart: their rectangles overlap and merge into one 3 x 2 rectangle
    g = np.zeros((6, 6))
    g[2:4, 2:4] = 0.9
    polys = tile_polygons(g, T, span=2, threshold=0.5, median=1)
    assert len(polys) == 1
    assert polys[0][0].equals(cells(2, 2, 5, 5)) and len(polys[0][0].exterior.coords) == 5
    assert polys[0][1] == pytest.approx(0.9)


def test_separate_settlements_stay_separate_and_nan_cells_are_left_out():
    g = np.full((8, 14), 0.1)
    g[1:6, 1:5] = 0.8
    g[1:6, 8:13] = 0.6
    g[0:8, 6] = np.nan  # a column without data (cloud) between them
    polys = sorted(tile_polygons(g, T, span=2, threshold=0.5), key=lambda p: p[0].bounds[0])
    assert len(polys) == 2
    assert polys[0][1] == pytest.approx(0.8) and polys[1][1] == pytest.approx(0.6)
    assert not polys[0][0].intersects(polys[1][0])
    # a NaN cell has no probability and is never positive; a lone negative tile inside a settlement is filled
    m = median_grid(np.where(np.arange(25).reshape(5, 5) == 12, 0.0, 0.9))
    assert m[2, 2] == pytest.approx(0.9)
    m = median_grid(np.array([[np.nan, 0.9], [0.9, 0.9]]))
    assert np.isnan(m[0, 0]) and m[1, 1] == pytest.approx(0.9)


def test_nothing_positive_gives_no_polygon():
    assert tile_polygons(np.zeros((4, 4)), T) == []
    assert tile_polygons(np.full((3, 3), np.nan), T) == []
    with pytest.raises(ValueError):
        tile_polygons(np.zeros(4), T)
