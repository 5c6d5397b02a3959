"""Alerts as people see them: listing, review (ack, confirm, dismiss) and GeoJSON.

Reviewed alerts are never deleted: dismissed ones are the negative examples for retraining.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from geoalchemy2.shape import to_shape
from shapely.geometry import mapping
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from monitor.alerts.evidence import available, evidence_path
from monitor.db.tables import Alert, Area, Parcel
from monitor.domain import OPEN_ALERT_STATUSES, AlertStatus, parse_bbox, values
from monitor.errors import BadInput, Conflict, NotFound
from monitor.inventory.areas import get_area

A = AlertStatus
ACTIONS = {"ack": A.ACKNOWLEDGED, "confirm": A.CONFIRMED, "dismiss": A.DISMISSED}
# The statuses each review action may start from (repeating an action updates note and reviewer).
ALLOWED_FROM = {"ack": {A.NEW, A.ACKNOWLEDGED}, "confirm": {A.NEW, A.ACKNOWLEDGED, A.CONFIRMED},
                "dismiss": {A.NEW, A.ACKNOWLEDGED, A.CONFIRMED, A.DISMISSED}}


def _date(value, field: str) -> dt.date | None:
    if value is None or isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise BadInput(f"{value!r} is not a date (use YYYY-MM-DD)", field=field) from None


def list_alerts(session: Session, *, area=None, status=None, since=None, until=None, bbox=None) -> list[Alert]:
    """Alerts filtered by area (name or Area), status (one, several, or 'open'), the dates they were
    seen (last seen on/after ``since``, first seen on/before ``until``) and a 4326 bbox; oldest first."""
    q = select(Alert)
    if area is not None:
        if not isinstance(area, Area):
            area = get_area(session, area)
        q = q.where(Alert.area_id == area.id)
    if status is not None:
        wanted: set[str] = set()
        for s in [status] if isinstance(status, str) else status:
            for part in str(s).split(","):
                part = part.strip()
                if part == "open":
                    wanted.update(OPEN_ALERT_STATUSES)
                elif part in values(AlertStatus):
                    wanted.add(part)
                else:
                    raise BadInput(f"unknown status {part!r}; known: open, {', '.join(values(AlertStatus))}",
                                   field="status")
        q = q.where(Alert.status.in_(sorted(str(w) for w in wanted)))
    since, until = _date(since, "since"), _date(until, "until")
    if since is not None:
        q = q.where(Alert.last_seen >= since)
    if until is not None:
        q = q.where(Alert.first_seen <= until)
    box = parse_bbox(bbox)
    if box is not None:
        q = q.where(func.ST_Intersects(Alert.geom, func.ST_MakeEnvelope(*box, 4326)))
    return list(session.scalars(q.order_by(Alert.first_seen, Alert.id)))


def review(session: Session, alert_id: int, action: str, note: str | None, reviewer: str | None) -> Alert:
    """Record a reviewer's decision: 'ack' (acknowledged), 'confirm' (confirmed on the ground) or
    'dismiss' (a false alarm, kept as a negative example), with who, when and why."""
    if action not in ACTIONS:
        raise BadInput(f"unknown action {action!r}; known: {', '.join(ACTIONS)}", field="action")
    alert = session.get(Alert, int(alert_id), with_for_update=True)
    if alert is None:
        raise NotFound(f"no alert {alert_id} (see `monitor alerts list`)", field="id")
    if alert.status not in ALLOWED_FROM[action]:
        raise Conflict(f"alert {alert.id} is {alert.status}: it cannot be {ACTIONS[action]}", field="id")
    alert.status = ACTIONS[action]
    if note is not None:
        alert.note = note
    alert.reviewed_by = reviewer
    alert.reviewed_at = dt.datetime.now(dt.timezone.utc)
    session.flush()
    return alert


def alert_properties(alert: Alert, area_name: str | None, parcel_id: str | None,
                     evidence: Sequence[str] = ()) -> dict:
    """An alert's properties as the API, the CLI and the webhooks show them; ``evidence`` names the chips
    it has, linked by their API paths."""
    return {
        "id": alert.id,
        "area": area_name,
        "parcel": parcel_id,
        "first_seen": alert.first_seen.isoformat(),
        "last_seen": alert.last_seen.isoformat(),
        "new_area_m2": round(alert.new_area_m2, 2),
        "fraction": round(alert.fraction, 4),
        "confidence": alert.confidence,
        "status": alert.status,
        "note": alert.note,
        "reviewed_by": alert.reviewed_by,
        "reviewed_at": alert.reviewed_at.isoformat() if alert.reviewed_at else None,
        "source": alert.source,
        "model_version": alert.model_version,
        "evidence": {name: evidence_path(alert.id, name) for name in evidence},
    }


def names(session: Session, alerts: Sequence[Alert]) -> dict[int, tuple[str, str]]:
    """alert id -> (area name, parcel external id)."""
    ids = [a.id for a in alerts]
    if not ids:
        return {}
    rows = session.execute(select(Alert.id, Area.name, Parcel.external_id)
                           .join(Area, Area.id == Alert.area_id).join(Parcel, Parcel.id == Alert.parcel_id)
                           .where(Alert.id.in_(ids)))
    return {i: (a, p) for i, a, p in rows}


_UNKNOWN: tuple[str | None, str | None] = (None, None)


def to_geojson(session: Session, alerts: Sequence[Alert]) -> dict:
    """A GeoJSON FeatureCollection (EPSG:4326) of the alerts' new construction.

    Built as a dict (shapely's ``mapping`` for the geometries) because the API returns it as JSON and
    the CLI prints it; no file is written, so pyogrio has nothing to add here.
    """
    labels = names(session, alerts)
    chips = available(session, alerts)
    return {
        "type": "FeatureCollection",
        "features": [{
            "type": "Feature",
            "id": a.id,
            "geometry": mapping(to_shape(a.geom)),
            "properties": alert_properties(a, *labels.get(a.id, _UNKNOWN), evidence=chips.get(a.id, ())),
        } for a in alerts],
    }
