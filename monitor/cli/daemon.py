"""``monitor run`` (the daemon), ``monitor tokens`` and ``monitor subscriptions``."""

from __future__ import annotations

import logging
import os
import signal
import threading

import typer

from monitor.cli.common import echo_json, new_app, state, table, warn

log = logging.getLogger(__name__)

tokens = new_app("Create, list and revoke the HTTP API's bearer tokens.")
subscriptions = new_app("Webhook subscriptions: where new and escalated alerts are POSTed.")


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
    import uvicorn

    from monitor.api import create_app
    from monitor.db import migrate
    from monitor.metrics import default_metrics
    from monitor.scheduler import Scheduler

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
    typer.echo(f"monitor daemon: API and /metrics on http://{host}:{port} (docs at /docs), "
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


# --- tokens

@tokens.command("create")
def tokens_create(ctx: typer.Context, name: str = typer.Argument(..., help="Who or what the token is for."),
                  scope: str = typer.Option("read", "--scope", help="read (GET only) or write (read and change).")
                  ) -> None:
    """Make a token. It is printed once, alone on stdout; only its hash is stored."""
    from monitor.auth import create_token

    with state(ctx).transaction() as session:
        row, token = create_token(session, name, scope)
        scopes = ",".join(row.scopes)
    typer.echo(f"token {name!r} ({scopes}); it is shown only now:", err=True)
    typer.echo(token)


@tokens.command("list")
def tokens_list(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List tokens (never the tokens themselves)."""
    from monitor.auth import list_tokens

    with state(ctx).transaction() as session:
        rows = [{"id": t.id, "name": t.name, "scopes": list(t.scopes), "created_at": t.created_at.isoformat(),
                 "revoked_at": t.revoked_at.isoformat() if t.revoked_at else None} for t in list_tokens(session)]
    if as_json:
        echo_json(rows)
    elif not rows:
        typer.echo("no tokens yet: make one with `monitor tokens create NAME --scope read|write`")
    else:
        typer.echo(table([(r["id"], r["name"], ",".join(r["scopes"]), r["created_at"][:19],
                           (r["revoked_at"] or "")[:19]) for r in rows],
                         ["id", "name", "scopes", "created", "revoked"]))


@tokens.command("revoke")
def tokens_revoke(ctx: typer.Context, name: str = typer.Argument(..., help="The token's name (or id).")) -> None:
    """Revoke a token: requests that carry it get 401 from now on."""
    from monitor.auth import revoke_token

    with state(ctx).transaction() as session:
        n = revoke_token(session, name)
    typer.echo(f"{n} token(s) named {name!r} revoked")


# --- subscriptions

@subscriptions.command("add")
def subscriptions_add(
    ctx: typer.Context,
    url: str = typer.Argument(..., help="Where to POST alerts (http or https)."),
    secret: str = typer.Option(..., "--secret", help="Shared secret; each POST carries X-Monitor-Signature: "
                               "sha256=HMAC-SHA256(secret, body)."),
    area: str = typer.Option(None, "--area", help="Only this area's alerts (default: every area)."),
    min_confidence: str = typer.Option("probable", "--min-confidence",
                                       help="probable (every new alert) or confirmed (only once confirmed "
                                            "on a second date)."),
) -> None:
    """Subscribe a URL to new and escalated alerts."""
    from monitor.alerts.webhooks import add_subscription

    with state(ctx).transaction() as session:
        sub = add_subscription(session, url, secret, area=area, min_confidence=min_confidence)
        sub_id = sub.id
    typer.echo(f"subscription {sub_id}: {url} ({area or 'every area'}, {min_confidence} and up)")


@subscriptions.command("list")
def subscriptions_list(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List subscriptions with their deliveries by status (secrets are not shown)."""
    from monitor.alerts.webhooks import list_subscriptions

    with state(ctx).transaction() as session:
        rows = list_subscriptions(session)
    if as_json:
        echo_json(rows)
    elif not rows:
        typer.echo("no subscriptions yet: add one with `monitor subscriptions add URL --secret S`")
    else:
        typer.echo(table([(r["id"], r["url"], r["area"] or "(all)", r["min_confidence"], r["deliveries"]["pending"],
                           r["deliveries"]["succeeded"], r["deliveries"]["failed"]) for r in rows],
                         ["id", "url", "area", "min_confidence", "pending", "succeeded", "failed"]))


@subscriptions.command("remove")
def subscriptions_remove(ctx: typer.Context, subscription_id: int = typer.Argument(..., help="The id shown by "
                                                                                    "`subscriptions list`.")) -> None:
    """Remove a subscription and its delivery history."""
    from monitor.alerts.webhooks import remove_subscription

    with state(ctx).transaction() as session:
        remove_subscription(session, subscription_id)
    typer.echo(f"subscription {subscription_id} removed")
