"""Webhook deliveries, written as an outbox in the same transaction as the alert they announce,
so that an alert is never raised without its deliveries nor announced without being stored.
``deliver_pending`` sends them signed (HMAC-SHA256) and retries failures with capped exponential
backoff, keeping every attempt."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import time

import requests
from geoalchemy2.shape import to_shape
from shapely.geometry import mapping
from sqlalchemy import Engine, func, or_, select
from sqlalchemy.orm import Session

from monitor.alerts.lifecycle import alert_properties
from monitor.db.engine import transaction
from monitor.db.tables import Alert, Area, Delivery, Parcel, Subscription
from monitor.domain import AlertEvent, Confidence, DeliveryStatus, values
from monitor.errors import BadInput, NotFound
from monitor.inventory.areas import get_area
from monitor.metrics import Metrics
from monitor.redact import redact
from monitor.settings import Settings
from monitor.urlpolicy import UnsafeURL, check_url, guard_session

log = logging.getLogger(__name__)



def alert_payload(session: Session, alert: Alert, event: str) -> dict:
    """The JSON a subscriber receives: the event and the alert as the API shows it, with its geometry."""
    area = session.get(Area, alert.area_id)
    parcel = session.get(Parcel, alert.parcel_id)
    props = alert_properties(alert, area.name if area else None, parcel.external_id if parcel else None)
    return {"event": event, "alert": {**props, "geometry": mapping(to_shape(alert.geom))}}


def _rank(confidence: str) -> int:
    return Confidence(confidence).rank if confidence in values(Confidence) else 0


def enqueue(session: Session, alert: Alert, event: str) -> int:
    """Queue one delivery of ``event`` (an ``AlertEvent``) for every active subscription that wants this alert."""
    if event not in values(AlertEvent):
        raise ValueError(f"unknown webhook event {event!r}")
    session.flush()
    subs = session.scalars(select(Subscription).where(
        Subscription.active.is_(True),
        or_(Subscription.area_id.is_(None), Subscription.area_id == alert.area_id)))
    rank = _rank(alert.confidence)
    payload = None
    count = 0
    for sub in subs:
        if _rank(sub.min_confidence) > rank:
            continue
        payload = payload or alert_payload(session, alert, event)
        session.add(Delivery(subscription_id=sub.id, alert_id=alert.id, event=str(event), payload=payload))
        count += 1
    session.flush()
    return count


# --- subscriptions

def add_subscription(session: Session, url: str, secret: str, *, area: str | None = None,
                     min_confidence: str = Confidence.CONFIRMED, allow_private_urls: bool = False) -> Subscription:
    """Subscribe ``url`` to new and escalated alerts (of one area, or of every area). The URL must be
    http(s) and public (``urlpolicy.check_url``) unless ``allow_private_urls``."""
    check_url(url, allow_private=allow_private_urls, field="url")
    if not secret:
        raise BadInput("a subscription needs a secret to sign its deliveries", field="secret")
    if min_confidence not in values(Confidence):
        raise BadInput(f"{min_confidence!r} is not one of {', '.join(values(Confidence))}", field="min-confidence")
    area_id = get_area(session, area).id if area else None
    sub = Subscription(url=url, secret=secret, area_id=area_id, min_confidence=min_confidence)
    session.add(sub)
    session.flush()
    return sub


def list_subscriptions(session: Session) -> list[dict]:
    """Every subscription with its area name and delivery counts by status (secrets left out, passwords
    in URLs masked)."""
    counts: dict[int, dict[str, int]] = {}
    for sub_id, status, n in session.execute(
            select(Delivery.subscription_id, Delivery.status, func.count()).group_by(
                Delivery.subscription_id, Delivery.status)):
        counts.setdefault(sub_id, {})[status] = n
    rows = session.execute(select(Subscription, Area.name).outerjoin(Area, Area.id == Subscription.area_id)
                           .order_by(Subscription.id))
    return [{"id": s.id, "url": redact(s.url), "area": name, "min_confidence": s.min_confidence, "active": s.active,
             "deliveries": {k: counts.get(s.id, {}).get(k, 0) for k in values(DeliveryStatus)}}
            for s, name in rows]


def remove_subscription(session: Session, subscription_id: int) -> None:
    """Delete a subscription with its deliveries."""
    sub = session.get(Subscription, subscription_id) if 0 < subscription_id < 2**31 else None
    if sub is None:
        raise NotFound(f"no subscription with id {subscription_id} (see `monitor subscriptions list`)",
                       field="id")
    session.delete(sub)
    session.flush()


# --- sending

SIGNATURE_HEADER = "X-Monitor-Signature"
DELIVERY_HEADER = "X-Monitor-Delivery"
EVENT_HEADER = "X-Monitor-Event"


def sign(secret: str, body: bytes) -> str:
    """The signature header value of ``body``: ``sha256=<hex HMAC-SHA256 with the secret>``."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify_signature(secret: str, body: bytes, header: str | None) -> bool:
    """What a receiver checks: the header matches the body signed with the shared secret."""
    return header is not None and hmac.compare_digest(sign(secret, body), header)


def backoff(attempt: int, settings: Settings) -> dt.timedelta:
    """Delay after failed attempt number ``attempt`` (1-based): doubling from the base, capped."""
    seconds = settings.webhook_backoff_s * 2 ** min(attempt - 1, 32)
    return dt.timedelta(seconds=min(seconds, settings.webhook_backoff_max_s))


def _post(http: requests.Session, sub: Subscription, delivery: Delivery, timeout: float) -> tuple[int | None, str | None]:
    body = json.dumps(delivery.payload, separators=(",", ":"), sort_keys=True).encode("utf-8")
    headers = {"Content-Type": "application/json", "User-Agent": "monitor-webhooks",
               SIGNATURE_HEADER: sign(sub.secret, body), DELIVERY_HEADER: str(delivery.delivery_id),
               EVENT_HEADER: delivery.event}
    try:
        resp = http.post(sub.url, data=body, headers=headers, timeout=timeout, allow_redirects=False)
    except (requests.RequestException, UnsafeURL) as e:
        return None, redact(f"{type(e).__name__}: {e}")[:500]
    if 200 <= resp.status_code < 300:
        return resp.status_code, None
    return resp.status_code, f"HTTP {resp.status_code}: {resp.text[:200]}"


def deliver_pending(engine: Engine, settings: Settings, metrics: Metrics | None = None,
                    now: dt.datetime | None = None) -> int:
    """Attempt every delivery that is due at ``now`` once; returns how many were attempted.

    Each delivery is claimed with ``FOR UPDATE SKIP LOCKED`` and its attempt is committed on its
    own, so concurrent senders never post the same attempt twice and a crash loses nothing.
    """
    clock = (lambda: now) if now is not None else (lambda: dt.datetime.now(dt.timezone.utc))
    cutoff = clock()
    done = 0
    with guard_session(requests.Session(), guard=not settings.allow_private_urls) as http:
        while True:
            with transaction(engine) as session:
                row = session.execute(
                    select(Delivery, Subscription).join(Subscription, Subscription.id == Delivery.subscription_id)
                    .where(Delivery.status == DeliveryStatus.PENDING, Delivery.next_attempt_at <= cutoff,
                           Subscription.active.is_(True))
                    .order_by(Delivery.next_attempt_at, Delivery.id)
                    .limit(1).with_for_update(of=Delivery, skip_locked=True)).first()
                if row is None:
                    return done
                delivery, sub = row
                started = time.monotonic()
                at = clock()
                status, error = _post(http, sub, delivery, settings.webhook_timeout_s)
                attempt = {"at": at.isoformat(), "status": status, "error": error,
                           "duration_s": round(time.monotonic() - started, 3)}
                delivery.attempts = [*delivery.attempts, attempt]
                delivery.attempt_count += 1
                if error is None:
                    delivery.status = DeliveryStatus.SUCCEEDED
                elif delivery.attempt_count >= settings.webhook_max_attempts:
                    delivery.status = DeliveryStatus.FAILED
                else:
                    delivery.next_attempt_at = at + backoff(delivery.attempt_count, settings)
                done += 1
            if metrics is not None:
                metrics.webhook_deliveries.labels(DeliveryStatus.SUCCEEDED if error is None else DeliveryStatus.FAILED).inc()
                if delivery.status == DeliveryStatus.FAILED:
                    metrics.webhook_failures.inc()
            if error is None:
                log.info("webhook %s delivered to %s", delivery.delivery_id, redact(sub.url))
            else:
                log.warning("webhook %s to %s failed (attempt %d, %s): %s", delivery.delivery_id, redact(sub.url),
                            delivery.attempt_count, delivery.status, error)
