"""``monitor run``: the daemon (scheduler, HTTP API and /metrics in one process)."""

from __future__ import annotations

import logging
import os
import signal
import threading

import typer
import uvicorn

from monitor.api import create_app
from monitor.cli.common import state, warn
from monitor.db import migrate
from monitor.metrics import default_metrics
from monitor.scheduler import Scheduler

log = logging.getLogger(__name__)



def run(
    ctx: typer.Context,
    host: str = typer.Option(None, help="Address to listen on. Default: MONITOR_API_HOST."),
    port: int = typer.Option(None, help="Port to listen on. Default: MONITOR_API_PORT."),
    scheduler: bool = typer.Option(True, "--scheduler/--no-scheduler",
                                   help="Take part in scheduling (leader election), or serve the API only."),
) -> None:
    """Run the daemon: the scheduler (one replica leads), the HTTP API and /metrics, in one process.

    SIGTERM or Ctrl-C stops taking new work, lets the running pipeline step finish and exits 0;
    a second signal exits at once (the next start resumes the interrupted pass).
    """

    st = state(ctx)
    settings = st.settings
    engine = st.engine
    if migrate.current(engine) != migrate.head():
        warn("the database schema is not at head: run `monitor db upgrade` (/readyz reports not ready)")
    metrics = default_metrics()
    sched = Scheduler(engine, settings, metrics) if scheduler else None
    app = create_app(settings, engine=engine, metrics=metrics, scheduler_state=sched.role if sched else None)
    host = host or settings.api_host
    port = settings.api_port if port is None else port
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=settings.log_level.lower(),
                                           access_log=False, log_config=None))
    stop = threading.Event()

    def on_signal(signum, _frame) -> None:
        if stop.is_set():
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(1)
        log.info("%s: finishing the current step, then exiting", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    # Serving from a thread keeps uvicorn away from the signals, which this thread handles.
    web = threading.Thread(target=server.run, name="api", daemon=True)
    web.start()
    if sched:
        sched.start()
    typer.echo(f"monitor daemon: API and /metrics on http://{host}:{port} (review page at /, docs at /docs), "
               f"scheduler {'on' if sched else 'off'}", err=True)
    failed = False
    try:
        while not stop.wait(0.5):
            if not web.is_alive():
                failed = True
                break
    finally:
        server.should_exit = True
        web.join(timeout=10)
        if sched:
            sched.stop(wait=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failed:
        typer.secho(f"error: the API server stopped (is {host}:{port} free?)", err=True, fg="red")
        raise typer.Exit(1)
    typer.echo("monitor daemon stopped", err=True)
