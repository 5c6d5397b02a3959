"""``monitor process`` and ``monitor demo``."""

from __future__ import annotations

from pathlib import Path

import typer

from monitor.cli.common import echo_json, state


def process(ctx: typer.Context,
            area: str = typer.Option(..., "--area", help="The area to run."),
            quiet: bool = typer.Option(False, "--quiet", help="No progress bars.")) -> None:
    """Run one pipeline pass over an area: search, fetch, infer, vectorize, diff, judge, notify."""
    from monitor.pipeline import run_area
    from monitor.registry.areas import get_area

    st = state(ctx)
    with st.transaction() as session:
        area_id = get_area(session, area).id
    summary = run_area(st.engine, area_id, st.settings, progress=not quiet)
    echo_json(summary)
    if summary["errors"]:
        raise typer.Exit(1)


def demo(ctx: typer.Context,
         out: Path = typer.Option(Path("demo-out"), "--out", help="Folder for the alerts GeoJSON, evidence chips "
                                  "and the overview picture."),
         serve: bool = typer.Option(False, "--serve", help="Keep the API and /metrics up afterwards."),
         seed: int = typer.Option(7, help="Seed of the synthetic world and the demo models.")) -> None:
    """The whole job on a synthetic world: train or reuse small models, register the area, parcels and
    permits, run the pipeline date by date through the local provider, and summarize."""
    from monitor.demo import run_demo

    st = state(ctx)
    run_demo(st.settings, out, seed=seed, serve=serve)
