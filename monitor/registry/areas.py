"""Watched areas: add, list, show, remove."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import shapely
from geoalchemy2.shape import from_shape, to_shape
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from monitor.db.tables import Alert, Area, Parcel, Scene
from monitor.errors import BadInput, Conflict, NotFound
from monitor.geo import as_multipolygon, parse_duration, utm_epsg_for
from monitor.registry.readers import read_polygons

PROVIDERS = ("stac", "sentinelsat", "local")


@dataclass
class AreaSpec:
    name: str
    geometry_file: str
    cadence: str
    providers: list[str]
    max_cloud: float
    sources: dict[str, str]
    resolution_m: float | None = None


def parse_providers(text: str) -> list[str]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    if not names:
        raise BadInput("names no provider", field="provider")
    for n in names:
        if n not in PROVIDERS:
            raise BadInput(f"unknown provider {n!r}; known: {', '.join(PROVIDERS)}", field="provider")
    if len(set(names)) != len(names):
        raise BadInput("names a provider twice", field="provider")
    return names


def parse_sources(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not value:
            raise BadInput(f"{item!r} is not PROVIDER=URL_OR_DIR", field="source")
        if name not in PROVIDERS:
            raise BadInput(f"unknown provider {name!r} in {item!r}", field="source")
        out[name] = value
    return out


def add_area(session: Session, spec: AreaSpec) -> Area:
    name = spec.name.strip()
    if not name:
        raise BadInput("an area needs a name", field="name")
    try:
        cadence = parse_duration(spec.cadence)
    except ValueError as e:
        raise BadInput(str(e), field="cadence") from e
    if not 0 <= spec.max_cloud <= 100:
        raise BadInput(f"{spec.max_cloud} is not a percentage 0-100", field="max-cloud")
    providers = parse_providers(",".join(spec.providers))
    if spec.resolution_m is not None and spec.resolution_m <= 0:
        raise BadInput(f"{spec.resolution_m} is not a positive pixel size in metres", field="resolution")
    feats = read_polygons(spec.geometry_file, what="polygons")
    footprint = as_multipolygon(shapely.union_all(feats.geoms))
    if session.scalar(select(Area.id).where(Area.name == name)) is not None:
        raise Conflict(f"an area named {name!r} exists already", field="name")
    area = Area(name=name, footprint=from_shape(footprint, srid=4326), utm_epsg=utm_epsg_for(footprint),
                cadence=cadence, providers=providers, sources=spec.sources, max_cloud=spec.max_cloud,
                resolution_m=spec.resolution_m)
    session.add(area)
    session.flush()
    return area


def get_area(session: Session, name: str) -> Area:
    area = session.scalar(select(Area).where(Area.name == name))
    if area is None:
        raise NotFound(f"no area named {name!r} (see `monitor areas list`)", field="area")
    return area


def list_areas(session: Session) -> list[Area]:
    return list(session.scalars(select(Area).order_by(Area.name)))


def describe(session: Session, area: Area) -> dict:
    shape = to_shape(area.footprint)
    parcels = session.scalar(select(func.count()).select_from(Parcel).where(Parcel.area_id == area.id))
    scenes = session.scalar(select(func.count()).select_from(Scene).where(Scene.area_id == area.id))
    open_alerts = session.scalar(select(func.count()).select_from(Alert).where(
        Alert.area_id == area.id, Alert.status.in_(("new", "acknowledged", "confirmed"))))
    area_km2 = session.scalar(select(func.ST_Area(func.ST_Transform(Area.footprint, area.utm_epsg)))
                              .where(Area.id == area.id)) / 1e6
    from monitor.geo import format_duration

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
        "models": {kind: getattr(area, f"{kind}_model_id") for kind in ("segmenter", "classifier", "change")},
        "active": area.active,
        "parcels": parcels,
        "scenes": scenes,
        "open_alerts": open_alerts,
        "created_at": area.created_at.isoformat() if isinstance(area.created_at, dt.datetime) else None,
    }


def remove_area(session: Session, name: str) -> None:
    session.delete(get_area(session, name))


def configure_area(session: Session, name: str, *, cadence: str | None = None, providers: str | None = None,
                   max_cloud: float | None = None, sources: dict[str, str] | None = None,
                   resolution_m: float | None = None, active: bool | None = None,
                   models: dict[str, str] | None = None) -> Area:
    """Change an area's settings; ``models`` maps a kind (segmenter, classifier, change) to a model
    directory, registered on the way, or to '' to unset it."""
    from monitor.registry.models import register_model

    area = get_area(session, name)
    if cadence is not None:
        try:
            area.cadence = parse_duration(cadence)
        except ValueError as e:
            raise BadInput(str(e), field="cadence") from e
    if providers is not None:
        area.providers = parse_providers(providers)
    if max_cloud is not None:
        if not 0 <= max_cloud <= 100:
            raise BadInput(f"{max_cloud} is not a percentage 0-100", field="max-cloud")
        area.max_cloud = max_cloud
    if sources:
        area.sources = {**(area.sources or {}), **sources}
    if resolution_m is not None:
        if resolution_m <= 0:
            raise BadInput(f"{resolution_m} is not a positive pixel size in metres", field="resolution")
        area.resolution_m = resolution_m
    if active is not None:
        area.active = active
    for kind, model_dir in (models or {}).items():
        if not model_dir:
            setattr(area, f"{kind}_model_id", None)
            continue
        model = register_model(session, model_dir)
        if model.kind != kind:
            raise BadInput(f"is a {model.kind} model, not a {kind} model", file=model_dir, field=f"{kind}-model")
        setattr(area, f"{kind}_model_id", model.id)
    session.flush()
    return area
