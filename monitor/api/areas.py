"""Areas, parcels and permits: create, bulk upload, list, get, change, delete."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile
from geoalchemy2.shape import from_shape
from pydantic import BaseModel, ConfigDict, Field, field_validator
from shapely.geometry import shape
from sqlalchemy import func, select

from monitor.api.deps import (
    NAME_PATTERN,
    NO_NUL,
    BboxQuery,
    BigId,
    ExternalId,
    Limit,
    Name,
    Offset,
    Reader,
    Writer,
    tx,
    upload_path,
)
from monitor.db.tables import Parcel, Permit
from monitor.domain import AREA_PROVIDERS, AreaSpec, parse_bbox, parse_cadence, values
from monitor.errors import BadInput, Conflict, NotFound
from monitor.geo import area_m2, lonlat_problem, polygonal
from monitor.inventory import areas as inventory
from monitor.inventory.parcels import import_parcels
from monitor.inventory.permits import import_permits

router = APIRouter()

if TYPE_CHECKING:
    Provider = str
else:
    Provider = Literal[tuple(values(AREA_PROVIDERS))]
Text = Annotated[str, Field(min_length=1, max_length=500, pattern=NO_NUL)]


def check_cadence(value: str | None) -> str | None:
    """A cadence field: the domain's rule, as a pydantic validation error."""
    if value is not None:
        try:
            parse_cadence(value)
        except BadInput as e:
            raise ValueError(e.detail) from None
    return value


def lonlat_geometry(obj: Any, field: str = "geometry"):
    """A GeoJSON Polygon/MultiPolygon in lon/lat -> a valid MultiPolygon (repaired when it can be)."""
    if not isinstance(obj, dict) or obj.get("type") not in ("Polygon", "MultiPolygon"):
        raise BadInput("must be a GeoJSON Polygon or MultiPolygon object", field=field)
    try:
        geom = shape(obj)
    except Exception as e:  # shapely raises several kinds on malformed coordinates
        raise BadInput(f"is not a valid GeoJSON {obj.get('type')}: {e}", field=field) from e
    if geom.is_empty:
        raise BadInput("is empty", field=field)
    if (problem := lonlat_problem(geom)) is not None:
        raise BadInput(problem.replace("the file claims", "EPSG:4326"), field=field)
    fix = polygonal(geom)
    if fix.geometry is None:
        raise BadInput(fix.problem or "unusable geometry", field=field)
    return fix.geometry


# --- areas

BAND_ORDER = ("Sentinel-2 names of the bands of drop-folder files without band descriptions, in file order "
              "('-' for a band to ignore), e.g. [\"B04\", \"B03\", \"B02\", \"B08\"].")
RESOLUTION_MISMATCH = "Run models trained at a resolution more than 1.5x away from the scenes'."
SETTLEMENT_ALERTS = ("Judge new settlement growth over a parcel (the classifier's layer) like new construction: "
                     "alerts of source 'settlement'.")


class AreaIn(BaseModel):
    """A new area; unset fields take the server's defaults (MONITOR_DEFAULT_*)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "name": "ba", "cadence": "5d", "providers": ["local"], "max_cloud": 20,
        "geometry": {"type": "Polygon", "coordinates": [[[-58.5, -34.6], [-58.45, -34.6], [-58.45, -34.55],
                                                          [-58.5, -34.55], [-58.5, -34.6]]]}}]})

    name: str = Field(min_length=1, max_length=200, pattern=NAME_PATTERN)
    geometry: dict[str, Any] = Field(description="GeoJSON Polygon or MultiPolygon, EPSG:4326.")
    cadence: str | None = Field(None, max_length=20, description="How often to look for imagery: 30m, 12h, 5d, 2w.")
    providers: list[Provider] | None = Field(None, min_length=1, max_length=3, description="Provider order.")
    max_cloud: float | None = Field(None, ge=0, le=100, allow_inf_nan=False)
    sources: dict[Provider, Text] | None = Field(None, description="Provider -> URL or folder for this area.")
    resolution_m: float | None = Field(None, gt=0, le=10000, allow_inf_nan=False)
    band_order: list[Text] | None = Field(None, max_length=20, description=BAND_ORDER)
    allow_resolution_mismatch: bool = Field(False, description=RESOLUTION_MISMATCH)

    _cadence = field_validator("cadence")(check_cadence)


class AreaPatch(BaseModel):
    """Changes to an area; unset fields stay as they are."""

    model_config = ConfigDict(extra="forbid")

    cadence: str | None = Field(None, max_length=20)
    providers: list[Provider] | None = Field(None, min_length=1, max_length=3)
    max_cloud: float | None = Field(None, ge=0, le=100, allow_inf_nan=False)
    sources: dict[Provider, Text] | None = None
    resolution_m: float | None = Field(None, gt=0, le=10000, allow_inf_nan=False)
    active: bool | None = None
    band_order: list[Text] | None = Field(None, max_length=20, description=BAND_ORDER + " [] forgets it.")
    allow_resolution_mismatch: bool | None = Field(None, description=RESOLUTION_MISMATCH)
    settlement_alerts: bool | None = Field(None, description=SETTLEMENT_ALERTS)

    _cadence = field_validator("cadence")(check_cadence)


def _spec(request: Request, name: str, cadence: str | None, providers: str | Sequence[str] | None,
          max_cloud: float | None, sources: dict | None, resolution_m: float | None,
          band_order: list[str] | None = None, allow_resolution_mismatch: bool = False) -> AreaSpec:
    return inventory.area_spec(request.app.state.settings, name, cadence=cadence, providers=providers, max_cloud=max_cloud,
                     sources=dict(sources or {}), resolution_m=resolution_m, band_order=band_order,
                     allow_resolution_mismatch=allow_resolution_mismatch)


@router.get("/areas", tags=["areas"], summary="List areas")
def list_areas(request: Request, _: Reader) -> list[dict]:
    with tx(request) as s:
        return [inventory.describe(s, a) for a in inventory.list_areas(s)]


@router.post("/areas", tags=["areas"], status_code=201, summary="Create an area from a GeoJSON geometry")
def create_area(request: Request, body: AreaIn, _: Writer) -> dict:

    geom = lonlat_geometry(body.geometry)
    spec = _spec(request, body.name, body.cadence, body.providers, body.max_cloud, body.sources, body.resolution_m,
                 body.band_order, body.allow_resolution_mismatch)
    with tx(request) as s:
        return inventory.describe(s, inventory.add_area(s, spec, geom))


@router.post("/areas/upload", tags=["areas"], status_code=201,
             summary="Create an area from a vector file (GeoJSON, GeoPackage, zipped Shapefile; any CRS)")
def upload_area(request: Request, _: Writer,
                file: Annotated[UploadFile, File(description="The area's polygon(s); several are united.")],
                name: Annotated[str, Form(min_length=1, max_length=200, pattern=NAME_PATTERN)],
                cadence: Annotated[str | None, Form(max_length=20)] = None,
                providers: Annotated[str | None, Form(max_length=100, pattern=NO_NUL,
                                                      description="Comma-separated, e.g. local,stac")] = None,
                max_cloud: Annotated[float | None, Form(ge=0, le=100, allow_inf_nan=False)] = None,
                resolution_m: Annotated[float | None, Form(gt=0, le=10000, allow_inf_nan=False)] = None) -> dict:

    spec = _spec(request, name, cadence, providers, max_cloud, None, resolution_m)
    with upload_path(file) as path, tx(request) as s:
        return inventory.describe(s, inventory.add_area(s, spec, path))


@router.get("/areas/{area}", tags=["areas"], summary="Get an area")
def get_area(request: Request, area: Name, _: Reader) -> dict:
    with tx(request) as s:
        return inventory.describe(s, inventory.get_area(s, area))


@router.get("/areas/{area}/geometry", tags=["areas"], summary="An area's footprint as a GeoJSON Feature")
def get_area_geometry(request: Request, area: Name, _: Reader) -> dict:
    with tx(request) as s:
        a = inventory.get_area(s, area)
        geom = json.loads(s.scalar(select(func.ST_AsGeoJSON(a.footprint, 7))) or "null")
        return {"type": "Feature", "id": a.name, "properties": {"name": a.name}, "geometry": geom}


@router.patch("/areas/{area}", tags=["areas"], summary="Change an area's cadence, providers, sources or activity")
def patch_area(request: Request, area: Name, body: AreaPatch, _: Writer) -> dict:
    with tx(request) as s:
        a = inventory.configure_area(s, area, cadence=body.cadence,
                           providers=",".join(body.providers) if body.providers else None,
                           max_cloud=body.max_cloud, sources=dict(body.sources or {}),
                           resolution_m=body.resolution_m, active=body.active, band_order=body.band_order,
                           allow_resolution_mismatch=body.allow_resolution_mismatch,
                           settlement_alerts=body.settlement_alerts,
                           allow_private_urls=request.app.state.settings.allow_private_urls)
        return inventory.describe(s, a)


@router.delete("/areas/{area}", tags=["areas"], status_code=204,
               summary="Delete an area with its parcels, permits, scenes, detections and alerts")
def delete_area(request: Request, area: Name, _: Writer) -> Response:
    with tx(request) as s:
        inventory.remove_area(s, area)
    return Response(status_code=204)


# --- parcels

class ParcelIn(BaseModel):
    """A new parcel of an area."""

    model_config = ConfigDict(extra="forbid")

    external_id: Text = Field(description="The cadastre's id, unique within the area.")
    geometry: dict[str, Any] = Field(description="GeoJSON Polygon or MultiPolygon, EPSG:4326.")
    attributes: dict[str, Any] = Field(default_factory=dict)


def _parcel_feature(row) -> dict:
    return {"type": "Feature", "id": row.external_id,
            "properties": {"external_id": row.external_id, "area_m2": round(row.area_m2, 2),
                           "attributes": row.attributes},
            "geometry": json.loads(row.geojson)}


def _parcel_query():
    return select(Parcel.id, Parcel.external_id, Parcel.area_m2, Parcel.attributes,
                  func.ST_AsGeoJSON(Parcel.geom, 7).label("geojson"))


def _get_parcel(s, area_id: int, external_id: str) -> Parcel:
    parcel = s.scalar(select(Parcel).where(Parcel.area_id == area_id, Parcel.external_id == external_id))
    if parcel is None:
        raise NotFound(f"no parcel {external_id!r} in this area", field="external_id")
    return parcel


@router.get("/areas/{area}/parcels", tags=["parcels"], summary="List an area's parcels (GeoJSON)")
def list_parcels(request: Request, area: Name, _: Reader, bbox: BboxQuery = None, limit: Limit = 1000,
                 offset: Offset = 0) -> dict:

    box = parse_bbox(bbox)
    with tx(request) as s:
        a = inventory.get_area(s, area)
        q = _parcel_query().where(Parcel.area_id == a.id)
        if box:
            q = q.where(func.ST_Intersects(Parcel.geom, func.ST_MakeEnvelope(*box, 4326)))
        rows = s.execute(q.order_by(Parcel.external_id).limit(limit).offset(offset)).all()
        return {"type": "FeatureCollection", "features": [_parcel_feature(r) for r in rows]}


@router.post("/areas/{area}/parcels", tags=["parcels"], status_code=201, summary="Create one parcel")
def create_parcel(request: Request, area: Name, body: ParcelIn, _: Writer) -> dict:

    geom = lonlat_geometry(body.geometry)
    with tx(request) as s:
        a = inventory.get_area(s, area)
        if s.scalar(select(Parcel.id).where(Parcel.area_id == a.id, Parcel.external_id == body.external_id)):
            raise Conflict(f"parcel {body.external_id!r} exists already in area {area!r}", field="external_id")
        p = Parcel(area_id=a.id, external_id=body.external_id, geom=from_shape(geom, srid=4326),
                   area_m2=float(area_m2(geom, a.utm_epsg)), attributes=body.attributes)
        s.add(p)
        s.flush()
        return _parcel_feature(s.execute(_parcel_query().where(Parcel.id == p.id)).one())


@router.post("/areas/{area}/parcels/upload", tags=["parcels"],
             summary="Import parcels from a vector file (upserted by cadastral id)")
def upload_parcels(request: Request, area: Name, _: Writer,
                   file: Annotated[UploadFile, File(description="GeoJSON, GeoPackage or zipped Shapefile, any CRS.")],
                   id_field: Annotated[str | None, Form(max_length=200, pattern=NO_NUL,
                                                        description="Attribute with the cadastral id.")] = None,
                   dry_run: Annotated[bool, Form(description="Count new, changed and unchanged parcels; write "
                                                 "nothing.")] = False,
                   allow_outside: Annotated[bool, Form(description="Import parcels that do not touch the area "
                                                       "too (with a warning).")] = False) -> dict:

    with upload_path(file) as path, tx(request) as s:
        result = import_parcels(s, inventory.get_area(s, area), path, id_field or None, dry_run=dry_run,
                                allow_outside=allow_outside, source=file.filename or "upload")
    return {"inserted": result.inserted, "updated": result.updated, "changed": result.changed,
            "unchanged": result.unchanged, "dry_run": dry_run, "import_id": result.import_id,
            "warnings": [w.replace(str(path), file.filename or "upload") for w in result.warnings]}


@router.get("/areas/{area}/parcels/{external_id}", tags=["parcels"], summary="Get a parcel with its permits")
def get_parcel(request: Request, area: Name, external_id: ExternalId, _: Reader) -> dict:
    with tx(request) as s:
        a = inventory.get_area(s, area)
        p = _get_parcel(s, a.id, external_id)
        feature = _parcel_feature(s.execute(_parcel_query().where(Parcel.id == p.id)).one())
        permits = s.scalars(select(Permit).where(Permit.parcel_id == p.id).order_by(Permit.valid_from))
        feature["properties"]["permits"] = [_permit(x, external_id) for x in permits]
        return feature


@router.delete("/areas/{area}/parcels/{external_id}", tags=["parcels"], status_code=204,
               summary="Delete a parcel with its permits and alerts")
def delete_parcel(request: Request, area: Name, external_id: ExternalId, _: Writer) -> Response:
    with tx(request) as s:
        s.delete(_get_parcel(s, inventory.get_area(s, area).id, external_id))
    return Response(status_code=204)


# --- permits

class PermitIn(BaseModel):
    """A new building permit of a parcel."""

    model_config = ConfigDict(extra="forbid")

    parcel_id: Text = Field(description="The parcel's cadastral id.")
    permit_id: Text = Field(description="The permit number, unique per parcel.")
    valid_from: dt.date
    valid_to: dt.date | None = Field(None, description="Unset: open-ended.")
    kind: Text | None = None


def _permit(p: Permit, parcel: str) -> dict:
    return {"id": p.id, "parcel_id": parcel, "permit_id": p.permit_number, "kind": p.kind,
            "valid_from": p.valid_from.isoformat(), "valid_to": p.valid_to.isoformat() if p.valid_to else None}


@router.get("/areas/{area}/permits", tags=["permits"], summary="List an area's permits")
def list_permits(request: Request, area: Name, _: Reader, limit: Limit = 1000, offset: Offset = 0,
                 parcel: Annotated[str | None, Query(max_length=500, pattern=NO_NUL,
                                                     description="Only this parcel's permits.")] = None) -> list[dict]:
    with tx(request) as s:
        a = inventory.get_area(s, area)
        q = select(Permit, Parcel.external_id).join(Parcel, Parcel.id == Permit.parcel_id).where(Parcel.area_id == a.id)
        if parcel is not None:
            q = q.where(Parcel.external_id == parcel)
        rows = s.execute(q.order_by(Parcel.external_id, Permit.valid_from, Permit.id).limit(limit).offset(offset))
        return [_permit(p, ext) for p, ext in rows]


@router.post("/areas/{area}/permits", tags=["permits"], status_code=201, summary="Create one permit")
def create_permit(request: Request, area: Name, body: PermitIn, _: Writer) -> dict:

    if body.valid_to is not None and body.valid_to < body.valid_from:
        raise BadInput(f"valid_to {body.valid_to} is before valid_from {body.valid_from}", field="valid_to")
    with tx(request) as s:
        a = inventory.get_area(s, area)
        parcel = _get_parcel(s, a.id, body.parcel_id)
        if s.scalar(select(Permit.id).where(Permit.parcel_id == parcel.id, Permit.permit_number == body.permit_id)):
            raise Conflict(f"permit {body.permit_id!r} of parcel {body.parcel_id!r} exists already", field="permit_id")
        p = Permit(parcel_id=parcel.id, permit_number=body.permit_id, kind=body.kind, valid_from=body.valid_from,
                   valid_to=body.valid_to)
        s.add(p)
        s.flush()
        return _permit(p, body.parcel_id)


@router.post("/areas/{area}/permits/upload", tags=["permits"],
             summary="Import permits from CSV or GeoJSON (parcel_id, permit_id, valid_from, valid_to, kind)")
def upload_permits(request: Request, area: Name, _: Writer,
                   file: Annotated[UploadFile, File(description="CSV or GeoJSON.")],
                   date_format: Annotated[str | None, Form(max_length=50, pattern=NO_NUL,
                                                           description="Format of the dates when not ISO 8601, in "
                                                           "strptime codes, e.g. %d/%m/%Y.")] = None) -> dict:

    with upload_path(file) as path, tx(request) as s:
        return {"imported": import_permits(s, path, inventory.get_area(s, area), date_format or None)}


def _get_permit(s, area_id: int, permit_id: int) -> tuple[Permit, str]:
    row = s.execute(select(Permit, Parcel.external_id).join(Parcel, Parcel.id == Permit.parcel_id)
                    .where(Permit.id == permit_id, Parcel.area_id == area_id)).first()
    if row is None:
        raise NotFound(f"no permit with id {permit_id} in this area", field="id")
    return row[0], row[1]


@router.get("/areas/{area}/permits/{permit_id}", tags=["permits"], summary="Get a permit by its id")
def get_permit(request: Request, area: Name, permit_id: BigId, _: Reader) -> dict:
    with tx(request) as s:
        return _permit(*_get_permit(s, inventory.get_area(s, area).id, permit_id))


@router.delete("/areas/{area}/permits/{permit_id}", tags=["permits"], status_code=204, summary="Delete a permit")
def delete_permit(request: Request, area: Name, permit_id: BigId, _: Writer) -> Response:
    with tx(request) as s:
        s.delete(_get_permit(s, inventory.get_area(s, area).id, permit_id)[0])
    return Response(status_code=204)
