"""Watched areas: add, list, show, configure, remove."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import shapely
from geoalchemy2.shape import from_shape, to_shape
from shapely.geometry.base import BaseGeometry
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from monitor.db.queries import open_statuses, requeue_scenes
from monitor.db.tables import Alert, Area, Parcel, Scene
from monitor.domain import (
    MAX_AREA_KM2,
    AreaSpec,
    ModelKind,
    SceneStatus,
    check_max_cloud,
    check_resolution,
    format_duration,
    parse_band_order,
    parse_cadence,
    parse_providers,
    parse_sources,
    values,
)
from monitor.errors import BadInput, Conflict, NotFound
from monitor.geo import area_m2, as_multipolygon, utm_epsg_for
from monitor.inventory.models import register_model
from monitor.readers import read_polygons
from monitor.settings import Settings


def area_spec(settings: Settings, name: str, *, cadence: str | None = None,
              providers: str | Sequence[str] | None = None, max_cloud: float | None = None,
              sources: Iterable[str] | Mapping[str, str] = (), resolution_m: float | None = None,
              band_order: str | Sequence[str] | None = None, allow_resolution_mismatch: bool = False) -> AreaSpec:
    """The checked specification of a new area, unset fields taken from the settings' defaults
    (``MONITOR_DEFAULT_*``): what ``monitor areas add`` and ``POST /areas`` both build."""
    return AreaSpec.parse(name, cadence=cadence or settings.default_cadence,
                          providers=providers or settings.default_providers,
                          max_cloud=settings.default_max_cloud if max_cloud is None else max_cloud,
                          sources=sources, resolution_m=resolution_m, band_order=band_order,
                          allow_resolution_mismatch=allow_resolution_mismatch,
                          allow_private_urls=settings.allow_private_urls)


def add_area(session: Session, spec: AreaSpec, geometry: str | Path | BaseGeometry) -> Area:
    """Register an area from its specification and its footprint: a checked EPSG:4326 geometry, or a
    vector file of its polygon(s) in any CRS, united."""
    if isinstance(geometry, BaseGeometry):
        footprint = as_multipolygon(geometry)
    else:
        footprint = as_multipolygon(shapely.union_all(read_polygons(geometry, what="polygons").geoms))
    if session.scalar(select(Area.id).where(Area.name == spec.name)) is not None:
        raise Conflict(f"an area named {spec.name!r} exists already", field="name")
    utm = check_footprint(footprint)
    area = Area(name=spec.name, footprint=from_shape(footprint, srid=4326), utm_epsg=utm,
                cadence=spec.cadence, providers=values(spec.providers), sources=dict(spec.sources),
                max_cloud=spec.max_cloud, resolution_m=spec.resolution_m,
                band_order=list(spec.band_order) if spec.band_order else None,
                allow_resolution_mismatch=spec.allow_resolution_mismatch)
    session.add(area)
    session.flush()
    return area


def check_footprint(footprint: BaseGeometry) -> int:
    """An area's footprint (EPSG:4326) that one UTM zone can measure: not wider than 180 degrees (a
    polygon across the antimeridian is read as a band around the globe: give one area per side), with
    an area above zero and at most ``MAX_AREA_KM2``; returns its UTM zone's EPSG code."""
    x0, _y0, x1, _y1 = footprint.bounds
    if x1 - x0 > 180:
        raise BadInput(f"spans {x1 - x0:.1f} degrees of longitude: an area across the antimeridian must be "
                       "given as one area per side", field="geometry")
    epsg = utm_epsg_for(footprint)
    km2 = float(area_m2(footprint, epsg)) / 1e6
    if not math.isfinite(km2) or km2 <= 0 or km2 > MAX_AREA_KM2:
        raise BadInput(f"covers {km2:,.1f} km2: an area covers more than 0 and at most {MAX_AREA_KM2:,.0f} km2",
                       field="geometry")
    return epsg


def get_area(session: Session, name: str) -> Area:
    """The area named ``name``; ``NotFound`` otherwise."""
    area = session.scalar(select(Area).where(Area.name == name))
    if area is None:
        raise NotFound(f"no area named {name!r} (see `monitor areas list`)", field="area")
    return area


def list_areas(session: Session) -> list[Area]:
    """Every area, by name."""
    return list(session.scalars(select(Area).order_by(Area.name)))


def describe(session: Session, area: Area) -> dict:
    """An area as ``areas show`` and ``GET /areas/NAME`` print it."""
    shape = to_shape(area.footprint)
    parcels = session.scalar(select(func.count()).select_from(Parcel).where(Parcel.area_id == area.id))
    scenes = session.scalar(select(func.count()).select_from(Scene).where(Scene.area_id == area.id))
    open_alerts = session.scalar(select(func.count()).select_from(Alert).where(
        Alert.area_id == area.id, Alert.status.in_(open_statuses())))
    area_km2 = (session.scalar(select(func.ST_Area(func.ST_Transform(Area.footprint, area.utm_epsg)))
                               .where(Area.id == area.id)) or 0.0) / 1e6
    return {
        "name": area.name,
        "id": area.id,
        "utm_epsg": area.utm_epsg,
        "area_km2": round(area_km2, 4),
        "bounds": [round(v, 6) for v in shape.bounds],
        "cadence": format_duration(area.cadence),
        "providers": list(area.providers),
        "sources": dict(area.sources or {}),
        "max_cloud": area.max_cloud,
        "resolution_m": area.resolution_m,
        "band_order": list(area.band_order) if area.band_order else None,
        "allow_resolution_mismatch": bool(area.allow_resolution_mismatch),
        "settlement_alerts": bool(area.settlement_alerts),
        "models": {kind: getattr(area, f"{kind}_model_id") for kind in ModelKind},
        "active": area.active,
        "parcels": parcels,
        "scenes": scenes,
        "open_alerts": open_alerts,
        "created_at": area.created_at.isoformat() if isinstance(area.created_at, dt.datetime) else None,
    }


def remove_area(session: Session, name: str) -> None:
    """Delete an area with everything of it (parcels, permits, scenes, detections, alerts)."""
    session.delete(get_area(session, name))


def configure_area(session: Session, name: str, *, cadence: str | None = None,
                   providers: str | Sequence[str] | None = None, max_cloud: float | None = None,
                   sources: dict[str, str] | None = None, resolution_m: float | None = None,
                   active: bool | None = None, models: dict[str, str] | None = None,
                   band_order: str | Sequence[str] | None = None,
                   allow_resolution_mismatch: bool | None = None, settlement_alerts: bool | None = None,
                   allow_private_urls: bool = False) -> Area:
    """Change an area's settings; ``models`` maps a kind (segmenter, classifier, change) to a model
    directory, registered on the way, or to '' to unset it. ``band_order`` '' (or an empty list)
    forgets the area's band order; a new band order re-queues the scenes whose fetch failed, new
    models (or allowing a resolution mismatch) those whose processing failed. ``settlement_alerts``: new
    settlement growth over a parcel is judged as new construction. Sources are checked as ``areas add``
    checks them (``allow_private_urls``: MONITOR_ALLOW_PRIVATE_URLS)."""
    area = get_area(session, name)
    if cadence is not None:
        area.cadence = parse_cadence(cadence)
    if providers is not None:
        area.providers = values(parse_providers(providers))
    if max_cloud is not None:
        area.max_cloud = check_max_cloud(max_cloud)
    if sources:
        area.sources = {**(area.sources or {}), **parse_sources(sources, allow_private=allow_private_urls)}
    if resolution_m is not None:
        area.resolution_m = check_resolution(resolution_m)
    if active is not None:
        area.active = active
    if band_order is not None:
        parsed = parse_band_order(band_order)
        area.band_order = list(parsed) if parsed else None
        # scenes that failed under the old band order (or none) are fetched again under the new one
        requeue_scenes(session, Scene.area_id == area.id, Scene.status == SceneStatus.FAILED,
                       Scene.file_path.is_(None))
    if allow_resolution_mismatch is not None:
        area.allow_resolution_mismatch = allow_resolution_mismatch
    if settlement_alerts is not None:
        area.settlement_alerts = settlement_alerts
    for kind, model_dir in (models or {}).items():
        if not model_dir:
            setattr(area, f"{kind}_model_id", None)
            continue
        model = register_model(session, model_dir)
        if model.kind != kind:
            raise BadInput(f"is a {model.kind} model, not a {kind} model", file=model_dir, field=f"{kind}-model")
        setattr(area, f"{kind}_model_id", model.id)
    if models or allow_resolution_mismatch:
        # scenes whose processing failed under the old models are processed again with the new ones
        requeue_scenes(session, Scene.area_id == area.id, Scene.status == SceneStatus.FAILED,
                       Scene.file_path.is_not(None))
    session.flush()
    return area
