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


def utm_epsg(lon: float, lat: float) -> int:
    """EPSG code of the WGS 84 UTM zone holding (lon, lat)."""
    zone = int((lon + 180) // 6) % 60 + 1
    return (32600 if lat >= 0 else 32700) + zone


def utm_epsg_for(geom_4326: BaseGeometry) -> int:
    c = geom_4326.centroid
    return utm_epsg(c.x, c.y)


@lru_cache(maxsize=64)
def transformer(src: str | int, dst: str | int) -> Transformer:
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
    if isinstance(geom, MultiPolygon):
        return geom
    if isinstance(geom, Polygon):
        return MultiPolygon([geom])
    polys = [g for g in getattr(geom, "geoms", []) if isinstance(g, (Polygon, MultiPolygon))]
    parts: list[Polygon] = []
    for p in polys:
        parts.extend(p.geoms if isinstance(p, MultiPolygon) else [p])
    return MultiPolygon(parts)


@dataclass(frozen=True)
class Repair:
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


def parse_duration(text: str):
    """'30m', '12h', '5d', '2w' -> timedelta."""
    import datetime as dt
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([mhdw])\s*", text or "")
    if not m:
        raise ValueError(f"{text!r} is not a duration like 30m, 12h, 5d or 2w")
    n, unit = float(m.group(1)), m.group(2)
    try:
        delta = {"m": dt.timedelta(minutes=n), "h": dt.timedelta(hours=n), "d": dt.timedelta(days=n),
                 "w": dt.timedelta(weeks=n)}[unit]
    except OverflowError as e:
        raise ValueError(f"{text!r} is too long a duration") from e
    if delta.total_seconds() <= 0:
        raise ValueError(f"{text!r} must be longer than zero")
    return delta


def format_duration(delta) -> str:
    s = int(delta.total_seconds())
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if s % size == 0:
            return f"{s // size}{unit}"
    return f"{s}s"
