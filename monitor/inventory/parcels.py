"""Cadastral parcels: bulk upsert by the cadastre's id."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
from geoalchemy2.shape import to_shape
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from monitor.db.queries import bulk_insert
from monitor.db.tables import Area, Parcel
from monitor.errors import BadInput
from monitor.geo import area_m2
from monitor.readers import read_polygons

ID_FIELD_GUESSES = ("parcel_id", "id", "external_id", "lot_id", "fid")


@dataclass
class ImportResult:
    """What a parcel import did (or, a dry run, would do): ``inserted`` new parcels, ``updated`` known
    ones, of which ``changed`` differ in geometry or attributes and ``unchanged`` do not."""

    inserted: int
    updated: int
    warnings: list[str]
    changed: int = 0
    unchanged: int = 0

    @property
    def total(self) -> int:
        """Parcels inserted or updated."""
        return self.inserted + self.updated


def _pick_id_field(path: Path, fields: list[str], id_field: str | None) -> str:
    if id_field:
        if id_field not in fields:
            raise BadInput(f"has no id field {id_field!r} (fields: {', '.join(fields) or 'none'})",
                           file=path, field=id_field)
        return id_field
    lower = {f.lower(): f for f in fields}
    for guess in ID_FIELD_GUESSES:
        if guess in lower:
            return lower[guess]
    raise BadInput(f"has no id field: pass --id-field (fields: {', '.join(fields) or 'none'})", file=path)


def import_parcels(session: Session, area: Area, path: str | Path, id_field: str | None = None,
                   dry_run: bool = False, allow_outside: bool = False) -> ImportResult:
    """Upsert every feature of a vector file as a parcel of the area, in the session's transaction
    (``dry_run``: count what would be new, changed and unchanged, writing nothing). A feature that
    does not touch the area is refused, naming it, unless ``allow_outside`` (then it is a warning)."""
    feats = read_polygons(path, what="parcels")
    path = feats.path
    outside = np.flatnonzero(~shapely.intersects(feats.geoms, to_shape(area.footprint)))
    if outside.size:
        where = f"lies outside area {area.name!r} ({outside.size} of {len(feats)} features do)"
        if not allow_outside:
            raise BadInput(f"{where}; pass --allow-outside to import them anyway", file=path,
                           row=f"{feats.numbers[outside[0]]} (feature)", field="geometry")
        feats.warnings.append(f"{path}: feature {feats.numbers[outside[0]]} {where}")
    fields = list(feats.rows[0].keys())
    key = _pick_id_field(path, fields, id_field)
    ids: list[str] = []
    for number, row in zip(feats.numbers, feats.rows):
        value = row.get(key)
        if value is None or str(value).strip() == "":
            raise BadInput("has an empty id", file=path, row=number, field=key)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        ids.append(str(value).strip())
    dupes = [i for i, c in Counter(ids).items() if c > 1]
    if dupes:
        first = ids.index(dupes[0])
        again = ids.index(dupes[0], first + 1)
        raise BadInput(f"id {dupes[0]!r} appears more than once (features {feats.numbers[first]} and "
                       f"{feats.numbers[again]}; {len(dupes)} duplicated ids in all)", file=path, field=key)
    areas = area_m2(feats.geoms, area.utm_epsg)
    wkb = shapely.to_wkb(feats.geoms, hex=True, include_srid=False)
    for number, a in zip(feats.numbers, areas):
        if not math.isfinite(a):
            raise BadInput("has no finite area (are the coordinates in the CRS the file claims?)", file=path,
                           row=number, field="geometry")
    stored = {ext: (geom, attributes) for ext, geom, attributes in session.execute(
        select(Parcel.external_id, func.encode(func.ST_AsBinary(Parcel.geom), "hex"), Parcel.attributes)
        .where(Parcel.area_id == area.id, Parcel.external_id.in_(ids)))}
    unchanged = sum(1 for i, w, r in zip(ids, wkb, feats.rows)
                    if i in stored and stored[i][0] == w.lower() and stored[i][1] == json.loads(json.dumps(r)))
    counts = {"changed": len(stored) - unchanged, "unchanged": unchanged}
    if dry_run:
        return ImportResult(inserted=len(ids) - len(stored), updated=len(stored), warnings=feats.warnings, **counts)
    records = [(i, w, float(a), json.dumps(r)) for i, w, a, r in zip(ids, wkb, areas, feats.rows)]
    rows = bulk_insert(session, f"""
            INSERT INTO parcels (area_id, external_id, geom, area_m2, attributes)
            SELECT {int(area.id)}, v.external_id, ST_SetSRID(ST_GeomFromWKB(decode(v.wkb, 'hex')), 4326), v.area_m2,
                   v.attributes::jsonb
            FROM (VALUES %s) AS v(external_id, wkb, area_m2, attributes)
            ON CONFLICT (area_id, external_id) DO UPDATE
               SET geom = EXCLUDED.geom, area_m2 = EXCLUDED.area_m2, attributes = EXCLUDED.attributes,
                   updated_at = now()
            RETURNING (xmax = 0)
        """, records, fetch=True)
    inserted = sum(1 for (new,) in rows if new)
    return ImportResult(inserted=inserted, updated=len(rows) - inserted, warnings=feats.warnings, **counts)
