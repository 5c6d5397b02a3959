"""Alerts as GIS files: GeoJSON, GeoPackage, CSV (WKT geometry) and FlatGeobuf, written by GDAL through
pyogrio, in EPSG:4326 with coordinates at 7 decimals (about 1 cm).

One feature per alert, its geometry the new construction. The columns are the alert's properties
as the API shows them, the numbers of the parcel's permits (``permits``, each the permit's own
number, comma separated), the links of its evidence chips (``evidence_before``, ``evidence_after``)
and, on request, the parcel's outline as WKT (``parcel_wkt``) beside the construction.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio
import shapely
from geoalchemy2.shape import to_shape
from sqlalchemy import select
from sqlalchemy.orm import Session

from monitor.alerts.evidence import NAMES
from monitor.alerts.lifecycle import to_geojson
from monitor.db.tables import Alert, Parcel, Permit
from monitor.errors import BadInput

DECIMALS = 7
GRID = 10.0 ** -DECIMALS


@dataclass(frozen=True)
class Format:
    """A file format alerts are written in."""

    driver: str
    suffix: str
    media_type: str
    binary: bool
    layer_options: tuple[tuple[str, str], ...] = ()
    dates: bool = True  # dates as date fields (GDAL writes them 2024/02/10 in CSV: there they stay ISO text)


FORMATS = {
    "geojson": Format("GeoJSON", ".geojson", "application/geo+json", False,
                      (("COORDINATE_PRECISION", str(DECIMALS)), ("RFC7946", "YES"), ("ID_FIELD", "id"))),
    "gpkg": Format("GPKG", ".gpkg", "application/geopackage+sqlite3", True),
    "csv": Format("CSV", ".csv", "text/csv", False, (("GEOMETRY", "AS_WKT"),), dates=False),
    "fgb": Format("FlatGeobuf", ".fgb", "application/vnd.flatgeobuf", True),
}
# The columns, in order (the same with no alert to write): the alert's properties as the API shows them,
# then the parcel's permits and the evidence links.
FIELDS = ("id", "area", "parcel", "first_seen", "last_seen", "new_area_m2", "fraction", "confidence", "status",
          "note", "reviewed_by", "reviewed_at", "source", "model_version", "permits", "evidence_before",
          "evidence_after")
FLOATS = ("new_area_m2", "fraction")
INTEGERS = ("id",)
DATES = ("first_seen", "last_seen")


def file_format(name: str, field: str = "format") -> Format:
    """The format named ``name``, or a BadInput naming the known ones."""
    if name not in FORMATS:
        raise BadInput(f"{name!r} is not one of {', '.join(FORMATS)}", field=field)
    return FORMATS[name]


def _permits(session: Session, parcel_ids: set[int]) -> dict[int, str]:
    found: dict[int, list[str]] = {}
    for parcel_id, number in session.execute(select(Permit.parcel_id, Permit.permit_number)
                                             .where(Permit.parcel_id.in_(parcel_ids))
                                             .order_by(Permit.valid_from, Permit.permit_number)):
        found.setdefault(parcel_id, []).append(number)
    return {k: ", ".join(v) for k, v in found.items()}


def _column(name: str, values: list, spec: Format):
    if name in INTEGERS:
        return np.array(values, dtype="int64")
    if name in DATES and spec.dates:
        return np.array(values, dtype="datetime64[D]")
    if name in FLOATS:
        return np.array([np.nan if v is None else v for v in values], dtype="float64")
    return np.array(values, dtype=object)


def write_alerts(session: Session, alerts: Sequence[Alert], path: Path, fmt: str, *,
                 parcel_geometry: bool = False, links: Callable[[list[dict]], object] | None = None) -> Path:
    """Write the alerts to ``path`` in ``fmt`` (a key of ``FORMATS``). ``links`` may rewrite the
    features' ``evidence`` links (the API signs them) before they are written."""
    spec = file_format(fmt)
    features = to_geojson(session, alerts)["features"]
    if links is not None:
        links(features)
    permits = _permits(session, {a.parcel_id for a in alerts})
    rows = []
    for alert, feature in zip(alerts, features):
        props = dict(feature["properties"], permits=permits.get(alert.parcel_id))
        for name in NAMES:
            props[f"evidence_{name}"] = feature["properties"]["evidence"].get(name)
        rows.append({f: props[f] for f in FIELDS})
    geoms = shapely.set_precision(np.array([to_shape(a.geom) for a in alerts], dtype=object), GRID)
    if parcel_geometry:
        outlines: dict[int, Any] = dict(session.execute(select(Parcel.id, Parcel.geom).where(
            Parcel.id.in_({a.parcel_id for a in alerts}))).all())
        for alert, row in zip(alerts, rows):
            row["parcel_wkt"] = shapely.to_wkt(to_shape(outlines[alert.parcel_id]), rounding_precision=DECIMALS,
                                               trim=True)
    fields = [*FIELDS, "parcel_wkt"] if parcel_geometry else list(FIELDS)
    path.parent.mkdir(parents=True, exist_ok=True)
    # written beside the target and renamed over it: a failure leaves no half-written file
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".monitor-export-") as tmp:
        part = Path(tmp) / f"alerts{spec.suffix}"
        pyogrio.raw.write(part, geometry=shapely.to_wkb(geoms),
                          field_data=[_column(f, [r[f] for r in rows], spec) for f in fields],
                          fields=fields, crs="EPSG:4326", geometry_type="MultiPolygon", driver=spec.driver,
                          layer="alerts", layer_options=dict(spec.layer_options) or None)
        os.replace(part, path)
    return path


def alerts_file(session: Session, alerts: Sequence[Alert], fmt: str, **options) -> bytes:
    """The alerts written in ``fmt``, as bytes (written to a temporary file by GDAL)."""
    spec = file_format(fmt)
    with tempfile.TemporaryDirectory(prefix="monitor-export-") as tmp:
        path = write_alerts(session, alerts, Path(tmp) / f"alerts{spec.suffix}", fmt, **options)
        return path.read_bytes()
