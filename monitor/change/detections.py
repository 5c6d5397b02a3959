"""A scene's polygons stored: a segmenter's as the scene's detections, a change model's as its changes."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import shapely
from geoalchemy2.shape import to_shape
from shapely.geometry.base import BaseGeometry
from sqlalchemy import delete
from sqlalchemy.orm import Session

from monitor.db.queries import before_image, bulk_insert, scene_date
from monitor.db.tables import Area, Change, Detection, Scene
from monitor.domain import ChangeSource, DetectionKind
from monitor.geo import area_m2, as_multipolygon, reproject
from monitor.metrics import Metrics, default_metrics

Polygons = Iterable[BaseGeometry | tuple[BaseGeometry, float | None]]


def _split(polygons: Polygons) -> tuple[list, list]:
    geoms, probs = [], []
    for item in polygons:
        geom, prob = item if isinstance(item, tuple) else (item, None)
        geoms.append(geom)
        probs.append(None if prob is None else float(prob))
    return geoms, probs


def clip_to_area(area: Area, geoms: Sequence, crs, clip_4326=None) -> tuple[np.ndarray, np.ndarray]:
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


def store_detections(session: Session, area: Area, scene: Scene, polygons: Polygons, crs, model_version: str | None,
                     kind: str = DetectionKind.BUILT, metrics: Metrics | None = None) -> int:
    """Store a scene's polygons (``(polygon, mean probability)`` pairs, in ``crs``) as its detections
    of ``kind``, clipped to the area; replaces the scene's earlier detections of that kind."""
    metrics = metrics or default_metrics()
    session.execute(delete(Detection).where(Detection.scene_id == scene.id, Detection.kind == kind))
    geoms, probs = _split(polygons)
    index, shapes = clip_to_area(area, geoms, crs)
    if not len(shapes):
        return 0
    areas = area_m2(shapes, area.utm_epsg)
    day = scene_date(scene)
    rows = [(area.id, scene.id, day, str(kind), w, float(a), probs[i], model_version)
            for w, a, i in zip(shapely.to_wkb(shapes, hex=True), areas, index)]
    bulk_insert(session, """
        INSERT INTO detections (area_id, scene_id, observed_on, kind, geom, area_m2, mean_prob, model_version)
        SELECT v.area_id, v.scene_id, v.observed_on, v.kind, ST_SetSRID(ST_GeomFromWKB(decode(v.wkb, 'hex')), 4326),
               v.area_m2, v.prob, v.model
        FROM (VALUES %s) AS v(area_id, scene_id, observed_on, kind, wkb, area_m2, prob, model)
    """, rows, "(%s, %s, %s::date, %s, %s, %s::float8, %s::float8, %s)")
    metrics.detections.labels(area=area.name).inc(len(rows))
    return len(rows)


def _clear_of(scene: Scene):
    return None if scene.clear_geom is None else to_shape(scene.clear_geom)


def store_change_polygons(session: Session, area: Area, scene: Scene, polygons: Polygons, crs,
                          model_version: str | None, metrics: Metrics | None = None) -> int:
    """Store a change model's polygons (in ``crs``) as the scene's changes of source 'change_model',
    kept only inside the area and the clear part of this date and of its before image (the scene the
    model compared it with, ``monitor.db.queries.before_image``); replaces the scene's earlier
    change-model changes."""
    metrics = metrics or default_metrics()
    session.execute(delete(Change).where(Change.scene_id == scene.id, Change.source == ChangeSource.CHANGE_MODEL))
    before = before_image(session, scene)
    clear = _clear_of(scene)
    if before is not None and before.clear_geom is not None:
        seen_before = _clear_of(before)
        clear = seen_before if clear is None else shapely.intersection(clear, seen_before)
    geoms, _probs = _split(polygons)
    _index, shapes = clip_to_area(area, geoms, crs, clip_4326=clear)
    if not len(shapes):
        return 0
    areas = area_m2(shapes, area.utm_epsg)
    previous_on = scene_date(before) if before is not None else None
    rows = [(area.id, scene.id, scene_date(scene), previous_on, w, float(a), str(ChangeSource.CHANGE_MODEL),
             model_version) for w, a in zip(shapely.to_wkb(shapes, hex=True), areas)]
    bulk_insert(session, """
        INSERT INTO changes (area_id, scene_id, observed_on, previous_on, geom, area_m2, source, model_version)
        SELECT v.area_id, v.scene_id, v.observed_on, v.previous_on,
               ST_SetSRID(ST_GeomFromWKB(decode(v.wkb, 'hex')), 4326), v.area_m2, v.source, v.model
        FROM (VALUES %s) AS v(area_id, scene_id, observed_on, previous_on, wkb, area_m2, source, model)
    """, rows, "(%s, %s, %s::date, %s::date, %s, %s::float8, %s, %s)")
    metrics.changes.labels(area=area.name).inc(len(rows))
    return len(rows)
