"""The pixel grid of an area: its UTM zone, its resolution, its bounds snapped to that resolution.

Every scene of an area is prepared onto this grid, so masks of different dates align pixel
for pixel. The grid depends only on the area's footprint, zone, resolution and margin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from affine import Affine
from shapely.geometry.base import BaseGeometry

from monitor.geo import reproject


@dataclass(frozen=True)
class Grid:
    """A north-up raster grid: ``crs`` (EPSG code), ``transform``, ``width``, ``height``."""

    crs: int
    transform: Affine
    width: int
    height: int

    @property
    def resolution(self) -> float:
        """Pixel size in the grid's units (metres)."""
        return self.transform.a

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width)."""
        return self.height, self.width

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in the grid's CRS."""
        left, top = self.transform.c, self.transform.f
        return left, top - self.height * self.resolution, left + self.width * self.resolution, top


def area_grid(footprint_4326: BaseGeometry, utm_epsg: int, resolution_m: float, margin_m: float) -> Grid:
    """The grid covering the area plus ``margin_m``, with edges on multiples of ``resolution_m``."""
    if resolution_m <= 0:
        raise ValueError(f"resolution must be positive, not {resolution_m}")
    left, bottom, right, top = reproject(footprint_4326, 4326, utm_epsg).bounds
    res = float(resolution_m)
    # Rounding to a millimetre first keeps float noise from adding a whole pixel row.
    x0 = math.floor(round((left - margin_m) / res, 6)) * res
    y0 = math.floor(round((bottom - margin_m) / res, 6)) * res
    x1 = math.ceil(round((right + margin_m) / res, 6)) * res
    y1 = math.ceil(round((top + margin_m) / res, 6)) * res
    width, height = max(1, round((x1 - x0) / res)), max(1, round((y1 - y0) / res))
    return Grid(crs=int(utm_epsg), transform=Affine(res, 0.0, x0, 0.0, -res, y1), width=width, height=height)
