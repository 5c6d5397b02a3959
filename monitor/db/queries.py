"""Questions more than one part of the project asks the database, each answered once here, and the
long SQL statements, kept as files in ``monitor/db/sql/`` (read with importlib.resources)."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from importlib import resources
from typing import Any, TypeVar, cast

from psycopg2.extras import execute_values
from sqlalchemy import Engine, case, func, select, text, update
from sqlalchemy.orm import Session

from monitor.db.tables import Alert, Area, Scene
from monitor.domain import OPEN_ALERT_STATUSES, ChangeSource, Provider, SceneStatus, values
from monitor.errors import NotFound
from monitor.settings import Settings

log = logging.getLogger(__name__)
UTC = dt.timezone.utc
#: First key of the per-area advisory locks (the second is the area's id): "mona" in ASCII.
AREA_LOCK_CLASS = 0x6D6F6E61
#: Earlier dates searched, newest first, for a clear view of each place a date sees.
LOOKBACK_SCENES = 8


@cache
def sql(name: str) -> str:
    """The statement(s) of ``monitor/db/sql/<name>.sql``."""
    return resources.files("monitor.db").joinpath("sql", f"{name}.sql").read_text(encoding="utf-8")


def run_sql(session: Session, name: str, **params: object) -> None:
    """Run the statements of ``monitor/db/sql/<name>.sql`` in the session's transaction."""
    session.execute(text(sql(name)), params)


def dbapi_cursor(session: Session) -> Any:
    """A psycopg2 cursor on the session's connection, inside its transaction (for execute_values)."""
    session.flush()
    return cast(Any, session.connection().connection.dbapi_connection).cursor()


def bulk_insert(session: Session, statement: str, rows: Sequence[tuple], template: str | None = None,
                fetch: bool = False) -> list[tuple]:
    """A statement with ``VALUES %s`` run for many rows at once (psycopg2's execute_values), in the
    session's transaction; with ``fetch``, returns what its RETURNING clause gives."""
    with dbapi_cursor(session) as cur:
        return execute_values(cur, statement, rows, template=template, page_size=5000, fetch=fetch) or []


def no_jit(session: Session) -> None:
    """Switch PostgreSQL's JIT off until the transaction ends.

    PostGIS functions carry high planner costs, so PostgreSQL would JIT-compile the diff and judge
    statements: that costs more than it saves.
    """
    session.execute(text("SELECT set_config('jit', 'off', true)"))


def open_statuses() -> list[str]:
    """The open alert statuses, as the ``:open_statuses`` parameter of the SQL files."""
    return values(OPEN_ALERT_STATUSES)


# --- rows

T = TypeVar("T")


def row(session: Session, table: type[T], row_id: int, **kw: Any) -> T:
    """The row ``row_id`` of a mapped class; ``NotFound`` when there is none."""
    found = session.get(table, row_id, **kw)
    if found is None:
        raise NotFound(f"no {getattr(table, '__tablename__', table.__name__).rstrip('s')} with id {row_id}")
    return found


def scene_and_area(session: Session, scene_id: int) -> tuple[Scene, Area]:
    """A scene and its area."""
    scene = row(session, Scene, scene_id)
    return scene, row(session, Area, scene.area_id)


# --- scenes

def scene_date(scene: Scene) -> dt.date:
    """The acquisition date (UTC) that names a scene's detections, changes and indicators."""
    acquired = scene.acquired_at
    if acquired.tzinfo is not None:
        acquired = acquired.astimezone(UTC)
    return acquired.date()


def scene_pixel_m(scene: Scene, settings: Settings) -> float:
    """The side of a scene's pixels in metres: its prepared raster's (or imported raster's, on the
    area's UTM grid), else the settings' resolution for scenes recorded before it was kept."""
    return float(scene.pixel_m or settings.resolution_m)


def day_start(day: dt.date) -> dt.datetime:
    """Midnight UTC at the start of ``day``."""
    return dt.datetime.combine(day, dt.time(), tzinfo=UTC)


def earlier_scenes(session: Session, area_id: int, day: dt.date, *, limit: int = LOOKBACK_SCENES,
                   images_only: bool = False) -> list[Scene]:
    """Processed scenes of the area acquired before ``day`` (UTC), newest first.

    With ``images_only``, only scenes whose file is imagery, which a change model can take as its
    before image: an imported scene's file is a probability raster.
    """
    q = select(Scene).where(Scene.area_id == area_id, Scene.status == SceneStatus.PROCESSED,
                            Scene.acquired_at < day_start(day))
    if images_only:
        q = q.where(Scene.provider != Provider.IMPORT, Scene.file_path.is_not(None))
    return list(session.scalars(q.order_by(Scene.acquired_at.desc(), Scene.id.desc()).limit(limit)))


def before_image(session: Session, scene: Scene) -> Scene | None:
    """The previous processed scene usable as ``scene``'s before image: the newest processed scene of
    an earlier date whose file is imagery (never an imported probability raster)."""
    found = earlier_scenes(session, scene.area_id, scene_date(scene), limit=1, images_only=True)
    return found[0] if found else None


def scene_on(session: Session, area_id: int, day: dt.date) -> Scene | None:
    """The area's processed scene of ``day`` (the latest, when there are several)."""
    start = day_start(day)
    return session.scalar(select(Scene).where(
        Scene.area_id == area_id, Scene.status == SceneStatus.PROCESSED, Scene.acquired_at >= start,
        Scene.acquired_at < start + dt.timedelta(days=1)).order_by(Scene.acquired_at.desc(), Scene.id.desc()).limit(1))


def newest_processed(session: Session, area_id: int | None = None) -> dict[str, dt.datetime]:
    """Area name -> acquisition time of its newest processed scene (the ``newest_scene`` metric), for
    every area with one, or only ``area_id``."""
    q = (select(Area.name, func.max(Scene.acquired_at)).join(Scene, Scene.area_id == Area.id)
         .where(Scene.status == SceneStatus.PROCESSED))
    if area_id is not None:
        q = q.where(Area.id == area_id)
    return {name: when for name, when in session.execute(q.group_by(Area.name))}


# --- alerts

def open_alerts(session: Session) -> dict[str, int]:
    """Area name -> its number of open alerts (every area, zero included)."""
    rows = session.execute(select(Area.name, func.count(Alert.id)).outerjoin(
        Alert, (Alert.area_id == Area.id) & Alert.status.in_(open_statuses())).group_by(Area.name))
    return {name: n for name, n in rows}


def count_open_alerts(session: Session, area_id: int) -> int:
    """The area's number of open alerts."""
    return session.scalar(select(func.count()).select_from(Alert).where(
        Alert.area_id == area_id, Alert.status.in_(open_statuses()))) or 0


def alert_baselines(session: Session, scene: Scene) -> dict[int, list[int]]:
    """Open alerts a change model raised before ``scene``'s date, by their baseline: the before image
    they were found against (the newest image scene before their first date). Running the change model
    from that baseline to ``scene`` tells whether each is still there."""
    day = scene_date(scene)
    out: dict[int, list[int]] = {}
    alerts = session.execute(select(Alert.id, Alert.first_seen).where(
        Alert.area_id == scene.area_id, Alert.source == ChangeSource.CHANGE_MODEL,
        Alert.status.in_(open_statuses()), Alert.first_seen < day))
    for alert_id, first_seen in alerts:
        found = earlier_scenes(session, scene.area_id, first_seen, limit=1, images_only=True)
        if found:
            out.setdefault(found[0].id, []).append(alert_id)
    return out

@contextmanager
def area_lock(engine: Engine, area_id: int) -> Iterator[bool]:
    """Try to take the area's PostgreSQL advisory lock for the block; yields whether it was taken
    (False: another pass over the area, in any process or on any host, holds it). The lock lives on a
    connection of its own, so it goes when the block ends or that connection dies (kill -9)."""
    conn = engine.connect()
    held = False
    try:
        held = bool(conn.scalar(text("SELECT pg_try_advisory_lock(:c, :a)"), {"c": AREA_LOCK_CLASS, "a": area_id}))
        conn.commit()
        yield held
    finally:
        try:
            if held:
                conn.execute(text("SELECT pg_advisory_unlock(:c, :a)"), {"c": AREA_LOCK_CLASS, "a": area_id})
                conn.commit()
        except Exception:  # the connection broke: dropping it releases the lock as well
            log.warning("area %s: could not release the area lock; dropping its connection", area_id)
            conn.invalidate()
        finally:
            conn.close()


INTERRUPTED_REASON = ("interrupted: the process ended (stopped, killed, or cut off from the database) before "
                      "the run finished")


def interrupt_stale_runs(session: Session, area_id: int) -> int:
    """Mark the area's runs still ``running`` as ``interrupted``; returns how many. Call it holding the
    area's lock (``area_lock``): every live pass holds it, so such runs belong to no live process."""
    result = session.execute(text(
        "UPDATE runs SET status = 'interrupted', finished_at = now(), error = COALESCE(error, :reason) "
        "WHERE area_id = :a AND status = 'running'"), {"a": area_id, "reason": INTERRUPTED_REASON})
    return int(getattr(result, "rowcount", 0) or 0)


def requeue_scenes(session: Session, *where: Any, reset_attempts: bool = True) -> list[Scene]:
    """Put the scenes matching ``where`` (failed or offline ones, say) back in the queue: ``prepared``
    when their file was prepared (processing failed), else ``found`` (fetched again); their error,
    failure kind and retry time cleared, and with ``reset_attempts`` their count of failures in a row.
    Returns them, oldest first."""
    values_: dict[str, Any] = {
        "status": case((Scene.file_path.is_(None), str(SceneStatus.FOUND)), else_=str(SceneStatus.PREPARED)),
        "status_reason": None, "failure_kind": None, "next_attempt_at": None}
    if reset_attempts:
        values_["attempts"] = 0
    done = session.scalars(update(Scene).where(*where).values(**values_).returning(Scene)
                           .execution_options(synchronize_session=False, populate_existing=True))
    return sorted(done, key=lambda s: (s.acquired_at, s.id))
