"""Cadastral parcels: bulk upsert by the cadastre's id, every import recorded and the earlier versions
of the parcels it changed kept, so that an import can be undone and a parcel's history read."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
from geoalchemy2.shape import to_shape
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from monitor.db.queries import bulk_insert
from monitor.db.tables import Alert, Area, Parcel, ParcelChange, ParcelImport, ParcelVersion, Permit
from monitor.errors import BadInput, NotFound
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
    import_id: int | None = None  # the recorded import (None for a dry run)

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
                   dry_run: bool = False, allow_outside: bool = False, source: str | None = None) -> ImportResult:
    """Upsert every feature of a vector file as a parcel of the area, in the session's transaction
    (``dry_run``: count what would be new, changed and unchanged, writing nothing), recording the
    import under ``source`` (default: the file's path) and keeping the versions it replaces. A
    feature that does not touch the area is refused, naming it, unless ``allow_outside`` (then it is
    a warning)."""
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
    # one import of an area at a time: what is stored must not change between the comparison and the upsert
    session.execute(select(Area.id).where(Area.id == area.id).with_for_update(key_share=True))
    stored = {ext: (geom, attributes) for ext, geom, attributes in session.execute(
        select(Parcel.external_id, func.encode(func.ST_AsBinary(Parcel.geom), "hex"), Parcel.attributes)
        .where(Parcel.area_id == area.id, Parcel.external_id.in_(ids)))}
    same = {i for i, w, r in zip(ids, wkb, feats.rows)
            if i in stored and stored[i][0] == w.lower() and stored[i][1] == json.loads(json.dumps(r))}
    counts = {"changed": len(stored) - len(same), "unchanged": len(same)}
    if dry_run:
        return ImportResult(inserted=len(ids) - len(stored), updated=len(stored), warnings=feats.warnings, **counts)
    record = ParcelImport(area_id=area.id, file=source or str(path), new=len(ids) - len(stored), **counts)
    session.add(record)
    session.flush()
    changed = [i for i in stored if i not in same]
    if changed:  # the versions they replace are kept, in this transaction
        session.execute(text("""
            INSERT INTO parcel_versions (parcel_id, area_id, external_id, geom, area_m2, attributes, valid_from,
                                         valid_to, import_id, written_by)
            SELECT id, area_id, external_id, geom, area_m2, attributes, updated_at, now(), :import_id, import_id
            FROM parcels WHERE area_id = :area_id AND external_id = ANY(:ids)
        """), {"import_id": record.id, "area_id": area.id, "ids": changed})
    records = [(i, w, float(a), json.dumps(r)) for i, w, a, r in zip(ids, wkb, areas, feats.rows) if i not in same]
    if records:
        bulk_insert(session, f"""
                INSERT INTO parcels (area_id, external_id, geom, area_m2, attributes, import_id)
                SELECT {int(area.id)}, v.external_id, ST_SetSRID(ST_GeomFromWKB(decode(v.wkb, 'hex')), 4326),
                       v.area_m2, v.attributes::jsonb, {int(record.id)}
                FROM (VALUES %s) AS v(external_id, wkb, area_m2, attributes)
                ON CONFLICT (area_id, external_id) DO UPDATE
                   SET geom = EXCLUDED.geom, area_m2 = EXCLUDED.area_m2, attributes = EXCLUDED.attributes,
                       import_id = EXCLUDED.import_id, updated_at = now()
            """, records)
    return ImportResult(inserted=record.new, updated=len(stored), warnings=feats.warnings, import_id=record.id,
                        **counts)


@dataclass
class UndoResult:
    """An undone import: the parcels given back their earlier version, and the new ones removed."""

    import_id: int
    file: str
    restored: int
    removed: int


def _import_of(session: Session, area: Area, import_id: int | None) -> ParcelImport:
    if import_id is None:
        found = session.scalar(select(ParcelImport).where(ParcelImport.area_id == area.id,
                                                          ParcelImport.undone_at.is_(None))
                               .order_by(ParcelImport.id.desc()).limit(1))
        if found is None:
            raise BadInput(f"area {area.name!r} has no parcel import to undo", field="area")
        return found
    found = session.get(ParcelImport, import_id)
    if found is None or found.area_id != area.id:
        raise NotFound(f"area {area.name!r} has no parcel import #{import_id} (`monitor parcels imports --area "
                       f"{area.name}` lists them)", field="import")
    if found.undone_at is not None:
        raise BadInput(f"import #{import_id} was undone already, at {found.undone_at:%Y-%m-%d %H:%M:%S %Z}",
                       field="import")
    return found


def undo_import(session: Session, area: Area, import_id: int | None = None) -> UndoResult:
    """Undo the area's last import not yet undone (or ``import_id``), in the session's transaction: the
    parcels it changed get their earlier version back and the parcels it added are removed. Refused
    (BadInput, nothing changed) when a later import changed parcels it wrote, or when a parcel it
    added has permits, alerts or judged changes."""
    session.execute(select(Area.id).where(Area.id == area.id).with_for_update(key_share=True))
    record = _import_of(session, area, import_id)
    later = sorted(set(session.scalars(select(ParcelVersion.import_id).where(ParcelVersion.written_by == record.id))))
    if later:
        raise BadInput(f"import #{record.id} cannot be undone: parcels it wrote were changed since by import "
                       f"{', '.join(f'#{i}' for i in later)}; undo that first", field="import")
    kept = select(ParcelVersion.parcel_id).where(ParcelVersion.import_id == record.id)
    added = list(session.execute(select(Parcel.id, Parcel.external_id).where(
        Parcel.import_id == record.id, Parcel.id.not_in(kept))).all())
    ids = [i for i, _ in added]
    used = {name: set(session.scalars(select(col).where(col.in_(ids)))) if ids else set()
            for name, col in (("permits", Permit.parcel_id), ("alerts", Alert.parcel_id),
                              ("judged changes", ParcelChange.parcel_id))}
    if any(used.values()):
        names = {i: ext for i, ext in added}
        why = "; ".join(f"{name}: {', '.join(sorted(names[i] for i in pids)[:5])}"
                        + (f" and {len(pids) - 5} more" if len(pids) > 5 else "")
                        for name, pids in used.items() if pids)
        raise BadInput(f"import #{record.id} cannot be undone: parcels it added are referred to by {why}; "
                       "nothing was changed", field="import")
    restored = len(session.execute(text("""
        UPDATE parcels p SET geom = v.geom, area_m2 = v.area_m2, attributes = v.attributes,
                             updated_at = v.valid_from, import_id = v.written_by
        FROM parcel_versions v WHERE v.import_id = :i AND p.id = v.parcel_id
        RETURNING p.id
    """), {"i": record.id}).all())
    session.execute(text("DELETE FROM parcel_versions WHERE import_id = :i"), {"i": record.id})
    if ids:
        session.execute(text("DELETE FROM parcels WHERE id = ANY(:ids)"), {"ids": ids})
    record.undone_at = session.scalar(select(func.now()))
    return UndoResult(record.id, record.file, restored, len(ids))


def list_imports(session: Session, area: Area) -> list[ParcelImport]:
    """The area's parcel imports, oldest first."""
    return list(session.scalars(select(ParcelImport).where(ParcelImport.area_id == area.id)
                                .order_by(ParcelImport.id)))


def parcel_versions(session: Session, area: Area, external_id: str | None = None) -> list[dict]:
    """Every version of the area's parcels (or of one), oldest first; ``valid_to`` None: the current one."""
    rows = session.execute(text(
        "SELECT external_id, valid_from, valid_to, import_id, replaced_by, area_m2, attributes "
        "FROM area_parcel_versions WHERE area_id = :a AND (CAST(:e AS text) IS NULL OR external_id = :e) "
        "ORDER BY external_id, valid_from, valid_to NULLS LAST"), {"a": area.id, "e": external_id}).mappings().all()
    if external_id is not None and not rows:
        raise NotFound(f"no parcel {external_id!r} in area {area.name!r}", field="parcel")
    return [dict(r) for r in rows]
