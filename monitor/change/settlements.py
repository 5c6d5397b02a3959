"""The informal-settlement layer of an area, one per date, and its growth from date to date.

A date's layer is the classifier's polygons (``monitor.settlements.tile_polygons``) on the clear
part of its scene, joined with the previous date's layer where this date is cloudy: a cloud hides
a settlement, it does not remove it. ``carried_m2`` says how much of each polygon comes from the
earlier date. Geometry work happens in the area's UTM zone; rows are stored in EPSG:4326.

Where an area has ``settlement_alerts``, the layer's new ground (what no earlier layer held) becomes
changes of source ``settlement``, which the judge weighs against parcels and permits like new
construction; ``settlement_sightings`` says whether a later layer still holds such an alert.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import shapely
from geoalchemy2.shape import from_shape, to_shape
from shapely.geometry import Polygon
from shapely.geometry.base import BaseGeometry
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from monitor.db.queries import open_statuses, scene_date, scene_pixel_m
from monitor.db.tables import Alert, Area, Change, Indicator, Scene, Settlement
from monitor.domain import ChangeSource
from monitor.errors import NotFound
from monitor.geo import as_multipolygon, reproject
from monitor.settings import Settings

# Growth below this many m2 (or 1 % of the polygon) is reported as unchanged.
UNCHANGED_M2 = 100.0


@dataclass(frozen=True)
class Layer:
    """What ``store_settlements`` stored for a date."""

    polygons: int
    km2: float
    carried_km2: float


def _utm(geom_4326: BaseGeometry, epsg: int) -> BaseGeometry:
    return shapely.make_valid(reproject(geom_4326, 4326, epsg))


def _parts(geom: BaseGeometry) -> list[Polygon]:
    return [g for g in as_multipolygon(geom).geoms if g.area > 0]


def previous_layer_date(session: Session, area: Area, day: dt.date) -> dt.date | None:
    """The newest date before ``day`` with a settlement layer (it may hold no polygon at all)."""
    return session.scalar(select(func.max(Indicator.observed_on)).where(
        Indicator.area_id == area.id, Indicator.observed_on < day, Indicator.settlement_km2.is_not(None)))


def store_settlements(session: Session, area: Area, scene: Scene, polygons: Sequence[tuple[BaseGeometry, float]],
                      crs, model_version: str | None) -> Layer:
    """Replace the area's settlement layer of the scene's date: ``polygons`` (in ``crs``, with their
    mean probability) cut to the clear part of the scene inside the area, joined with the previous
    layer's polygons over the rest of the area."""
    day = scene_date(scene)
    session.execute(delete(Settlement).where(Settlement.area_id == area.id, Settlement.observed_on == day))
    epsg = area.utm_epsg
    footprint = _utm(to_shape(area.footprint), epsg)
    clear = _clear(area, scene)
    cloudy = footprint.difference(clear)
    pieces: list[tuple[BaseGeometry, float | None, bool]] = []
    for geom, prob in polygons:
        seen = reproject(geom, crs, epsg).intersection(clear)
        if not seen.is_empty:
            pieces.append((seen, prob, False))
    before = previous_layer_date(session, area, day)
    if before is not None and cloudy.area > 0:
        for row in session.scalars(select(Settlement).where(Settlement.area_id == area.id,
                                                            Settlement.observed_on == before)):
            kept = _utm(to_shape(row.geom), epsg).intersection(cloudy)
            if not kept.is_empty:
                pieces.append((kept, row.probability, True))
    if not pieces:
        return Layer(0, 0.0, 0.0)
    merged = _parts(shapely.union_all([g for g, _p, _c in pieces]))
    carried = shapely.union_all([g for g, _p, c in pieces if c]) if any(c for _g, _p, c in pieces) else None
    total = carried_total = 0.0
    for part in merged:
        weights = [(part.intersection(g).area, float(p)) for g, p, _c in pieces
                   if p is not None and part.intersects(g)]
        weight = sum(w for w, _p in weights)
        mean = sum(w * p for w, p in weights) / weight if weight > 0 else None
        carried_m2 = part.intersection(carried).area if carried is not None else 0.0
        session.add(Settlement(area_id=area.id, scene_id=scene.id, observed_on=day, area_m2=part.area,
                               carried_m2=carried_m2, probability=mean, model_version=model_version,
                               geom=from_shape(as_multipolygon(reproject(part, epsg, 4326)), srid=4326)))
        total += part.area
        carried_total += carried_m2
    session.flush()
    return Layer(len(merged), total / 1e6, carried_total / 1e6)


def _union(session: Session, area: Area, *where) -> BaseGeometry:
    rows = session.scalars(select(Settlement.geom).where(Settlement.area_id == area.id, *where))
    return shapely.union_all([_utm(to_shape(g), area.utm_epsg) for g in rows])


def _clear(area: Area, scene: Scene) -> BaseGeometry:
    footprint = _utm(to_shape(area.footprint), area.utm_epsg)
    return footprint if scene.clear_geom is None else _utm(to_shape(scene.clear_geom), area.utm_epsg).intersection(footprint)


def store_settlement_changes(session: Session, area: Area, scene: Scene, settings: Settings) -> int:
    """The scene's settlement growth as changes of source ``settlement``, replacing earlier ones of the
    scene (none where the area has no ``settlement_alerts``); returns their count. Growth is the date's layer on the clear part of the scene minus every
    earlier layer (ground any earlier date called settlement is not new, as for the diff), in pieces
    of at least the minimum change. The first layer of an area is its baseline: nothing is new."""
    session.execute(delete(Change).where(Change.scene_id == scene.id, Change.source == ChangeSource.SETTLEMENT))
    day = scene_date(scene)
    before = previous_layer_date(session, area, day)
    if before is None or not area.settlement_alerts:
        return 0
    now = _union(session, area, Settlement.observed_on == day).intersection(_clear(area, scene))
    earlier = _union(session, area, Settlement.observed_on < day)
    min_m2 = settings.min_area_m2("change", scene_pixel_m(scene, settings))
    version = session.scalar(select(func.max(Settlement.model_version)).where(
        Settlement.area_id == area.id, Settlement.observed_on == day))
    footprint = to_shape(area.footprint)
    stored = 0
    for part in _parts(now.difference(earlier)):
        if part.area < min_m2:
            continue
        geom = shapely.make_valid(reproject(part, area.utm_epsg, 4326)).intersection(footprint)
        if geom.is_empty:
            continue
        session.add(Change(area_id=area.id, scene_id=scene.id, observed_on=day, previous_on=before,
                           geom=from_shape(as_multipolygon(geom), srid=4326), area_m2=part.area,
                           source=ChangeSource.SETTLEMENT, model_version=version))
        stored += 1
    session.flush()
    return stored


def settlement_sightings(session: Session, area: Area, scene: Scene) -> dict[int, tuple[float, float]]:
    """For the open settlement alerts of earlier dates: the share of each that is clear on the scene's
    date and the share of that clear part the date's layer still holds (the judge's ``sightings``)."""
    day = scene_date(scene)
    alerts = session.execute(select(Alert.id, Alert.geom).where(
        Alert.area_id == area.id, Alert.source == ChangeSource.SETTLEMENT, Alert.status.in_(open_statuses()),
        Alert.first_seen < day)).all()
    if not alerts:
        return {}
    clear = _clear(area, scene)
    layer = _union(session, area, Settlement.observed_on == day)
    out = {}
    for alert_id, geom in alerts:
        shape = _utm(to_shape(geom), area.utm_epsg)
        seen = shape.intersection(clear)
        out[int(alert_id)] = (seen.area / shape.area if shape.area else 0.0,
                              seen.intersection(layer).area / seen.area if seen.area else 0.0)
    return out


def layer_dates(session: Session, area: Area) -> list[dt.date]:
    """The dates with a settlement layer, oldest first."""
    return list(session.scalars(select(Indicator.observed_on).where(
        Indicator.area_id == area.id, Indicator.settlement_km2.is_not(None)).order_by(Indicator.observed_on)))


def list_settlements(session: Session, area: Area, day: dt.date | None = None) -> tuple[dt.date | None, list[Settlement]]:
    """The settlement layer of ``day`` (default: the newest date with one), largest polygon first."""
    dates = layer_dates(session, area)
    if day is None:
        day = dates[-1] if dates else None
    elif day not in dates:
        known = ", ".join(d.isoformat() for d in dates) or "none yet"
        raise NotFound(f"area {area.name!r} has no settlement layer on {day} (dates: {known})", field="date")
    if day is None:
        return None, []
    rows = session.scalars(select(Settlement).where(Settlement.area_id == area.id, Settlement.observed_on == day)
                           .order_by(Settlement.area_m2.desc(), Settlement.id))
    return day, list(rows)


def to_geojson(area: Area, rows: Sequence[Settlement]) -> dict:
    """A layer as a GeoJSON FeatureCollection (EPSG:4326)."""
    return {"type": "FeatureCollection", "features": [{
        "type": "Feature", "id": r.id, "geometry": shapely.geometry.mapping(to_shape(r.geom)),
        "properties": {"area": area.name, "observed_on": r.observed_on.isoformat(), "scene_id": r.scene_id,
                       "area_m2": round(r.area_m2, 1), "carried_m2": round(r.carried_m2, 1),
                       "carried_share": round(r.carried_m2 / r.area_m2, 4) if r.area_m2 else 0.0,
                       "probability": None if r.probability is None else round(r.probability, 4),
                       "model_version": r.model_version}} for r in rows]}


GROWTH_COLUMNS = ("previous_on", "observed_on", "change", "settlement_ids", "previous_ids", "km2_before",
                  "km2_after", "change_km2")


def growth(session: Session, area: Area) -> list[dict]:
    """Between consecutive layers: each settlement that appeared, grew, shrank, stayed the same or
    disappeared, with its km2 before and after. A settlement of the later date is matched with every
    polygon of the earlier date it overlaps (two that merged are one settlement that grew)."""
    dates = layer_dates(session, area)
    layers: dict[dt.date, list[tuple[int, BaseGeometry, float]]] = {d: [] for d in dates}
    for row in session.scalars(select(Settlement).where(Settlement.area_id == area.id).order_by(Settlement.id)):
        if row.observed_on in layers:
            layers[row.observed_on].append((row.id, to_shape(row.geom), row.area_m2))
    out: list[dict] = []
    for before, after in zip(dates, dates[1:]):
        old, matched = layers[before], set[int]()
        for sid, geom, m2 in layers[after]:
            prev = [(pid, pm2) for pid, pg, pm2 in old if geom.intersects(pg) and geom.intersection(pg).area > 0]
            matched.update(pid for pid, _m in prev)
            was = sum(pm2 for _p, pm2 in prev)
            delta = m2 - was
            if not prev:
                kind = "appeared"
            elif abs(delta) < max(UNCHANGED_M2, 0.01 * max(m2, was)):
                kind = "unchanged"
            else:
                kind = "grew" if delta > 0 else "shrank"
            out.append(_growth_row(before, after, kind, [sid], [p for p, _m in prev], was, m2))
        for pid, _g, pm2 in old:
            if pid not in matched:
                out.append(_growth_row(before, after, "disappeared", [], [pid], pm2, 0.0))
    return out


def _growth_row(before: dt.date, after: dt.date, kind: str, ids: list[int], prev: list[int], was: float,
                now: float) -> dict:
    return {"previous_on": before, "observed_on": after, "change": kind, "settlement_ids": ids, "previous_ids": prev,
            "km2_before": round(was / 1e6, 6), "km2_after": round(now / 1e6, 6),
            "change_km2": round((now - was) / 1e6, 6)}

