"""One pipeline pass over an area: search -> fetch -> infer -> vectorize -> diff -> judge -> notify.

Every step commits its own result (files are written to a temporary name and renamed), and
every step's work is replaced rather than appended when it runs again, so a pass killed at any
point is resumed by the next one with nothing lost and nothing duplicated. One failing scene
never stops the others. Steps are plain functions of (ids, settings); the only state kept
between passes is the loaded models (``monitor.ml.modelstore`` caches them per path).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, or_, select, update
from sqlalchemy.orm import Session

from monitor.db.engine import transaction
from monitor.db.tables import Area, Model, Run, Scene
from monitor.errors import ConfigError, MonitorError
from monitor.metrics import Metrics, default_metrics
from monitor.settings import Settings

log = logging.getLogger(__name__)
KINDS = ("segmenter", "classifier", "change")


class Stopped(Exception):
    """The pass was asked to stop (SIGTERM) between two steps."""


class Recorder:
    """Records a run row: each step's status and duration, committed as it happens."""

    def __init__(self, engine: Engine, area: Area, metrics: Metrics, scene_id: int | None = None,
                 model_versions: dict | None = None) -> None:
        self.engine, self.area_name, self.metrics = engine, area.name, metrics
        self.steps: dict[str, dict] = {}
        with transaction(engine) as s:
            run = Run(area_id=area.id, scene_id=scene_id, model_versions=model_versions or {})
            s.add(run)
            s.flush()
            self.id = run.id

    def _save(self, **values) -> None:
        with transaction(self.engine) as s:
            s.execute(update(Run).where(Run.id == self.id).values(steps=dict(self.steps), **values))

    @contextmanager
    def step(self, name: str):
        started = time.perf_counter()
        self.steps[name] = {"status": "running", "started_at": dt.datetime.now(dt.timezone.utc).isoformat()}
        self._save()
        try:
            yield
        except BaseException as e:
            seconds = time.perf_counter() - started
            self.steps[name].update(status="failed", seconds=round(seconds, 3), error=str(e))
            self.metrics.run_errors.labels(self.area_name, name).inc()
            self._save()
            raise
        seconds = time.perf_counter() - started
        self.metrics.step_duration.labels(name).observe(seconds)
        self.steps[name].update(status="succeeded", seconds=round(seconds, 3))
        self._save()

    def finish(self, error: str | None = None) -> None:
        status = "failed" if error else "succeeded"
        self._save(status=status, error=error, finished_at=dt.datetime.now(dt.timezone.utc))
        self.metrics.runs.labels(self.area_name, status).inc()


def area_model_dirs(session: Session, area: Area, settings: Settings) -> dict[str, Path | None]:
    """The model directory of each kind for an area: its own, else the settings' default."""
    out: dict[str, Path | None] = {}
    for kind in KINDS:
        model_id = getattr(area, f"{kind}_model_id")
        path = session.scalar(select(Model.path).where(Model.id == model_id)) if model_id else None
        out[kind] = Path(path) if path else getattr(settings, f"{kind}_model")
    return out


def _load(model_dir: Path | None, settings: Settings):
    if model_dir is None:
        return None
    from monitor.ml.modelstore import load_model

    return load_model(model_dir, precision=settings.inference_precision)


def _previous_processed(session: Session, scene: Scene) -> Scene | None:
    return session.scalar(select(Scene).where(
        Scene.area_id == scene.area_id, Scene.status == "processed", Scene.acquired_at < scene.acquired_at,
        Scene.file_path.is_not(None)).order_by(Scene.acquired_at.desc()).limit(1))


def _read_probability(path: Path, clear_path: Path | None):
    import numpy as np
    import rasterio

    with rasterio.open(path) as src:
        prob = src.read(1, masked=True)
        transform, crs = src.transform, src.crs
    valid = ~np.ma.getmaskarray(prob) & np.isfinite(prob.filled(np.nan))
    if clear_path is not None and clear_path.exists():
        with rasterio.open(clear_path) as src:
            valid &= src.read(1) > 0
    return np.where(valid, prob.filled(0), 0).astype("float32"), valid, transform, crs


def _settlement_km2(classifier, scene_path: Path, clear_path: Path | None) -> float:
    """Informal-settlement km2: tiles the classifier calls settlement, counting only their clear part."""
    import numpy as np
    import rasterio
    from rasterio.enums import Resampling

    from monitor.ml.inference import classify_tiles

    probs, tile_transform = classify_tiles(classifier, scene_path)
    tile_m2 = abs(tile_transform.a * tile_transform.e)
    clear_frac = np.ones_like(probs, dtype="float64")
    if clear_path is not None and clear_path.exists():
        with rasterio.open(clear_path) as src:
            clear_frac = src.read(1, out_shape=probs.shape, resampling=Resampling.average).astype("float64")
    return float(((probs >= classifier.threshold) * clear_frac).sum() * tile_m2 / 1e6)


def process_scene(engine: Engine, scene_id: int, settings: Settings, metrics: Metrics,
                  stop: threading.Event | None = None) -> dict:
    """infer -> vectorize -> diff -> judge for one prepared scene; returns a summary."""
    from monitor import change, vectorize

    with transaction(engine) as s:
        scene = s.get(Scene, scene_id)
        area = s.get(Area, scene.area_id)
        dirs = area_model_dirs(s, area, settings)
        previous = _previous_processed(s, scene)
    if dirs["segmenter"] is None and dirs["change"] is None:
        raise ConfigError(f"area {area.name!r} has no segmenter or change model: set one with "
                          "`monitor areas configure NAME --segmenter-model DIR` or MONITOR_SEGMENTER_MODEL")
    models = {k: _load(d, settings) for k, d in dirs.items()}
    versions = {k: m.version for k, m in models.items() if m is not None}
    rec = Recorder(engine, area, metrics, scene_id=scene.id, model_versions=versions)
    scene_path = Path(scene.file_path)
    clear_path = scene_path.with_name(scene_path.stem + ".clear.tif")
    out_dir = settings.data_dir / "probability" / str(area.id)
    summary = {"scene": scene.id, "date": scene.acquired_at.date().isoformat(), "alerts": 0}
    try:
        settlement = None
        prob_paths: dict[str, Path] = {}
        with rec.step("infer"):
            from monitor.ml.inference import predict_raster

            for kind in ("segmenter", "change"):
                model = models[kind]
                if model is None or (kind == "change" and previous is None):
                    continue
                target = out_dir / f"{scene.id}_{kind}_{model.version}.tif"
                if not target.exists():
                    # a pass killed during inference leaves its temporary file behind
                    for stale in out_dir.glob(f".{scene.id}_{kind}_*"):
                        stale.unlink(missing_ok=True)
                    before = Path(previous.file_path) if kind == "change" else None
                    t0 = time.perf_counter()
                    predict_raster(model, scene_path, target, before=before, batch=settings.inference_batch,
                                   overlap=settings.inference_overlap, window=settings.inference_window)
                    windows = _windows(model, scene_path, settings)
                    metrics.inference_tiles.labels(kind).inc(windows)
                    metrics.inference_tiles_per_second.labels(kind).set(windows / (time.perf_counter() - t0))
                    log.info("%s: %s inference in %.1fs", area.name, kind, time.perf_counter() - t0)
                prob_paths[kind] = target
            if models["classifier"] is not None:
                settlement = _settlement_km2(models["classifier"], scene_path, clear_path)
        _check(stop)
        with rec.step("vectorize"):
            with transaction(engine) as s:
                area, scene = s.get(Area, area.id), s.get(Scene, scene.id)
                for kind, path in prob_paths.items():
                    prob, valid, transform, crs = _read_probability(path, clear_path)
                    polys = vectorize.polygonize(prob, transform, threshold=models[kind].threshold,
                                                 median_px=settings.median_filter_px,
                                                 min_area_m2=settings.min_region_m2, valid=valid)
                    if kind == "segmenter":
                        summary["detections"] = change.store_detections(
                            s, area, scene, polys, crs.to_epsg(), models[kind].version, metrics=metrics)
                    else:
                        summary["change_polygons"] = change.store_change_polygons(
                            s, area, scene, polys, crs.to_epsg(), models[kind].version, metrics=metrics)
        _check(stop)
        with rec.step("diff"):
            with transaction(engine) as s:
                area, scene = s.get(Area, area.id), s.get(Scene, scene.id)
                if "segmenter" in prob_paths:
                    summary["changes"] = change.diff(s, area, scene, settings, metrics=metrics)
        _check(stop)
        with rec.step("judge"):
            with transaction(engine) as s:
                area, scene = s.get(Area, area.id), s.get(Scene, scene.id)
                # in the same transaction as the verdicts, so evidence can be rendered from this scene
                scene.status = "processed"
                scene.status_reason = None
                scene.next_attempt_at = None
                s.flush()
                events = change.judge(s, area, scene, settings, metrics=metrics)
                change.record_indicators(s, area, scene, settlement_km2=settlement)
            summary["alerts"] = sum(1 for _a, ev in events if ev in ("alert.created", "alert.escalated"))
            summary["settlement_km2"] = settlement
    except BaseException as e:
        rec.finish(error=_reason(e))
        raise
    rec.finish()
    return summary


def _windows(model, scene: Path, settings: Settings) -> int:
    """How many inference windows the tiled engine runs over a scene."""
    import rasterio

    from monitor.ml.inference import count_windows

    with rasterio.open(scene) as src:
        return count_windows(model, src.height, src.width, settings.inference_window, settings.inference_overlap)


def _check(stop: threading.Event | None) -> None:
    if stop is not None and stop.is_set():
        raise Stopped("stop requested")


def _reason(e: BaseException) -> str:
    if isinstance(e, MonitorError):
        return str(e)
    return f"{type(e).__name__}: {e}\n{''.join(traceback.format_exception(e)[-3:])}".strip()


def run_area(engine: Engine, area_id: int, settings: Settings, metrics: Metrics | None = None,
             stop: threading.Event | None = None, progress: bool = False) -> dict:
    """One pass over an area: record new scenes, fetch pending ones, process prepared ones in date
    order, then deliver pending webhooks. Per-scene failures are recorded and the pass goes on."""
    from monitor.imagery.service import fetch_scene, pending_scenes, search_scenes

    metrics = metrics or default_metrics()
    with transaction(engine) as s:
        area = s.get(Area, area_id)
        if area is None:
            raise MonitorError(f"no area with id {area_id}")
    summary: dict = {"area": area.name, "found": 0, "fetched": 0, "skipped": 0, "failed": 0, "processed": 0,
                     "alerts": 0, "errors": []}
    rec = Recorder(engine, area, metrics)
    try:
        with rec.step("search"):
            with transaction(engine) as s:
                found = search_scenes(s, s.get(Area, area_id), settings, metrics)
                summary["found"] = len(found)
        with rec.step("fetch"):
            with transaction(engine) as s:
                pending = [sc.id for sc in pending_scenes(s, s.get(Area, area_id))]
            for scene_id in _progress(pending, progress, f"{area.name}: fetch"):
                _check(stop)
                scene = fetch_scene(engine, scene_id, settings, metrics, progress=False)
                key = {"prepared": "fetched", "skipped": "skipped"}.get(scene.status, "failed")
                summary[key] += 1
                if key == "failed":
                    summary["errors"].append(f"scene {scene.product_id}: {scene.status_reason}")
        with transaction(engine) as s:
            now = dt.datetime.now(dt.timezone.utc)
            todo = list(s.scalars(select(Scene.id).where(
                Scene.area_id == area_id, Scene.status == "prepared",
                or_(Scene.next_attempt_at.is_(None), Scene.next_attempt_at <= now)).order_by(Scene.acquired_at)))
        for scene_id in _progress(todo, progress, f"{area.name}: process"):
            _check(stop)
            try:
                result = process_scene(engine, scene_id, settings, metrics, stop=stop)
            except Stopped:
                raise
            except Exception as e:  # one scene never stops the others
                log.exception("%s: scene %s failed", area.name, scene_id)
                summary["errors"].append(f"scene {scene_id}: {_reason(e).splitlines()[0]}")
                _retry_later(engine, scene_id, _reason(e), settings)
                continue
            summary["processed"] += 1
            summary["alerts"] += result["alerts"]
        with rec.step("notify"):
            from monitor.alerts.webhooks import deliver_pending

            summary["delivered"] = deliver_pending(engine, settings, metrics)
        _gauges(engine, area_id, area.name, metrics)
    except BaseException as e:
        rec.finish(error=_reason(e))
        raise
    rec.finish(error="; ".join(summary["errors"])[:2000] or None)
    if not summary["errors"]:
        metrics.last_success.labels(area.name).set(time.time())
    return summary


def _retry_later(engine: Engine, scene_id: int, reason: str, settings: Settings) -> None:
    """Keep a scene whose processing failed for a later pass, backing off with each failure."""
    with transaction(engine) as s:
        from sqlalchemy import func

        scene = s.get(Scene, scene_id)
        failures = s.scalar(select(func.count()).select_from(Run).where(Run.scene_id == scene_id,
                                                                         Run.status == "failed"))
        wait = min(settings.scene_retry_s * 2 ** max(failures - 1, 0), settings.scene_retry_max_s)
        scene.next_attempt_at = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=wait)
        scene.status_reason = reason[:2000]


def _gauges(engine: Engine, area_id: int, name: str, metrics: Metrics) -> None:
    from sqlalchemy import func

    from monitor.db.tables import Alert, Indicator
    from monitor.db.tables import OPEN_ALERT_STATUSES

    with transaction(engine) as s:
        newest = s.scalar(select(func.max(Scene.acquired_at)).where(Scene.area_id == area_id,
                                                                    Scene.status == "processed"))
        if newest is not None:
            metrics.newest_scene.labels(name).set(newest.timestamp())
        ind = s.scalar(select(Indicator).where(Indicator.area_id == area_id).order_by(Indicator.observed_on.desc())
                       .limit(1))
        if ind is not None:
            if ind.built_km2 is not None:
                metrics.built_km2.labels(name).set(ind.built_km2)
            if ind.settlement_km2 is not None:
                metrics.settlement_km2.labels(name).set(ind.settlement_km2)
        metrics.open_alerts.labels(name).set(s.scalar(select(func.count()).select_from(Alert).where(
            Alert.area_id == area_id, Alert.status.in_(OPEN_ALERT_STATUSES))))


def _progress(items: list, enabled: bool, desc: str):
    if not enabled or not items:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="scene")
