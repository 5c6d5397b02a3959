"""Webhook deliveries, written as an outbox in the same transaction as the alert they announce,
so that an alert is never raised without its deliveries nor announced without being stored."""

from __future__ import annotations

from geoalchemy2.shape import to_shape
from shapely.geometry import mapping
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from monitor.db.tables import Alert, Area, Delivery, Parcel, Subscription

CONFIDENCE_RANK = {"probable": 0, "confirmed": 1}
EVENTS = ("alert.created", "alert.escalated", "alert.updated", "alert.resolved")


def alert_payload(session: Session, alert: Alert, event: str) -> dict:
    area = session.get(Area, alert.area_id)
    parcel = session.get(Parcel, alert.parcel_id)
    return {
        "event": event,
        "alert": {
            "id": alert.id,
            "area": area.name if area else None,
            "parcel": parcel.external_id if parcel else None,
            "first_seen": alert.first_seen.isoformat(),
            "last_seen": alert.last_seen.isoformat(),
            "new_area_m2": round(alert.new_area_m2, 2),
            "fraction": round(alert.fraction, 4),
            "confidence": alert.confidence,
            "status": alert.status,
            "source": alert.source,
            "model_version": alert.model_version,
            "geometry": mapping(to_shape(alert.geom)),
        },
    }


def enqueue(session: Session, alert: Alert, event: str) -> int:
    """Queue one delivery of ``event`` for every active subscription that wants this alert."""
    if event not in EVENTS:
        raise ValueError(f"unknown webhook event {event!r}")
    session.flush()
    subs = session.scalars(select(Subscription).where(
        Subscription.active.is_(True),
        or_(Subscription.area_id.is_(None), Subscription.area_id == alert.area_id)))
    rank = CONFIDENCE_RANK.get(alert.confidence, 0)
    payload = None
    count = 0
    for sub in subs:
        if CONFIDENCE_RANK.get(sub.min_confidence, 0) > rank:
            continue
        payload = payload or alert_payload(session, alert, event)
        session.add(Delivery(subscription_id=sub.id, alert_id=alert.id, event=event, payload=payload))
        count += 1
    session.flush()
    return count
