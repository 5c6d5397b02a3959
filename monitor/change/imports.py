"""Detections made elsewhere (your own model, a manual digitization): a probability or 0/1 mask
raster run through the same path as the pipeline's, as the area's scene of a date."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import NamedTuple

import numpy as np
import shapely
from affine import Affine
from geoalchemy2.shape import from_shape, to_shape
from pyproj import CRS
from rasterio import features
from shapely.geometry import shape
from sqlalchemy import select
from sqlalchemy.orm import Session

from monitor.change.detections import store_detections
from monitor.change.diff import diff, suspect_reason
from monitor.change.indicators import record_indicators
from monitor.change.judge import Event, judge
from monitor.db.queries import day_start, earlier_scenes, scene_date
from monitor.db.tables import Area, Scene
from monitor.domain import AlertEvent, Provider, SceneStatus
from monitor.errors import BadInput
from monitor.geo import as_multipolygon, reproject
from monitor.metrics import Metrics, default_metrics
from monitor.settings import Settings
from monitor.vectorize import pixel_size, polygonize, read_probability

DEFAULT_IMPORT_THRESHOLD = 0.5


class Imported(NamedTuple):
    """What ``import_detections`` did: a JSON summary, and the alert events for the caller to announce."""

    summary: dict
    events: list[Event]


def clear_region(valid: np.ndarray, transform: Affine, crs, area: Area):
    """The valid pixels' region inside the area, as a 4326 MultiPolygon (None when empty)."""
    parts = [shape(g) for g, _v in features.shapes(valid.astype("uint8"), mask=valid, transform=transform)]
    if not parts:
        return None
    region = shapely.intersection(shapely.union_all(parts), reproject(to_shape(area.footprint), 4326, crs))
    region = as_multipolygon(reproject(region, crs, 4326))
    return None if region.is_empty else region


def raster_footprint(shape_hw: tuple[int, int], transform: Affine, crs, area: Area):
    """The grid's extent inside the area, as a 4326 MultiPolygon."""
    height, width = shape_hw
    corners = [transform @ xy for xy in ((0, 0), (width, 0), (width, height), (0, height))]
    box = reproject(shapely.Polygon(corners), crs, 4326)
    return as_multipolygon(shapely.intersection(box, to_shape(area.footprint)))


def import_detections(session: Session, area: Area, date: dt.date, raster: Path, threshold: float | None,
                      settings: Settings, metrics: Metrics | None = None) -> Imported:
    """Run a probability or 0/1 mask raster made elsewhere through vectorize -> detections -> diff ->
    judge -> indicators as the area's scene of ``date`` (provider 'import')."""
    metrics = metrics or default_metrics()
    raster = Path(raster)
    if not raster.is_file():
        raise BadInput("file does not exist", file=raster)
    threshold = DEFAULT_IMPORT_THRESHOLD if threshold is None else float(threshold)
    if not 0 < threshold <= 1:
        raise BadInput(f"{threshold:g} is not a threshold in (0, 1]", field="threshold")
    crs = CRS.from_epsg(int(area.utm_epsg))
    prob = read_probability(raster, region=to_shape(area.footprint), crs=crs, region_name=f"area {area.name!r}")
    clear = clear_region(prob.valid, prob.transform, crs, area)
    if clear is None:
        raise BadInput(f"has no valid pixels inside area {area.name!r}", file=raster)
    product = f"{date.isoformat()}:{raster.name}"
    scene = session.scalar(select(Scene).where(Scene.area_id == area.id, Scene.provider == Provider.IMPORT,
                                               Scene.product_id == product))
    if scene is None:
        scene = Scene(area_id=area.id, provider=Provider.IMPORT, product_id=product)
        session.add(scene)
    scene.acquired_at = day_start(date)
    scene.clear_geom = from_shape(clear, srid=4326)
    scene.footprint = from_shape(raster_footprint(prob.values.shape, prob.transform, crs, area), srid=4326)
    scene.file_path = str(raster.resolve())
    scene.pixel_m = pixel_size(prob.transform)
    scene.status = SceneStatus.PROCESSED
    scene.status_reason = None
    session.flush()
    polygons = polygonize(prob.values, prob.transform, threshold=threshold, median_px=settings.median_filter_px,
                          min_area_m2=settings.min_area_m2("region", scene.pixel_m), valid=prob.valid)
    detections = store_detections(session, area, scene, polygons, crs, f"import:{raster.name}", metrics=metrics)
    earlier = earlier_scenes(session, area.id, date, limit=1)
    changes = diff(session, area, scene, settings, metrics=metrics)
    suspect = suspect_reason(session, area, scene, settings)
    events: list[Event] = []
    if suspect:
        scene.status, scene.status_reason = SceneStatus.SUSPECT, suspect
        metrics.suspect_dates.labels(area=area.name).inc()
        session.flush()
    else:
        events = judge(session, area, scene, settings, metrics=metrics)
    # a suspect date's measures are as doubtful as its changes: no indicators
    indicator = None if suspect else record_indicators(session, area, scene, metrics=metrics)
    clear_fraction = indicator.clear_fraction if indicator else None
    scene.cloud_cover = None if clear_fraction is None else round(100 * (1 - clear_fraction), 3)
    counts = {e.short: 0 for e in AlertEvent}
    for event in events:
        counts[event.event.short] += 1
    summary = {
        "area": area.name,
        "date": date.isoformat(),
        "scene_id": scene.id,
        "raster": str(raster),
        "threshold": threshold,
        "previous_date": scene_date(earlier[0]).isoformat() if earlier else None,
        "detections": detections,
        "built_km2": round(indicator.built_km2 or 0.0, 6) if indicator else None,
        "clear_fraction": None if clear_fraction is None else round(clear_fraction, 4),
        "changes": changes,
        "suspect": suspect,
        "alerts": counts,
        "alert_ids": sorted({e.alert.id for e in events}),
    }
    return Imported(summary, events)
