"""``monitor process`` and ``monitor demo``."""

from __future__ import annotations

from pathlib import Path

import typer
import uvicorn

from monitor.api import create_app
from monitor.cli.common import echo_json, parse_date, state
from monitor.demo import run_demo
from monitor.errors import BadInput
from monitor.inventory.areas import get_area
from monitor.metrics import default_metrics
from monitor.pipeline import run_area


def process(ctx: typer.Context,
            area: str = typer.Option(..., "--area", help="The area to run."),
            reprocess: bool = typer.Option(False, "--reprocess", help="Instead of a pass: run the area's processed "
                                           "scenes again with its current models, oldest first, replacing their "
                                           "detections, changes and settlement layers; alerts keep their ids and "
                                           "reviewers' verdicts, and nothing is raised twice."),
            since: str = typer.Option(None, "--since", help="With --reprocess: only scenes acquired on or after "
                                      "this date (YYYY-MM-DD)."),
            quiet: bool = typer.Option(False, "--quiet", help="No progress bars.")) -> None:
    """Run one pipeline pass over an area: search, fetch, infer, vectorize, diff, judge, notify.
    While another pass over the area runs, says the area is busy and exits 0. A failed search or
    scene does not stop the others: the summary lists them and the command exits 1 after the work."""
    st = state(ctx)
    if since is not None and not reprocess:
        raise BadInput("--since goes with --reprocess", field="since")
    day = parse_date(since, "since")
    with st.transaction() as session:
        area_id = get_area(session, area).id
    summary = run_area(st.engine, area_id, st.settings, progress=not quiet, reprocess=reprocess, since=day)
    if summary.get("busy"):
        typer.echo(f"area {area!r} is busy: another pass over it is running; nothing done", err=True)
        return
    echo_json(summary)
    if summary.get("waiting") and not any(summary.get(k) for k in ("found", "fetched", "processed", "errors")):
        typer.echo(f"nothing to do in {area!r}: {summary['waiting']} scene(s) wait for a later try (a transient "
                   f"failure, an offline product); the next is due at {summary['next_attempt_at']} "
                   f"(`monitor scenes retry --area {area} --failed` re-queues failed ones now)", err=True)
    if summary["errors"]:
        typer.secho(f"error: {len(summary['errors'])} failure(s) in {area!r}: "
                    + " | ".join(e.splitlines()[0] for e in summary["errors"]), err=True, fg="red")
        raise typer.Exit(1)


def demo(ctx: typer.Context,
         out: Path = typer.Option(Path("demo-out"), "--out", help="Folder for the alerts GeoJSON, evidence chips "
                                  "and the overview picture."),
         serve: bool = typer.Option(False, "--serve", help="Keep the API and /metrics up afterwards."),
         seed: int = typer.Option(7, help="Seed of the synthetic world and the demo models.")) -> None:
    """The whole job on a synthetic world: train or reuse small models, register the area, parcels and
    permits, run the pipeline date by date through the local provider, and summarize."""
    st = state(ctx)
    run_demo(st.settings, out, seed=seed)
    if serve:
        settings = st.settings
        typer.secho(f"serving the review page on http://{settings.api_host}:{settings.api_port}/ (sign in with a "
                    "token from `monitor tokens create NAME --scope write`), the API's documentation at /docs, "
                    "and /metrics (Ctrl-C stops)", fg="cyan", err=True)
        app = create_app(settings, engine=st.engine, metrics=default_metrics())
        uvicorn.run(app, host=settings.api_host, port=settings.api_port, log_level="warning")
