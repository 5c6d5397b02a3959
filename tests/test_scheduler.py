"""The scheduler against a real PostGIS: leader election over an advisory lock (in-process replicas
and real `monitor run` processes), job sync with the areas, persistence of the job store, failure
isolation of the job wrapper, and a clean stop on SIGTERM."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from monitor.db.engine import transaction
from monitor.db.tables import Run
from monitor.inventory.areas import configure_area, remove_area
from monitor.metrics import Metrics
from monitor.scheduler import Scheduler
from tests.test_webhooks import free_port, make_area

BIN = Path(sys.executable).parent


def wait_for(predicate, timeout: float = 10.0, every: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def sample(metrics: Metrics, name: str, **labels) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


@pytest.fixture
def fast(settings):
    """Settings of a brisk daemon: no jitter, webhooks out of the way."""
    return settings.model_copy(update={"scheduler_jitter_s": 0, "webhook_poll_s": 3600.0})


@pytest.fixture
def replicas(db_url):
    """Makes schedulers, each on an engine of its own as in separate processes; stops them all."""
    made: list[tuple[Scheduler, sa.Engine]] = []

    def make(settings, job, sync_s: float = 0.1) -> Scheduler:
        eng = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
        sched = Scheduler(eng, settings, Metrics(CollectorRegistry()), job=job, sync_s=sync_s)
        made.append((sched, eng))
        return sched

    yield make
    for sched, eng in made:
        sched.stop(wait=True)
        eng.dispose()


def advisory_holders(engine, settle_s: float = 5.0) -> list[int]:
    """Backends holding an advisory lock; a closed connection's backend may take a moment to exit,
    so an answer that still lists one is asked again for up to ``settle_s`` seconds."""
    import time

    deadline = time.monotonic() + settle_s
    while True:
        with engine.connect() as conn:
            pids = list(conn.execute(sa.text(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")).scalars())
        if not pids or time.monotonic() > deadline:
            return pids
        time.sleep(0.1)


@pytest.mark.parametrize("cluster", [None, "tcp://127.0.0.1:9"], ids=["in-process", "dask-scheduler-set"])
def test_two_replicas_one_scheduler_and_takeover(engine, fast, tmp_path, replicas, cluster):
    """One leader, and a standby that takes over, as much with MONITOR_DASK_SCHEDULER set (the daemon
    then runs several areas at once) as without; the jobs here stand in for the pass itself."""
    fast = fast.model_copy(update={"dask_scheduler": cluster})
    calls: list[tuple[str, int]] = []

    def job_of(who):
        def job(eng, area_id, settings, metrics=None):
            calls.append((who, area_id))
            return {"ok": True}
        return job

    first = make_area(engine, tmp_path, "first", cadence="1h")
    one = replicas(fast, job_of("one"))
    two = replicas(fast, job_of("two"))
    one.start()
    two.start()
    leader = wait_for(lambda: next((r for r in (one, two) if r.is_leader), None), what="a leader")
    standby = two if leader is one else one
    who = "one" if leader is one else "two"
    # For a while, exactly one leads, holds the lock and runs the area's job once.
    for _ in range(10):
        assert leader.role() == "leader" and standby.role() == "standby"
        time.sleep(0.05)
    wait_for(lambda: calls, what="the first area's run")
    assert calls == [(who, first)]
    assert len(advisory_holders(engine)) == 1
    assert sample(leader.metrics, "monitor_scheduler_leader") == 1
    assert sample(standby.metrics, "monitor_scheduler_leader") == 0
    assert standby.jobs() == []
    with engine.connect() as conn:
        stored = set(conn.execute(sa.text("SELECT id FROM apscheduler_jobs")).scalars())
    assert stored == {f"area-{first}", "webhooks"}

    # The leader's lock connection dies: the standby takes over, the old leader stands by.
    (pid,) = advisory_holders(engine)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
    wait_for(lambda: standby.is_leader and not leader.is_leader, what="the standby to take over")
    assert sample(standby.metrics, "monitor_scheduler_leader") == 1
    assert sample(leader.metrics, "monitor_scheduler_leader") == 0
    assert len(advisory_holders(engine)) == 1
    # The new leader carries on from the shared job store: no second run of the first area, and
    # an area added now is picked up and run by the new leader only.
    second = make_area(engine, tmp_path, "second", cadence="1h", bounds=(-58.40, -34.60, -58.35, -34.55))
    new_who = "two" if who == "one" else "one"
    wait_for(lambda: (new_who, second) in calls, what="the new area's run")
    time.sleep(0.3)
    assert sorted(calls) == sorted([(who, first), (new_who, second)])


def test_jobs_follow_the_areas_and_survive_a_restart(engine, fast, tmp_path, replicas):
    # An hour of jitter: no area is due during the test, so next run times stay put.
    calm = fast.model_copy(update={"scheduler_jitter_s": 3600})
    sched = replicas(calm, lambda *a, **k: None, sync_s=3600)
    sched.tick()
    assert sched.is_leader
    assert [j["id"] for j in sched.jobs()] == ["webhooks"]

    area_id = make_area(engine, tmp_path, "a", cadence="5d")
    assert sched.sync() == {"added": 1, "changed": 0, "removed": 0}
    job = next(j for j in sched.jobs() if j["id"] == f"area-{area_id}")
    assert job["name"] == "area a" and job["interval_s"] == 5 * 86400
    assert sched.sync() == {"added": 0, "changed": 0, "removed": 0}

    with transaction(engine) as s:
        configure_area(s, "a", cadence="2d")
    assert sched.sync() == {"added": 0, "changed": 1, "removed": 0}
    job = next(j for j in sched.jobs() if j["id"] == f"area-{area_id}")
    assert job["interval_s"] == 2 * 86400
    assert sample(sched.metrics, "monitor_scheduled_areas") == 1

    with transaction(engine) as s:
        configure_area(s, "a", active=False)
    assert sched.sync() == {"added": 0, "changed": 0, "removed": 1}
    with transaction(engine) as s:
        configure_area(s, "a", active=True)
    assert sched.sync()["added"] == 1
    with transaction(engine) as s:
        remove_area(s, "a")
    assert sched.sync() == {"added": 0, "changed": 0, "removed": 1}
    assert sample(sched.metrics, "monitor_scheduled_areas") == 0

    # Jobs live in PostgreSQL: a restarted scheduler keeps each area's next run time.
    b = make_area(engine, tmp_path, "b", cadence="3d")
    sched.sync()
    before = {j["id"]: j["next_run_time"] for j in sched.jobs()}
    sched.stop()
    assert sched.role() == "stopped" and advisory_holders(engine) == []
    again = replicas(calm, lambda *a, **k: None, sync_s=3600)
    again.tick()
    assert again.is_leader
    after = {j["id"]: j["next_run_time"] for j in again.jobs()}
    assert after[f"area-{b}"] == before[f"area-{b}"]


def test_a_scene_waiting_for_a_retry_brings_the_next_run_forward(engine, fast, tmp_path, replicas):
    calls: list[dt.datetime] = []

    def job(engine_, area_id, settings, metrics=None):
        calls.append(dt.datetime.now(dt.timezone.utc))
        if len(calls) == 1:  # a scene failed for a transient reason: due again in a second, not in 5 days
            return {"next_attempt_at": (calls[0] + dt.timedelta(seconds=1)).isoformat()}
        return {}

    area_id = make_area(engine, tmp_path, "a", cadence="5d")
    sched = replicas(fast, job)
    sched.start()
    wait_for(lambda: len(calls) >= 2, timeout=20, what="the run of the retry")
    assert calls[1] - calls[0] >= dt.timedelta(seconds=0.9)
    # after the retry the cadence goes on from then
    next_run = wait_for(lambda: next(j for j in sched.jobs() if j["id"] == f"area-{area_id}")["next_run_time"],
                        what="the next run")
    assert next_run > calls[1] + dt.timedelta(days=4) and len(calls) == 2


def test_a_failing_area_never_stops_the_others(engine, fast, tmp_path, replicas):
    bad = make_area(engine, tmp_path, "bad", cadence="1h")
    good = make_area(engine, tmp_path, "good", cadence="1h", bounds=(-58.40, -34.60, -58.35, -34.55))
    own = make_area(engine, tmp_path, "own", cadence="1h", bounds=(-58.30, -34.60, -58.25, -34.55))
    ran: list[int] = []

    def job(eng, area_id, settings, metrics=None):
        ran.append(area_id)
        if area_id == bad:
            raise RuntimeError("provider exploded")
        if area_id == own:
            # Like the pipeline: a job that records its own run gets no second row from the wrapper.
            with transaction(eng) as s:
                s.add(Run(area_id=area_id, status="succeeded"))
        return {"processed": 1}

    sched = replicas(fast, job)
    sched.start()
    wait_for(lambda: len(ran) >= 3, what="three runs")
    wait_for(lambda: sample(sched.metrics, "monitor_runs_total", area="good", status="succeeded"), what="metrics")

    def run_rows() -> int:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT count(*) FROM runs")).scalar()

    wait_for(lambda: run_rows() >= 3, what="three run rows")  # a job commits its row after it starts
    assert sorted(ran) == sorted([bad, good, own])
    with transaction(engine) as s:
        runs = {(r.area_id, r.status, r.error) for r in s.scalars(sa.select(Run))}
    assert runs == {(bad, "failed", "RuntimeError: provider exploded"), (good, "succeeded", None),
                    (own, "succeeded", None)}
    m = sched.metrics
    assert sample(m, "monitor_runs_total", area="bad", status="failed") == 1
    assert sample(m, "monitor_run_errors_total", area="bad", step="run") == 1
    assert sample(m, "monitor_last_successful_run_timestamp_seconds", area="good") > time.time() - 60
    assert sample(m, "monitor_last_successful_run_timestamp_seconds", area="bad") is None
    assert sample(m, "monitor_step_duration_seconds_count", step="run") == 3
    # The failing area keeps its job: it is tried again at its next turn.
    assert sched.is_leader and f"area-{bad}" in {j["id"] for j in sched.jobs()}


def test_stop_lets_the_running_step_finish(engine, fast, tmp_path, replicas):
    make_area(engine, tmp_path, "slow", cadence="1h")
    started, finished = threading.Event(), threading.Event()

    def job(eng, area_id, settings, metrics=None, stop=None):
        started.set()
        assert stop.wait(10), "stop was never requested"
        time.sleep(0.2)  # the rest of the current step
        finished.set()
        return {}

    sched = replicas(fast, job)
    sched.start()
    assert started.wait(10)
    sched.stop(wait=True)
    assert finished.is_set() and sched.role() == "stopped"
    assert advisory_holders(engine) == []


# --- real processes

def _daemon(db_url: str, home: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "DATABASE_URL": db_url, "MONITOR_HOME": str(home), "MONITOR_SCHEDULER_SYNC_S": "0.2",
           "MONITOR_LOG_LEVEL": "INFO"}
    return subprocess.Popen([str(BIN / "monitor"), "run", "--port", str(port)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _ready(port: int) -> dict | None:
    try:
        r = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
    except httpx.HTTPError:
        return None
    return r.json() if r.status_code == 200 else None


def test_two_daemons_kill_the_leader_then_sigterm(db_url, engine, tmp_path, cli):
    ports = [free_port(), free_port()]
    procs = [_daemon(db_url, tmp_path / "home", p) for p in ports]
    try:
        roles = wait_for(lambda: (lambda rs: rs if all(rs) and sorted(r["scheduler"] for r in rs) == ["leader", "standby"]
                                  else None)([_ready(p) for p in ports]), timeout=40, every=0.2,
                         what="one leader and one standby")
        lead = 0 if roles[0]["scheduler"] == "leader" else 1
        other = 1 - lead
        metrics = httpx.get(f"http://127.0.0.1:{ports[lead]}/metrics").text
        assert "monitor_scheduler_leader 1.0" in metrics
        token = cli("tokens", "create", "ops", "--scope", "read").stdout.strip()
        r = httpx.get(f"http://127.0.0.1:{ports[other]}/areas", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and r.json() == []

        procs[lead].kill()  # kill -9: the server drops its session and its lock
        procs[lead].wait(10)
        wait_for(lambda: (_ready(ports[other]) or {}).get("scheduler") == "leader", timeout=15, every=0.2,
                 what="the standby daemon to take over")

        procs[other].send_signal(signal.SIGTERM)
        out, err = procs[other].communicate(timeout=30)
        assert procs[other].returncode == 0, err
        assert "monitor daemon stopped" in err
        assert advisory_holders(engine) == []
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
