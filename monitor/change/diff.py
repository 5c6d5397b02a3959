"""The date-to-date diff: new construction is this date's built detections minus earlier dates', in
PostGIS (``monitor/db/sql/diff_*.sql``), in the area's UTM zone."""

from __future__ import annotations

from sqlalchemy import delete, text
from sqlalchemy.orm import Session

from monitor.db.queries import earlier_scenes, no_jit, run_sql, scene_date, sql
from monitor.db.tables import Area, Change, Scene
from monitor.domain import ChangeSource
from monitor.metrics import Metrics, default_metrics
from monitor.settings import Settings

#: Grid cell (m) of the hash join that finds today's buildings already there on an earlier date.
DIFF_CELL_M = 64.0


def diff(session: Session, area: Area, scene: Scene, settings: Settings, metrics: Metrics | None = None) -> int:
    """New construction of a scene: its built detections minus those of earlier processed dates,
    in SQL in the area's UTM zone; replaces the scene's 'diff' changes and returns their count.

    Only places that are clear on this date and on the earlier date compared are trusted: each
    place is compared with the newest earlier date that saw it clear (up to ``LOOKBACK_SCENES``
    dates back), so clouds and nodata neither create nor erase construction. Earlier buildings
    are grown by ``shift_tolerance_m`` (misregistration), and pieces under ``min_change_m2`` are
    dropped. The first date of an area is its baseline: nothing is new.
    """
    metrics = metrics or default_metrics()
    session.execute(delete(Change).where(Change.scene_id == scene.id, Change.source == ChangeSource.DIFF))
    day = scene_date(scene)
    earlier = earlier_scenes(session, area.id, day)
    if not earlier:
        return 0
    session.flush()
    no_jit(session)
    epsg = int(area.utm_epsg)
    run_sql(session, "diff_setup", epsg=epsg, sid=scene.id)
    session.execute(text("ANALYZE _diff_cur"))
    for prev in earlier:
        run_sql(session, "diff_step", epsg=epsg, tol=float(settings.shift_tolerance_m), pid=prev.id,
                previous_on=scene_date(prev), cell=DIFF_CELL_M)
        if session.execute(text("SELECT ST_IsEmpty(pending) FROM _diff_region")).scalar():
            break
    stored = session.execute(text(sql("diff_store")), dict(aid=area.id, sid=scene.id, day=day, epsg=epsg,
                                                           min_m2=float(settings.min_change_m2))).all()
    session.execute(text("DROP TABLE IF EXISTS _diff_cur, _diff_region, _diff_new, _diff_prev, _diff_cells"))
    metrics.changes.labels(area=area.name).inc(len(stored))
    return len(stored)
