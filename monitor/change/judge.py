"""The judge: a scene's changes x parcels x permits -> a verdict per parcel and the alert events.

The statements are ``monitor/db/sql/judge_*.sql``. Nothing is sent from here: the caller queues
the events' webhooks in the same transaction; evidence chips are rendered when first asked for.
"""

from __future__ import annotations

from typing import NamedTuple

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from monitor.db.queries import (
    bulk_insert,
    count_open_alerts,
    no_jit,
    open_statuses,
    run_sql,
    scene_date,
    scene_pixel_m,
    sql,
)
from monitor.db.tables import Alert, Area, Scene
from monitor.domain import AlertEvent, AlertStatus, ChangeSource, Confidence, Verdict
from monitor.metrics import Metrics, default_metrics
from monitor.settings import Settings

# An open alert is still seen on a later date when at least this share of it is clear there and
# at least this share of the clear part is still detected as built.
STILL_SEEN_CLEAR = 0.5
STILL_SEEN_BUILT = 0.5
# Pieces of a change on a parcel smaller than this (m2) are slivers of parcel boundaries.
MIN_PIECE_M2 = 0.01
# A new alert of the diff reverts when at least STILL_SEEN_CLEAR of it is clear on a later date and
# less than this share of the clear part is still detected as built: a crop, ploughing, a shadow.
REVERTED_BUILT = 0.25
# An update is announced when the construction grew by more than this (m2) or was seen on a later date.
GROWN_M2 = 0.5


class Event(NamedTuple):
    """What happened to an alert when a scene was judged."""

    alert: Alert
    event: AlertEvent


def meets_thresholds(new_m2: float, fraction: float | None, settings: Settings, pixel_m: float) -> bool:
    """Whether new construction on a parcel is enough for an alert: ``alert_min_px`` pixels of
    ``pixel_m`` (at least ``alert_min_m2``), and ``alert_min_fraction`` of the parcel when that is
    above 0."""
    if new_m2 < settings.min_area_m2("alert", pixel_m):
        return False
    return settings.alert_min_fraction <= 0 or (fraction or 0.0) >= settings.alert_min_fraction


def _raise_held(session: Session, area: Area, scene: Scene, settings: Settings) -> list[tuple[int, AlertEvent]]:
    """Construction held back on earlier dates (``alert_min_sightings`` 2) measured on this one: an alert,
    dated from its first sighting, where at least ``STILL_SEEN_CLEAR`` of it is clear and
    ``STILL_SEEN_BUILT`` of that still built; ``vanished`` where it is clear and less is built; held on
    where it is not seen well enough. A permit that covers it by now, or an alert the parcel already has
    for it, takes it instead of a new alert. Returns the created alerts' events."""
    day = scene_date(scene)
    epsg = int(area.utm_epsg)
    events: list[tuple[int, AlertEvent]] = []
    raised: dict[int, int] = {}  # parcel -> alert raised here
    for row in session.execute(text(sql("judge_held")), dict(
            aid=area.id, sid=scene.id, day=day, epsg=epsg, tol=float(settings.shift_tolerance_m),
            open_statuses=open_statuses())).all():
        clear_share = row.clear_m2 / row.total if row.total > 0 else 0.0
        if clear_share < STILL_SEEN_CLEAR:
            continue  # not seen well enough on this date to say: held on
        permit_id, alert_id = row.permit_id, row.alert_id or raised.get(row.parcel_id)
        if row.built_m2 / row.clear_m2 < STILL_SEEN_BUILT:
            verdict = Verdict.VANISHED
        elif permit_id is not None:
            verdict = Verdict.PERMITTED
        else:
            verdict = Verdict.ALERT
            if alert_id is None:
                confidence = (Confidence.CONFIRMED if (day - row.observed_on).days >= settings.persist_days
                              else Confidence.PROBABLE)
                alert_id = session.execute(text(sql("judge_create_held")), dict(
                    aid=area.id, pid=row.parcel_id, geom=row.geom, first_seen=row.observed_on, day=day, epsg=epsg,
                    parcel_m2=row.parcel_m2, source=row.source, model_version=row.model_version,
                    confidence=str(confidence))).scalar_one()
                raised[row.parcel_id] = alert_id
                events.append((alert_id, AlertEvent.CREATED))
        session.execute(text("UPDATE parcel_changes SET verdict = :verdict, permit_id = :permit, alert_id = :alert "
                             "WHERE id = ANY(:ids)"),
                        dict(verdict=str(verdict), permit=permit_id if verdict == Verdict.PERMITTED else None,
                             alert=alert_id if verdict == Verdict.ALERT else None, ids=list(row.ids)))
    return events


def judge(session: Session, area: Area, scene: Scene, settings: Settings,
          metrics: Metrics | None = None, segmented: bool = True,
          sightings: dict[int, tuple[float, float]] | None = None, replace: bool = False) -> list[Event]:
    """Judge a scene's changes against parcels and permits; returns the events of the alerts touched.

    Per parcel, the new construction of this date (the union of its change pieces) is
    ``permitted`` when a permit is valid on the date (for a parcel with an open alert: at any time
    since the alert was first seen, which resolves the alert), an ``alert`` when it reaches
    ``alert_min_m2`` (and ``alert_min_fraction`` of the parcel, when set), else ``below_threshold``.
    With ``alert_min_sightings`` 2, the diff's construction that would raise an alert is held
    (``unconfirmed``) until the next date that sees it clear: still built there, the alert is raised
    then, dated from the first sighting; no longer built, it ``vanished``.
    A parcel has at most one open alert: later construction updates it. An open alert still seen
    on a clear date at least ``persist_days`` after it was first seen becomes ``confirmed``
    (construction stays; crops and ploughing come and go). A ``new`` alert of the diff that a later
    clear date no longer sees as built is ``reverted`` (``segmented``: this date was run through a
    segmenter, so not seeing is news). A change model's and a settlement layer's alerts are seen
    through ``sightings`` (alert id -> clear share of its outline, share of that still changed from
    the alert's baseline, or still settlement) where given, else through the segmenter's detections.
    Re-judging a scene rewrites its verdicts and raises nothing twice. With ``replace`` (the date
    processed again with other models) an open alert first seen on this date takes this date's
    construction instead of adding it, ``revert_unseen`` reverts those no verdict names any more, and
    alerts an earlier reprocess reverted are judged anew (open again and ``updated`` when the current
    models see them).
    """
    sightings = sightings or {}
    metrics = metrics or default_metrics()
    session.flush()
    no_jit(session)
    day = scene_date(scene)
    epsg = int(area.utm_epsg)
    pixel_m = scene_pixel_m(scene, settings)
    opened = open_statuses()
    session.execute(text("DELETE FROM parcel_changes WHERE change_id IN (SELECT id FROM changes WHERE scene_id = :sid)"),
                    dict(sid=scene.id))
    events: list[tuple[int, AlertEvent]] = []
    reopened = session.execute(text(sql("judge_reopen")), dict(aid=area.id, day=day, open_statuses=opened)
                               ).scalars().all() if replace else []

    resolved = session.execute(text(sql("judge_resolve")), dict(aid=area.id, day=day, open_statuses=opened)).scalars()
    events += [(i, AlertEvent.RESOLVED) for i in resolved.all()]

    seen, persisted, gone = [], [], []
    for row in session.execute(text(sql("judge_still_seen")), dict(
            aid=area.id, sid=scene.id, day=day, epsg=epsg, tol=float(settings.shift_tolerance_m),
            open_statuses=opened)):
        if row.source != ChangeSource.DIFF and row.id in sightings:
            clear_share, built_share = sightings[row.id]
            observed = True
        else:
            clear_share = row.clear_m2 / row.total if row.total > 0 else 0.0
            built_share = row.built_m2 / row.clear_m2 if row.clear_m2 > 0 else 0.0
            observed = segmented and row.source == ChangeSource.DIFF
        if clear_share < STILL_SEEN_CLEAR:
            continue  # not seen well enough on this date to say
        if built_share >= STILL_SEEN_BUILT:
            seen.append(row.id)
            if (day - row.first_seen).days >= settings.persist_days:
                persisted.append(row.id)
        elif observed and row.status == AlertStatus.NEW and built_share < REVERTED_BUILT:
            gone.append(row.id)
    if seen:
        session.execute(text("UPDATE alerts SET last_seen = :day WHERE id = ANY(:ids) AND last_seen < :day"),
                        dict(ids=seen, day=day))
    if persisted:
        escalated = session.execute(text(
            "UPDATE alerts SET confidence = :confirmed, updated_at = now() "
            "WHERE id = ANY(:ids) AND confidence = :probable RETURNING id"),
            dict(ids=persisted, confirmed=str(Confidence.CONFIRMED),
                 probable=str(Confidence.PROBABLE))).scalars().all()
        events += [(i, AlertEvent.ESCALATED) for i in escalated]
    if gone:
        reverted = session.execute(text(
            "UPDATE alerts SET status = :reverted, updated_at = now() WHERE id = ANY(:ids) RETURNING id"),
            dict(ids=gone, reverted=str(AlertStatus.REVERTED))).scalars().all()
        events += [(i, AlertEvent.REVERTED) for i in reverted]

    if settings.alert_min_sightings > 1 and segmented:
        events += _raise_held(session, area, scene, settings)

    run_sql(session, "judge_pieces", aid=area.id, sid=scene.id, epsg=epsg, min_piece=MIN_PIECE_M2)
    verdicts: list[tuple[int, str, int | None, int | None]] = []  # parcel, verdict, permit, alert
    to_create, to_update = [], []
    for row in session.execute(text(sql("judge_parcels")), dict(day=day, open_statuses=opened)):
        if row.permit_id is not None:
            # (an open alert such a permit covers was resolved above)
            verdicts.append((row.parcel_id, Verdict.PERMITTED, row.permit_id, None))
        elif meets_thresholds(row.new_m2, row.fraction, settings, pixel_m):
            if row.open_id is not None:
                to_update.append(row.open_id)
                verdicts.append((row.parcel_id, Verdict.ALERT, None, row.open_id))
            elif row.closed_id is not None:
                verdicts.append((row.parcel_id, Verdict.ALERT, None, row.closed_id))
            elif settings.alert_min_sightings > 1 and row.source == ChangeSource.DIFF:
                verdicts.append((row.parcel_id, Verdict.UNCONFIRMED, None, None))
            else:
                to_create.append(row.parcel_id)
        else:
            verdicts.append((row.parcel_id, Verdict.BELOW_THRESHOLD, None, None))

    if to_create:
        created = session.execute(text(sql("judge_create")), dict(aid=area.id, day=day, ids=to_create)).all()
        verdicts += [(pid, Verdict.ALERT, None, aid) for aid, pid in created]
        events += [(aid, AlertEvent.CREATED) for aid, _pid in created]
    if to_update:
        updated = session.execute(text(sql("judge_update")), dict(ids=to_update, epsg=epsg, day=day,
                                                                    replace=replace)).all()
        events += [(aid, AlertEvent.UPDATED) for aid, grown, last in updated if grown > GROWN_M2 or last < day]

    if verdicts:
        bulk_insert(session, sql("judge_verdicts"), [(p, str(v), permit, alert, day) for p, v, permit, alert in verdicts],
                    "(%s::bigint, %s, %s::bigint, %s::bigint, %s::date)")
    session.execute(text("DROP TABLE IF EXISTS _judge_pieces, _judge_parcels"))
    if replace:
        unseen = {i for i, _e in revert_unseen(session, area, scene)}
        # an alert reverted again was reverted already: nothing new to tell; one seen again is news
        events += [(i, AlertEvent.REVERTED) for i in unseen if i not in reopened]
        told = {i for i, _e in events}
        events += [(i, AlertEvent.UPDATED) for i in reopened if i not in unseen and i not in told]
    return judge_events(session, area, events, metrics)


def revert_unseen(session: Session, area: Area, scene: Scene) -> list[tuple[int, AlertEvent]]:
    """When a date is processed again: its open alerts that no verdict of the date names any more and
    that no reviewer has looked at are ``reverted`` (the current models do not see them); returns
    their events. Reviewed alerts keep their reviewer's status and note."""
    session.flush()
    reverted = session.execute(text(sql("judge_unseen")), dict(aid=area.id, day=scene_date(scene),
                                                               open_statuses=open_statuses())).scalars()
    return [(i, AlertEvent.REVERTED) for i in reverted.all()]


def judge_events(session: Session, area: Area, events: list[tuple[int, AlertEvent]],
                 metrics: Metrics | None = None) -> list[Event]:
    """``(alert id, event)`` pairs as ``Event``s with their alerts, counted in the metrics."""
    metrics = metrics or default_metrics()
    alerts = {a.id: a for a in session.scalars(
        select(Alert).where(Alert.id.in_({i for i, _e in events})).execution_options(populate_existing=True))}
    out = [Event(alerts[i], event) for i, event in events]
    for alert, event in out:
        metrics.alert_events.labels(area=area.name, event=event.short, confidence=alert.confidence).inc()
    metrics.open_alerts.labels(area=area.name).set(count_open_alerts(session, area.id))
    return out
