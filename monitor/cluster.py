"""Where the steps of a scene run: in this process, or on a Dask distributed cluster.

``executor(engine, settings, metrics)`` gives the runner of a pass. Unless ``MONITOR_DASK_SCHEDULER``
is set it calls each step function here, as ``fn(engine, *args, **kwargs)``. With a scheduler
address each call becomes a task on the cluster: any worker runs it with an engine of its own on
the same database (one per worker process, kept), inference tasks ask for the ``GPU`` resource when
some worker offers it, failed tasks are retried, and Dask reruns elsewhere the tasks of a worker
that died. The caller waits for each result, so the steps of one area keep their order; areas run
at once from as many threads.

Workers are plain ``dask worker`` processes started from the project's environment; the models
they load stay in the worker process (``monitor.ml.modelstore`` caches them per path), and the
metrics of the steps they run are the worker's own (its ``/metrics``). This side counts, per step,
the tasks queued and running on the cluster and those that failed.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from distributed import Client, get_worker
from sqlalchemy import Engine, create_engine

from monitor.errors import ConfigError
from monitor.metrics import Metrics
from monitor.settings import Settings

#: Steps that run a model: they ask for a GPU when the cluster has GPU workers.
GPU_STEPS = ("infer",)
#: Topic of the events workers send when a step's task starts.
TOPIC = "monitor-steps"


class Executor(Protocol):
    """Runs one step function of a scene and returns its (JSON-able) result."""

    def call(self, step: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(engine, *args, **kwargs)``, somewhere."""
        ...


class InProcess:
    """Every step in this process, on the caller's engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def call(self, step: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(engine, *args, **kwargs)`` here."""
        return fn(self.engine, *args, **kwargs)


class OnCluster:
    """Every step a task on the Dask cluster of ``client``; ``metrics=`` of a call is left to the worker's own."""

    def __init__(self, client: Client, engine: Engine, metrics: Metrics, retries: int) -> None:
        self.client, self.metrics, self.retries = client, metrics, retries
        self.url = engine.url.render_as_string(hide_password=False)
        self._states: dict[str, tuple[str, str]] = {}  # task key -> (step, queued | running)
        self._lock = threading.Lock()
        client.subscribe_topic(TOPIC, self._started)

    def _has_gpu(self) -> bool:
        workers = self.client.scheduler_info().get("workers", {}).values()
        return any(w.get("resources", {}).get("GPU") for w in workers)

    def _move(self, key: str, state: str | None, only_from: str | None = None) -> None:
        """Task ``key`` to ``state`` (None: done), updating the gauges of its step."""
        with self._lock:
            old = self._states.get(key)
            if old is None or (only_from is not None and old[1] != only_from):
                return
            step = old[0]
            self.metrics.cluster_tasks.labels(step, old[1]).dec()
            if state is None:
                del self._states[key]
            else:
                self._states[key] = (step, state)
                self.metrics.cluster_tasks.labels(step, state).inc()

    def _started(self, event: tuple[float, dict]) -> None:
        self._move(event[1]["key"], "running", only_from="queued")

    def call(self, step: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Submit ``fn`` as a task named after ``step`` and wait for its result."""
        kwargs.pop("metrics", None)
        key = f"{step}-{uuid.uuid4().hex}"
        resources = {"GPU": 1} if step in GPU_STEPS and self._has_gpu() else None
        with self._lock:
            self._states[key] = (step, "queued")
            self.metrics.cluster_tasks.labels(step, "queued").inc()
        try:
            future = self.client.submit(on_worker, key, fn, self.url, args, kwargs, key=key, pure=False,
                                        resources=resources, retries=self.retries)
            return future.result()
        except BaseException:
            self.metrics.cluster_task_failures.labels(step).inc()
            raise
        finally:
            self._move(key, None)


_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def worker_engine(url: str) -> Engine:
    """The engine of this worker process on the database ``url``, made once."""
    with _engines_lock:
        if url not in _engines:
            _engines[url] = create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=4)
        return _engines[url]


def on_worker(key: str, fn: Callable[..., Any], url: str, args: tuple, kwargs: dict) -> Any:
    """A step's task on a worker: tell the client it started, then run ``fn(engine, *args, **kwargs)``."""
    get_worker().log_event(TOPIC, {"key": key})
    return fn(worker_engine(url), *args, **kwargs)


@contextmanager
def executor(engine: Engine, settings: Settings, metrics: Metrics) -> Iterator[Executor]:
    """The runner of a pass: in this process, or a client of ``settings.dask_scheduler`` while the block runs."""
    if not settings.dask_scheduler:
        yield InProcess(engine)
        return
    try:
        client = Client(settings.dask_scheduler, timeout=settings.dask_connect_timeout_s, set_as_default=False)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot reach the Dask scheduler MONITOR_DASK_SCHEDULER={settings.dask_scheduler}: "
                          f"{e}") from e
    with client:
        yield OnCluster(client, engine, metrics, settings.dask_retries)
