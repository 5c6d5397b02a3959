"""Failures that come back, on real PostGIS and real files: a full or read-only disk under
MONITOR_HOME (a small tmpfs) is retried after its backoff and succeeds, a corrupt file is not
retried, `scenes retry` re-queues, `process --reprocess` replaces a scene's outputs idempotently,
and a catalogue outage (a closed port) still lets the scenes on disk be processed."""

from __future__ import annotations

import datetime as dt
import errno
import json
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import rasterio
import requests
import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from monitor.db.engine import transaction
from monitor.db.tables import Alert, Area, Scene
from monitor.errors import ImageryError, ProviderError, is_transient
from monitor.imagery.service import fetch_scene, pending_scenes, search_scenes
from monitor.inventory.areas import configure_area
from monitor.metrics import Metrics, default_metrics
from monitor.pipeline import run_area
from monitor.world import DATES
from tests.test_pipeline import _area_with_drops, roof_model, world  # noqa: F401 (fixtures)

UTC = dt.timezone.utc


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def tmpfs():
    """Mounts small tmpfs file systems (``tmpfs(folder, "size=64k")``) and unmounts them afterwards."""
    mounted: list[Path] = []

    def mount(where: Path, options: str) -> Path:
        where.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True,
                              text=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", str(where)], check=True)


@pytest.fixture
def small_disk(settings, tmpfs):
    """A 64 KiB tmpfs where the probability rasters go (MONITOR_HOME/data/probability)."""
    return tmpfs(Path(settings.data_dir) / "probability", "size=64k")


def remount(where: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(where)], check=True)


def scene_rows(engine, area_id: int) -> list[Scene]:
    with transaction(engine) as s:
        return list(s.scalars(sa.select(Scene).where(Scene.area_id == area_id).order_by(Scene.acquired_at)))


def prepare_all(engine, area_id: int, settings) -> None:
    metrics = Metrics(CollectorRegistry())
    with transaction(engine) as s:
        search_scenes(s, s.get(Area, area_id), settings, metrics)
        pending = [sc.id for sc in pending_scenes(s, s.get(Area, area_id))]
    for scene_id in pending:
        assert fetch_scene(engine, scene_id, settings, metrics).status == "prepared"


# --- what is transient, from real failures


def test_real_failures_are_told_apart(tmp_path, engine):
    port = closed_port()
    with pytest.raises(requests.ConnectionError) as refused:
        requests.get(f"http://127.0.0.1:{port}/", timeout=5)
    assert is_transient(refused.value)
    assert not is_transient(ProviderError("search failed", provider="stac"))
    try:
        raise ProviderError("search failed", provider="stac") from refused.value
    except ProviderError as e:
        assert is_transient(e)  # a provider error caused by the network
    assert is_transient(ProviderError("HTTP 503", provider="stac", status=503))
    assert not is_transient(ProviderError("HTTP 404", provider="stac", status=404))
    with pytest.raises(sa.exc.OperationalError) as db_down:
        sa.create_engine(f"postgresql+psycopg2://x@127.0.0.1:{port}/x", poolclass=sa.pool.NullPool).connect()
    assert is_transient(db_down.value)
    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(b"II*\x00 not a tiff")
    with pytest.raises(rasterio.errors.RasterioIOError) as unreadable:
        rasterio.open(corrupt)
    assert not is_transient(unreadable.value)
    assert not is_transient(ImageryError("bad band order"))
    assert is_transient(OSError(errno.ENOSPC, "No space left on device"))
    assert not is_transient(FileNotFoundError(errno.ENOENT, "gone"))


# --- a full or read-only disk: retried after the backoff, then succeeds


@pytest.mark.parametrize("fault, needle", [("size=4k", "Write"), ("ro", "Read-only file system")])
def test_a_disk_fault_is_retried_after_its_backoff_and_succeeds(cli, engine, settings, world, roof_model, tmp_path,
                                                                 small_disk, fault, needle):
    area_id = _area_with_drops(engine, world, roof_model, tmp_path, DATES[:1])
    prepare_all(engine, area_id, settings)
    remount(small_disk, fault)
    first = run_area(engine, area_id, settings, Metrics(CollectorRegistry()))
    assert first["processed"] == 0 and first["failed"] == 1 and first["waiting"] == 1
    [scene] = scene_rows(engine, area_id)
    assert (scene.status, scene.failure_kind, scene.attempts) == ("failed", "transient", 1)
    assert needle in scene.status_reason and "next try after" in scene.status_reason
    wait = (scene.next_attempt_at - dt.datetime.now(UTC)).total_seconds()
    assert settings.scene_retry_s - 120 < wait <= settings.scene_retry_s

    # not due yet: the pass does nothing and says when the next try is
    result = cli("process", "--area", "demo", "--quiet")
    summary = json.loads(result.stdout)
    assert summary["processed"] == 0 and summary["errors"] == [] and summary["waiting"] == 1
    assert "nothing to do in 'demo': 1 scene(s) wait for a later try" in result.stderr
    assert summary["next_attempt_at"][:16] in result.stderr

    # the disk is fixed and the backoff has passed: the next pass processes the scene
    remount(small_disk, "rw,size=64m")
    with transaction(engine) as s:
        s.get(Scene, scene.id).next_attempt_at = dt.datetime.now(UTC) - dt.timedelta(seconds=1)
    again = run_area(engine, area_id, settings, Metrics(CollectorRegistry()))
    assert again["processed"] == 1 and again["errors"] == [] and "waiting" not in again
    [scene] = scene_rows(engine, area_id)
    assert (scene.status, scene.failure_kind, scene.attempts, scene.status_reason) == ("processed", None, 0, None)


def test_a_fetch_onto_a_read_only_disk_is_retried(cli, engine, settings, world, roof_model, tmp_path, tmpfs):
    area_id = _area_with_drops(engine, world, roof_model, tmp_path, DATES[:1])
    scenes = tmpfs(Path(settings.data_dir) / "scenes", "size=64m,ro")
    cli("scenes", "search", "--area", "demo")
    out = cli("scenes", "fetch", "--area", "demo")
    assert "1 failed" in out.stdout and "Read-only file system" in out.stderr
    [scene] = scene_rows(engine, area_id)
    assert (scene.status, scene.failure_kind, scene.attempts, scene.file_path) == ("failed", "transient", 1, None)
    assert "0 scene(s) fetched" in cli("scenes", "fetch", "--area", "demo").stdout  # not due yet
    remount(scenes, "rw")
    with transaction(engine) as s:
        s.get(Scene, scene.id).next_attempt_at = dt.datetime.now(UTC)
    assert "1 prepared" in cli("scenes", "fetch", "--area", "demo").stdout
    [scene] = scene_rows(engine, area_id)
    assert (scene.status, scene.failure_kind, scene.attempts, scene.status_reason) == ("prepared", None, 0, None)


def test_transient_failures_back_off_then_give_up(engine, settings, world, roof_model, tmp_path, small_disk):
    settings = settings.model_copy(update={"scene_retry_attempts": 3, "scene_retry_s": 100.0,
                                           "scene_retry_max_s": 150.0})
    area_id = _area_with_drops(engine, world, roof_model, tmp_path, DATES[:1])
    prepare_all(engine, area_id, settings)
    remount(small_disk, "ro")
    waits = []
    for _ in range(3):
        run_area(engine, area_id, settings, Metrics(CollectorRegistry()))
        [scene] = scene_rows(engine, area_id)
        if scene.next_attempt_at is not None:
            waits.append((scene.next_attempt_at - dt.datetime.now(UTC)).total_seconds())
            with transaction(engine) as s:
                s.get(Scene, scene.id).next_attempt_at = dt.datetime.now(UTC)
    assert len(waits) == 2 and 90 < waits[0] <= 100 and 140 < waits[1] <= 150  # doubled, then capped
    assert (scene.status, scene.failure_kind, scene.attempts, scene.next_attempt_at) == ("failed", "permanent", 3, None)
    assert scene.status_reason.startswith("failed 3 times in a row, given up")


# --- scenes retry


def test_scenes_retry_requeues_failed_scenes(cli, engine, tmp_path):
    drops = tmp_path / "drops"
    drops.mkdir()
    from tests.test_hardening import AREA
    from tests.vectors import geojson

    cli("areas", "add", "ba", "--geometry", geojson(tmp_path / "a.geojson", [AREA]), "--provider", "local",
        "--source", f"local={drops}")
    when = dt.datetime(2024, 4, 1, tzinfo=UTC)
    with transaction(engine) as s:
        area_id = s.scalar(sa.select(Area.id))
        rows = [Scene(area_id=area_id, provider="local", product_id="fetch_failed.tif", acquired_at=when,
                      status="failed", failure_kind="permanent", status_reason="cannot read it", attempts=1),
                Scene(area_id=area_id, provider="local", product_id="process_failed.tif", acquired_at=when,
                      status="failed", failure_kind="transient", status_reason="disk full", attempts=2,
                      next_attempt_at=when + dt.timedelta(days=9999), file_path=str(drops / "p.tif")),
                Scene(area_id=area_id, provider="local", product_id="done.tif", acquired_at=when, status="processed",
                      file_path=str(drops / "d.tif"))]
        s.add_all(rows)
        s.flush()
        ids = [r.id for r in rows]
    assert "no scene '999'" in cli("scenes", "retry", "--area", "ba", "--scene", "999", expect=2).stderr
    assert "no area" in cli("scenes", "retry", "--area", "nowhere", "--failed", expect=2).stderr
    assert "--scene ID or --failed" in cli("scenes", "retry", "--area", "ba", expect=2).stderr
    assert "is processed, not failed" in cli("scenes", "retry", "--area", "ba", "--scene", ids[2], expect=2).stderr

    out = cli("scenes", "retry", "--area", "ba", "--scene", "process_failed.tif").stdout
    assert "process_failed.tif" in out and "prepared" in out and "1 scene(s) of 'ba' re-queued" in out
    out = cli("scenes", "retry", "--area", "ba", "--failed").stdout
    assert "fetch_failed.tif" in out and "found" in out and "1 scene(s) of 'ba' re-queued" in out
    listed = {s["product_id"]: s for s in json.loads(cli("scenes", "list", "--area", "ba", "--json").stdout)}
    assert [(listed[p]["status"], listed[p]["status_reason"], listed[p]["failure_kind"], listed[p]["attempts"],
             listed[p]["next_attempt_at"]) for p in ("fetch_failed.tif", "process_failed.tif")] == [
        ("found", None, None, 0, None), ("prepared", None, None, 0, None)]
    assert listed["done.tif"]["status"] == "processed"
    assert "0 scene(s) of 'ba' re-queued" in cli("scenes", "retry", "--area", "ba", "--failed").stdout


# --- process --reprocess


def alert_rows(engine) -> list[tuple]:
    with engine.connect() as conn:
        return conn.execute(sa.text(
            "SELECT a.id, p.external_id, a.first_seen, a.last_seen, a.status, a.confidence, round(a.new_area_m2), "
            "a.note, a.reviewed_by, md5(ST_AsBinary(ST_SnapToGrid(a.geom, 1e-7))) "
            "FROM alerts a JOIN parcels p ON p.id = a.parcel_id ORDER BY a.id")).all()


def output_rows(engine) -> dict:
    with engine.connect() as conn:
        return {t: conn.execute(sa.text(q)).all() for t, q in {
            "detections": "SELECT scene_id, kind, round(area_m2) FROM detections ORDER BY 1, 2, 3",
            "changes": "SELECT scene_id, source, observed_on, previous_on, round(area_m2) FROM changes "
                       "ORDER BY 1, 2, 3, 4, 5",
            "verdicts": "SELECT p.external_id, pc.observed_on, pc.verdict, pc.alert_id FROM parcel_changes pc "
                        "JOIN parcels p ON p.id = pc.parcel_id ORDER BY 1, 2, 3, 4",
            "indicators": "SELECT observed_on, round(built_km2::numeric, 6) FROM indicators ORDER BY 1",
            "scenes": "SELECT id, status FROM scenes ORDER BY 1"}.items()}


def told(event: str) -> float:
    """Alert events of area demo counted by the `monitor` commands run in this process."""
    return sum(m.value for f in default_metrics().registry.collect() if f.name == "monitor_alert_events"
               for m in f.samples if m.name.endswith("_total") and m.labels.get("area") == "demo"
               and m.labels.get("event") == event)


@pytest.fixture
def blind_model(roof_model, tmp_path):
    """The roof rule's model made blind: it sees no building anywhere (another version)."""
    meta = json.loads((roof_model / "model.json").read_text())
    out = tmp_path / "blind"
    shutil.copytree(roof_model, out)
    meta.update(version="segmenter-blind", normalization={"mean": [1e6], "std": [100.0]})
    (out / "model.json").write_text(json.dumps(meta))
    return out


def test_reprocess_replaces_outputs_idempotently(cli, engine, settings, world, roof_model, blind_model, tmp_path):
    area_id = _area_with_drops(engine, world, roof_model, tmp_path, DATES, parcels=True)
    first = run_area(engine, area_id, settings, Metrics(CollectorRegistry()))
    assert first["processed"] == 4 and first["alerts"] > 0
    before, outputs = alert_rows(engine), output_rows(engine)
    reviewed = before[0][0]
    cli("alerts", "ack", reviewed, "--note", "seen on site", "--reviewer", "ana")
    before = alert_rows(engine)

    # the same models again: every row as it was, alerts with their ids and reviewers' verdicts
    for _ in range(2):
        summary = json.loads(cli("process", "--area", "demo", "--reprocess", "--quiet").stdout)
        assert summary["reprocessed"] == 4 and summary["errors"] == [] and summary["alerts"] == 0
        assert alert_rows(engine) == before and output_rows(engine) == outputs
    with engine.connect() as conn:
        runs = conn.execute(sa.text("SELECT steps ? 'replace', status FROM runs WHERE scene_id IS NOT NULL "
                                    "ORDER BY id")).all()
    assert runs[-4:] == [(True, "succeeded")] * 4

    # --since: only the dates from then on
    summary = json.loads(cli("process", "--area", "demo", "--reprocess", "--since", DATES[2].isoformat(),
                             "--quiet").stdout)
    assert summary["reprocessed"] == 2 and alert_rows(engine) == before
    assert "--since goes with --reprocess" in cli("process", "--area", "demo", "--since", "2026-01-01",
                                                   expect=2).stderr
    assert "'2026-13-01' is not a date" in cli("process", "--area", "demo", "--reprocess", "--since", "2026-13-01",
                                               expect=2).stderr

    # a model that sees nothing: unreviewed alerts are reverted, the reviewed one keeps its verdict; twice
    # gives the same rows, and no alert is ever duplicated
    with transaction(engine) as s:
        configure_area(s, "demo", models={"segmenter": str(blind_model)})
    for run in range(2):
        reverted = told("reverted")
        cli("process", "--area", "demo", "--reprocess", "--quiet")
        assert told("reverted") - reverted == (len(before) - 1 if run == 0 else 0)  # each told once
        after = alert_rows(engine)
        assert [a[0] for a in after] == [b[0] for b in before]
        assert {a[4] for a in after if a[0] != reviewed} == {"reverted"}
        assert [a for a in after if a[0] == reviewed][0][4:9] == ("acknowledged", *before[0][5:7], "seen on site",
                                                                   "ana")
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM detections")).scalar() == 0
    # the scenes' rasters of the earlier model are gone, replaced by the current one's
    probabilities = {p.name for p in (Path(settings.data_dir) / "probability" / str(area_id)).glob("*.tif")}
    assert len(probabilities) == 4 and all("segmenter-blind" in n for n in probabilities)

    # the roof model back: the alerts of the first pass again, under the same ids, told as updated
    with transaction(engine) as s:
        configure_area(s, "demo", models={"segmenter": str(roof_model)})
    updated = told("updated")
    summary = json.loads(cli("process", "--area", "demo", "--reprocess", "--quiet").stdout)
    assert summary["errors"] == [] and alert_rows(engine) == before
    assert told("updated") - updated == len(before) - 1


# --- a catalogue outage


def test_a_catalogue_outage_still_processes_the_scenes_on_disk(cli, engine, settings, world, roof_model, tmp_path):
    area_id = _area_with_drops(engine, world, roof_model, tmp_path, DATES[:1])
    prepare_all(engine, area_id, settings)
    with transaction(engine) as s:
        configure_area(s, "demo", providers="stac")
    counter = default_metrics().registry.get_sample_value("monitor_search_failures_total", {"area": "demo"}) or 0
    result = cli("process", "--area", "demo", "--quiet", expect=1,
                 env={"MONITOR_STAC_URL": f"http://127.0.0.1:{closed_port()}/v1", "MONITOR_HTTP_TIMEOUT_S": "5"})
    summary = json.loads(result.stdout)
    assert summary["processed"] == 1 and summary["found"] == 0 and len(summary["errors"]) == 1
    assert summary["errors"][0].startswith("search: stac:")
    [line] = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert line.startswith("error: 1 failure(s) in 'demo': search: stac:")
    assert default_metrics().registry.get_sample_value("monitor_search_failures_total", {"area": "demo"}) == counter + 1
    [scene] = scene_rows(engine, area_id)
    assert scene.status == "processed"
    with engine.connect() as conn:
        run = conn.execute(sa.text("SELECT status, error, steps -> 'search' ->> 'status' FROM runs "
                                   "WHERE scene_id IS NULL")).one()
    assert run[0] == "failed" and run[1].startswith("search: stac:") and run[2] == "failed"
    with transaction(engine) as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Alert)) == 0
