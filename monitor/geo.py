"""Pure geometry helpers: CRS handling, UTM zones, areas in m2, validation and repair."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import shapely
from pyproj import CRS, Transformer
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

WGS84 = CRS.from_epsg(4326)


def utm_zone(lon: float, lat: float) -> int:
    """The UTM zone (1-60) holding (lon, lat), with the exceptions of the UTM grid: zone 32 widened
    over south-west Norway (56-64 N, 3-12 E) and the four wide zones over Svalbard (72-84 N).

    Hand-written on purpose: pyproj's ``query_utm_crs_info`` answers from the EPSG areas of use,
    which are the plain 6-degree bands, so it knows neither exception.
    """
    lon = ((lon + 180.0) % 360.0) - 180.0
    if 56 <= lat < 64 and 3 <= lon < 12:
        return 32
    if 72 <= lat <= 84 and 0 <= lon < 42:
        return 31 if lon < 9 else 33 if lon < 21 else 35 if lon < 33 else 37
    return int((lon + 180) // 6) % 60 + 1


def utm_epsg(lon: float, lat: float) -> int:
    """EPSG code of the WGS 84 UTM zone holding (lon, lat) (north: 326zz, south: 327zz)."""
    return (32600 if lat >= 0 else 32700) + utm_zone(lon, lat)


def utm_epsg_for(geom_4326: BaseGeometry) -> int:
    """The UTM zone of a geometry's centroid (EPSG:4326 in)."""
    c = geom_4326.centroid
    return utm_epsg(c.x, c.y)


@lru_cache(maxsize=64)
def transformer(src: str | int, dst: str | int) -> Transformer:
    """A cached always-xy transformer between two CRSs."""
    return Transformer.from_crs(CRS.from_user_input(src), CRS.from_user_input(dst), always_xy=True)


def reproject(geoms, src, dst):
    """Reproject one geometry or an array of geometries (vectorized)."""
    src_crs, dst_crs = CRS.from_user_input(src), CRS.from_user_input(dst)
    if src_crs == dst_crs:
        return geoms
    t = transformer(src_crs.to_wkt(), dst_crs.to_wkt())
    return shapely.transform(geoms, lambda xy: np.column_stack(t.transform(xy[:, 0], xy[:, 1])))


def area_m2(geoms_4326, epsg: int):
    """Planar area in the given metric CRS (the area's UTM zone) of 4326 geometries."""
    return shapely.area(reproject(geoms_4326, 4326, epsg))


def as_multipolygon(geom: BaseGeometry) -> MultiPolygon:
    """The polygonal part of a geometry as a MultiPolygon."""
    if isinstance(geom, MultiPolygon):
        return geom
    if isinstance(geom, Polygon):
        return MultiPolygon([geom])
    polys = [g for g in getattr(geom, "geoms", []) if isinstance(g, (Polygon, MultiPolygon))]
    parts: list[Polygon] = []
    for p in polys:
        parts.extend(p.geoms if isinstance(p, MultiPolygon) else [p])
    return MultiPolygon(parts)


def lonlat_problem(geom: BaseGeometry) -> str | None:
    """Why a geometry is not usable as EPSG:4326 (a coordinate that is not finite or is outside lon
    -180..180, lat -90..90), or None: the one rule of the CLI's files and the API's GeoJSON."""
    xy = shapely.get_coordinates(geom)
    if not np.isfinite(xy).all():
        return "has coordinates that are not finite numbers (NaN or infinity)"
    if xy.size and not ((-180 <= xy[:, 0]).all() and (xy[:, 0] <= 180).all() and (-90 <= xy[:, 1]).all()
                        and (xy[:, 1] <= 90).all()):
        return "has coordinates outside lon -180..180, lat -90..90 (are they in the CRS the file claims?)"
    return None


@dataclass(frozen=True)
class Repair:
    """The outcome of ``polygonal``: the usable geometry, whether it was repaired, or why it cannot be used."""

    geometry: MultiPolygon | None
    repaired: bool
    problem: str | None  # why it could not be used, when geometry is None


def polygonal(geom: BaseGeometry | None) -> Repair:
    """Check a geometry is a usable (Multi)Polygon; repair invalid ones with make_valid.

    The repair keeps only the polygonal part; a geometry whose repair leaves no
    area (a line, a point, a collapsed ring) is refused.
    """
    if geom is None or geom.is_empty:
        return Repair(None, False, "empty geometry")
    geom = shapely.force_2d(geom)
    if geom.geom_type not in ("Polygon", "MultiPolygon"):
        return Repair(None, False, f"{geom.geom_type} is not a Polygon or MultiPolygon")
    if geom.is_valid:
        return Repair(as_multipolygon(geom), False, None)
    reason = shapely.is_valid_reason(geom)
    fixed = as_multipolygon(shapely.make_valid(geom))
    if fixed.is_empty or fixed.area == 0 or not fixed.is_valid:
        return Repair(None, False, f"invalid geometry that cannot be repaired ({reason})")
    return Repair(fixed, True, reason)
