"""Vector files (GeoJSON, GeoPackage, Shapefile) through pyogrio: read into checked EPSG:4326 shapes, and
written."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyogrio
import shapely
from pyproj import CRS
from shapely.geometry.base import BaseGeometry

from monitor.errors import BadInput
from monitor.geo import lonlat_problem, polygonal, reproject

log = logging.getLogger(__name__)


@dataclass
class Features:
    """Polygonal features of a file, in EPSG:4326, with their attribute rows (1-based numbers)."""

    path: Path
    crs: CRS
    geoms: np.ndarray  # shapely MultiPolygons in 4326
    rows: list[dict]
    numbers: list[int]
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)


def _jsonable(value):
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, float) and not np.isfinite(value):
        return None  # a missing number (NaN): JSON and PostgreSQL hold it as null
    return value


#: How far (degrees) a feature may reach beyond its CRS's area of use (a UTM zone is used a little
#: beyond its 6 degrees).
AREA_OF_USE_MARGIN = 1.0


def _within(bounds: tuple[float, float, float, float], use: tuple[float, float, float, float]) -> bool:
    m = AREA_OF_USE_MARGIN
    return (use[0] - m <= bounds[0] and bounds[2] <= use[2] + m and use[1] - m <= bounds[1]
            and bounds[3] <= use[3] + m)


def read_polygons(path: str | Path, *, what: str = "features") -> Features:
    """Read every feature of a vector file; refuse what is not usable, naming file and feature."""
    path = Path(path)
    if not path.exists():
        raise BadInput("file does not exist", file=path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            meta, _fids, wkb, field_data = pyogrio.raw.read(path)
    except Exception as e:  # pyogrio raises DataSourceError, DataLayerError, ...
        raise BadInput(f"not a readable vector file (GeoJSON, GeoPackage, Shapefile): {e}", file=path) from e
    if wkb is None or len(wkb) == 0:
        raise BadInput(f"holds no {what}", file=path)
    if not meta.get("crs"):
        raise BadInput("has no coordinate reference system (add a .prj or a CRS to the file)", file=path)
    crs = CRS.from_user_input(meta["crs"])
    names = list(meta["fields"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        geoms = shapely.from_wkb(wkb, on_invalid="ignore")
    for bad in np.flatnonzero(shapely.is_missing(geoms) & np.array([w is not None for w in wkb])).tolist():
        try:
            shapely.from_wkb(wkb[bad])
        except shapely.errors.GEOSException as e:  # NaN coordinates, rings that do not close
            raise BadInput(f"unusable geometry: {e}", file=path, row=f"{bad + 1} (feature)") from None
    rows, numbers, good, notes = [], [], [], []
    for i, g in enumerate(geoms):
        number = i + 1
        if g is not None and not np.isfinite(shapely.get_coordinates(g)).all():
            raise BadInput("has coordinates that are not finite numbers (NaN or infinity)", file=path,
                           row=f"{number} (feature)")
        fix = polygonal(g)
        if fix.geometry is None:
            raise BadInput(fix.problem or "unusable geometry", file=path, row=f"{number} (feature)")
        if fix.repaired:
            notes.append(f"{path}: feature {number}: repaired invalid geometry ({fix.problem})")
        good.append(fix.geometry)
        rows.append({n: _jsonable(field_data[j][i]) for j, n in enumerate(names)})
        numbers.append(number)
    for n in notes:
        log.warning(n)
    out = reproject(np.array(good, dtype=object), crs, 4326)
    use = crs.area_of_use
    for number, g in zip(numbers, out):
        if (problem := lonlat_problem(g)) is not None:
            raise BadInput(f"{problem.replace('the file claims', f'the file claims, {crs.to_string()}')}",
                           file=path, row=f"{number} (feature)")
        if use is not None and use.west <= use.east and not _within(g.bounds, use.bounds):
            raise BadInput(f"lies outside the area of use of {crs.to_string()} (lon {use.west:g}..{use.east:g}, lat "
                           f"{use.south:g}..{use.north:g}): are the coordinates in the CRS the file claims?",
                           file=path, row=f"{number} (feature)")
    return Features(path=path, crs=crs, geoms=out, rows=rows, numbers=numbers, warnings=notes)


def write_polygons(path: str | Path, geoms: Sequence[BaseGeometry], rows: Sequence[dict], crs: str,
                   driver: str | None = None) -> Path:
    """Write polygons with their attribute rows (every row with the same keys) to a vector file."""
    path = Path(path)
    fields = list(rows[0]) if rows else []
    kinds = {g.geom_type for g in geoms}
    pyogrio.raw.write(path, geometry=shapely.to_wkb(np.array(list(geoms), dtype=object)),
                      field_data=[np.array([r[f] for r in rows]) for f in fields], fields=fields, crs=crs,
                      geometry_type="MultiPolygon" if "MultiPolygon" in kinds else "Polygon", driver=driver)
    return path
