"""The pipeline on a real Dask cluster (``distributed.LocalCluster``: a scheduler and two worker
processes on 127.0.0.1): the same alerts as in this process, also when a worker is killed in the
middle of an inference, with the runs recorded and the tasks counted per step."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
import sqlalchemy as sa

from monitor.metrics import Metrics
from monitor.pipeline import run_area
from monitor.settings import Settings
from monitor.world import DATES
from tests.test_pipeline import _alerts, _area_with_drops, _counts, roof_model, world  # noqa: F401


@pytest.fixture(scope="module")
def dask_cluster():
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", worker_dashboard_address="127.0.0.1:0") as cluster:
        yield cluster


@pytest.fixture(scope="module")
def dask_client(dask_cluster):
    from distributed import Client

    with Client(dask_cluster.scheduler_address, set_as_default=False) as client:
        yield client


@pytest.fixture(scope="module")
def reference(empty_db_factory, template_db, world, roof_model, tmp_path_factory):  # noqa: F811
    """Alerts and row counts of the four dates processed in this process."""
    tmp = tmp_path_factory.mktemp("reference")
    url = empty_db_factory("monitor_ref", template=template_db).render_as_string(hide_password=False)
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    area_id = _area_with_drops(engine, world, roof_model, tmp, DATES, parcels=True)
    summary = run_area(engine, area_id, Settings(database_url=url, home=tmp / "home"), Metrics())
    assert summary["processed"] == 4 and not summary["errors"]
    out = _alerts(engine), _counts(engine)
    engine.dispose()
    assert {t["parcel"] for t in world.truth["new_unpermitted"]} <= {a[0] for a in out[0]}
    return out


def _runs(engine) -> dict:
    with engine.connect() as conn:
        return dict(conn.execute(sa.text("SELECT status, count(*) FROM runs GROUP BY status")).all())


def _sample(metrics: Metrics, name: str, **labels) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.mark.slow
def test_a_worker_killed_during_inference_changes_nothing(dask_cluster, dask_client, reference, engine, settings,
                                                          world, roof_model, tmp_path):  # noqa: F811
    dask_client.restart()  # fresh workers: the first inference loads TensorFlow and the model, seconds long
    area_id = _area_with_drops(engine, world, roof_model, tmp_path, DATES, parcels=True)
    on_cluster = settings.model_copy(update={"dask_scheduler": dask_cluster.scheduler_address})
    metrics = Metrics()
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(run_area(engine, area_id, on_cluster, metrics)))
    thread.start()
    pids = dask_client.run(os.getpid)
    killed, in_flight = None, 0.0
    deadline = time.monotonic() + 120
    while killed is None and thread.is_alive() and time.monotonic() < deadline:
        for worker, keys in dask_client.processing().items():
            if any(str(k).startswith("infer-") for k in keys):
                in_flight = sum(_sample(metrics, "monitor_cluster_tasks", step="infer", state=st)
                                for st in ("queued", "running"))
                os.kill(pids[worker], signal.SIGKILL)
                killed = worker
                break
        time.sleep(0.02)
    thread.join(240)
    assert killed, "no inference task was seen running"
    assert in_flight == 1  # counted while it ran
    assert not thread.is_alive(), "the pass did not finish"
    assert result["processed"] == 4 and result["errors"] == []
    assert (_alerts(engine), _counts(engine)) == reference
    assert _runs(engine) == {"succeeded": 5}  # the pass and its four scenes, each step once
    # the killed worker's task was rerun, not failed; nothing is left queued or running
    assert _sample(metrics, "monitor_cluster_task_failures_total", step="infer") == 0
    for step in ("infer", "vectorize", "diff", "judge"):
        for state in ("queued", "running"):
            assert _sample(metrics, "monitor_cluster_tasks", step=step, state=state) == 0


@pytest.mark.slow
def test_monitor_process_on_the_cluster_gives_the_alerts_of_an_in_process_pass(dask_cluster, dask_client, reference,
                                                                              cli, engine, world, roof_model,
                                                                              tmp_path):  # noqa: F811
    _area_with_drops(engine, world, roof_model, tmp_path, DATES, parcels=True)
    out = cli("process", "--area", "demo", "--quiet", env={"MONITOR_DASK_SCHEDULER": dask_cluster.scheduler_address})
    summary = json.loads(out.stdout)
    assert summary["processed"] == 4 and summary["errors"] == []
    assert (_alerts(engine), _counts(engine)) == reference
    assert _runs(engine) == {"succeeded": 5}
    with engine.connect() as conn:
        steps = conn.execute(sa.text("SELECT steps FROM runs WHERE scene_id IS NOT NULL")).scalars().all()
    assert all(set(s) == {"infer", "vectorize", "diff", "judge"} for s in steps)
    # the steps ran on the workers, which loaded the model once each and kept it
    from monitor.ml import modelstore

    loaded = dask_client.run(lambda: [k[0] for k in modelstore._cache])
    assert sum(len(v) for v in loaded.values()) >= 1
    assert all(v == [str(roof_model.resolve())] for v in loaded.values() if v)


def test_step_tasks_are_counted_by_state_and_failures_after_retries(dask_cluster, dask_client, engine, settings):
    from monitor.cluster import executor

    calls = []

    def failing(engine, x):
        calls.append(x)
        raise RuntimeError(f"step failed on {x}")

    on_cluster = settings.model_copy(update={"dask_scheduler": dask_cluster.scheduler_address, "dask_retries": 1})
    metrics = Metrics()
    with executor(engine, on_cluster, metrics) as ex:
        assert ex.call("diff", _count_rows, "parcels") == 0
        # a task is counted queued, then running once a worker starts it, then neither
        waiting = threading.Thread(target=ex.call, args=("vectorize", _sleep, 3))
        waiting.start()
        deadline = time.monotonic() + 30
        while _sample(metrics, "monitor_cluster_tasks", step="vectorize", state="running") != 1:
            assert time.monotonic() < deadline, "the task was never counted running"
            time.sleep(0.05)
        assert _sample(metrics, "monitor_cluster_tasks", step="vectorize", state="queued") == 0
        waiting.join(30)
        assert _sample(metrics, "monitor_cluster_tasks", step="vectorize", state="running") == 0
        with pytest.raises(RuntimeError, match="step failed on 3"):
            ex.call("judge", failing, 3)
    assert calls == []  # it ran on the workers, not here
    assert _sample(metrics, "monitor_cluster_task_failures_total", step="judge") == 1
    assert _sample(metrics, "monitor_cluster_task_failures_total", step="diff") == 0


def _sleep(engine, seconds: float) -> None:
    time.sleep(seconds)


def _count_rows(engine, table: str) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar()


def test_an_unreachable_scheduler_is_a_config_error(cli, engine, world, roof_model, tmp_path):  # noqa: F811
    import socket

    _area_with_drops(engine, world, roof_model, tmp_path, DATES[:1])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = cli("process", "--area", "demo", "--quiet", expect=2,
              env={"MONITOR_DASK_SCHEDULER": f"tcp://127.0.0.1:{port}", "MONITOR_DASK_CONNECT_TIMEOUT_S": "1"})
    assert f"MONITOR_DASK_SCHEDULER=tcp://127.0.0.1:{port}" in out.stderr
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM runs")).scalar() == 0


def _named_area(engine, name: str, world, model, drops) -> int:  # noqa: F811
    import shutil

    from monitor.db.engine import transaction
    from monitor.domain import AreaSpec
    from monitor.inventory.areas import add_area, configure_area

    drops.mkdir()
    for date in DATES:
        shutil.copy2(world.scenes[date], drops)
    with transaction(engine) as s:
        spec = AreaSpec.parse(name, cadence="1d", providers="local", max_cloud=40, sources={"local": str(drops)},
                              resolution_m=2.0)
        area = add_area(s, spec, world.area)
        configure_area(s, name, models={"segmenter": str(model)})
        return area.id


@pytest.mark.slow
def test_two_areas_run_at_once_on_two_workers(dask_cluster, dask_client, engine, settings, world, roof_model,
                                              tmp_path):  # noqa: F811
    from distributed import get_task_stream

    areas = [_named_area(engine, name, world, roof_model, tmp_path / name) for name in ("north", "south")]
    on_cluster = settings.model_copy(update={"dask_scheduler": dask_cluster.scheduler_address})
    results: dict[int, dict] = {}

    def one(area_id: int) -> None:
        results[area_id] = run_area(engine, area_id, on_cluster, Metrics())

    with get_task_stream(dask_client) as stream:
        threads = [threading.Thread(target=one, args=(a,)) for a in areas]
        for t in threads:
            t.start()
        for t in threads:
            t.join(240)
    assert all(results[a]["processed"] == 4 and results[a]["errors"] == [] for a in areas)
    spans = [(ss["start"], ss["stop"], task["worker"]) for task in stream.data for ss in task["startstops"]
             if ss["action"] == "compute"]
    assert len({w for _s, _e, w in spans}) == 2, "both workers ran steps"
    overlapping = [(a, b) for a in spans for b in spans if a[2] != b[2] and a[0] < b[1] and b[0] < a[1]]
    assert overlapping, "steps of the two areas ran at the same time on the two workers"
    with engine.connect() as conn:
        per_area = dict(conn.execute(sa.text(
            "SELECT area_id, count(*) FROM scenes WHERE status = 'processed' GROUP BY area_id")).all())
    assert per_area == {a: 4 for a in areas}
