"""The whole pipeline on the synthetic world through the local provider, against a real PostGIS:
known alerts, nothing duplicated on re-runs, and a pass killed with SIGKILL resumes to the same
result as an uninterrupted one."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from monitor.world import DATES, make_world

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"), seed=7)


@pytest.fixture(scope="session")
def roof_model(tmp_path_factory):
    """A real Keras segmenter whose weights encode a rule: a bright blue band (new roofs) is building.
    It goes through the same save, load and tiled inference as a trained model."""
    import numpy as np

    from monitor.ml.modelstore import save_model
    from monitor.ml.runtime import keras

    k = keras()
    inputs = k.Input((None, None, 1))
    outputs = k.layers.Conv2D(1, 1, activation="sigmoid")(inputs)
    model = k.Model(inputs, outputs)
    model.layers[-1].set_weights([np.full((1, 1, 1, 1), 4.0, "float32"), np.zeros(1, "float32")])
    meta = {"kind": "segmenter", "version": "segmenter-roof-rule", "bands": ["B02"],
            "normalization": {"mean": [1900.0], "std": [100.0]}, "tile": 64, "threshold": 0.5,
            "resolution_m": 2.0, "architecture": {"depth": 0}}
    return save_model(model, tmp_path_factory.mktemp("models") / "roof", meta)


def _register(cli, world, drops: Path, model: Path) -> None:
    cli("areas", "add", "demo", "--geometry", world.area, "--provider", "local", "--source", f"local={drops}",
        "--resolution", "2", "--max-cloud", "40")
    cli("parcels", "import", world.parcels, "--area", "demo", "--id-field", "parcel_id")
    cli("permits", "import", world.permits, "--area", "demo")
    cli("areas", "configure", "demo", "--segmenter-model", model)


def _alerts(engine) -> list[tuple]:
    with engine.connect() as conn:
        return sorted(conn.execute(sa.text(
            "SELECT p.external_id, a.first_seen::text, a.last_seen::text, a.confidence, round(a.new_area_m2) "
            "FROM alerts a JOIN parcels p ON p.id = a.parcel_id")).all())


def _counts(engine) -> dict:
    with engine.connect() as conn:
        return {t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar()
                for t in ("scenes", "detections", "changes", "alerts", "parcel_changes", "indicators")}


@pytest.mark.slow
def test_dates_arrive_one_by_one(cli, engine, world, roof_model, tmp_path):
    drops = tmp_path / "drops"
    drops.mkdir()
    _register(cli, world, drops, roof_model)
    for date in DATES:
        shutil.copy2(world.scenes[date], drops)
        summary = json.loads(cli("process", "--area", "demo", "--quiet").stdout)
        assert summary["found"] == 1 and summary["processed"] == 1 and summary["errors"] == []
    alerts = _alerts(engine)
    unpermitted = {t["parcel"]: t["date"] for t in world.truth["new_unpermitted"]}
    assert {a[0] for a in alerts} == set(unpermitted)
    for parcel, first, last, confidence, _area in alerts:
        assert first == unpermitted[parcel]
        assert confidence == ("confirmed" if first < DATES[-1].isoformat() else "probable")
    with engine.connect() as conn:
        runs = conn.execute(sa.text("SELECT status, count(*) FROM runs GROUP BY status")).all()
        cloudy = conn.execute(sa.text("SELECT cloud_cover FROM scenes WHERE acquired_at::date = '2026-05-12'")).scalar()
    assert dict(runs) == {"succeeded": 8}  # one per pass, one per scene
    assert 0 < cloudy < 40
    # running again finds nothing new and changes nothing
    before = _counts(engine)
    summary = json.loads(cli("process", "--area", "demo", "--quiet").stdout)
    assert summary["found"] == 0 and summary["processed"] == 0
    assert _counts(engine) == before and _alerts(engine) == alerts


def _process(db_url: str, home: Path) -> subprocess.Popen:
    env = {**os.environ, "DATABASE_URL": db_url, "MONITOR_HOME": str(home), "MONITOR_LOG_LEVEL": "WARNING"}
    return subprocess.Popen([sys.executable, "-m", "monitor", "process", "--area", "demo", "--quiet"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)


@pytest.mark.slow
def test_killed_pass_resumes_to_the_same_result(cli, engine, world, roof_model, tmp_path, empty_db_factory,
                                                template_db):
    from tests.conftest import Cli

    drops = tmp_path / "drops"
    drops.mkdir()
    for date in DATES:
        shutil.copy2(world.scenes[date], drops)
    # the uninterrupted reference, in a database of its own
    ref_url = empty_db_factory("monitor_ref", template=template_db).render_as_string(hide_password=False)
    ref_cli = Cli(ref_url, tmp_path / "ref-home")
    _register(ref_cli, world, drops, roof_model)
    ref_cli("process", "--area", "demo", "--quiet")
    ref_engine = sa.create_engine(ref_url, poolclass=sa.pool.NullPool)
    reference, ref_counts = _alerts(ref_engine), _counts(ref_engine)
    ref_engine.dispose()
    assert len(reference) == len(world.truth["new_unpermitted"])

    _register(cli, world, drops, roof_model)
    home = Path(cli.env["MONITOR_HOME"])
    proc = _process(cli.env["DATABASE_URL"], home)
    deadline = time.monotonic() + 180
    killed_in = None
    while time.monotonic() < deadline and proc.poll() is None:
        with engine.connect() as conn:  # the third scene is in the middle of its steps
            row = conn.execute(sa.text(
                "SELECT r.steps FROM runs r JOIN scenes s ON s.id = r.scene_id "
                "WHERE s.acquired_at::date = :d AND r.status = 'running'"), {"d": DATES[2]}).first()
        if row and any(v.get("status") == "running" for v in row[0].values()):
            proc.send_signal(signal.SIGKILL)
            killed_in = [k for k, v in row[0].items() if v.get("status") == "running"]
            break
        time.sleep(0.05)
    proc.wait(30)
    assert killed_in, f"the pass ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    assert proc.returncode == -signal.SIGKILL
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM scenes WHERE status = 'processed'")).scalar() < 4
    # the next pass picks up where it stopped
    resumed = _process(cli.env["DATABASE_URL"], home)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err.decode()[-3000:]
    assert _alerts(engine) == reference
    assert _counts(engine) == ref_counts
    assert not list(home.rglob("*.partial")) and not list(home.rglob("*.tmp"))


def _area_with_drops(engine, world, model: Path, tmp_path: Path, dates, parcels: bool = False) -> int:
    """The world's area on the local provider, its drop folder holding the scenes of ``dates``."""
    from monitor.db.engine import transaction
    from monitor.domain import AreaSpec
    from monitor.inventory.areas import add_area, configure_area
    from monitor.inventory.parcels import import_parcels

    drops = tmp_path / "drops"
    drops.mkdir()
    for date in dates:
        shutil.copy2(world.scenes[date], drops)
    with transaction(engine) as s:
        spec = AreaSpec.parse("demo", cadence="1d", providers="local", max_cloud=40, sources={"local": str(drops)},
                              resolution_m=2.0)
        area = add_area(s, spec, world.area)
        if parcels:
            import_parcels(s, area, world.parcels, "parcel_id")
        configure_area(s, "demo", models={"segmenter": str(model)})
        return area.id


def test_pass_reports_its_metrics(settings, engine, world, roof_model, tmp_path):
    from prometheus_client import generate_latest

    from monitor.metrics import Metrics
    from monitor.pipeline import run_area

    area_id = _area_with_drops(engine, world, roof_model, tmp_path, DATES[:2], parcels=True)
    metrics = Metrics()
    summary = run_area(engine, area_id, settings, metrics)
    assert summary["processed"] == 2
    text = generate_latest(metrics.registry).decode()
    sample = lambda name, **labels: metrics.registry.get_sample_value(name, labels)  # noqa: E731
    assert sample("monitor_scenes_found_total", area="demo", provider="local") == 2
    assert sample("monitor_inference_windows_total", kind="segmenter") > 0
    assert sample("monitor_step_duration_seconds_count", step="judge") == 2
    assert sample("monitor_runs_total", area="demo", status="succeeded") == 3
    assert sample("monitor_last_successful_run_timestamp_seconds", area="demo") > time.time() - 600
    assert sample("monitor_detections_total", area="demo") > 0
    assert "monitor_newest_scene_timestamp_seconds" in text


@pytest.mark.slow
def test_demo_command(cli, roof_model, tmp_path):
    """`monitor demo` end to end (its segmenter replaced by the rule model to save the training time;
    the classifier is trained for real)."""
    home = Path(cli.env["MONITOR_HOME"])
    shutil.copytree(roof_model, home / "demo" / "models" / "segmenter")
    out = tmp_path / "out"
    result = cli("demo", "--out", out)
    assert "16 of 16 unpermitted new buildings alerted; 0 alerts on permitted ones; 0 on parcels" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["alerts"] == 16 and [row[1] for row in summary["dates"]] == ["processed"] * 4
    doc = json.loads((out / "alerts.geojson").read_text())
    assert len(doc["features"]) == 16
    assert len(list((out / "evidence").glob("*_after.png"))) == 16
    assert (out / "overview.png").stat().st_size > 10_000
    assert (home / "demo" / "models" / "classifier" / "model.json").exists()
    settlement = [float(row[5]) for row in summary["dates"]]
    assert all(s > 0 for s in settlement)
    # the measured settlement km2 beside the world's truth, and the settlement layer of every date
    assert "truth km2" in result.stdout and "settlement km2 against the world's truth" in result.stdout
    for day in summary["settlement"]:
        layer = json.loads(cli("settlements", "list", "--area", "demo", "--date", day["date"], "--format",
                               "json").stdout)
        assert sum(p["area_m2"] for p in layer) / 1e6 == pytest.approx(day["km2"], abs=1e-3)
        assert sum(p["carried_m2"] for p in layer) / 1e6 == pytest.approx(day["carried_km2"], abs=1e-3)
    growth = json.loads(cli("settlements", "growth", "--area", "demo", "--json").stdout)
    assert sum(g["change_km2"] for g in growth) > 0  # the settlement grows from the first date to the last


@pytest.fixture(scope="session")
def change_rule_model(tmp_path_factory):
    """A real Keras change model (early fusion of two dates) whose weights encode: bright blue band
    after and not before is new construction."""
    import numpy as np

    from monitor.ml.modelstore import save_model
    from monitor.ml.runtime import keras

    k = keras()
    inputs = k.Input((None, None, 2))
    outputs = k.layers.Conv2D(1, 1, activation="sigmoid")(inputs)
    model = k.Model(inputs, outputs)
    model.layers[-1].set_weights([np.array([-4.0, 4.0], "float32").reshape(1, 1, 2, 1), np.array([-8.0], "float32")])
    meta = {"kind": "change", "version": "change-roof-rule", "bands": ["B02"],
            "normalization": {"mean": [1900.0, 1900.0], "std": [100.0, 100.0]}, "tile": 64, "threshold": 0.5,
            "resolution_m": 2.0, "architecture": {"depth": 0}}
    return save_model(model, tmp_path_factory.mktemp("models") / "change-rule", meta)


@pytest.mark.slow
def test_change_model_feeds_the_same_alerts(cli, engine, world, change_rule_model, tmp_path):
    drops = tmp_path / "drops"
    drops.mkdir()
    cli("areas", "add", "demo", "--geometry", world.area, "--provider", "local", "--source", f"local={drops}",
        "--resolution", "2", "--max-cloud", "40")
    cli("parcels", "import", world.parcels, "--area", "demo", "--id-field", "parcel_id")
    cli("permits", "import", world.permits, "--area", "demo")
    cli("areas", "configure", "demo", "--change-model", change_rule_model)
    for date in (DATES[0], DATES[1], DATES[3]):  # skip the cloudy date
        shutil.copy2(world.scenes[date], drops)
        cli("process", "--area", "demo", "--quiet")
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT p.external_id, a.source, a.model_version FROM alerts a JOIN parcels p ON p.id = a.parcel_id"
        )).all()
        sources = conn.execute(sa.text("SELECT DISTINCT source FROM changes")).scalars().all()
    unpermitted = {t["parcel"] for t in world.truth["new_unpermitted"]}
    assert {r[0] for r in rows} == unpermitted
    assert {(r[1], r[2]) for r in rows} == {("change_model", "change-roof-rule")}
    assert sources == ["change_model"]


def test_a_corrupt_scene_fails_for_good_and_the_others_go_on(settings, engine, world, roof_model, tmp_path):
    from sqlalchemy import select

    from monitor.db.engine import transaction
    from monitor.db.tables import Area, Scene
    from monitor.imagery.service import fetch_scene, pending_scenes, search_scenes
    from monitor.metrics import Metrics
    from monitor.pipeline import run_area

    area_id = _area_with_drops(engine, world, roof_model, tmp_path, DATES[:3])
    metrics = Metrics()
    with transaction(engine) as s:
        search_scenes(s, s.get(Area, area_id), settings, metrics)
        pending = [sc.id for sc in pending_scenes(s, s.get(Area, area_id))]
    for scene_id in pending:
        fetch_scene(engine, scene_id, settings, metrics)
    # the second date's prepared file is damaged after it was fetched: its inference fails
    with transaction(engine) as s:
        broken = s.scalars(select(Scene).where(Scene.area_id == area_id).order_by(Scene.acquired_at)).all()[1]
        Path(broken.file_path).write_bytes(b"not a tiff any more")
        broken_id = broken.id
    summary = run_area(engine, area_id, settings, metrics)
    assert summary["processed"] == 2 and summary["failed"] == 1 and len(summary["errors"]) == 1
    with transaction(engine) as s:
        scene = s.get(Scene, broken_id)
        # a corrupt file fails the same way every time: failed for good, with the reason
        assert (scene.status, scene.failure_kind, scene.next_attempt_at, scene.attempts) == (
            "failed", "permanent", None, 1)
        assert "transient" not in scene.status_reason and scene.status_reason
    # the next pass leaves it alone
    again = run_area(engine, area_id, settings, metrics)
    assert again["processed"] == 0 and again["errors"] == []
    assert metrics.registry.get_sample_value("monitor_run_errors_total", {"area": "demo", "step": "infer"}) == 1


@pytest.mark.slow
def test_imagery_check_and_second_sighting_keep_real_construction(settings, engine, world, roof_model, tmp_path):
    """MONITOR_CHANGE_MIN_Z and MONITOR_ALERT_MIN_SIGHTINGS=2 on the world's imagery: every new unpermitted
    building seen on two dates is still alerted, dated from its first sighting; one first seen on the last
    date waits for the next."""
    from monitor.pipeline import run_area

    area_id = _area_with_drops(engine, world, roof_model, tmp_path, DATES, parcels=True)
    strict = settings.model_copy(update={"change_min_z": 3.0, "alert_min_sightings": 2})
    assert run_area(engine, area_id, strict)["processed"] == len(DATES)
    new = {t["parcel"]: t["date"] for t in world.truth["new_unpermitted"] + world.truth["new_permitted"]}  # no permits
    expected = {p: d for p, d in new.items() if d < DATES[-1].isoformat()}
    assert 0 < len(expected) < len(new)
    assert {a[0]: a[1] for a in _alerts(engine)} == expected
    with engine.connect() as conn:
        held = conn.execute(sa.text("SELECT DISTINCT p.external_id FROM parcel_changes pc JOIN parcels p "
                                    "ON p.id = pc.parcel_id WHERE verdict = 'unconfirmed'")).scalars().all()
    assert set(held) == set(new) - set(expected)
