"""One pipeline pass over an area: search -> fetch -> infer -> vectorize -> diff -> judge -> notify.

Every step commits its own result (files are written to a temporary name and renamed), and
every step's work is replaced rather than appended when it runs again, so a pass killed at any
point is resumed by the next one with nothing lost and nothing duplicated. One failing scene
never stops the others.

The steps of a scene are plain functions of ``(engine, scene_id, settings, ...)`` that return
JSON-able values: ``infer_scene``, ``vectorize_scene``, ``diff_scene`` and ``judge_scene``, so that
any worker process can run any step. The only state kept between passes is the loaded models
(``monitor.ml.modelstore`` caches them per path).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import rasterio
import shapely
from rasterio import features
from scipy import ndimage
from sqlalchemy import Engine, delete, func, select, update
from sqlalchemy.orm import Session
from tqdm import tqdm

from monitor import change, cluster
from monitor.alerts.webhooks import deliver_pending, enqueue
from monitor.cluster import Executor, InProcess
from monitor.db import queries
from monitor.db.engine import transaction
from monitor.db.tables import Alert, Area, Change, Detection, Indicator, Model, Run, Scene, Settlement
from monitor.domain import AlertEvent, FailureKind, ModelKind, Provider, RunStatus, SceneStatus, resolution_fits
from monitor.errors import ConfigError, ModelMismatch, MonitorError, ProviderError
from monitor.geo import reproject
from monitor.imagery.prepare import clear_path_for
from monitor.imagery.service import (
    fail_scene,
    fetch_scene,
    pending_scenes,
    requeue_due,
    search_scenes,
    waiting_scenes,
)
from monitor.inventory.areas import get_area
from monitor.metrics import Metrics, default_metrics
from monitor.ml.inference import classify_tiles, count_windows, default_change_model, predict_raster, raster_threshold
from monitor.ml.modelstore import LoadedModel, open_model
from monitor.redact import redact
from monitor.settings import Settings
from monitor.settlements import tile_polygons
from monitor.vectorize import Probability, polygonize, read_probability

log = logging.getLogger(__name__)
#: Settlement tiles start every 1/SETTLEMENT_SPAN of a tile: each overlaps its neighbours by half.
SETTLEMENT_SPAN = 2
#: Settlement polygons follow the threshold's crossing between tile centres on this many sub-cells a cell.
SETTLEMENT_SUBCELLS = 8


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

    def _save(self, **values: object) -> None:
        with transaction(self.engine) as s:
            s.execute(update(Run).where(Run.id == self.id).values(steps=dict(self.steps), **values))

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Record the step ``name`` around the block: running, then succeeded or failed with the error."""
        started = time.perf_counter()
        self.steps[name] = {"status": RunStatus.RUNNING, "started_at": dt.datetime.now(dt.timezone.utc).isoformat()}
        self._save()
        try:
            yield
        except BaseException as e:
            seconds = time.perf_counter() - started
            self.steps[name].update(status=RunStatus.FAILED, seconds=round(seconds, 3), error=str(e))
            self.metrics.run_errors.labels(self.area_name, name).inc()
            self._save()
            raise
        seconds = time.perf_counter() - started
        self.metrics.step_duration.labels(name).observe(seconds)
        self.steps[name].update(status=RunStatus.SUCCEEDED, seconds=round(seconds, 3))
        self._save()

    def finish(self, error: str | None = None, interrupted: bool = False) -> None:
        """Close the run: interrupted (asked to stop), failed with ``error``, else succeeded."""
        status = RunStatus.INTERRUPTED if interrupted else RunStatus.FAILED if error else RunStatus.SUCCEEDED
        self._save(status=status, error=error, finished_at=dt.datetime.now(dt.timezone.utc))
        self.metrics.runs.labels(self.area_name, status).inc()


def area_model_dirs(session: Session, area: Area, settings: Settings) -> dict[str, Path | None]:
    """The model directory of each kind for an area: its own, else the settings' default."""
    out: dict[str, Path | None] = {}
    for kind in ModelKind:
        model_id = getattr(area, f"{kind}_model_id")
        path = session.scalar(select(Model.path).where(Model.id == model_id)) if model_id else None
        out[kind] = Path(path) if path else getattr(settings, f"{kind}_model")
    return out


def _models(dirs: dict[str, Path | None], settings: Settings, scene: Path) -> dict[str, LoadedModel | None]:
    """The models of an area for a scene; an area without a change model gets MONITOR_DEFAULT_CHANGE_MODEL
    when the scene's resolution suits it."""
    models = {kind: open_model(d, precision=settings.inference_precision) if d is not None else None
              for kind, d in dirs.items()}
    if models[ModelKind.CHANGE] is None:
        models[ModelKind.CHANGE] = default_change_model(settings.default_change_model, scene,
                                                        settings.inference_precision)
    return models


def check_resolutions(models: dict[str, LoadedModel | None], pixel_m: float, area_name: str) -> None:
    """Refuse (``ModelMismatch``) a model trained on pixels more than 1.5x finer or coarser than the scene's."""
    for kind, model in models.items():
        if model is None:
            continue
        trained = model.meta.get("resolution_m")
        if not resolution_fits(trained, pixel_m):
            raise ModelMismatch(
                f"the {kind} model {model.version} ({model.path}) was trained on {float(trained or 0):g} m pixels and "
                f"the scene has {pixel_m:g} m pixels: use a model made for this resolution, or allow it with "
                f"`monitor areas configure {area_name} --allow-resolution-mismatch`")


def settlement_polygons(classifier: LoadedModel, scene_path: Path) -> dict:
    """The classifier's settlement polygons of a scene: tiles every half tile, their probability grid
    median-filtered, and the polygons drawn where it crosses the threshold between tile centres
    (``monitor.settlements``).

    Returns ``{"crs": WKT, "version", "polygons": [[WKB hex, mean probability], ...]}`` (JSON-able)."""
    probs, transform = classify_tiles(classifier, scene_path, span=SETTLEMENT_SPAN)
    polys = tile_polygons(probs, transform, span=SETTLEMENT_SPAN, threshold=classifier.threshold, centres=True,
                          interpolate=SETTLEMENT_SUBCELLS)
    with rasterio.open(scene_path) as src:
        crs = src.crs.to_wkt()
    return {"crs": crs, "version": classifier.version,
            "polygons": [[shapely.to_wkb(g, hex=True), p] for g, p in polys]}


def _windows(model: LoadedModel, scene: Path, settings: Settings) -> int:
    """How many inference windows the tiled engine runs over a scene."""
    with rasterio.open(scene) as src:
        return count_windows(model, src.height, src.width, settings.inference_window, settings.inference_overlap)


# --- the steps of a scene

def infer_scene(engine: Engine, scene_id: int, settings: Settings, metrics: Metrics | None = None,
                fresh: bool = False) -> dict:
    """The scene's probability rasters (segmenter; change model against the scene's before image) under
    ``data_dir/probability/<area id>/``, and the settlement polygons of its classifier.

    Returns ``{"probabilities": {kind: {"path", "version", "threshold"}}, "settlements": dict | None,
    "persistence": {alert id: {"path", "threshold"}}}``: ``settlements`` is ``settlement_polygons``'s;
    ``persistence``, for open alerts a change model raised on earlier dates, is the change model run from
    each alert's own baseline to this scene, which tells whether the construction is still there. A
    raster already there (from a pass killed later on) is kept, unless ``fresh``: then every raster of
    the scene, of any model, is deleted first and made again.
    """
    metrics = metrics or default_metrics()
    with transaction(engine) as s:
        scene, area = queries.scene_and_area(s, scene_id)
        dirs = area_model_dirs(s, area, settings)
        before = queries.before_image(s, scene)
        baselines = {b: (str(queries.row(s, Scene, b).file_path), ids)
                     for b, ids in queries.alert_baselines(s, scene).items()}
    scene_path = Path(str(scene.file_path))
    models = _models(dirs, settings, scene_path)
    if not area.allow_resolution_mismatch:
        check_resolutions(models, queries.scene_pixel_m(scene, settings), area.name)
    out_dir = settings.probability_dir(area.id)
    if fresh:
        for old in out_dir.glob(f"{scene.id}_*.tif"):
            old.unlink()
    probabilities: dict[str, dict] = {}
    for kind in (ModelKind.SEGMENTER, ModelKind.CHANGE):
        model = models[kind]
        if model is None or (kind == ModelKind.CHANGE and before is None):
            continue
        before_path = Path(str(before.file_path)) if kind == ModelKind.CHANGE and before else None
        target = _infer(model, kind, scene_path, before_path, out_dir / f"{scene.id}_{kind}_{model.version}.tif",
                        settings, metrics, area.name)
        probabilities[kind] = {"path": str(target), "version": model.version,
                               "threshold": raster_threshold(model, target)}
    persistence: dict[int, dict] = {}
    change_model = models[ModelKind.CHANGE]
    if change_model is not None:
        for baseline, (path, alert_ids) in baselines.items():
            if before is not None and baseline == before.id and ModelKind.CHANGE in probabilities:
                target = Path(probabilities[ModelKind.CHANGE]["path"])
            else:
                target = _infer(change_model, ModelKind.CHANGE, scene_path, Path(path),
                                out_dir / f"{scene.id}_persist-{baseline}_{change_model.version}.tif", settings,
                                metrics, area.name)
            made = {"path": str(target), "threshold": raster_threshold(change_model, target)}
            persistence.update({a: made for a in alert_ids})
    classifier = models[ModelKind.CLASSIFIER]
    settlements = None if classifier is None else settlement_polygons(classifier, scene_path)
    return {"probabilities": probabilities, "settlements": settlements, "persistence": persistence}


def _infer(model: LoadedModel, kind: str, scene_path: Path, before: Path | None, target: Path, settings: Settings,
           metrics: Metrics, area_name: str) -> Path:
    """``target``, the model's probability raster of the scene (against ``before`` for a change model),
    made unless a killed pass left it complete."""
    if target.exists():
        return target
    # a pass killed during inference leaves its temporary file behind
    for stale in target.parent.glob(f".{target.name.rsplit('_', 1)[0]}_*"):
        stale.unlink(missing_ok=True)
    t0 = time.perf_counter()
    predict_raster(model, scene_path, target, before=before, batch=settings.inference_batch,
                   overlap=settings.inference_overlap, window=settings.inference_window)
    windows = _windows(model, scene_path, settings)
    metrics.inference_windows.labels(kind).inc(windows)
    metrics.inference_windows_per_second.labels(kind).set(windows / (time.perf_counter() - t0))
    log.info("%s: %s inference in %.1fs", area_name, kind, time.perf_counter() - t0)
    return target


def sightings(engine: Engine, scene_id: int, persistence: dict[int, dict]) -> dict[int, tuple[float, float]]:
    """Alert id -> (share of the alert's outline clear on this scene, share of that clear part the change
    model still sees as changed from the alert's baseline), from ``infer_scene``'s persistence rasters."""
    if not persistence:
        return {}
    with transaction(engine) as s:
        scene = queries.row(s, Scene, scene_id)
        outlines: dict[int, bytes] = {int(i): bytes(g) for i, g in s.execute(
            select(Alert.id, func.ST_AsBinary(Alert.geom)).where(Alert.id.in_([int(a) for a in persistence])))}
    clear = clear_path_for(str(scene.file_path))
    out: dict[int, tuple[float, float]] = {}
    for alert_id, made in persistence.items():
        prob = read_probability(made["path"], clear_path=clear)
        outline = reproject(shapely.from_wkb(outlines[int(alert_id)]), 4326, prob.crs)
        inside = features.geometry_mask([outline], prob.values.shape, prob.transform, invert=True, all_touched=False)
        if not inside.any():
            inside = features.geometry_mask([outline], prob.values.shape, prob.transform, invert=True,
                                            all_touched=True)
        seen = inside & prob.valid
        n_seen = int(seen.sum())
        changed = int((seen & (np.nan_to_num(prob.values) >= made["threshold"])).sum())
        out[int(alert_id)] = (n_seen / max(int(inside.sum()), 1), changed / n_seen if n_seen else 0.0)
    return out


def vectorize_scene(engine: Engine, scene_id: int, settings: Settings, probabilities: dict[str, dict],
                    metrics: Metrics | None = None) -> dict[str, int]:
    """Polygons of the scene's probability rasters (``infer_scene``'s): the segmenter's stored as its
    detections, the change model's as its change-model changes. Returns the counts stored."""
    with transaction(engine) as s:
        return _vectorize(s, scene_id, settings, probabilities, metrics or default_metrics())


#: Pixels the segmenter's buildings are grown by before they gate a change model (``gating_buildings``).
GATE_GROW_PX = 1


def gates_change(probabilities: dict[str, dict], settings: Settings) -> bool:
    """Whether the segmenter only gates the change model on this date: ``change_needs_building`` and
    both models' maps."""
    return settings.change_needs_building and {ModelKind.SEGMENTER, ModelKind.CHANGE} <= probabilities.keys()


def gating_buildings(built: Probability, threshold: float) -> np.ndarray:
    """Where the segmenter's map ``built`` sees a building, grown by ``GATE_GROW_PX`` pixels
    (misregistration, rough outlines): when ``gates_change``, the only places the change model's changes
    count."""
    return ndimage.binary_dilation(built.valid & (built.values > threshold), iterations=GATE_GROW_PX)


def diffs_buildings(probabilities: dict[str, dict], settings: Settings) -> bool:
    """Whether the date's segmenter detections are diffed against earlier dates: there is a segmenter,
    and it is not only the gate of a change model (``gates_change``)."""
    return ModelKind.SEGMENTER in probabilities and not gates_change(probabilities, settings)


def _vectorize(s: Session, scene_id: int, settings: Settings, probabilities: dict[str, dict],
               metrics: Metrics) -> dict[str, int]:
    out: dict[str, int] = {}
    scene, area = queries.scene_and_area(s, scene_id)
    clear = clear_path_for(str(scene.file_path))
    read: dict[str, Probability] = {}  # the segmenter's map, read once when it gates the change model
    gate = None
    if gates_change(probabilities, settings):
        read[ModelKind.SEGMENTER] = read_probability(probabilities[ModelKind.SEGMENTER]["path"], clear_path=clear)
        gate = gating_buildings(read[ModelKind.SEGMENTER], probabilities[ModelKind.SEGMENTER]["threshold"])
    for kind, made in probabilities.items():
        prob = read.pop(kind, None) or read_probability(made["path"], clear_path=clear)
        if kind == ModelKind.CHANGE and gate is not None:
            prob.values[~gate] = 0.0
        polys = polygonize(prob.values, prob.transform, threshold=made["threshold"],
                           median_px=settings.median_filter_px,
                           min_area_m2=settings.min_area_m2("region", queries.scene_pixel_m(scene, settings)),
                           valid=prob.valid)
        if kind == ModelKind.SEGMENTER:
            out["detections"] = change.store_detections(s, area, scene, polys, prob.crs, made["version"],
                                                        metrics=metrics)
        else:
            out["change_polygons"] = change.store_change_polygons(s, area, scene, polys, prob.crs,
                                                                  made["version"], metrics=metrics)
    return out


def diff_scene(engine: Engine, scene_id: int, settings: Settings, metrics: Metrics | None = None) -> int:
    """The scene's new construction against earlier dates (``change.diff``); returns the changes stored."""
    with transaction(engine) as s:
        scene, area = queries.scene_and_area(s, scene_id)
        return change.diff(s, area, scene, settings, metrics=metrics)


def announce(session: Session, events: Sequence[change.Event]) -> None:
    """Queue the webhooks of alert events, in the transaction that stores the alerts."""
    for alert, event in events:
        enqueue(session, alert, event)


def judge_scene(engine: Engine, scene_id: int, settings: Settings, settlements: dict | None = None,
                metrics: Metrics | None = None, segmented: bool = True,
                seen: dict[int, tuple[float, float]] | None = None) -> list[tuple[int, str]]:
    """Store the date's settlement layer (``settlements``: ``settlement_polygons``'s, when the area has a
    classifier) and, where the area has settlement alerts, its growth as changes; judge the scene's
    changes (``seen``: ``sightings``'s), queue the events' webhooks and record the date's indicators,
    in one transaction that also marks the scene processed. Returns the
    ``(alert id, event)`` pairs (evidence chips are rendered when first asked for, see
    ``monitor.alerts.evidence``).

    A date on which more than ``max_change_share`` of the area's clear land changed is marked
    ``suspect`` instead: nothing is judged, no indicator recorded, and it is never the baseline of a
    later date."""
    with transaction(engine) as s:
        return _judge(s, scene_id, settings, settlements, metrics or default_metrics(), segmented, seen)


def _judge(s: Session, scene_id: int, settings: Settings, settlements: dict | None, metrics: Metrics,
           segmented: bool, seen: dict[int, tuple[float, float]] | None, replace: bool = False) -> list[tuple[int, str]]:
    scene, area = queries.scene_and_area(s, scene_id)
    scene.next_attempt_at, scene.attempts, scene.failure_kind = None, 0, None
    suspect = change.suspect_reason(s, area, scene, settings)
    if suspect:
        scene.status, scene.status_reason = SceneStatus.SUSPECT, suspect
        metrics.suspect_dates.labels(area=area.name).inc()
        log.warning("%s: scene %s is %s", area.name, scene.id, scene.status_reason)
        events = change.judge_events(s, area, change.revert_unseen(s, area, scene), metrics) if replace else []
        announce(s, events)
        return [(alert.id, str(event)) for alert, event in events]
    scene.status = SceneStatus.PROCESSED
    scene.status_reason = None
    s.flush()
    layer = None
    seen = dict(seen or {})
    if settlements is not None:
        polys = [(shapely.from_wkb(w), p) for w, p in settlements["polygons"]]
        layer = change.store_settlements(s, area, scene, polys, settlements["crs"], settlements["version"])
        change.store_settlement_changes(s, area, scene, settings)
        seen.update(change.settlement_sightings(s, area, scene))
    events = change.judge(s, area, scene, settings, metrics=metrics, segmented=segmented, sightings=seen or None,
                          replace=replace)
    announce(s, events)
    change.record_indicators(s, area, scene, settlement_km2=layer.km2 if layer else None, metrics=metrics,
                             settlement_carried_km2=layer.carried_km2 if layer else None)
    return [(alert.id, str(event)) for alert, event in events]


def replace_scene(engine: Engine, scene_id: int, settings: Settings, inferred: dict,
                  seen: dict[int, tuple[float, float]] | None, metrics: Metrics | None = None) -> list[tuple[int, str]]:
    """``process --reprocess`` of one processed scene, from ``infer_scene``'s new rasters: in one
    transaction, the scene's detections, changes, verdicts, settlement layer and indicators are
    deleted and made again, and its date judged again with ``replace`` (``monitor.change.judge``):
    alerts keep their ids, an alert first seen on the date takes the new outline, one the current
    models no longer see is reverted unless a reviewer looked at it, and nothing is raised twice.
    Returns the ``(alert id, event)`` pairs, as ``judge_scene``."""
    metrics = metrics or default_metrics()
    with transaction(engine) as s:
        for table in (Detection, Change, Settlement, Indicator):
            s.execute(delete(table).where(table.scene_id == scene_id))
        _vectorize(s, scene_id, settings, inferred["probabilities"], metrics)
        segmented = ModelKind.SEGMENTER in inferred["probabilities"]
        if diffs_buildings(inferred["probabilities"], settings):
            scene, area = queries.scene_and_area(s, scene_id)
            change.diff(s, area, scene, settings, metrics=metrics)
        return _judge(s, scene_id, settings, inferred["settlements"], metrics, segmented, seen, replace=True)


def process_scene(engine: Engine, scene_id: int, settings: Settings, metrics: Metrics,
                  stop: threading.Event | None = None, executor: Executor | None = None, replace: bool = False) -> dict:
    """infer -> vectorize -> diff -> judge for one prepared scene, recorded as a run; returns a summary.
    Each step runs through ``executor`` (default: in this process). ``replace``: the scene was
    processed already; its rasters are made again and ``replace_scene`` replaces its outputs."""
    with transaction(engine) as s:
        scene, area = queries.scene_and_area(s, scene_id)
        dirs = area_model_dirs(s, area, settings)
    models = _models(dirs, settings, Path(str(scene.file_path)))
    if models[ModelKind.SEGMENTER] is None and models[ModelKind.CHANGE] is None:
        raise ConfigError(f"area {area.name!r} has no segmenter or change model: set one with "
                          "`monitor areas configure NAME --segmenter-model DIR` or MONITOR_SEGMENTER_MODEL")
    versions = {k: m.version for k, m in models.items() if m is not None}
    run = (executor or InProcess(engine)).call
    rec = Recorder(engine, area, metrics, scene_id=scene.id, model_versions=versions)
    summary: dict = {"scene": scene.id, "date": scene.acquired_at.date().isoformat(), "alerts": 0}
    try:
        with rec.step("infer"):
            inferred = run("infer", infer_scene, scene_id, settings, metrics=metrics, fresh=replace)
        _check(stop)
        segmented = ModelKind.SEGMENTER in inferred["probabilities"]
        if replace:
            with rec.step("replace"):
                seen = run("judge", sightings, scene_id, inferred["persistence"])
                events = run("judge", replace_scene, scene_id, settings, inferred, seen, metrics=metrics)
        else:
            with rec.step("vectorize"):
                summary.update(run("vectorize", vectorize_scene, scene_id, settings, inferred["probabilities"],
                                   metrics=metrics))
            _check(stop)
            with rec.step("diff"):
                if diffs_buildings(inferred["probabilities"], settings):
                    summary["changes"] = run("diff", diff_scene, scene_id, settings, metrics=metrics)
            _check(stop)
            with rec.step("judge"):
                seen = run("judge", sightings, scene_id, inferred["persistence"])
                events = run("judge", judge_scene, scene_id, settings, inferred["settlements"], metrics=metrics,
                             segmented=segmented, seen=seen)
        summary["alerts"] = sum(1 for _a, ev in events if ev in (AlertEvent.CREATED, AlertEvent.ESCALATED))
        with transaction(engine) as s:
            summary["settlement_km2"] = s.scalar(select(Indicator.settlement_km2).where(
                Indicator.scene_id == scene_id))
    except BaseException as e:
        rec.finish(error=_reason(e), interrupted=isinstance(e, (Stopped, KeyboardInterrupt, SystemExit)))
        raise
    rec.finish()
    return summary


def import_detections(engine: Engine, area_name: str, date: dt.date, raster: Path, threshold: float | None,
                      settings: Settings, metrics: Metrics | None = None) -> dict:
    """``monitor detections import``: a raster made elsewhere through vectorize, diff, judge and
    indicators as the area's scene of ``date`` (``change.import_detections``), its webhooks queued in
    the same transaction. Returns the summary."""
    with transaction(engine) as s:
        imported = change.import_detections(s, get_area(s, area_name), date, raster, threshold, settings,
                                            metrics=metrics)
        announce(s, imported.events)
    return imported.summary


def _check(stop: threading.Event | None) -> None:
    if stop is not None and stop.is_set():
        raise Stopped("stop requested")


def _reason(e: BaseException) -> str:
    if isinstance(e, MonitorError):
        return str(e)
    return redact(f"{type(e).__name__}: {e}")  # the traceback goes to the log only


def run_area(engine: Engine, area_id: int, settings: Settings, metrics: Metrics | None = None,
             stop: threading.Event | None = None, progress: bool = False, reprocess: bool = False,
             since: dt.date | None = None) -> dict:
    """One pass over an area (``_run_area``; with ``reprocess``, ``_reprocess`` from ``since``) under
    the area's advisory lock: while another pass over the area runs (another process, another host)
    nothing is done and the summary says ``busy``. Runs of the area left ``running`` by a process that
    ended are marked ``interrupted`` first."""
    with queries.area_lock(engine, area_id) as held:
        if held:
            with transaction(engine) as s:
                if n := queries.interrupt_stale_runs(s, area_id):
                    log.warning("area %s: %d run(s) left running by an ended process marked interrupted", area_id, n)
            metrics = metrics or default_metrics()
            with cluster.executor(engine, settings, metrics) as steps:
                if reprocess:
                    return _reprocess(engine, area_id, settings, metrics, stop, progress, steps, since)
                return _run_area(engine, area_id, settings, metrics, stop, progress, steps)
    with transaction(engine) as s:
        name = queries.row(s, Area, area_id).name
    log.info("area %s is busy: another pass over it is running; nothing done", name)
    return {"area": name, "busy": True, "found": 0, "fetched": 0, "skipped": 0, "failed": 0, "processed": 0,
            "alerts": 0, "errors": []}


def _run_area(engine: Engine, area_id: int, settings: Settings, metrics: Metrics, stop: threading.Event | None,
              progress: bool, executor: Executor) -> dict:
    """One pass over an area: record new scenes, fetch pending ones, process prepared ones in date
    order, then deliver pending webhooks. Scenes whose transient failure is due are queued again first.
    A failed search (every provider down) and per-scene failures are recorded in the summary's
    ``errors`` and the pass goes on with the scenes already known; the summary's ``waiting`` and
    ``next_attempt_at`` say how many scenes wait for a later try and when the first is due. The steps
    of the scenes run on the Dask cluster of ``settings.dask_scheduler`` when set."""
    with transaction(engine) as s:
        area = queries.row(s, Area, area_id)
        for scene in requeue_due(s, area):
            log.info("%s: scene %s is due for another try", area.name, scene.id)
    summary: dict = {"area": area.name, "found": 0, "fetched": 0, "skipped": 0, "failed": 0, "processed": 0,
                     "alerts": 0, "errors": []}
    rec = Recorder(engine, area, metrics)
    try:
        try:
            with rec.step("search"):
                with transaction(engine) as s:
                    found = search_scenes(s, queries.row(s, Area, area_id), settings, metrics)
                    summary["found"] = len(found)
        except ProviderError as e:  # a catalogue outage: the scenes already known are still processed
            metrics.search_failures.labels(area.name).inc()
            summary["errors"].append(f"search: {e}")
        with rec.step("fetch"):
            with transaction(engine) as s:
                pending = [sc.id for sc in pending_scenes(s, queries.row(s, Area, area_id))]
            for scene_id in _progress(pending, progress, f"{area.name}: fetch"):
                _check(stop)
                scene = fetch_scene(engine, scene_id, settings, metrics, progress=False)
                key = {str(SceneStatus.PREPARED): "fetched", str(SceneStatus.SKIPPED): "skipped"}.get(scene.status,
                                                                                                     "failed")
                summary[key] += 1
                if key == "failed":
                    summary["errors"].append(f"scene {scene.product_id}: {scene.status_reason}")
        with transaction(engine) as s:
            todo = list(s.scalars(select(Scene.id).where(
                Scene.area_id == area_id, Scene.status == SceneStatus.PREPARED).order_by(Scene.acquired_at)))
        for scene_id in _progress(todo, progress, f"{area.name}: process"):
            _check(stop)
            try:
                result = process_scene(engine, scene_id, settings, metrics, stop=stop, executor=executor)
            except Stopped:
                raise
            except Exception as e:  # one scene never stops the others
                summary["failed"] += 1
                summary["errors"].append(f"scene {scene_id}: {_failed(engine, scene_id, e, settings, area.name)}")
                continue
            summary["processed"] += 1
            summary["alerts"] += result["alerts"]
        with rec.step("notify"):
            summary["delivered"] = deliver_pending(engine, settings, metrics)
        with transaction(engine) as s:
            waiting, first = waiting_scenes(s, queries.row(s, Area, area_id))
        if waiting:
            summary["waiting"], summary["next_attempt_at"] = waiting, first.isoformat() if first else None
        _gauges(engine, area_id, area.name, metrics)
    except BaseException as e:
        rec.finish(error=_reason(e), interrupted=isinstance(e, (Stopped, KeyboardInterrupt, SystemExit)))
        raise
    rec.finish(error="; ".join(summary["errors"])[:2000] or None)
    if not summary["errors"]:
        metrics.last_success.labels(area.name).set(time.time())
    return summary


def _failed(engine: Engine, scene_id: int, error: Exception, settings: Settings, area_name: str) -> str:
    """Record that processing the scene failed (``fail_scene``: a transient failure is tried again
    later); returns the reason recorded."""
    kind = FailureKind.of(error)
    if kind == FailureKind.PERMANENT:
        log.exception("%s: scene %s failed", area_name, scene_id)
    else:
        log.warning("%s: scene %s failed for a transient reason: %s", area_name, scene_id, _reason(error))
    with transaction(engine) as s:
        scene = queries.row(s, Scene, scene_id, with_for_update=True)
        fail_scene(scene, _reason(error), kind, settings)
        return str(scene.status_reason).splitlines()[0]


def _reprocess(engine: Engine, area_id: int, settings: Settings, metrics: Metrics, stop: threading.Event | None,
               progress: bool, executor: Executor, since: dt.date | None) -> dict:
    """``process --reprocess``: the area's processed (and suspect) scenes acquired on or after ``since``
    run again, oldest first, with the area's current models (``process_scene`` with ``replace``),
    since each date is compared with the dates before it; then pending webhooks are delivered.
    Imported detections have no imagery to run models on and are left as they are."""
    with transaction(engine) as s:
        area = queries.row(s, Area, area_id)
        q = select(Scene.id).where(Scene.area_id == area_id, Scene.provider != Provider.IMPORT,
                                   Scene.status.in_([SceneStatus.PROCESSED, SceneStatus.SUSPECT]))
        if since is not None:
            q = q.where(Scene.acquired_at >= queries.day_start(since))
        todo = list(s.scalars(q.order_by(Scene.acquired_at, Scene.id)))
    summary: dict = {"area": area.name, "reprocessed": 0, "alerts": 0, "errors": []}
    for scene_id in _progress(todo, progress, f"{area.name}: reprocess"):
        _check(stop)
        try:
            result = process_scene(engine, scene_id, settings, metrics, stop=stop, executor=executor, replace=True)
        except Stopped:
            raise
        except Exception as e:  # the scene keeps its earlier outputs; the others go on
            log.exception("%s: reprocessing scene %s failed", area.name, scene_id)
            summary["errors"].append(f"scene {scene_id}: {_reason(e).splitlines()[0]}")
            continue
        summary["reprocessed"] += 1
        summary["alerts"] += result["alerts"]
    summary["delivered"] = deliver_pending(engine, settings, metrics)
    _gauges(engine, area_id, area.name, metrics)
    return summary


def _gauges(engine: Engine, area_id: int, name: str, metrics: Metrics) -> None:
    with transaction(engine) as s:
        newest = queries.newest_processed(s, area_id).get(name)
        if newest is not None:
            metrics.newest_scene.labels(name).set(newest.timestamp())
        ind = s.scalar(select(Indicator).where(Indicator.area_id == area_id).order_by(Indicator.observed_on.desc())
                       .limit(1))
        if ind is not None:
            if ind.built_km2 is not None:
                metrics.built_km2.labels(name).set(ind.built_km2)
            if ind.settlement_km2 is not None:
                metrics.settlement_km2.labels(name).set(ind.settlement_km2)
                metrics.settlement_carried_km2.labels(name).set(ind.settlement_carried_km2 or 0.0)
        metrics.open_alerts.labels(name).set(queries.count_open_alerts(s, area_id))


def _progress(items: list, enabled: bool, desc: str) -> Sequence:
    if not enabled or not items:
        return items
    return tqdm(items, desc=desc, unit="scene")
