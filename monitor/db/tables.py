"""The data model (SQLAlchemy 2 + GeoAlchemy2).

Geometries are stored in EPSG:4326; areas in m2 are measured in the area's UTM
zone (``areas.utm_epsg``). Every timestamp has a time zone.
"""

from __future__ import annotations

import datetime as dt
import uuid
from enum import StrEnum

from geoalchemy2 import Geometry
from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    Interval,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from monitor.domain import (
    AREA_PROVIDERS,
    MAX_CADENCE,
    MIN_CADENCE,
    AlertEvent,
    AlertStatus,
    ChangeSource,
    Confidence,
    DeliveryStatus,
    DetectionKind,
    FailureKind,
    ModelKind,
    Provider,
    RunStatus,
    SceneStatus,
    Verdict,
    values,
)

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

SRID = 4326


class Base(DeclarativeBase):
    """Base of the mapped classes; constraints are named by ``NAMING``."""

    metadata = MetaData(naming_convention=NAMING)


def one_of(column: str, enum: type[StrEnum]) -> CheckConstraint:
    """CHECK that ``column`` holds a value of ``enum`` (named ``ck_<table>_<column>``)."""
    allowed = ", ".join(f"'{v}'" for v in values(enum))
    return CheckConstraint(f"{column} IN ({allowed})", name=column)


def _seconds(delta) -> int:
    return int(delta.total_seconds())


def _geom(kind: str = "MULTIPOLYGON", nullable: bool = False):
    # spatial_index=True makes GeoAlchemy2 create a GiST index named idx_<table>_<column>.
    return mapped_column(Geometry(kind, srid=SRID, spatial_index=True), nullable=nullable)


def _created():
    return mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)


def _updated():
    return mapped_column(DateTime(timezone=True), server_default=func.now(), onupdate=func.now(),
                         nullable=False)


class Model(Base):
    """A registered model directory (``.keras`` + ``model.json``)."""

    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("kind", "version", name="uq_models_kind_version"), one_of("kind", ModelKind))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))  # segmenter | classifier | change
    version: Mapped[str] = mapped_column(String(128))
    path: Mapped[str] = mapped_column(Text)
    meta: Mapped[dict] = mapped_column("metadata", JSONB, server_default=text("'{}'::jsonb"))
    created_at: Mapped[dt.datetime] = _created()


class Area(Base):
    """A watched area."""

    __tablename__ = "areas"
    __table_args__ = (
        CheckConstraint("providers <@ ARRAY[" + ", ".join(f"'{p}'" for p in values(AREA_PROVIDERS)) + "]::text[]",
                        name="providers"),
        CheckConstraint(f"cadence BETWEEN interval '{_seconds(MIN_CADENCE)} seconds' "
                        f"AND interval '{_seconds(MAX_CADENCE)} seconds'", name="cadence"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    footprint = _geom()
    utm_epsg: Mapped[int] = mapped_column(Integer)
    cadence: Mapped[dt.timedelta] = mapped_column(Interval)
    providers: Mapped[list[str]] = mapped_column(ARRAY(Text))
    sources: Mapped[dict] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    max_cloud: Mapped[float] = mapped_column(Float)
    resolution_m: Mapped[float | None] = mapped_column(Float)  # NULL: MONITOR_RESOLUTION_M
    # Sentinel-2 names of the bands of drop-folder files without band descriptions, in file order
    band_order: Mapped[list[str] | None] = mapped_column(ARRAY(Text))
    # run models whose training resolution differs from the scenes' by more than 1.5x
    allow_resolution_mismatch: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    # new settlement growth over a parcel is judged like new construction (changes of source 'settlement')
    settlement_alerts: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    active: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    segmenter_model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id", ondelete="SET NULL"))
    classifier_model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id", ondelete="SET NULL"))
    change_model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id", ondelete="SET NULL"))
    created_at: Mapped[dt.datetime] = _created()
    updated_at: Mapped[dt.datetime] = _updated()


class Parcel(Base):
    """A cadastral parcel of an area; ``external_id`` is the cadastre's id."""

    __tablename__ = "parcels"
    __table_args__ = (UniqueConstraint("area_id", "external_id", name="uq_parcels_area_external"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    area_id: Mapped[int] = mapped_column(ForeignKey("areas.id", ondelete="CASCADE"), index=True)
    external_id: Mapped[str] = mapped_column(Text)
    geom = _geom()
    area_m2: Mapped[float] = mapped_column(Float)
    attributes: Mapped[dict] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    # the import that wrote this version (NULL: created otherwise, or before imports were recorded)
    import_id: Mapped[int | None] = mapped_column(ForeignKey("parcel_imports.id", ondelete="SET NULL"))
    created_at: Mapped[dt.datetime] = _created()
    updated_at: Mapped[dt.datetime] = _updated()


class ParcelImport(Base):
    """One parcel import of an area: its file, its counts, and when it was undone (if it was)."""

    __tablename__ = "parcel_imports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    area_id: Mapped[int] = mapped_column(ForeignKey("areas.id", ondelete="CASCADE"), index=True)
    file: Mapped[str] = mapped_column(Text)
    new: Mapped[int] = mapped_column(Integer)
    changed: Mapped[int] = mapped_column(Integer)
    unchanged: Mapped[int] = mapped_column(Integer)
    imported_at: Mapped[dt.datetime] = _created()
    undone_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class ParcelVersion(Base):
    """An earlier version of a parcel, kept when an import changed it: its geometry and attributes
    as they were from ``valid_from`` to ``valid_to``, the import that replaced it (``import_id``)
    and the one that had written it (``written_by``, NULL when none did)."""

    __tablename__ = "parcel_versions"
    __table_args__ = (Index("ix_parcel_versions_area_external", "area_id", "external_id"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    parcel_id: Mapped[int] = mapped_column(ForeignKey("parcels.id", ondelete="CASCADE"), index=True)
    area_id: Mapped[int] = mapped_column(ForeignKey("areas.id", ondelete="CASCADE"))
    external_id: Mapped[str] = mapped_column(Text)
    geom = _geom()
    area_m2: Mapped[float] = mapped_column(Float)
    attributes: Mapped[dict] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    valid_from: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    valid_to: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    import_id: Mapped[int] = mapped_column(ForeignKey("parcel_imports.id", ondelete="CASCADE"), index=True)
    written_by: Mapped[int | None] = mapped_column(ForeignKey("parcel_imports.id", ondelete="SET NULL"))


class Permit(Base):
    """A building permit: covers construction first seen within [valid_from, valid_to]."""

    __tablename__ = "permits"
    __table_args__ = (UniqueConstraint("parcel_id", "permit_number", name="uq_permits_parcel_number"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    parcel_id: Mapped[int] = mapped_column(ForeignKey("parcels.id", ondelete="CASCADE"), index=True)
    permit_number: Mapped[str] = mapped_column(Text)
    kind: Mapped[str | None] = mapped_column(Text)
    valid_from: Mapped[dt.date] = mapped_column(Date)
    valid_to: Mapped[dt.date | None] = mapped_column(Date)  # NULL: open-ended
    created_at: Mapped[dt.datetime] = _created()


class Scene(Base):
    """One acquisition of an area: found by a provider, fetched, prepared (or skipped/failed).

    ``clear_geom`` is the part of the area with valid, cloud-free pixels; the diff
    only trusts construction inside the clear part of both dates.
    """

    __tablename__ = "scenes"
    __table_args__ = (
        UniqueConstraint("area_id", "provider", "product_id", name="uq_scenes_area_provider_product"),
        Index("ix_scenes_area_acquired", "area_id", "acquired_at"),
        one_of("provider", Provider),
        one_of("status", SceneStatus),
        one_of("failure_kind", FailureKind),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    area_id: Mapped[int] = mapped_column(ForeignKey("areas.id", ondelete="CASCADE"))
    provider: Mapped[str] = mapped_column(String(64))
    product_id: Mapped[str] = mapped_column(Text)
    acquired_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    cloud_cover: Mapped[float | None] = mapped_column(Float)  # percent over the area
    footprint = _geom(nullable=True)
    clear_geom = _geom(nullable=True)
    remote: Mapped[dict] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))  # assets, hrefs, sizes
    file_path: Mapped[str | None] = mapped_column(Text)  # the prepared COG
    pixel_m: Mapped[float | None] = mapped_column(Float)  # the prepared COG's pixel side, metres
    checksum: Mapped[str | None] = mapped_column(Text)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    # found -> prepared -> processed | suspect; or skipped | failed | offline (monitor.domain.SceneStatus)
    status: Mapped[str] = mapped_column(String(32), server_default=text("'found'"), index=True)
    status_reason: Mapped[str | None] = mapped_column(Text)
    # failed tries in a row of the scene's current step (fetch, then process); 0 once it succeeds
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    failure_kind: Mapped[str | None] = mapped_column(String(16))  # transient | permanent, of a failed scene
    created_at: Mapped[dt.datetime] = _created()
    updated_at: Mapped[dt.datetime] = _updated()


class Run(Base):
    """One pipeline pass over an area (and a scene), with per-step status and timings."""

    __tablename__ = "runs"
    __table_args__ = (one_of("status", RunStatus),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    area_id: Mapped[int] = mapped_column(ForeignKey("areas.id", ondelete="CASCADE"), index=True)
    scene_id: Mapped[int | None] = mapped_column(ForeignKey("scenes.id", ondelete="SET NULL"), index=True)
    status: Mapped[str] = mapped_column(String(32), server_default=text("'running'"))
    steps: Mapped[dict] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    model_versions: Mapped[dict] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[dt.datetime] = _created()
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class Detection(Base):
    """A detected built-up polygon of an area on a date (``kind`` built) or a change polygon
    from a change model (``kind`` change)."""

    __tablename__ = "detections"
    __table_args__ = (Index("ix_detections_area_date", "area_id", "observed_on"), one_of("kind", DetectionKind))

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    area_id: Mapped[int] = mapped_column(ForeignKey("areas.id", ondelete="CASCADE"))
    scene_id: Mapped[int | None] = mapped_column(ForeignKey("scenes.id", ondelete="CASCADE"), index=True)
    observed_on: Mapped[dt.date] = mapped_column(Date)
    kind: Mapped[str] = mapped_column(String(16), server_default=text("'built'"))
    geom = _geom()
    area_m2: Mapped[float] = mapped_column(Float)
    mean_prob: Mapped[float | None] = mapped_column(Float)
    model_version: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = _created()


class Indicator(Base):
    """Per area and date: built-up and informal-settlement km2."""

    __tablename__ = "indicators"
    __table_args__ = (UniqueConstraint("area_id", "observed_on", name="uq_indicators_area_date"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    area_id: Mapped[int] = mapped_column(ForeignKey("areas.id", ondelete="CASCADE"))
    scene_id: Mapped[int | None] = mapped_column(ForeignKey("scenes.id", ondelete="SET NULL"))
    observed_on: Mapped[dt.date] = mapped_column(Date)
    built_km2: Mapped[float | None] = mapped_column(Float)
    settlement_km2: Mapped[float | None] = mapped_column(Float)
    # the part of settlement_km2 carried over from earlier dates where this one is cloudy
    settlement_carried_km2: Mapped[float | None] = mapped_column(Float)
    clear_fraction: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[dt.datetime] = _created()


class Settlement(Base):
    """An informal settlement of an area on a date: the classifier's polygon on the clear part of
    the date's scene, joined with the last clear observation's polygons where the date is cloudy
    (``carried_m2`` of ``area_m2`` comes from those)."""

    __tablename__ = "settlements"
    __table_args__ = (Index("ix_settlements_area_date", "area_id", "observed_on"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    area_id: Mapped[int] = mapped_column(ForeignKey("areas.id", ondelete="CASCADE"))
    scene_id: Mapped[int | None] = mapped_column(ForeignKey("scenes.id", ondelete="CASCADE"), index=True)
    observed_on: Mapped[dt.date] = mapped_column(Date)
    geom = _geom()
    area_m2: Mapped[float] = mapped_column(Float)
    carried_m2: Mapped[float] = mapped_column(Float, server_default=text("0"))
    probability: Mapped[float | None] = mapped_column(Float)
    model_version: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = _created()


class Change(Base):
    """New construction of an area between ``previous_on`` and ``observed_on``."""

    __tablename__ = "changes"
    __table_args__ = (Index("ix_changes_area_date", "area_id", "observed_on"), one_of("source", ChangeSource))

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    area_id: Mapped[int] = mapped_column(ForeignKey("areas.id", ondelete="CASCADE"))
    scene_id: Mapped[int | None] = mapped_column(ForeignKey("scenes.id", ondelete="CASCADE"), index=True)
    observed_on: Mapped[dt.date] = mapped_column(Date)
    previous_on: Mapped[dt.date | None] = mapped_column(Date)
    geom = _geom()
    area_m2: Mapped[float] = mapped_column(Float)
    source: Mapped[str] = mapped_column(String(16), server_default=text("'diff'"))  # diff | change_model | settlement
    model_version: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = _created()


class Alert(Base):
    """Unpermitted new construction on a parcel. At most one open alert per parcel."""

    __tablename__ = "alerts"
    __table_args__ = (
        Index("uq_alerts_open_parcel", "parcel_id", unique=True,
              postgresql_where=text("status IN ('new', 'acknowledged', 'confirmed')")),
        Index("ix_alerts_area_status", "area_id", "status"),
        one_of("status", AlertStatus),
        one_of("confidence", Confidence),
        one_of("source", ChangeSource),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    area_id: Mapped[int] = mapped_column(ForeignKey("areas.id", ondelete="CASCADE"))
    parcel_id: Mapped[int] = mapped_column(ForeignKey("parcels.id", ondelete="CASCADE"), index=True)
    geom = _geom()  # the new construction on the parcel
    first_seen: Mapped[dt.date] = mapped_column(Date)
    last_seen: Mapped[dt.date] = mapped_column(Date)
    new_area_m2: Mapped[float] = mapped_column(Float)
    fraction: Mapped[float] = mapped_column(Float)
    confidence: Mapped[str] = mapped_column(String(16), server_default=text("'probable'"))  # probable|confirmed
    # new | acknowledged | confirmed | dismissed | resolved
    status: Mapped[str] = mapped_column(String(16), server_default=text("'new'"))
    note: Mapped[str | None] = mapped_column(Text)
    reviewed_by: Mapped[str | None] = mapped_column(Text)
    reviewed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    source: Mapped[str] = mapped_column(String(16), server_default=text("'diff'"))
    model_version: Mapped[str | None] = mapped_column(Text)
    # chip paths of earlier versions; no longer written (chips are rendered on request: alerts/evidence.py)
    evidence: Mapped[dict] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    created_at: Mapped[dt.datetime] = _created()
    updated_at: Mapped[dt.datetime] = _updated()


class ParcelChange(Base):
    """A change as it falls on one parcel, and how it was judged."""

    __tablename__ = "parcel_changes"
    __table_args__ = (UniqueConstraint("change_id", "parcel_id", name="uq_parcel_changes_change_parcel"),
                      Index("ix_parcel_changes_unconfirmed", "parcel_id",
                            postgresql_where=text("verdict = 'unconfirmed'")),
                      one_of("verdict", Verdict))

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    change_id: Mapped[int] = mapped_column(ForeignKey("changes.id", ondelete="CASCADE"))
    parcel_id: Mapped[int] = mapped_column(ForeignKey("parcels.id", ondelete="CASCADE"), index=True)
    observed_on: Mapped[dt.date] = mapped_column(Date)
    area_m2: Mapped[float] = mapped_column(Float)
    fraction: Mapped[float] = mapped_column(Float)
    permit_id: Mapped[int | None] = mapped_column(ForeignKey("permits.id", ondelete="SET NULL"))
    alert_id: Mapped[int | None] = mapped_column(ForeignKey("alerts.id", ondelete="SET NULL"))
    verdict: Mapped[str] = mapped_column(String(16))  # permitted | alert | below_threshold | unconfirmed | vanished


class Subscription(Base):
    """A webhook subscription (``area_id`` NULL: every area)."""

    __tablename__ = "subscriptions"
    __table_args__ = (one_of("min_confidence", Confidence),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    area_id: Mapped[int | None] = mapped_column(ForeignKey("areas.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(Text)
    secret: Mapped[str] = mapped_column(Text)
    min_confidence: Mapped[str] = mapped_column(String(16), server_default=text("'confirmed'"))
    filters: Mapped[dict] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    active: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    created_at: Mapped[dt.datetime] = _created()


class Delivery(Base):
    """A webhook delivery of one alert event to one subscription; ``attempts`` keeps every try."""

    __tablename__ = "deliveries"
    __table_args__ = (Index("ix_deliveries_pending", "status", "next_attempt_at"), one_of("status", DeliveryStatus),
                      one_of("event", AlertEvent))

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    delivery_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), unique=True,
                                                   server_default=text("gen_random_uuid()"))
    subscription_id: Mapped[int] = mapped_column(ForeignKey("subscriptions.id", ondelete="CASCADE"), index=True)
    alert_id: Mapped[int] = mapped_column(ForeignKey("alerts.id", ondelete="CASCADE"), index=True)
    event: Mapped[str] = mapped_column(String(32))  # alert.created | alert.escalated | ...
    payload: Mapped[dict] = mapped_column(JSONB)
    status: Mapped[str] = mapped_column(String(16), server_default=text("'pending'"))  # pending|succeeded|failed
    attempts: Mapped[list] = mapped_column(JSONB, server_default=text("'[]'::jsonb"))
    attempt_count: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    next_attempt_at: Mapped[dt.datetime] = _created()
    created_at: Mapped[dt.datetime] = _created()
    updated_at: Mapped[dt.datetime] = _updated()


class ApiToken(Base):
    """A bearer token of the HTTP API, stored as a SHA-256 hash."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[str]] = mapped_column(ARRAY(Text))
    created_at: Mapped[dt.datetime] = _created()
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


metadata = Base.metadata
