"""From polygons to alerts: detections storage, the date-to-date diff in PostGIS, the alert
rules (the judge) and the per-date indicators.

Geometries are stored in EPSG:4326 and every length and area is computed in the area's UTM
zone. Each function works inside the caller's session (the caller owns the transaction) and
replaces what an earlier run of the same step wrote for the same scene, so re-running a step
is idempotent.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import rasterio
import shapely
from geoalchemy2.shape import from_shape, to_shape
from psycopg2.extras import execute_values
from pyproj import CRS
from rasterio import features
from rasterio.errors import RasterioIOError, WindowError
from rasterio.warp import Resampling, calculate_default_transform, transform_bounds
from rasterio.warp import reproject as warp
from rasterio.windows import Window, from_bounds
from shapely.geometry import shape
from sqlalchemy import delete, func, select, text
from sqlalchemy.orm import Session

from monitor.alerts import webhooks
from monitor.db.tables import OPEN_ALERT_STATUSES, Alert, Area, Change, Detection, Indicator, Scene
from monitor.errors import BadInput
from monitor.geo import area_m2, as_multipolygon, reproject
from monitor.metrics import Metrics, default_metrics
from monitor.settings import Settings
from monitor.vectorize import polygonize

log = logging.getLogger(__name__)

# Earlier dates searched, newest first, for a clear view of each place the current date sees.
LOOKBACK_SCENES = 8
# An open alert is still seen on a later date when at least this share of it is clear there and
# at least this share of the clear part is still detected as built.
STILL_SEEN_CLEAR = 0.5
STILL_SEEN_BUILT = 0.5
# Grid cell (m) of the hash join that finds today's buildings already there on an earlier date.
DIFF_CELL_M = 64.0
# Pieces of a change on a parcel smaller than this (m2) are slivers of parcel boundaries.
MIN_PIECE_M2 = 0.01
IMPORT_PROVIDER = "import"
DEFAULT_IMPORT_THRESHOLD = 0.5
_OPEN = "(" + ", ".join(f"'{s}'" for s in OPEN_ALERT_STATUSES) + ")"


def scene_date(scene: Scene) -> dt.date:
    """The acquisition date (UTC) that names a scene's detections, changes and indicators."""
    acquired = scene.acquired_at
    if acquired.tzinfo is not None:
        acquired = acquired.astimezone(dt.timezone.utc)
    return acquired.date()


def previous_scenes(session: Session, area: Area, day: dt.date, limit: int = LOOKBACK_SCENES) -> list[Scene]:
    """Processed scenes of the area acquired before ``day``, newest first."""
    start = dt.datetime.combine(day, dt.time(), tzinfo=dt.timezone.utc)
    return list(session.scalars(
        select(Scene).where(Scene.area_id == area.id, Scene.status == "processed", Scene.acquired_at < start)
        .order_by(Scene.acquired_at.desc(), Scene.id.desc()).limit(limit)))


def _no_jit(session: Session) -> None:
    # PostGIS functions carry high planner costs, so PostgreSQL would JIT-compile these statements:
    # that costs more than it saves. Reverts when the caller's transaction ends.
    session.execute(text("SELECT set_config('jit', 'off', true)"))


def _run(session: Session, sql: str, **params) -> None:
    session.execute(text(sql), params)


def _bulk(session: Session, sql: str, rows: list[tuple], template: str) -> None:
    session.flush()
    with session.connection().connection.dbapi_connection.cursor() as cur:
        execute_values(cur, sql, rows, template=template, page_size=5000)


def _split(polygons: Iterable) -> tuple[list, list]:
    geoms, probs = [], []
    for item in polygons:
        geom, prob = item if isinstance(item, tuple) else (item, None)
        geoms.append(geom)
        probs.append(None if prob is None else float(prob))
    return geoms, probs


def _clip_to_area(area: Area, geoms: Sequence, crs, clip_4326=None) -> tuple[np.ndarray, np.ndarray]:
    """Geometries in ``crs`` -> (kept indices, 4326 MultiPolygons clipped to the area and ``clip_4326``).

    Clipping happens in EPSG:4326, where the area is stored, so that results lie inside it exactly.
    """
    if not len(geoms):
        return np.array([], dtype=int), np.array([], dtype=object)
    region = to_shape(area.footprint)
    if clip_4326 is not None:
        region = shapely.intersection(region, clip_4326)
    shapely.prepare(region)
    arr = np.empty(len(geoms), dtype=object)
    arr[:] = list(geoms)
    arr = reproject(arr, crs, 4326)
    inside = shapely.covers(region, arr)  # the prepared region first
    if not inside.all():
        arr[~inside] = shapely.intersection(arr[~inside], region)
    out = np.empty(len(arr), dtype=object)
    out[:] = [as_multipolygon(g) for g in arr]
    keep = ~shapely.is_empty(out)
    return np.nonzero(keep)[0], out[keep]


def store_detections(session: Session, area: Area, scene: Scene, polygons, crs, model_version: str | None,
                     kind: str = "built", metrics: Metrics | None = None) -> int:
    """Store a scene's polygons (``(polygon, mean probability)`` pairs, in ``crs``) as its detections
    of ``kind``, clipped to the area; replaces the scene's earlier detections of that kind."""
    metrics = metrics or default_metrics()
    session.execute(delete(Detection).where(Detection.scene_id == scene.id, Detection.kind == kind))
    geoms, probs = _split(polygons)
    index, shapes = _clip_to_area(area, geoms, crs)
    if not len(shapes):
        return 0
    areas = area_m2(shapes, area.utm_epsg)
    day = scene_date(scene)
    rows = [(area.id, scene.id, day, kind, w, float(a), probs[i], model_version)
            for w, a, i in zip(shapely.to_wkb(shapes, hex=True), areas, index)]
    _bulk(session, """
        INSERT INTO detections (area_id, scene_id, observed_on, kind, geom, area_m2, mean_prob, model_version)
        SELECT v.area_id, v.scene_id, v.observed_on, v.kind, ST_SetSRID(ST_GeomFromWKB(decode(v.wkb, 'hex')), 4326),
               v.area_m2, v.prob, v.model
        FROM (VALUES %s) AS v(area_id, scene_id, observed_on, kind, wkb, area_m2, prob, model)
    """, rows, "(%s, %s, %s::date, %s, %s, %s::float8, %s::float8, %s)")
    metrics.detections.labels(area=area.name).inc(len(rows))
    return len(rows)


_DIFF_SETUP = """
DROP TABLE IF EXISTS _diff_cur, _diff_region, _diff_new, _diff_prev, _diff_cells;
CREATE TEMP TABLE _diff_cur AS
    SELECT ST_Transform(geom, :epsg) AS g FROM detections WHERE scene_id = :sid AND kind = 'built';
CREATE TEMP TABLE _diff_region AS
    SELECT ST_CollectionExtract(ST_MakeValid(ST_Transform(
               CASE WHEN s.clear_geom IS NULL THEN a.footprint ELSE ST_Intersection(s.clear_geom, a.footprint) END,
               :epsg)), 3) AS pending,
           NULL::geometry AS decide
    FROM scenes s JOIN areas a ON a.id = s.area_id WHERE s.id = :sid;
CREATE TEMP TABLE _diff_new (g geometry, previous_on date);
"""

# One earlier scene decides the places that it saw clear and no newer earlier scene did: there,
# what is built now and lies farther than the tolerance from what was built then is new.
# Most of today's buildings are covered by one of that date's (grown) buildings; that test runs
# as a hash join on grid cells (each grown building is listed in every cell its box touches, and
# a piece it covers has its lower-left corner in one of them), which is several times faster
# than a GiST probe per building. The few pieces left are cut by the GiST-indexed union.
_DIFF_STEP = """
DROP TABLE IF EXISTS _diff_prev, _diff_cells;
CREATE TEMP TABLE _diff_prev AS
    SELECT ST_Buffer(ST_Transform(geom, :epsg), :tol, 'quad_segs=2') AS g
    FROM detections WHERE scene_id = :pid AND kind = 'built';
CREATE INDEX ON _diff_prev USING gist (g);
CREATE TEMP TABLE _diff_cells AS
    SELECT gx, gy, p.g FROM _diff_prev p
    CROSS JOIN LATERAL generate_series(floor(ST_XMin(p.g) / :cell)::bigint, floor(ST_XMax(p.g) / :cell)::bigint) gx
    CROSS JOIN LATERAL generate_series(floor(ST_YMin(p.g) / :cell)::bigint, floor(ST_YMax(p.g) / :cell)::bigint) gy;
ANALYZE _diff_prev;
ANALYZE _diff_cells;
UPDATE _diff_region r SET decide = ST_CollectionExtract(ST_Intersection(r.pending, c.g), 3),
                          pending = ST_CollectionExtract(ST_Difference(r.pending, c.g), 3)
FROM (SELECT ST_CollectionExtract(ST_MakeValid(ST_Transform(COALESCE(s.clear_geom, a.footprint), :epsg)), 3) AS g
      FROM scenes s JOIN areas a ON a.id = s.area_id WHERE s.id = :pid) c;
WITH x AS MATERIALIZED (
    SELECT y.g, floor(ST_XMin(y.g) / :cell)::bigint AS gx, floor(ST_YMin(y.g) / :cell)::bigint AS gy
    FROM (SELECT CASE WHEN ST_Covers(r.decide, c.g) THEN c.g
                      ELSE ST_CollectionExtract(ST_Intersection(c.g, r.decide), 3) END AS g
          FROM _diff_cur c CROSS JOIN _diff_region r
          WHERE ST_Intersects(c.g, r.decide)) y
    WHERE NOT ST_IsEmpty(y.g)),
left_over AS MATERIALIZED (
    SELECT x.g FROM x
    WHERE NOT EXISTS (SELECT 1 FROM _diff_cells p
                      WHERE p.gx = x.gx AND p.gy = x.gy AND p.g ~ x.g AND ST_Covers(p.g, x.g)))
INSERT INTO _diff_new (g, previous_on)
SELECT (ST_Dump(CASE WHEN u.g IS NULL THEN x.g ELSE ST_CollectionExtract(ST_Difference(x.g, u.g), 3) END)).geom,
       CAST(:previous_on AS date)
FROM left_over x
LEFT JOIN LATERAL (SELECT ST_Union(p.g) AS g FROM _diff_prev p WHERE ST_Intersects(p.g, x.g)) u ON true;
"""

# The pieces are clipped to the area once more in EPSG:4326, where the area is stored: a straight
# edge in UTM is not quite straight in 4326.
_DIFF_STORE = """
INSERT INTO changes (area_id, scene_id, observed_on, previous_on, geom, area_m2, source, model_version)
SELECT :aid, :sid, :day, x.previous_on, x.g, ST_Area(ST_Transform(x.g, :epsg)), 'diff',
       (SELECT max(model_version) FROM detections WHERE scene_id = :sid AND kind = 'built')
FROM (
    SELECT n.previous_on,
           CASE WHEN ST_Covers(a.footprint, t.g) THEN ST_Multi(t.g)
                ELSE ST_Multi(ST_CollectionExtract(ST_Intersection(t.g, a.footprint), 3)) END AS g
    FROM _diff_new n
    CROSS JOIN LATERAL (SELECT ST_Transform(n.g, 4326) AS g) t
    JOIN areas a ON a.id = :aid
    WHERE GeometryType(n.g) = 'POLYGON' AND ST_Area(n.g) >= :min_m2) x
WHERE NOT ST_IsEmpty(x.g) AND ST_Area(ST_Transform(x.g, :epsg)) >= :min_m2
RETURNING id
"""


def diff(session: Session, area: Area, scene: Scene, settings: Settings, metrics: Metrics | None = None) -> int:
    """New construction of a scene: its built detections minus those of earlier processed dates,
    in SQL in the area's UTM zone; replaces the scene's 'diff' changes and returns their count.

    Only places that are clear on this date and on the earlier date compared are trusted: each
    place is compared with the newest earlier date that saw it clear (up to ``LOOKBACK_SCENES``
    dates back), so clouds and nodata neither create nor erase construction. Earlier buildings
    are grown by ``shift_tolerance_m`` (misregistration), and pieces under ``min_change_m2`` are
    dropped. The first date of an area is its baseline: nothing is new.
    """
    metrics = metrics or default_metrics()
    session.execute(delete(Change).where(Change.scene_id == scene.id, Change.source == "diff"))
    day = scene_date(scene)
    earlier = previous_scenes(session, area, day)
    if not earlier:
        return 0
    session.flush()
    _no_jit(session)
    epsg = int(area.utm_epsg)
    _run(session, _DIFF_SETUP, epsg=epsg, sid=scene.id)
    _run(session, "ANALYZE _diff_cur")
    for prev in earlier:
        _run(session, _DIFF_STEP, epsg=epsg, tol=float(settings.shift_tolerance_m), pid=prev.id,
             previous_on=scene_date(prev), cell=DIFF_CELL_M)
        if session.execute(text("SELECT ST_IsEmpty(pending) FROM _diff_region")).scalar():
            break
    stored = session.execute(text(_DIFF_STORE), dict(aid=area.id, sid=scene.id, day=day, epsg=epsg,
                                                     min_m2=float(settings.min_change_m2))).all()
    _run(session, "DROP TABLE IF EXISTS _diff_cur, _diff_region, _diff_new, _diff_prev, _diff_cells")
    metrics.changes.labels(area=area.name).inc(len(stored))
    return len(stored)


def _clear_of(scene: Scene):
    return None if scene.clear_geom is None else to_shape(scene.clear_geom)


def store_change_polygons(session: Session, area: Area, scene: Scene, polygons, crs, model_version: str | None,
                          metrics: Metrics | None = None) -> int:
    """Store a change model's polygons (in ``crs``) as the scene's changes of source 'change_model',
    kept only inside the area and the clear part of this date and of the previous processed date;
    replaces the scene's earlier change-model changes."""
    metrics = metrics or default_metrics()
    session.execute(delete(Change).where(Change.scene_id == scene.id, Change.source == "change_model"))
    earlier = previous_scenes(session, area, scene_date(scene), limit=1)
    clear = _clear_of(scene)
    if earlier and earlier[0].clear_geom is not None:
        before = _clear_of(earlier[0])
        clear = before if clear is None else shapely.intersection(clear, before)
    geoms, _probs = _split(polygons)
    _index, shapes = _clip_to_area(area, geoms, crs, clip_4326=clear)
    if not len(shapes):
        return 0
    areas = area_m2(shapes, area.utm_epsg)
    previous_on = scene_date(earlier[0]) if earlier else None
    rows = [(area.id, scene.id, scene_date(scene), previous_on, w, float(a), model_version)
            for w, a in zip(shapely.to_wkb(shapes, hex=True), areas)]
    _bulk(session, """
        INSERT INTO changes (area_id, scene_id, observed_on, previous_on, geom, area_m2, source, model_version)
        SELECT v.area_id, v.scene_id, v.observed_on, v.previous_on,
               ST_SetSRID(ST_GeomFromWKB(decode(v.wkb, 'hex')), 4326), v.area_m2, 'change_model', v.model
        FROM (VALUES %s) AS v(area_id, scene_id, observed_on, previous_on, wkb, area_m2, model)
    """, rows, "(%s, %s, %s::date, %s::date, %s, %s::float8, %s)")
    metrics.changes.labels(area=area.name).inc(len(rows))
    return len(rows)


# --- the judge

_JUDGE_PIECES = """
DROP TABLE IF EXISTS _judge_pieces, _judge_parcels;
CREATE TEMP TABLE _judge_pieces AS
SELECT c.id AS change_id, p.id AS parcel_id, c.source, c.model_version, x.g,
       ST_Area(ST_Transform(x.g, :epsg)) AS area_m2, p.area_m2 AS parcel_m2
FROM changes c
JOIN parcels p ON ST_Intersects(p.geom, c.geom) AND p.area_id + 0 = :aid  -- "+ 0": probe the GiST index only
CROSS JOIN LATERAL (
    SELECT CASE WHEN ST_Covers(p.geom, c.geom) THEN c.geom
                ELSE ST_Multi(ST_CollectionExtract(ST_Intersection(c.geom, p.geom), 3)) END AS g) x
WHERE c.scene_id = :sid;
DELETE FROM _judge_pieces WHERE area_m2 < :min_piece;
CREATE TEMP TABLE _judge_parcels AS
SELECT j.parcel_id, j.g, ST_Area(ST_Transform(j.g, :epsg)) AS new_m2, j.parcel_m2, j.source, j.model_version
FROM (SELECT parcel_id, ST_Multi(ST_Union(g)) AS g, max(parcel_m2) AS parcel_m2,
             (array_agg(source ORDER BY area_m2 DESC))[1] AS source,
             (array_agg(model_version ORDER BY area_m2 DESC))[1] AS model_version
      FROM _judge_pieces GROUP BY parcel_id) j;
"""

# Per parcel with new construction: its open alert, a permit covering [first seen, this date],
# and an alert already closed (dismissed/resolved) for construction seen on this date.
_JUDGE_PARCELS = f"""
SELECT j.parcel_id, j.new_m2, j.new_m2 / NULLIF(j.parcel_m2, 0) AS fraction, oa.id AS open_id,
       pm.id AS permit_id, ca.id AS closed_id
FROM _judge_parcels j
LEFT JOIN alerts oa ON oa.parcel_id = j.parcel_id AND oa.status IN {_OPEN}
LEFT JOIN LATERAL (
    SELECT pm.id FROM permits pm
    WHERE pm.parcel_id = j.parcel_id AND pm.valid_from <= :day
      AND (pm.valid_to IS NULL OR pm.valid_to >= COALESCE(oa.first_seen, :day))
    ORDER BY pm.valid_from DESC, pm.id DESC LIMIT 1) pm ON true
LEFT JOIN LATERAL (
    SELECT ca.id FROM alerts ca
    WHERE ca.parcel_id = j.parcel_id AND ca.status NOT IN {_OPEN} AND ca.first_seen <= :day AND ca.last_seen >= :day
    ORDER BY ca.id DESC LIMIT 1) ca ON true
ORDER BY j.parcel_id
"""

# Open alerts that a permit now covers: one valid at some time between first seen and this date.
_JUDGE_RESOLVE = f"""
UPDATE alerts a SET status = 'resolved', updated_at = now(),
       note = concat_ws(E'\\n', a.note, 'resolved by permit ' || pm.permit_number || ' (valid from ' || pm.valid_from
                        || COALESCE(' to ' || pm.valid_to, '') || ')')
FROM (SELECT DISTINCT ON (a2.id) a2.id AS alert_id, pm.permit_number, pm.valid_from, pm.valid_to
      FROM alerts a2 JOIN permits pm ON pm.parcel_id = a2.parcel_id
      WHERE a2.area_id = :aid AND a2.status IN {_OPEN} AND a2.first_seen <= :day AND pm.valid_from <= :day
        AND (pm.valid_to IS NULL OR pm.valid_to >= a2.first_seen)
      ORDER BY a2.id, pm.valid_from DESC) pm
WHERE a.id = pm.alert_id
RETURNING a.id
"""

# Open alerts from earlier dates, measured against this date: how much of each is clear now,
# and how much of that is still built (detections grown by the shift tolerance).
_JUDGE_STILL_SEEN = f"""
WITH clear AS (
    SELECT ST_CollectionExtract(ST_MakeValid(ST_Transform(COALESCE(s.clear_geom, a.footprint), :epsg)), 3) AS g
    FROM scenes s JOIN areas a ON a.id = s.area_id WHERE s.id = :sid),
cand AS (
    SELECT al.id, al.geom, ST_Transform(al.geom, :epsg) AS g FROM alerts al
    WHERE al.area_id = :aid AND al.status IN {_OPEN} AND al.first_seen < :day AND al.last_seen < :day)
SELECT cand.id, ST_Area(cand.g) AS total, ST_Area(v.g) AS clear_m2,
       COALESCE(ST_Area(ST_Intersection(v.g, b.g)), 0) AS built_m2
FROM cand CROSS JOIN clear
CROSS JOIN LATERAL (SELECT ST_Intersection(cand.g, clear.g) AS g) v
LEFT JOIN LATERAL (
    SELECT ST_Union(ST_Buffer(ST_Transform(d.geom, :epsg), :tol, 'quad_segs=2')) AS g
    FROM detections d  -- "+ 0": probe the GiST index only
    WHERE ST_Intersects(d.geom, cand.geom) AND d.scene_id + 0 = :sid AND d.kind = 'built') b ON true
"""


def _meets_thresholds(new_m2: float, fraction: float | None, settings: Settings) -> bool:
    if new_m2 < settings.alert_min_m2:
        return False
    return settings.alert_min_fraction <= 0 or (fraction or 0.0) >= settings.alert_min_fraction


def judge(session: Session, area: Area, scene: Scene, settings: Settings,
          metrics: Metrics | None = None) -> list[tuple[Alert, str]]:
    """Judge a scene's changes against parcels and permits; returns the (alert, event) pairs raised.

    Per parcel, the new construction of this date (the union of its change pieces) is
    ``permitted`` when a permit is valid on the date (for a parcel with an open alert: at any time
    since the alert was first seen, which resolves the alert), an ``alert`` when it reaches
    ``alert_min_m2`` (and ``alert_min_fraction`` of the parcel, when set), else ``below_threshold``.
    A parcel has at most one open alert: later construction updates it. An open alert still seen
    on a later date becomes ``confirmed``. Events: alert.created, alert.updated, alert.escalated,
    alert.resolved; each is queued for webhooks in the same transaction. Re-judging a scene
    rewrites its verdicts and raises nothing twice.
    """
    metrics = metrics or default_metrics()
    session.flush()
    _no_jit(session)
    day = scene_date(scene)
    epsg = int(area.utm_epsg)
    _run(session, "DELETE FROM parcel_changes WHERE change_id IN (SELECT id FROM changes WHERE scene_id = :sid)",
         sid=scene.id)
    events: list[tuple[int, str]] = []

    resolved = session.execute(text(_JUDGE_RESOLVE), dict(aid=area.id, day=day)).scalars().all()
    events += [(i, "alert.resolved") for i in resolved]

    escalated, seen = [], []
    for row in session.execute(text(_JUDGE_STILL_SEEN), dict(aid=area.id, sid=scene.id, day=day, epsg=epsg,
                                                             tol=float(settings.shift_tolerance_m))):
        if row.total > 0 and row.clear_m2 >= STILL_SEEN_CLEAR * row.total \
                and row.built_m2 >= STILL_SEEN_BUILT * row.clear_m2:
            seen.append(row.id)
    if seen:
        escalated = session.execute(text(
            "UPDATE alerts SET confidence = 'confirmed', updated_at = now() "
            "WHERE id = ANY(:ids) AND confidence = 'probable' RETURNING id"), dict(ids=seen)).scalars().all()
        _run(session, "UPDATE alerts SET last_seen = :day WHERE id = ANY(:ids) AND last_seen < :day",
             ids=seen, day=day)
    events += [(i, "alert.escalated") for i in escalated]

    _run(session, _JUDGE_PIECES, aid=area.id, sid=scene.id, epsg=epsg, min_piece=MIN_PIECE_M2)
    verdicts: list[tuple[int, str, int | None, int | None]] = []  # parcel, verdict, permit, alert
    to_create, to_update = [], []
    for row in session.execute(text(_JUDGE_PARCELS), dict(day=day)):
        if row.permit_id is not None:
            # (an open alert such a permit covers was resolved above)
            verdicts.append((row.parcel_id, "permitted", row.permit_id, None))
        elif _meets_thresholds(row.new_m2, row.fraction, settings):
            if row.open_id is not None:
                to_update.append(row.open_id)
                verdicts.append((row.parcel_id, "alert", None, row.open_id))
            elif row.closed_id is not None:
                verdicts.append((row.parcel_id, "alert", None, row.closed_id))
            else:
                to_create.append(row.parcel_id)
        else:
            verdicts.append((row.parcel_id, "below_threshold", None, None))

    if to_create:
        created = session.execute(text("""
            INSERT INTO alerts (area_id, parcel_id, geom, first_seen, last_seen, new_area_m2, fraction,
                                source, model_version)
            SELECT :aid, j.parcel_id, j.g, :day, :day, j.new_m2, j.new_m2 / NULLIF(j.parcel_m2, 0),
                   j.source, j.model_version
            FROM _judge_parcels j WHERE j.parcel_id = ANY(:ids)
            RETURNING id, parcel_id
        """), dict(aid=area.id, day=day, ids=to_create)).all()
        verdicts += [(pid, "alert", None, aid) for aid, pid in created]
        events += [(aid, "alert.created") for aid, _pid in created]
    if to_update:
        updated = session.execute(text("""
            WITH old AS (SELECT id, new_area_m2, last_seen FROM alerts WHERE id = ANY(:ids)),
            merged AS (
                SELECT a.id, ST_Multi(ST_Union(a.geom, j.g)) AS g, j.parcel_m2
                FROM alerts a JOIN _judge_parcels j ON j.parcel_id = a.parcel_id WHERE a.id = ANY(:ids))
            UPDATE alerts a SET geom = m.g, new_area_m2 = ST_Area(ST_Transform(m.g, :epsg)),
                   fraction = ST_Area(ST_Transform(m.g, :epsg)) / NULLIF(m.parcel_m2, 0),
                   last_seen = GREATEST(a.last_seen, :day), updated_at = now()
            FROM merged m JOIN old o ON o.id = m.id
            WHERE a.id = m.id
            RETURNING a.id, a.new_area_m2 - o.new_area_m2 AS grown, o.last_seen
        """), dict(ids=to_update, epsg=epsg, day=day)).all()
        events += [(aid, "alert.updated") for aid, grown, last in updated if grown > 0.5 or last < day]

    if verdicts:
        _bulk(session, """
            INSERT INTO parcel_changes (change_id, parcel_id, observed_on, area_m2, fraction, permit_id, alert_id,
                                        verdict)
            SELECT p.change_id, p.parcel_id, v.day, p.area_m2, p.area_m2 / NULLIF(p.parcel_m2, 0), v.permit_id,
                   v.alert_id, v.verdict
            FROM (VALUES %s) AS v(parcel_id, verdict, permit_id, alert_id, day)
            JOIN _judge_pieces p ON p.parcel_id = v.parcel_id
        """, [(*v, day) for v in verdicts], "(%s::bigint, %s, %s::bigint, %s::bigint, %s::date)")
    _run(session, "DROP TABLE IF EXISTS _judge_pieces, _judge_parcels")

    alerts = {a.id: a for a in session.scalars(
        select(Alert).where(Alert.id.in_({i for i, _e in events})).execution_options(populate_existing=True))}
    out = [(alerts[i], event) for i, event in events]
    for alert, event in out:
        webhooks.enqueue(session, alert, event)
        if event in ("alert.created", "alert.escalated"):
            metrics.alerts_created.labels(area=area.name, confidence=alert.confidence).inc()
    _render_evidence(session, [a for a, e in out if e in ("alert.created", "alert.updated", "alert.escalated")],
                     settings)
    metrics.open_alerts.labels(area=area.name).set(session.scalar(
        select(func.count()).select_from(Alert).where(Alert.area_id == area.id,
                                                      Alert.status.in_(OPEN_ALERT_STATUSES))))
    return out


def _render_evidence(session: Session, alerts: list[Alert], settings: Settings) -> None:
    from monitor.alerts.evidence import render_chips

    if not alerts or not session.scalar(select(func.count()).select_from(Scene).where(
            Scene.area_id == alerts[0].area_id, Scene.file_path.is_not(None))):
        return  # no scene has a file to render from
    for alert in {a.id: a for a in alerts}.values():
        try:
            with session.begin_nested():
                render_chips(session, alert, settings)
        except Exception as e:  # evidence is a convenience: an alert without chips is still an alert
            log.warning("evidence chips of alert %s not rendered: %s", alert.id, e)


# --- indicators

def record_indicators(session: Session, area: Area, scene: Scene, settlement_km2: float | None = None,
                      metrics: Metrics | None = None) -> Indicator:
    """Upsert the area's indicators for the scene's date: built-up km2 (its built detections),
    informal-settlement km2 (when given; an earlier value is kept otherwise) and the clear fraction."""
    session.flush()
    day = scene_date(scene)
    row = session.execute(text("""
        INSERT INTO indicators (area_id, scene_id, observed_on, built_km2, settlement_km2, clear_fraction)
        SELECT a.id, s.id, :day,
               (SELECT COALESCE(sum(d.area_m2), 0) / 1e6 FROM detections d WHERE d.scene_id = s.id AND d.kind = 'built'),
               :settlement,
               CASE WHEN s.clear_geom IS NULL THEN NULL
                    ELSE ST_Area(ST_Transform(ST_Intersection(s.clear_geom, a.footprint), a.utm_epsg))
                         / NULLIF(ST_Area(ST_Transform(a.footprint, a.utm_epsg)), 0) END
        FROM areas a JOIN scenes s ON s.area_id = a.id WHERE a.id = :aid AND s.id = :sid
        ON CONFLICT (area_id, observed_on) DO UPDATE
           SET scene_id = EXCLUDED.scene_id, built_km2 = EXCLUDED.built_km2,
               settlement_km2 = COALESCE(EXCLUDED.settlement_km2, indicators.settlement_km2),
               clear_fraction = EXCLUDED.clear_fraction
        RETURNING id
    """), dict(day=day, settlement=settlement_km2, aid=area.id, sid=scene.id)).scalar_one()
    indicator = session.scalars(select(Indicator).where(Indicator.id == row)
                                .execution_options(populate_existing=True)).one()
    newest = session.scalar(select(func.max(Indicator.observed_on)).where(Indicator.area_id == area.id))
    if newest == day:
        metrics = metrics or default_metrics()
        metrics.built_km2.labels(area=area.name).set(indicator.built_km2 or 0.0)
        if indicator.settlement_km2 is not None:
            metrics.settlement_km2.labels(area=area.name).set(indicator.settlement_km2)
    return indicator


# --- imported detections

def read_probability(path: Path, area: Area):
    """Band 1 of a probability (float 0..1) or mask (0/1, 0/255) raster over the area, in the area's
    UTM zone: ``(probability, transform, valid)``; invalid (nodata) pixels are NaN and False."""
    try:
        src = rasterio.open(path)
    except RasterioIOError as e:
        raise BadInput(f"not a readable raster: {e}", file=path) from e
    with src:
        if src.crs is None:
            raise BadInput("has no CRS (georeference the raster)", file=path)
        footprint = to_shape(area.footprint)
        bounds = transform_bounds("EPSG:4326", src.crs, *footprint.bounds, densify_pts=21)
        win = from_bounds(*bounds, transform=src.transform)
        col0, row0 = math.floor(win.col_off) - 2, math.floor(win.row_off) - 2
        win = Window(col0, row0, math.ceil(win.col_off + win.width) + 2 - col0,
                     math.ceil(win.row_off + win.height) + 2 - row0)
        try:
            win = win.intersection(Window(0, 0, src.width, src.height))
        except WindowError:
            raise BadInput(f"does not overlap area {area.name!r}", file=path) from None
        data = src.read(1, window=win)
        valid = src.read_masks(1, window=win) > 0
        transform = src.window_transform(win)
        src_crs = src.crs
    if np.issubdtype(data.dtype, np.floating):
        valid &= np.isfinite(data)
        values = data[valid]
        if values.size and (values.min() < 0 or values.max() > 1):
            raise BadInput(f"holds values {values.min():g}..{values.max():g}: expected probabilities 0..1 "
                           "or a 0/1 mask", file=path)
        prob, is_mask = data.astype("float32"), False
    else:
        present = set(np.unique(data[valid]).tolist())
        if present <= {0, 1}:
            prob = data.astype("float32")
        elif present <= {0, 255}:
            prob = (data / 255).astype("float32")
        else:
            raise BadInput(f"holds integer values {sorted(present)[:6]}: expected a 0/1 mask or "
                           "probabilities 0..1", file=path)
        is_mask = True
    prob[~valid] = np.nan
    dst_crs = CRS.from_epsg(int(area.utm_epsg))
    if CRS.from_user_input(src_crs) != dst_crs:
        height, width = prob.shape
        left, top = transform @ (0, 0)
        right, bottom = transform @ (width, height)
        dst_transform, w, h = calculate_default_transform(src_crs, dst_crs, width, height,
                                                          left=min(left, right), bottom=min(top, bottom),
                                                          right=max(left, right), top=max(top, bottom))
        out = np.full((h, w), np.nan, dtype="float32")
        warp(prob, out, src_transform=transform, src_crs=src_crs, dst_transform=dst_transform, dst_crs=dst_crs,
             src_nodata=np.nan, dst_nodata=np.nan,
             resampling=Resampling.nearest if is_mask else Resampling.bilinear)
        prob, transform = out, dst_transform
    valid = np.isfinite(prob)
    return prob, transform, valid


def clear_region(valid: np.ndarray, transform, crs, area: Area):
    """The valid pixels' region inside the area, as a 4326 MultiPolygon (None when empty)."""
    parts = [shape(g) for g, _v in features.shapes(valid.astype("uint8"), mask=valid, transform=transform)]
    if not parts:
        return None
    region = shapely.intersection(shapely.union_all(parts), reproject(to_shape(area.footprint), 4326, crs))
    region = as_multipolygon(reproject(region, crs, 4326))
    return None if region.is_empty else region


def raster_footprint(shape_hw: tuple[int, int], transform, crs, area: Area):
    """The grid's extent inside the area, as a 4326 MultiPolygon."""
    height, width = shape_hw
    corners = [transform @ xy for xy in ((0, 0), (width, 0), (width, height), (0, height))]
    box = reproject(shapely.Polygon(corners), crs, 4326)
    return as_multipolygon(shapely.intersection(box, to_shape(area.footprint)))


def import_detections(session: Session, area: Area, date: dt.date, raster: Path, threshold: float | None,
                      settings: Settings, metrics: Metrics | None = None) -> dict:
    """Run a probability or 0/1 mask raster made elsewhere through vectorize -> detections -> diff ->
    judge -> indicators as the area's scene of ``date`` (provider 'import'); returns a summary."""
    metrics = metrics or default_metrics()
    raster = Path(raster)
    if not raster.is_file():
        raise BadInput("file does not exist", file=raster)
    threshold = DEFAULT_IMPORT_THRESHOLD if threshold is None else float(threshold)
    if not 0 < threshold <= 1:
        raise BadInput(f"{threshold:g} is not a threshold in (0, 1]", field="threshold")
    prob, transform, valid = read_probability(raster, area)
    crs = CRS.from_epsg(int(area.utm_epsg))
    clear = clear_region(valid, transform, crs, area)
    if clear is None:
        raise BadInput(f"has no valid pixels inside area {area.name!r}", file=raster)
    product = f"{date.isoformat()}:{raster.name}"
    scene = session.scalar(select(Scene).where(Scene.area_id == area.id, Scene.provider == IMPORT_PROVIDER,
                                               Scene.product_id == product))
    if scene is None:
        scene = Scene(area_id=area.id, provider=IMPORT_PROVIDER, product_id=product)
        session.add(scene)
    scene.acquired_at = dt.datetime.combine(date, dt.time(), tzinfo=dt.timezone.utc)
    scene.clear_geom = from_shape(clear, srid=4326)
    scene.footprint = from_shape(raster_footprint(prob.shape, transform, crs, area), srid=4326)
    scene.file_path = str(raster.resolve())
    scene.status = "processed"
    scene.status_reason = None
    session.flush()
    polygons = polygonize(prob, transform, threshold=threshold, median_px=settings.median_filter_px,
                          min_area_m2=settings.min_region_m2, valid=valid)
    detections = store_detections(session, area, scene, polygons, crs, f"import:{raster.name}", metrics=metrics)
    earlier = previous_scenes(session, area, date, limit=1)
    changes = diff(session, area, scene, settings, metrics=metrics)
    events = judge(session, area, scene, settings, metrics=metrics)
    indicator = record_indicators(session, area, scene, metrics=metrics)
    scene.cloud_cover = None if indicator.clear_fraction is None else round(100 * (1 - indicator.clear_fraction), 3)
    counts = {e: 0 for e in ("created", "updated", "escalated", "resolved")}
    for _alert, event in events:
        counts[event.split(".", 1)[1]] += 1
    return {
        "area": area.name,
        "date": date.isoformat(),
        "scene_id": scene.id,
        "raster": str(raster),
        "threshold": threshold,
        "previous_date": scene_date(earlier[0]).isoformat() if earlier else None,
        "detections": detections,
        "built_km2": round(indicator.built_km2 or 0.0, 6),
        "clear_fraction": None if indicator.clear_fraction is None else round(indicator.clear_fraction, 4),
        "changes": changes,
        "alerts": counts,
        "alert_ids": sorted({a.id for a, _e in events}),
    }
