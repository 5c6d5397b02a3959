"""Acquisition for an area: search its providers (with failover) and record new scenes; fetch,
verify and prepare one scene, recording its outcome. These are the functions the pipeline,
the scheduler and the ``monitor scenes`` command call.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import shapely
from geoalchemy2.shape import from_shape, to_shape
from sqlalchemy import Engine, and_, func, or_, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from monitor import builtins
from monitor.db.engine import transaction
from monitor.db.queries import requeue_scenes, row
from monitor.db.tables import Area, Model, Scene
from monitor.domain import ACQUIRED_STATUSES, FailureKind, ModelKind, ModelMeta, SceneStatus
from monitor.errors import MonitorError, ProductOffline, ProviderError
from monitor.geo import as_multipolygon
from monitor.imagery.base import DEFAULT_BANDS, AreaInfo, Candidate, band_sort_key, get_provider, safe_name
from monitor.imagery.grid import Grid, area_grid
from monitor.imagery.prepare import check_size, clear_path_for, name_bands, prepare
from monitor.metrics import Metrics, default_metrics
from monitor.settings import Settings

log = logging.getLogger(__name__)
UTC = dt.timezone.utc
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)


def _utc(value: dt.datetime | dt.date | None, end_of_day: bool = False) -> dt.datetime | None:
    if value is None:
        return None
    if not isinstance(value, dt.datetime):
        t = dt.time(23, 59, 59) if end_of_day else dt.time(0, 0, 0)
        return dt.datetime.combine(value, t, tzinfo=UTC)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def search_window(session: Session, area: Area, settings: Settings, since: dt.date | dt.datetime | None = None,
                  until: dt.date | dt.datetime | None = None) -> tuple[dt.datetime, dt.datetime]:
    """[since, until] in UTC; a date ``until`` means the end of that day. Without ``since``: a day
    before the newest scene already found, or ``MONITOR_SEARCH_LOOKBACK_DAYS`` for a new area
    (drop folders are searched without this lower bound)."""
    until_ = _utc(until, end_of_day=True) or dt.datetime.now(UTC).replace(microsecond=0)
    since_ = _utc(since)
    if since_ is None:
        newest = session.scalar(select(func.max(Scene.acquired_at)).where(Scene.area_id == area.id))
        lookback = dt.timedelta(days=settings.search_lookback_days)
        since_ = (newest - dt.timedelta(days=1)) if newest else until_ - lookback
    return since_, until_


def area_info(area: Area, provider: str) -> AreaInfo:
    """What the provider ``provider`` needs to know of an area."""
    return AreaInfo(area.id, area.name, to_shape(area.footprint), area.max_cloud, (area.sources or {}).get(provider))


def model_bands(session: Session, area: Area, settings: Settings | None = None) -> list[str]:
    """The union of the ``bands`` of the models that will read the area's scenes (model.json), in
    Sentinel-2 order: the area's own, and with ``settings`` the settings' models of the kinds the area
    names none of (``MONITOR_*_MODEL``, ``MONITOR_DEFAULT_CHANGE_MODEL``); B02, B03, B04, B08 when there
    is none."""
    ids = [i for i in (area.segmenter_model_id, area.classifier_model_id, area.change_model_id) if i]
    bands: set[str] = set()
    for meta in session.scalars(select(Model.meta).where(Model.id.in_(ids))) if ids else []:
        bands.update((meta or {}).get("bands") or [])
    if settings is not None:
        fallback: dict[str, list[str | Path | None]] = {
            ModelKind.SEGMENTER: [settings.segmenter_model], ModelKind.CLASSIFIER: [settings.classifier_model],
            ModelKind.CHANGE: [settings.change_model, settings.default_change_model]}
        for kind, refs in fallback.items():
            if getattr(area, f"{kind}_model_id") is None:
                for ref in (r for r in refs if r):
                    try:
                        bands.update(ModelMeta.read(builtins.resolve(ref)).bands)
                    except MonitorError:  # a bad setting is reported when the pipeline loads the model
                        pass
                    break
    return sorted(bands, key=band_sort_key) or list(DEFAULT_BANDS)


def grid_for(area: Area, settings: Settings) -> Grid:
    """The pixel grid every scene of the area is prepared onto."""
    return area_grid(to_shape(area.footprint), area.utm_epsg, area.resolution_m or settings.resolution_m,
                     settings.crop_margin_m)


def scene_path(settings: Settings, area_id: int, acquired_at: dt.datetime, provider: str, product_id: str) -> Path:
    """Where the prepared COG of a scene lives (absolute)."""
    name = f"{acquired_at.astimezone(UTC):%Y%m%d}_{provider}_{safe_name(product_id)}.tif"
    return (Path(settings.data_dir) / "scenes" / str(area_id) / name).resolve()


def _footprint(geom):
    if geom is None:
        return None
    geom = as_multipolygon(shapely.make_valid(geom)) if not geom.is_valid else as_multipolygon(geom)
    return None if geom.is_empty else from_shape(geom, srid=4326)


def _record(session: Session, area: Area, provider: str, candidates: list[Candidate]) -> list[Scene]:
    rows, seen = [], set()
    for c in candidates:
        if c.product_id in seen:
            continue
        seen.add(c.product_id)
        rows.append({"area_id": area.id, "provider": provider, "product_id": c.product_id,
                     "acquired_at": _utc(c.acquired_at), "footprint": _footprint(c.footprint),
                     "remote": {**c.remote, "scene_cloud_cover": c.cloud_cover}, "status": SceneStatus.FOUND})
    if not rows:
        return []
    stmt = (insert(Scene).on_conflict_do_nothing(constraint="uq_scenes_area_provider_product")
            .returning(Scene))
    new = list(session.scalars(stmt, rows))
    return sorted(new, key=lambda s: (s.acquired_at, s.id))


def search_scenes(session: Session, area: Area, settings: Settings, metrics: Metrics | None = None,
                  since=None, until=None) -> list[Scene]:
    """Search the area's providers in order (the next one when one fails) and record new scenes
    (status ``found``); returns those. Raises the last ``ProviderError`` when every provider failed."""
    metrics = metrics or default_metrics()
    since_, until_ = search_window(session, area, settings, since, until)
    providers = list(area.providers or [])
    error: ProviderError | None = None
    for i, name in enumerate(providers):
        info = area_info(area, name)
        try:
            provider = get_provider(name, settings, info, metrics)
            lower = since_ if since is not None or provider.windowed else EPOCH
            candidates = provider.search(info, lower, until_)
        except Exception as e:  # one provider's failure, whatever it is, must not stop the others
            if not isinstance(e, MonitorError):
                log.exception("area %s: provider %s failed", area.name, name)
            if not isinstance(e, ProviderError):
                e = ProviderError(str(e) if isinstance(e, MonitorError) else f"{type(e).__name__}: {e}", provider=name)
            metrics.provider_errors.labels(name, "search").inc()
            log.warning("area %s: search failed: %s", area.name, e)
            error = e
            if i + 1 < len(providers):
                metrics.provider_failovers.labels(area.name, name, providers[i + 1]).inc()
                log.warning("area %s: falling over from %s to %s", area.name, name, providers[i + 1])
            continue
        new = _record(session, area, name, candidates)
        metrics.scenes_found.labels(area.name, name).inc(len(new))
        log.info("area %s: %s found %d product(s), %d new", area.name, name, len(candidates), len(new))
        return new
    raise error or ProviderError(f"area {area.name!r} has no imagery provider")


def fail_scene(scene: Scene, reason: str, kind: FailureKind, settings: Settings) -> None:
    """Record a failure of the scene's fetch or processing: one more failure in a row; a transient one
    is tried again after ``scene_retry_s`` doubled with each failure in a row (at most
    ``scene_retry_max_s``), until ``scene_retry_attempts`` failures in a row fail it for good, as a
    permanent one is at once. ``reason`` says which, and when the next try is."""
    scene.status, scene.attempts = SceneStatus.FAILED, (scene.attempts or 0) + 1
    scene.failure_kind, scene.next_attempt_at = str(kind), None
    if kind == FailureKind.TRANSIENT and scene.attempts >= settings.scene_retry_attempts:
        scene.failure_kind = str(FailureKind.PERMANENT)
        reason = f"failed {scene.attempts} times in a row, given up (`monitor scenes retry` re-queues it): {reason}"
    elif kind == FailureKind.TRANSIENT:
        wait = min(settings.scene_retry_s * 2 ** (scene.attempts - 1), settings.scene_retry_max_s)
        scene.next_attempt_at = dt.datetime.now(UTC) + dt.timedelta(seconds=wait)
        reason = (f"{reason} (transient, failure {scene.attempts} of at most {settings.scene_retry_attempts}; "
                  f"next try after {scene.next_attempt_at:%Y-%m-%d %H:%M:%S} UTC)")
    scene.status_reason = reason[:4000]


def requeue_due(session: Session, area: Area) -> list[Scene]:
    """Put back in the queue the area's scenes whose transient failure is due for another try."""
    return requeue_scenes(session, Scene.area_id == area.id, Scene.status == SceneStatus.FAILED,
                          Scene.failure_kind == FailureKind.TRANSIENT, Scene.next_attempt_at <= func.now(),
                          reset_attempts=False)


def waiting_scenes(session: Session, area: Area) -> tuple[int, dt.datetime | None]:
    """How many of the area's scenes wait for a later try (a transient failure, an offline product),
    and when the first of them is due."""
    n, first = session.execute(select(func.count(), func.min(Scene.next_attempt_at)).where(
        Scene.area_id == area.id, Scene.status.in_([SceneStatus.FAILED, SceneStatus.OFFLINE]),
        Scene.next_attempt_at > func.now())).one()
    return int(n), first


def pending_scenes(session: Session, area: Area) -> list[Scene]:
    """Scenes to fetch: found, or offline and due again; oldest acquisition first."""
    due = or_(Scene.next_attempt_at.is_(None), Scene.next_attempt_at <= func.now())
    return list(session.scalars(
        select(Scene).where(Scene.area_id == area.id,
                            or_(Scene.status == SceneStatus.FOUND, and_(Scene.status == SceneStatus.OFFLINE, due)))
        .order_by(Scene.acquired_at, Scene.id)))


@dataclass
class _Outcome:
    status: str
    reason: str | None = None
    metric_reason: str | None = None
    values: dict = field(default_factory=dict)
    kind: FailureKind = FailureKind.PERMANENT


def _acquire(settings: Settings, metrics: Metrics, area: dict, scene: dict, progress: bool) -> _Outcome:
    provider_name, product_id = scene["provider"], scene["product_id"]
    # per area: two areas may fetch the same product at once
    workdir = Path(settings.data_dir) / "downloads" / provider_name / str(area["id"]) / safe_name(product_id)
    out = scene_path(settings, area["id"], scene["acquired_at"], provider_name, product_id)
    try:
        provider = get_provider(provider_name, settings, area["info"], metrics)
        product = provider.fetch(product_id, scene["remote"], area["bands"], workdir, progress)
        metrics.scenes_downloaded.labels(area["name"], provider_name).inc()
        product = name_bands(product, area["band_order"], area["bands"])
        check_size(product, area["grid"], max_pixels=settings.max_scene_pixels,
                   max_ratio=settings.max_scene_pixel_ratio)
        prepared = prepare(product, area["grid"], area["info"].footprint, out)
        remote = {**scene["remote"], "files": product.files, "bands": prepared.bands}
        common = {"cloud_cover": prepared.cloud_cover, "remote": remote, "next_attempt_at": None,
                  "clear_geom": from_shape(prepared.clear_geom, srid=4326) if prepared.clear_geom else None}
        skipped = None
        if prepared.unusable:
            skipped = (f"unusable: {prepared.unusable}", "unusable")
        elif prepared.cloud_cover > area["max_cloud"]:
            skipped = (f"cloud/nodata {prepared.cloud_cover:.1f}% over the area exceeds the maximum "
                       f"{area['max_cloud']:g}%", "cloud")
        if skipped:
            out.unlink(missing_ok=True)
            clear_path_for(out).unlink(missing_ok=True)
            return _Outcome(SceneStatus.SKIPPED, skipped[0], skipped[1], common)
        return _Outcome(SceneStatus.PREPARED, None, None, {**common, "file_path": str(prepared.path),
                                                 "checksum": prepared.checksum, "size_bytes": prepared.size_bytes,
                                                 "pixel_m": area["grid"].resolution})
    except ProductOffline as e:
        when = dt.datetime.now(UTC) + dt.timedelta(seconds=settings.offline_retry_s)
        return _Outcome(SceneStatus.OFFLINE, f"{e} (next try after {when:%Y-%m-%d %H:%M} UTC)", None,
                        {"next_attempt_at": when})
    except MonitorError as e:
        return _Outcome(SceneStatus.FAILED, str(e), e.label, kind=FailureKind.of(e))
    except Exception as e:  # a full disk, a bug or a library's error must not stop the other scenes
        kind = FailureKind.of(e)
        if kind == FailureKind.PERMANENT:
            log.exception("scene %s of area %s: unexpected error", product_id, area["name"])
        return _Outcome(SceneStatus.FAILED, f"{'' if kind == FailureKind.TRANSIENT else 'unexpected error: '}"
                        f"{type(e).__name__}: {e}", "error", kind=kind)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def fetch_scene(engine: Engine, scene_id: int, settings: Settings, metrics: Metrics | None = None,
                progress: bool = False) -> Scene:
    """Download, verify and prepare one scene, committing its outcome: ``prepared``, ``skipped``
    (too cloudy over the area), ``offline`` (retrieval requested; due again after
    ``next_attempt_at``) or ``failed`` with the reason (``fail_scene``: a transient failure is tried
    again later). Never raises for a failure of the scene."""
    metrics = metrics or default_metrics()
    with transaction(engine) as session:
        scene = row(session, Scene, scene_id, with_for_update=True)
        if scene.status in ACQUIRED_STATUSES:
            return scene
        area_row = row(session, Area, scene.area_id)
        area = {"id": area_row.id, "name": area_row.name, "max_cloud": area_row.max_cloud,
                "band_order": list(area_row.band_order or []),
                "info": area_info(area_row, scene.provider), "bands": model_bands(session, area_row, settings),
                "grid": grid_for(area_row, settings)}
        snapshot = {"provider": scene.provider, "product_id": scene.product_id,
                    "acquired_at": scene.acquired_at, "remote": dict(scene.remote or {})}
    outcome = _acquire(settings, metrics, area, snapshot, progress)
    with transaction(engine) as session:
        scene = row(session, Scene, scene_id, with_for_update=True)
        scene.status, scene.status_reason, scene.failure_kind = outcome.status, outcome.reason, None
        for key, value in outcome.values.items():
            setattr(scene, key, value)
        if outcome.status in ACQUIRED_STATUSES:
            scene.attempts = 0
        if outcome.status == SceneStatus.FAILED:
            fail_scene(scene, outcome.reason or "failed", outcome.kind, settings)
            metrics.scenes_failed.labels(area["name"], scene.provider, outcome.metric_reason).inc()
            log.warning("area %s: scene %s failed: %s", area["name"], scene.product_id, outcome.reason)
        elif outcome.status == SceneStatus.SKIPPED:
            metrics.scenes_skipped.labels(area["name"], scene.provider, outcome.metric_reason).inc()
    return scene
