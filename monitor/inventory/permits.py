"""Building permits from CSV or GeoJSON: parcel_id, permit_id, valid_from, valid_to."""

from __future__ import annotations

import csv
import datetime as dt
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from monitor.db.queries import bulk_insert
from monitor.db.tables import Area, Parcel
from monitor.errors import BadInput

ALIASES = {
    "parcel_id": ("parcel_id", "parcel", "lot_id", "external_id"),
    "permit_id": ("permit_id", "permit_number", "permit", "number"),
    "valid_from": ("valid_from", "from", "issued", "start"),
    "valid_to": ("valid_to", "to", "expires", "end"),
    "kind": ("kind", "type"),
}
REQUIRED = ("parcel_id", "permit_id", "valid_from", "valid_to")  # an empty valid_to is open-ended


@dataclass
class PermitRow:
    """One permit of a permits file, checked; ``number`` is its row."""

    number: int
    parcel_id: str
    permit_id: str
    valid_from: dt.date
    valid_to: dt.date | None
    kind: str | None


def _parse_date(value, path: Path, number: int, field: str, date_format: str | None = None) -> dt.date | None:
    """An ISO 8601 date (YYYY-MM-DD, a time after it ignored), or one in ``date_format`` (strptime codes,
    e.g. %d/%m/%Y) when given: never a guess between day first and month first."""
    if value is None or str(value).strip() == "":
        return None
    text = str(value).strip()
    try:
        if date_format:
            return dt.datetime.strptime(text, date_format).date()
        return dt.date.fromisoformat(text[:10]) if len(text) == 10 or text[10:11] in ("T", " ") else \
            dt.date.fromisoformat(text)
    except ValueError:
        want = f"a date in the format {date_format}" if date_format else "a date (use YYYY-MM-DD)"
        raise BadInput(f"{text!r} is not {want}", file=path, row=number, field=field) from None


def _records(path: Path) -> list[tuple[int, dict]]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        try:
            with open(path, newline="", encoding="utf-8-sig") as fh:
                reader = csv.DictReader(fh)
                if not reader.fieldnames:
                    raise BadInput("is empty", file=path)
                return [(i + 2, {k.strip().lower(): v for k, v in row.items() if k}) for i, row in enumerate(reader)]
        except UnicodeDecodeError as e:
            raise BadInput(f"is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}): save it as "
                           "UTF-8", file=path) from None
        except csv.Error as e:
            raise BadInput(f"is not a readable CSV file: {e}", file=path) from None
    if suffix in (".geojson", ".json"):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BadInput(f"is not valid JSON: {e}", file=path) from e
        feats = doc.get("features") if isinstance(doc, dict) else None
        if feats is None:
            raise BadInput("is not a GeoJSON FeatureCollection", file=path)
        return [(i + 1, {k.lower(): v for k, v in (f.get("properties") or {}).items()})
                for i, f in enumerate(feats)]
    raise BadInput("is not a CSV or GeoJSON file", file=path)


def read_permits(path: str | Path, date_format: str | None = None) -> list[PermitRow]:
    """The permits of a CSV or GeoJSON file, checked row by row (nothing is written); dates are ISO
    8601 unless ``date_format`` is given."""
    path = Path(path)
    if not path.exists():
        raise BadInput("file does not exist", file=path)
    records = _records(path)
    if not records:
        raise BadInput("holds no permits", file=path)
    columns = set(records[0][1])
    names = {}
    for canon, options in ALIASES.items():
        names[canon] = next((o for o in options if o in columns), None)
    for canon in REQUIRED:
        if names[canon] is None:
            raise BadInput(f"has no {canon} column (columns: {', '.join(sorted(columns))})", file=path,
                           field=canon)
    out = []
    for number, rec in records:
        for key, value in rec.items():
            if "\x00" in str(key) + str(value):
                raise BadInput("holds a NUL character", file=path, row=number, field=str(key).replace("\x00", ""))
        parcel = str(rec.get(names["parcel_id"]) or "").strip()
        permit = str(rec.get(names["permit_id"]) or "").strip()
        if not parcel:
            raise BadInput("has no parcel id", file=path, row=number, field="parcel_id")
        if not permit:
            raise BadInput("has no permit id", file=path, row=number, field="permit_id")
        start = _parse_date(rec.get(names["valid_from"]), path, number, "valid_from", date_format)
        if start is None:
            raise BadInput("has no valid_from date", file=path, row=number, field="valid_from")
        end = _parse_date(rec.get(names["valid_to"]), path, number, "valid_to", date_format)
        if end is not None and end < start:
            raise BadInput(f"valid_to {end} is before valid_from {start}", file=path, row=number, field="valid_to")
        kind = rec.get(names["kind"]) if names["kind"] else None
        out.append(PermitRow(number, parcel, permit, start, end, str(kind).strip() if kind else None))
    dupes = [k for k, c in Counter((r.parcel_id, r.permit_id) for r in out).items() if c > 1]
    if dupes:
        rows = [r.number for r in out if (r.parcel_id, r.permit_id) == dupes[0]]
        raise BadInput(f"permit {dupes[0][1]!r} of parcel {dupes[0][0]!r} appears twice (rows {rows[0]} and "
                       f"{rows[1]})", file=path, field="permit_id")
    return out


def import_permits(session: Session, path: str | Path, area: Area | None = None,
                   date_format: str | None = None) -> int:
    """Upsert permits; every parcel id must name an existing parcel (of ``area`` when given)."""
    path = Path(path)
    rows = read_permits(path, date_format)
    query = select(Parcel.external_id, Parcel.id, Parcel.area_id)
    if area is not None:
        query = query.where(Parcel.area_id == area.id)
    lookup: dict[str, list[int]] = {}
    for ext, pid, _aid in session.execute(query.where(Parcel.external_id.in_({r.parcel_id for r in rows}))):
        lookup.setdefault(ext, []).append(pid)
    values = []
    for r in rows:
        found = lookup.get(r.parcel_id, [])
        if not found:
            where = f" in area {area.name!r}" if area is not None else ""
            raise BadInput(f"parcel {r.parcel_id!r} does not exist{where}", file=path, row=r.number,
                           field="parcel_id")
        if len(found) > 1:
            raise BadInput(f"parcel id {r.parcel_id!r} exists in several areas: pass --area", file=path,
                           row=r.number, field="parcel_id")
        values.append((found[0], r.permit_id, r.kind, r.valid_from, r.valid_to))
    bulk_insert(session, """
            INSERT INTO permits (parcel_id, permit_number, kind, valid_from, valid_to) VALUES %s
            ON CONFLICT (parcel_id, permit_number) DO UPDATE
               SET kind = EXCLUDED.kind, valid_from = EXCLUDED.valid_from, valid_to = EXCLUDED.valid_to
        """, values)
    return len(values)
