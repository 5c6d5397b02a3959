"""What the monitor found: alerts (with review and evidence), history, scenes and runs."""

from __future__ import annotations

import datetime as dt
from pathlib import Path as FsPath
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from monitor import history
from monitor.alerts import lifecycle
from monitor.alerts.export import FORMATS, alerts_file
from monitor.api.deps import NO_NUL, BboxQuery, BigId, ExternalId, Limit, Name, Offset, Reader, Writer, tx
from monitor.api.evidence import sign_evidence
from monitor.change import settlements
from monitor.db.tables import Alert, Area, Run, Scene
from monitor.domain import AlertStatus, RunStatus, SceneStatus, parse_bbox, values
from monitor.errors import BadInput, NotFound
from monitor.inventory.areas import get_area
from monitor.redact import redact

router = APIRouter()

if TYPE_CHECKING:
    AlertStatusQuery = str
    FileFormat = str
    SceneStatusQuery = str
else:
    AlertStatusQuery = Literal[("open", *values(AlertStatus))]
    FileFormat = Literal[tuple(FORMATS)]
    SceneStatusQuery = Literal[tuple(values(SceneStatus))]
AreaQuery = Annotated[str | None, Query(max_length=200, pattern=NO_NUL, description="Area name.")]
Since = Annotated[dt.date | None, Query(description="On or after this date (YYYY-MM-DD).")]
Until = Annotated[dt.date | None, Query(description="On or before this date (YYYY-MM-DD).")]


def _dates(since: dt.date | None, until: dt.date | None) -> None:
    if since and until and until < since:
        raise BadInput(f"until {until} is before since {since}", field="until")


def _alert(s, alert_id: int) -> Alert:
    alert = s.get(Alert, alert_id)
    if alert is None:
        raise NotFound(f"no alert with id {alert_id}", field="id")
    return alert


# --- alerts

@router.get("/alerts", tags=["alerts"], summary="Alerts as a GeoJSON FeatureCollection, or a GIS file",
            responses={200: {"content": {spec.media_type: {} for spec in FORMATS.values()}}})
def list_alerts(request: Request, who: Reader, area: AreaQuery = None,
                status: Annotated[AlertStatusQuery | None, Query(description="open: new, acknowledged or confirmed")] = None,
                since: Since = None, until: Until = None, bbox: BboxQuery = None,
                f: Annotated[FileFormat | None, Query(description="A file instead of JSON, written with GDAL: geojson, "
                                                      "gpkg, csv (WKT geometry) or fgb (FlatGeobuf).")] = None,
                parcel_geometry: Annotated[bool, Query(description="With f: add the parcel's outline as WKT "
                                                       "(column parcel_wkt).")] = False) -> Any:
    """Alerts oldest first, their ``evidence`` links signed for the caller. With ``f``, the same alerts
    as a file (EPSG:4326, coordinates at 7 decimals), with the parcel's permit numbers."""
    _dates(since, until)
    box = parse_bbox(bbox)
    with tx(request) as s:
        if area is not None:
            get_area(s, area)  # a 404 for an unknown area rather than an empty list
        alerts = lifecycle.list_alerts(s, area=area, status=status, since=since, until=until, bbox=box)
        if f is not None:
            spec = FORMATS[f]
            content = alerts_file(s, alerts, f, parcel_geometry=parcel_geometry,
                                  links=lambda features: sign_evidence(request, who, features))
            return Response(content, media_type=spec.media_type,
                            headers={"Content-Disposition": f'attachment; filename="alerts{spec.suffix}"'})
        doc = lifecycle.to_geojson(s, alerts)
    sign_evidence(request, who, doc["features"])
    return doc


@router.get("/alerts/{alert_id}", tags=["alerts"], summary="One alert as a GeoJSON Feature")
def get_alert(request: Request, alert_id: BigId, who: Reader) -> dict:
    with tx(request) as s:
        features = lifecycle.to_geojson(s, [_alert(s, alert_id)])["features"]
    return sign_evidence(request, who, features)[0]


class Review(BaseModel):
    """A reviewer's decision on an alert, with an optional note."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"action": "confirm", "note": "seen on site 2024-05-02"}]})

    action: Literal["ack", "confirm", "dismiss"] = Field(description="ack: acknowledged; confirm: real "
                                                         "unpermitted construction; dismiss: not a problem.")
    note: str | None = Field(None, max_length=5000, pattern=NO_NUL)


@router.post("/alerts/{alert_id}/review", tags=["alerts"],
             summary="Acknowledge, confirm or dismiss an alert, with a note")
def review_alert(request: Request, alert_id: BigId, body: Review, who: Writer) -> dict:
    with tx(request) as s:
        alert = lifecycle.review(s, alert_id, body.action, body.note, who.name)
        features = lifecycle.to_geojson(s, [alert])["features"]
    return sign_evidence(request, who, features)[0]



# --- history

@router.get("/areas/{area}/history", tags=["history"], summary="An area's history, date by date")
def area_history(request: Request, area: Name, _: Reader) -> list[dict]:
    with tx(request) as s:
        get_area(s, area)
        return history.area_history(s, area)


@router.get("/areas/{area}/parcels/{external_id}/history", tags=["history"], summary="A parcel's history")
def parcel_history(request: Request, area: Name, external_id: ExternalId, _: Reader) -> list[dict]:
    with tx(request) as s:
        get_area(s, area)
        return history.parcel_history(s, external_id, area)


# --- settlements

@router.get("/areas/{area}/settlements", tags=["history"],
            summary="An area's informal-settlement layer of a date as a GeoJSON FeatureCollection")
def list_settlements(request: Request, area: Name, _: Reader,
                     date: Annotated[dt.date | None, Query(description="The layer's date (YYYY-MM-DD); "
                                                           "default: the newest.")] = None) -> dict:
    with tx(request) as s:
        a = get_area(s, area)
        _day, rows = settlements.list_settlements(s, a, date)
        return settlements.to_geojson(a, rows)


@router.get("/areas/{area}/settlements/growth", tags=["history"],
            summary="Settlements that appeared, grew or shrank between consecutive dates")
def settlement_growth(request: Request, area: Name, _: Reader) -> list[dict]:
    with tx(request) as s:
        return settlements.growth(s, get_area(s, area))


# --- scenes and runs

def _scene(sc: Scene) -> dict:
    return {"id": sc.id, "area_id": sc.area_id, "provider": sc.provider, "product_id": sc.product_id,
            "acquired_at": sc.acquired_at.isoformat(), "cloud_cover": sc.cloud_cover, "status": sc.status,
            "status_reason": sc.status_reason, "attempts": sc.attempts, "failure_kind": sc.failure_kind,
            "next_attempt_at": sc.next_attempt_at.isoformat() if sc.next_attempt_at else None,
            "file_path": FsPath(sc.file_path).name if sc.file_path else None, "checksum": sc.checksum, "size_bytes": sc.size_bytes}


@router.get("/areas/{area}/scenes", tags=["scenes"], summary="An area's scenes, newest first")
def list_scenes(request: Request, area: Name, _: Reader, status: SceneStatusQuery | None = None, since: Since = None,
                until: Until = None, limit: Limit = 1000, offset: Offset = 0) -> list[dict]:
    _dates(since, until)
    with tx(request) as s:
        q = select(Scene).where(Scene.area_id == get_area(s, area).id)
        if status:
            q = q.where(Scene.status == status)
        if since:
            q = q.where(Scene.acquired_at >= dt.datetime.combine(since, dt.time(), dt.timezone.utc))
        if until:
            q = q.where(Scene.acquired_at <= dt.datetime.combine(until, dt.time.max, dt.timezone.utc))
        return [_scene(sc) for sc in s.scalars(q.order_by(Scene.acquired_at.desc(), Scene.id).limit(limit).offset(offset))]


@router.get("/scenes/{scene_id}", tags=["scenes"], summary="One scene")
def get_scene(request: Request, scene_id: BigId, _: Reader) -> dict:
    with tx(request) as s:
        sc = s.get(Scene, scene_id)
        if sc is None:
            raise NotFound(f"no scene with id {scene_id}", field="id")
        return _scene(sc)


def _error(text: str | None) -> str | None:
    """A run's error as readers see it: no traceback (runs recorded before tracebacks went to the
    log only kept its last lines after the first line), secrets masked."""
    return redact(text.split("\n", 1)[0]) if text else text


def _run(r: Run, area: str) -> dict:
    return {"id": r.id, "area": area, "scene_id": r.scene_id, "status": r.status, "steps": r.steps,
            "model_versions": r.model_versions, "error": _error(r.error), "started_at": r.started_at.isoformat(),
            "finished_at": r.finished_at.isoformat() if r.finished_at else None}


@router.get("/runs", tags=["runs"], summary="Pipeline runs, newest first")
def list_runs(request: Request, _: Reader, area: AreaQuery = None,
              status: Annotated[str | None, Query(max_length=32, pattern=NO_NUL,
                                                  description=", ".join(values(RunStatus)))] = None,
              limit: Limit = 100, offset: Offset = 0) -> list[dict]:
    with tx(request) as s:
        q = select(Run, Area.name).join(Area, Area.id == Run.area_id)
        if area is not None:
            q = q.where(Run.area_id == get_area(s, area).id)
        if status:
            q = q.where(Run.status == status)
        return [_run(r, name) for r, name in s.execute(q.order_by(Run.id.desc()).limit(limit).offset(offset))]


@router.get("/runs/{run_id}", tags=["runs"], summary="One run with its steps")
def get_run(request: Request, run_id: BigId, _: Reader) -> dict:
    with tx(request) as s:
        row = s.execute(select(Run, Area.name).join(Area, Area.id == Run.area_id).where(Run.id == run_id)).first()
        if row is None:
            raise NotFound(f"no run with id {run_id}", field="id")
        return _run(*row)
