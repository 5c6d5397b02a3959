"""The daemon's scheduler: one APScheduler job per active area, run by exactly one replica.

Replicas compete for a PostgreSQL session advisory lock held on a dedicated connection. The
holder (the leader) runs an APScheduler ``BackgroundScheduler`` whose jobs live in the same
database (``apscheduler_jobs``), so a new leader carries on where the old one stopped; the others
stand by and try to take the lock every ``scheduler_sync_s``. When the leader's connection dies
(process killed, network lost), PostgreSQL drops its lock and a standby takes over. The leader
re-reads the areas on the same beat, so areas added, changed, paused or removed while it runs
are picked up.

Jobs call module-level trampolines (APScheduler stores a reference to its callable), which hand
over to the job wrapper of the leading ``Scheduler`` of this process: it owns the database
session, the timing and the failure isolation of each run.
"""

from __future__ import annotations

import datetime as dt
import inspect
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable

import sqlalchemy as sa
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import STATE_RUNNING
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import Engine, func, select

from monitor.alerts.webhooks import deliver_pending
from monitor.db.engine import transaction
from monitor.db.tables import Area, Run
from monitor.errors import MonitorError
from monitor.metrics import Metrics, default_metrics
from monitor.pipeline import run_area
from monitor.settings import Settings

log = logging.getLogger(__name__)

#: Advisory lock key of the scheduler leader: "monitor" in ASCII.
LOCK_KEY = int.from_bytes(b"monitor", "big")
JOBS_TABLE = "apscheduler_jobs"
WEBHOOK_JOB = "webhooks"
AREA_PREFIX = "area-"


_instances: dict[str, Scheduler] = {}

AreaJob = Callable[..., object]


def _area_job(area_id: int, replica: str) -> None:
    inst = _instances.get(replica)
    if inst is None:
        log.warning("area %s: no scheduler %s in this process; run skipped", area_id, replica)
        return
    inst.run_area(area_id)


def _webhook_job(replica: str) -> None:
    inst = _instances.get(replica)
    if inst is not None:
        inst.deliver_webhooks()


class _BackgroundScheduler(BackgroundScheduler):
    def _process_jobs(self):
        # APScheduler makes one more pass after shutdown; a job due then would fail to submit yet
        # have its next run time advanced, losing that run. Only a running scheduler processes jobs.
        if self.state != STATE_RUNNING:
            return None
        return super()._process_jobs()


class Scheduler:
    """Leader election, job sync and the job wrapper of one replica.

    ``job`` is what a scheduled area run calls, as ``job(engine, area_id, settings, metrics=...)``
    (and ``stop=`` a ``threading.Event`` set on shutdown, when it takes one); the default is
    ``monitor.pipeline.run_area``. ``sync_s`` defaults to ``settings.scheduler_sync_s``.
    """

    def __init__(self, engine: Engine, settings: Settings, metrics: Metrics | None = None, *,
                 job: AreaJob | None = None, sync_s: float | None = None, lock_key: int = LOCK_KEY) -> None:
        self.engine = engine
        self.settings = settings
        self.metrics = metrics if metrics is not None else default_metrics()
        self.job = job
        self.sync_s = settings.scheduler_sync_s if sync_s is None else sync_s
        self.lock_key = lock_key
        self.replica = uuid.uuid4().hex[:12]
        self.stopping = threading.Event()
        self._aps: BackgroundScheduler | None = None
        self._lock_engine: Engine | None = None
        self._lock_conn: sa.Connection | None = None
        self._thread: threading.Thread | None = None
        self._role = "stopped"
        self._mutex = threading.RLock()

    # --- state

    def role(self) -> str:
        """``leader``, ``standby`` or ``stopped``."""
        return self._role

    @property
    def is_leader(self) -> bool:
        """Whether this replica schedules."""
        return self._role == "leader"

    # --- life cycle

    def start(self) -> None:
        """Start competing for leadership in a background thread."""
        if self._thread is not None:
            return
        self.stopping.clear()
        self._role = "standby"
        self.metrics.scheduler_leader.set(0)
        self._thread = threading.Thread(target=self._loop, name=f"scheduler-{self.replica}", daemon=True)
        self._thread.start()

    def stop(self, wait: bool = True) -> None:
        """Stop scheduling; with ``wait``, let a running job finish first. Releases the lock."""
        self.stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._mutex:
            self._step_down("stopping", wait=wait)
            self._close_lock()
            self._role = "stopped"

    def _loop(self) -> None:
        while not self.stopping.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("scheduler %s: tick failed", self.replica)
            self.stopping.wait(self.sync_s)

    def tick(self) -> None:
        """One beat: a standby tries to take the lead; the leader checks its lock and syncs jobs."""
        with self._mutex:
            if self.stopping.is_set():
                return
            if self._aps is None:
                if self._try_lock():
                    self._lead()
            elif not self._lock_alive():
                self._step_down("lost its database lock connection")
                self._close_lock()
            else:
                self.sync()

    # --- the lock

    def _try_lock(self) -> bool:
        try:
            if self._lock_conn is None:
                if self._lock_engine is None:
                    # Keepalives make a leader whose network vanished notice, and the server drop it.
                    self._lock_engine = sa.create_engine(
                        self.engine.url, poolclass=sa.pool.NullPool,
                        connect_args={"application_name": f"monitor-scheduler-{self.replica}", "keepalives": 1,
                                      "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3})
                self._lock_conn = self._lock_engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            return bool(self._lock_conn.scalar(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": self.lock_key}))
        except sa.exc.SQLAlchemyError as e:
            log.warning("scheduler %s: cannot reach the database for the leader lock: %s", self.replica,
                        str(e).splitlines()[0])
            self._close_lock()
            return False

    def _lock_alive(self) -> bool:
        if self._lock_conn is None:
            return False
        try:
            self._lock_conn.execute(sa.text("SELECT 1"))
            return True
        except sa.exc.SQLAlchemyError:
            return False

    def _close_lock(self) -> None:
        if self._lock_conn is not None:
            try:
                self._lock_conn.close()  # closing the session releases the advisory lock
            except sa.exc.SQLAlchemyError:
                pass
            self._lock_conn = None
        if self._lock_engine is not None:
            self._lock_engine.dispose()
            self._lock_engine = None

    # --- leading

    def _lead(self) -> None:
        aps = _BackgroundScheduler(
            jobstores={"default": SQLAlchemyJobStore(engine=self.engine, tablename=JOBS_TABLE)},
            # Areas one at a time here; with a Dask cluster, as many at once as dask_areas.
            executors={"default": ThreadPoolExecutor(self.settings.dask_areas if self.settings.dask_scheduler else 1),
                       "webhooks": ThreadPoolExecutor(1)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone=dt.timezone.utc)
        _instances[self.replica] = self
        # Paused until every stored job points at this replica, so none runs for a vanished one.
        aps.start(paused=True)
        self._aps = aps
        try:
            self.sync(rebind=True)
        except Exception:
            self._step_down("could not load its jobs", wait=False)
            self._close_lock()
            raise
        aps.resume()
        self._role = "leader"
        self.metrics.scheduler_leader.set(1)
        log.info("scheduler %s leads", self.replica)

    def _step_down(self, why: str, wait: bool = False) -> None:
        aps, self._aps = self._aps, None
        if aps is not None:
            log.log(logging.INFO if why == "stopping" else logging.WARNING, "scheduler %s stops leading: %s",
                    self.replica, why)
            aps.pause()
            aps.shutdown(wait=wait)
        _instances.pop(self.replica, None)
        if not self.stopping.is_set():
            self._role = "standby"
        self.metrics.scheduler_leader.set(0)
        self.metrics.scheduled_areas.set(0)

    def sync(self, rebind: bool = False) -> dict[str, int]:
        """Make the job store match the active areas; returns counts of added, changed, removed jobs."""
        aps = self._aps
        if aps is None:
            return {"added": 0, "changed": 0, "removed": 0}
        jitter = max(0, int(self.settings.scheduler_jitter_s))
        with transaction(self.engine) as s:
            areas = {f"{AREA_PREFIX}{a.id}": a for a in s.execute(
                select(Area.id, Area.name, Area.cadence).where(Area.active.is_(True)))}
        jobs = {j.id: j for j in aps.get_jobs()}
        now = dt.datetime.now(dt.timezone.utc)
        counts = {"added": 0, "changed": 0, "removed": 0}
        kwargs = {"replica": self.replica}
        for job_id, area in areas.items():
            # monitor.domain.parse_cadence and the database keep a cadence within 1 minute and 366 days.
            seconds = area.cadence.total_seconds()
            trigger = IntervalTrigger(seconds=seconds, jitter=jitter or None, timezone=dt.timezone.utc)
            job = jobs.get(job_id)
            if job is None:
                # A new area runs soon rather than one whole cadence from now.
                aps.add_job(_area_job, trigger, id=job_id, name=f"area {area.name}",
                            kwargs={"area_id": area.id, **kwargs}, executor="default",
                            next_run_time=now + dt.timedelta(seconds=random.uniform(0, jitter)))
                counts["added"] += 1
                continue
            if job.trigger.interval != trigger.interval or (job.trigger.jitter or 0) != jitter:
                aps.reschedule_job(job_id, trigger=trigger)
                counts["changed"] += 1
            if job.name != f"area {area.name}" or (rebind and job.kwargs.get("replica") != self.replica):
                aps.modify_job(job_id, name=f"area {area.name}", kwargs={"area_id": area.id, **kwargs})
        for job_id in jobs:
            if job_id.startswith(AREA_PREFIX) and job_id not in areas:
                aps.remove_job(job_id)
                counts["removed"] += 1
        hook = jobs.get(WEBHOOK_JOB)
        poll = dt.timedelta(seconds=self.settings.webhook_poll_s)
        if hook is None or hook.trigger.interval != poll or hook.kwargs.get("replica") != self.replica:
            aps.add_job(_webhook_job, IntervalTrigger(seconds=self.settings.webhook_poll_s, timezone=dt.timezone.utc),
                        id=WEBHOOK_JOB, name="webhook deliveries", kwargs=kwargs, executor="webhooks",
                        replace_existing=True, next_run_time=now)
        self.metrics.scheduled_areas.set(len(areas))
        if any(counts.values()):
            log.info("scheduler %s: jobs %s", self.replica, counts)
        return counts

    def jobs(self) -> list[dict]:
        """The scheduled jobs (empty unless leading): id, name, interval in seconds, next run time."""
        aps = self._aps
        if aps is None:
            return []
        return [{"id": j.id, "name": j.name, "interval_s": j.trigger.interval.total_seconds(),
                 "next_run_time": j.next_run_time} for j in aps.get_jobs()]

    # --- the job wrapper

    def _area_callable(self) -> AreaJob:
        if self.job is not None:
            return self.job
        return run_area

    def run_area(self, area_id: int) -> object:
        """Run one area through the job, isolating its failure; returns its result.

        Every scheduled run leaves a ``runs`` row and a ``monitor_runs_total`` count: the job's own
        when it records one (the pipeline does), else the wrapper's. A run whose summary has a
        ``next_attempt_at`` sooner than the next run by cadence brings that run forward.
        """
        with transaction(self.engine) as s:
            area = s.get(Area, area_id)
            if area is None or not area.active:
                log.info("area %s is gone or paused; run skipped", area_id)
                return None
            name = area.name
            last_run = s.scalar(select(func.max(Run.id))) or 0
        started_at = dt.datetime.now(dt.timezone.utc)
        t0 = time.monotonic()
        error: Exception | None = None
        result = None
        try:
            job = self._area_callable()
            extra = {"stop": self.stopping} if "stop" in inspect.signature(job).parameters else {}
            result = job(self.engine, area_id, self.settings, metrics=self.metrics, **extra)
        except Exception as e:
            error = e
        seconds = time.monotonic() - t0
        self.metrics.step_duration.labels("run").observe(seconds)
        if error is None:
            log.info("run of area %r done in %.1f s", name, seconds)
        elif self.stopping.is_set():
            log.info("run of area %r stopped after %.1f s: %s", name, seconds, error)
        elif isinstance(error, MonitorError):
            log.error("run of area %r failed after %.1f s: %s", name, seconds, error)
        else:
            log.error("run of area %r failed after %.1f s", name, seconds, exc_info=error)
        self._record(area_id, name, last_run, started_at, seconds, error)
        if isinstance(result, dict) and result.get("next_attempt_at"):
            self._run_again_at(area_id, dt.datetime.fromisoformat(str(result["next_attempt_at"])))
        return result

    def _run_again_at(self, area_id: int, when: dt.datetime) -> None:
        """Bring the area's next run forward to ``when`` (the first retry a pass left waiting) when that
        is sooner than its cadence; the cadence goes on from then."""
        aps = self._aps
        job = aps.get_job(f"{AREA_PREFIX}{area_id}") if aps is not None else None
        if aps is not None and job is not None and job.next_run_time is not None and when < job.next_run_time:
            aps.modify_job(job.id, next_run_time=when)
            log.info("area %s runs again at %s, when a scene is due for another try", area_id, when)

    def _record(self, area_id: int, name: str, last_run: int, started_at: dt.datetime, seconds: float,
                error: Exception | None) -> None:
        status = "succeeded" if error is None else "failed"
        message = None if error is None else f"{type(error).__name__}: {error}"
        try:
            with transaction(self.engine) as s:
                if s.scalar(select(func.count()).select_from(Run).where(Run.area_id == area_id, Run.id > last_run)):
                    return
                s.add(Run(area_id=area_id, status=status, error=message, started_at=started_at,
                          finished_at=dt.datetime.now(dt.timezone.utc),
                          steps={"run": {"status": status, "seconds": round(seconds, 3), "error": message}}))
        except sa.exc.SQLAlchemyError:
            log.exception("could not record the run of area %r", name)
        self.metrics.runs.labels(name, status).inc()
        if error is None:
            self.metrics.last_success.labels(name).set(time.time())
        else:
            self.metrics.run_errors.labels(name, "run").inc()

    def deliver_webhooks(self) -> int:
        """Send due webhook deliveries; a failure is logged and retried on the next beat."""
        t0 = time.monotonic()
        try:
            return deliver_pending(self.engine, self.settings, self.metrics)
        except Exception:
            self.metrics.run_errors.labels("", "webhooks").inc()
            log.exception("webhook deliveries failed")
            return 0
        finally:
            self.metrics.step_duration.labels("webhooks").observe(time.monotonic() - t0)
