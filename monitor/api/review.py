"""What the review page needs beyond the other routes: who the token is, alert counts, change
polygons as GeoJSON, and map tiles of the prepared scenes.

Tiles need the token like every other route. The page fetches them with ``fetch`` and an
``Authorization`` header (its map's tile layer turns each answer into an image), so the token
never appears in a URL, a server log or a Referer header, and revoking it stops the map at once.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path as FsPath
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from sqlalchemy import func, select

from monitor.api.deps import NO_NUL, BboxQuery, BigId, Limit, Name, Offset, Reader, tx
from monitor.db.tables import Alert, Area, Change, Scene
from monitor.domain import OPEN_ALERT_STATUSES, SceneStatus, parse_bbox
from monitor.errors import BadInput, NotFound
from monitor.inventory.areas import get_area
from monitor.tiles import render_tile, scene_style

router = APIRouter()

AreaQuery = Annotated[str | None, Query(max_length=200, pattern=NO_NUL, description="Area name.")]
Since = Annotated[dt.date | None, Query(description="On or after this date (YYYY-MM-DD).")]
Until = Annotated[dt.date | None, Query(description="On or before this date (YYYY-MM-DD).")]
Zoom = Annotated[int, Path(ge=0, le=24, description="Zoom level.")]
TileIndex = Annotated[int, Path(ge=0, le=2**24 - 1)]
# Scenes whose prepared file may be drawn.
DRAWABLE = (SceneStatus.PREPARED, SceneStatus.PROCESSED)
PNG: dict[int | str, dict[str, Any]] = {200: {"content": {"image/png": {}}, "description": "The tile."},
       204: {"description": "The scene has no pixels in this tile."}}


def _dates(since: dt.date | None, until: dt.date | None) -> None:
    if since and until and until < since:
        raise BadInput(f"until {until} is before since {since}", field="until")


@router.get("/auth/token", tags=["service"], summary="The calling token's name and scopes")
def whoami(who: Reader) -> dict:
    """The name and scopes of the token that made the request (the review page shows review buttons
    to write tokens only)."""
    return {"name": who.name, "scopes": sorted(who.scopes)}


@router.get("/alerts/counts", tags=["alerts"], summary="How many alerts, by status and by confidence")
def alert_counts(request: Request, _: Reader, area: AreaQuery = None, since: Since = None,
                 until: Until = None) -> dict:
    """Counts of the alerts that ``GET /alerts`` would list with the same area and dates: in all,
    open (new, acknowledged or confirmed), per status, per confidence, and per status and confidence."""
    _dates(since, until)
    with tx(request) as s:
        q = select(Alert.status, Alert.confidence, func.count()).group_by(Alert.status, Alert.confidence)
        if area is not None:
            q = q.where(Alert.area_id == get_area(s, area).id)
        if since is not None:
            q = q.where(Alert.last_seen >= since)
        if until is not None:
            q = q.where(Alert.first_seen <= until)
        rows = s.execute(q).all()
    by_status: dict[str, int] = {}
    by_confidence: dict[str, int] = {}
    both: dict[str, dict[str, int]] = {}
    for status, confidence, n in rows:
        by_status[status] = by_status.get(status, 0) + n
        by_confidence[confidence] = by_confidence.get(confidence, 0) + n
        both.setdefault(status, {})[confidence] = n
    return {"total": sum(by_status.values()),
            "open": sum(n for st, n in by_status.items() if st in OPEN_ALERT_STATUSES),
            "by_status": by_status, "by_confidence": by_confidence, "by_status_confidence": both}


@router.get("/areas/{area}/changes", tags=["history"], summary="An area's changes (new construction) as GeoJSON")
def list_changes(request: Request, area: Name, _: Reader, bbox: BboxQuery = None, since: Since = None,
                 until: Until = None, limit: Limit = 1000, offset: Offset = 0) -> dict:
    """Changes observed between ``since`` and ``until`` (their ``observed_on``) intersecting the box,
    oldest first: each with the date it was seen, the earlier date it was compared with, its area
    in m2 and its source (``diff`` or ``change_model``)."""
    _dates(since, until)
    box = parse_bbox(bbox)
    with tx(request) as s:
        q = select(Change.id, Change.observed_on, Change.previous_on, Change.area_m2, Change.source,
                   func.ST_AsGeoJSON(Change.geom, 7).label("geojson")).where(Change.area_id == get_area(s, area).id)
        if box:
            q = q.where(func.ST_Intersects(Change.geom, func.ST_MakeEnvelope(*box, 4326)))
        if since is not None:
            q = q.where(Change.observed_on >= since)
        if until is not None:
            q = q.where(Change.observed_on <= until)
        rows = s.execute(q.order_by(Change.observed_on, Change.id).limit(limit).offset(offset)).all()
    return {"type": "FeatureCollection", "features": [{
        "type": "Feature", "id": r.id, "geometry": json.loads(r.geojson),
        "properties": {"id": r.id, "observed_on": r.observed_on.isoformat(),
                       "previous_on": r.previous_on.isoformat() if r.previous_on else None,
                       "area_m2": round(r.area_m2, 2), "source": r.source}} for r in rows]}


def _scene_file(request: Request, scene_id: int) -> tuple[Scene, str, FsPath]:
    """The scene, its area's name and its prepared file."""
    with tx(request) as s:
        row = s.execute(select(Scene, Area.name).join(Area, Area.id == Scene.area_id)
                        .where(Scene.id == scene_id)).first()
    if row is None:
        raise NotFound(f"no scene with id {scene_id}", field="scene_id")
    scene, area = row
    if scene.status not in DRAWABLE or not scene.file_path:
        raise NotFound(f"scene {scene_id} has no prepared file to draw (status {scene.status})", field="scene_id")
    return scene, area, FsPath(scene.file_path)


@router.get("/scenes/{scene_id}/tiles.json", tags=["scenes"], summary="A scene's map tiles (TileJSON)")
def scene_tilejson(request: Request, scene_id: BigId, _: Reader) -> dict:
    """TileJSON 3.0.0 of the scene's map tiles, with the bands drawn and their stretch. The tile URLs
    need the same bearer token as this request."""
    scene, area, path = _scene_file(request, scene_id)
    style = scene_style(path)
    url = str(request.url_for("scene_tile", scene_id=scene_id, z=0, x=0, y=0))
    template = url[: -len("/0/0/0.png")] + "/{z}/{x}/{y}.png"
    return {"tilejson": "3.0.0", "name": f"{area} {scene.acquired_at.date().isoformat()}",
            "scheme": "xyz", "tiles": [template], "bounds": list(style.bounds),
            "minzoom": style.minzoom, "maxzoom": style.maxzoom,
            "scene_id": scene.id, "area": area, "acquired_at": scene.acquired_at.isoformat(),
            "provider": scene.provider, "cloud_cover": scene.cloud_cover,
            "bands": list(style.bands), "rendering": style.rendering,
            "stretch": [list(pair) for pair in style.stretch]}


@router.get("/scenes/{scene_id}/tiles/{z}/{x}/{y}.png", tags=["scenes"], summary="One map tile of a scene",
            response_class=Response, responses=PNG)
def scene_tile(request: Request, scene_id: BigId, z: Zoom, x: TileIndex, y: TileIndex, _: Reader) -> Response:
    """A 256 x 256 PNG in Web Mercator (XYZ numbering), true colour where the bands allow, nodata
    transparent; 204 where the scene has no pixels."""
    if x >= 2**z or y >= 2**z:
        raise BadInput(f"tile {z}/{x}/{y} does not exist: x and y go up to {2**z - 1} at zoom {z}", field="x")
    _scene, _area, path = _scene_file(request, scene_id)
    png = render_tile(path, z, x, y)
    # A prepared scene's file does not change; the token's scope is checked on every request.
    headers = {"Cache-Control": "private, max-age=86400"}
    if png is None:
        return Response(status_code=204, headers=headers)
    return Response(png, media_type="image/png", headers=headers)

