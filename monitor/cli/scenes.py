"""``monitor scenes``: search, fetch, list and retry the imagery of an area."""

from __future__ import annotations

import datetime as dt

import typer
from sqlalchemy import or_, select
from tqdm import tqdm

from monitor.cli.common import echo_json, new_app, state, table, warn
from monitor.db.queries import requeue_scenes
from monitor.db.tables import Scene
from monitor.domain import SceneStatus
from monitor.errors import BadInput, NotFound
from monitor.imagery.service import fetch_scene, pending_scenes, requeue_due, search_scenes
from monitor.inventory.areas import get_area

app = new_app("Find, download and prepare imagery of an area.")


def _when(text: str | None, option: str) -> dt.date | dt.datetime | None:
    if text is None:
        return None
    try:
        if len(text) == 10:
            return dt.date.fromisoformat(text)
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadInput(f"{text!r} is not a date (YYYY-MM-DD) or an ISO date-time", field=option) from None


def _row(s) -> list:
    cloud = s.cloud_cover if s.cloud_cover is not None else (s.remote or {}).get("scene_cloud_cover")
    return [s.id, f"{s.acquired_at:%Y-%m-%d %H:%M}", s.provider, s.product_id,
            "" if cloud is None else f"{cloud:.1f}", s.status, s.status_reason or s.file_path or ""]


HEADERS = ["id", "acquired (UTC)", "provider", "product", "cloud %", "status", "file / reason"]


@app.command("search")
def search(ctx: typer.Context,
           area: str = typer.Option(..., "--area", help="The area's name."),
           since: str = typer.Option(None, "--since", help="First acquisition date (YYYY-MM-DD). Default: a day "
                                     "before the newest scene found, or MONITOR_SEARCH_LOOKBACK_DAYS ago."),
           until: str = typer.Option(None, "--until", help="Last acquisition date, inclusive (YYYY-MM-DD). "
                                     "Default: now.")) -> None:
    """Search the area's providers (in order, the next when one fails) and record new scenes."""
    st = state(ctx)
    since_, until_ = _when(since, "since"), _when(until, "until")
    with st.transaction() as session:
        new = search_scenes(session, get_area(session, area), st.settings, since=since_, until=until_)
        rows = [_row(s) for s in new]
    if rows:
        typer.echo(table(rows, HEADERS))
    typer.echo(f"{len(rows)} new scene(s) for {area!r}")


@app.command("fetch")
def fetch(ctx: typer.Context,
          area: str = typer.Option(..., "--area", help="The area's name."),
          limit: int = typer.Option(None, "--limit", min=1, help="Fetch at most this many scenes.")) -> None:
    """Download, verify and prepare the area's pending scenes (found, offline and due, or failed for a
    transient reason and due)."""
    st = state(ctx)
    with st.transaction() as session:
        a = get_area(session, area)
        requeue_due(session, a)
        ids = [s.id for s in pending_scenes(session, a)][:limit]
    done = []
    for scene_id in tqdm(ids, desc=f"scenes of {area}", unit="scene", disable=not ids):
        scene = fetch_scene(st.engine, scene_id, st.settings, progress=True)
        if scene.status == SceneStatus.FAILED:
            warn(f"scene {scene.product_id}: {scene.status_reason}")
        done.append(scene)
    if done:
        typer.echo(table([_row(s) for s in done], HEADERS))
    counts = {str(k): sum(s.status == k for s in done)
              for k in (SceneStatus.PREPARED, SceneStatus.SKIPPED, SceneStatus.OFFLINE, SceneStatus.FAILED)}
    typer.echo(f"{len(done)} scene(s) fetched for {area!r}: "
               + ", ".join(f"{n} {k}" for k, n in counts.items()))


@app.command("list")
def list_(ctx: typer.Context,
          area: str = typer.Option(..., "--area", help="The area's name."),
          status: str = typer.Option(None, "--status", help="Only scenes with this status (found, prepared, "
                                     "processed, skipped, offline, failed)."),
          as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the area's scenes, oldest first. A failed scene's reason says whether the failure is transient
    (tried again after the time it gives) or permanent."""

    with state(ctx).transaction() as session:
        a = get_area(session, area)
        q = select(Scene).where(Scene.area_id == a.id).order_by(Scene.acquired_at, Scene.id)
        if status:
            q = q.where(Scene.status == status)
        scenes = list(session.scalars(q))
    if as_json:
        echo_json([{"id": s.id, "provider": s.provider, "product_id": s.product_id,
                    "acquired_at": s.acquired_at.isoformat(), "cloud_cover": s.cloud_cover, "status": s.status,
                    "status_reason": s.status_reason, "file_path": s.file_path, "checksum": s.checksum,
                    "size_bytes": s.size_bytes, "attempts": s.attempts, "failure_kind": s.failure_kind,
                    "next_attempt_at": s.next_attempt_at.isoformat() if s.next_attempt_at else None}
                   for s in scenes])
        return
    typer.echo(table([_row(s) for s in scenes], HEADERS) if scenes else f"no scenes for {area!r}")


@app.command("retry")
def retry(ctx: typer.Context,
          area: str = typer.Option(..., "--area", help="The area's name."),
          scene: str = typer.Option(None, "--scene", help="The scene to re-queue: its id (as `scenes list` shows "
                                    "it) or its product id."),
          failed: bool = typer.Option(False, "--failed", help="Re-queue every failed scene of the area.")) -> None:
    """Re-queue a failed (or offline) scene, or every failed scene of the area, for the next pass: its
    error, failure count and retry time are cleared; it is fetched again, or processed again when its
    file was prepared."""
    if (scene is None) == (not failed):
        raise BadInput("give either --scene ID or --failed", field="scene")
    with state(ctx).transaction() as session:
        a = get_area(session, area)
        where = [Scene.area_id == a.id, Scene.status == SceneStatus.FAILED]
        if scene is not None:
            match = Scene.product_id == scene
            if scene.isdigit():
                match = or_(Scene.id == int(scene), match)
            found = session.scalars(select(Scene).where(Scene.area_id == a.id, match)).first()
            if found is None:
                raise NotFound(f"area {area!r} has no scene {scene!r} (see `monitor scenes list --area {area}`)",
                               field="scene")
            if found.status not in (SceneStatus.FAILED, SceneStatus.OFFLINE):
                raise BadInput(f"scene {found.id} ({found.product_id}) is {found.status}, not failed: nothing to "
                               "retry (`monitor process --reprocess` runs processed scenes again)", field="scene")
            where = [Scene.id == found.id]
        done = requeue_scenes(session, *where)
    if done:
        typer.echo(table([[s.id, f"{s.acquired_at:%Y-%m-%d %H:%M}", s.provider, s.product_id, s.status]
                          for s in done], ["id", "acquired (UTC)", "provider", "product", "queued as"]))
    typer.echo(f"{len(done)} scene(s) of {area!r} re-queued for the next pass")
