"""History as the views ``parcel_history`` and ``area_indicators`` keep it."""

from __future__ import annotations

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from monitor.db.tables import Area, Parcel
from monitor.errors import BadInput, NotFound
from monitor.inventory.areas import get_area

PARCEL_COLUMNS = ("area", "external_id", "observed_on", "scene_id", "clear", "built_m2", "built_fraction",
                  "new_m2", "verdict", "permit_id", "alert_id", "parcel_m2")
AREA_COLUMNS = ("area", "observed_on", "scene_id", "built_km2", "built_km2_change", "settlement_km2", "settlement_carried_km2",
                "clear_fraction", "changes", "new_m2", "alerts_raised")


def _rows(session: Session, sql: str, **params) -> list[dict]:
    return [dict(r._mapping) for r in session.execute(text(sql), params)]


def parcel_history(session: Session, external_id: str, area_name: str | None = None) -> list[dict]:
    """Every processed date of a parcel: its built area, the new construction and its verdict."""
    q = select(Parcel.id, Area.name).join(Area, Area.id == Parcel.area_id).where(Parcel.external_id == external_id)
    if area_name is not None:
        q = q.where(Area.name == area_name)
    found = session.execute(q).all()
    if not found:
        where = f" in area {area_name!r}" if area_name else ""
        raise NotFound(f"no parcel {external_id!r}{where}", field="parcel")
    if len(found) > 1:
        raise BadInput(f"parcel {external_id!r} exists in areas {', '.join(sorted(n for _i, n in found))}: "
                       "name one with --area", field="area")
    return _rows(session, f"SELECT {', '.join(PARCEL_COLUMNS)} FROM parcel_history "
                          "WHERE parcel_id = :pid ORDER BY observed_on", pid=found[0][0])


def area_history(session: Session, area_name: str) -> list[dict]:
    """Every processed date of an area: built-up and settlement km2, clear fraction, changes, alerts."""
    area = get_area(session, area_name)
    return _rows(session, f"SELECT {', '.join(AREA_COLUMNS)} FROM area_indicators "
                          "WHERE area_id = :aid ORDER BY observed_on", aid=area.id)
