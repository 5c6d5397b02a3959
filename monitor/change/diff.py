"""The date-to-date diff: new construction is this date's built detections minus earlier dates', in
PostGIS (``monitor/db/sql/diff_*.sql``), in the area's UTM zone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
import shapely
from geoalchemy2.shape import to_shape
from shapely.geometry.base import BaseGeometry
from sqlalchemy import delete, text
from sqlalchemy.orm import Session

from monitor.change.imagery_check import mean_inside, unchanged
from monitor.db.queries import earlier_scenes, no_jit, run_sql, scene_date, scene_pixel_m, sql
from monitor.db.tables import Area, Change, Scene
from monitor.domain import ChangeSource, ModelKind, Provider
from monitor.geo import reproject
from monitor.metrics import Metrics, default_metrics
from monitor.settings import Settings
from monitor.vectorize import read_probability

#: Grid cell (m) of the hash join that finds today's buildings already there on an earlier date.
DIFF_CELL_M = 64.0
#: An earlier image this many days older or more can match a scene's season (``reference_image``).
SEASON_MIN_DAYS = 300


def diff(session: Session, area: Area, scene: Scene, settings: Settings, metrics: Metrics | None = None) -> int:
    """New construction of a scene: its built detections minus those of earlier processed dates,
    in SQL in the area's UTM zone; replaces the scene's 'diff' changes and returns their count.

    Only places that are clear on this date and on the earlier date compared are trusted: each
    place is compared with the newest earlier date that saw it clear (up to ``LOOKBACK_SCENES``
    dates back), so clouds and nodata neither create nor erase construction. Earlier buildings
    are grown by ``shift_tolerance_m`` (misregistration), and pieces under the minimum change
    (``Settings.min_area_m2("change", ...)``: pixels of the scene, with an m2 floor) are dropped.
    What any of those earlier dates saw built is not new either, even where a newer date decided the
    place (a building a segmenter missed one month and found the next). The first date of an area is
    its baseline: nothing is new. With ``change_min_z`` above 0, pieces where the imagery itself did not
    change since the oldest date remembered are dropped (``drop_unchanged``); with ``faint_memory_share``
    above 0, pieces the segmenter saw faintly on a remembered date (``drop_seen_faintly``).
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
    run_sql(session, "diff_memory", epsg=epsg, tol=float(settings.shift_tolerance_m), ids=[p.id for p in earlier])
    stored = session.execute(text(sql("diff_store")), dict(aid=area.id, sid=scene.id, day=day, epsg=epsg,
                                                           min_m2=settings.min_area_m2(
                                                               "change", scene_pixel_m(scene, settings)))).all()
    session.execute(text("DROP TABLE IF EXISTS _diff_cur, _diff_region, _diff_new, _diff_prev, _diff_cells"))
    if settings.change_min_z > 0 and stored:
        dropped = drop_unchanged(session, scene, earlier, settings.change_min_z, settings.change_check_same_season)
        stored = [r for r in stored if r.id not in dropped]
    if settings.faint_memory_share > 0 and stored:
        dropped = drop_seen_faintly(session, scene, earlier, settings.probability_dir(area.id),
                                    settings.faint_memory_share)
        stored = [r for r in stored if r.id not in dropped]
    metrics.changes.labels(area=area.name).inc(len(stored))
    return len(stored)


def diff_pieces(session: Session, scene: Scene) -> list[tuple[int, BaseGeometry]]:
    """The scene's diff changes as (id, EPSG:4326 geometry)."""
    rows = session.execute(text("SELECT id, ST_AsBinary(geom) AS g FROM changes "
                                "WHERE scene_id = :sid AND source = 'diff'"), dict(sid=scene.id)).all()
    return [(r.id, shapely.from_wkb(bytes(r.g))) for r in rows]


def reference_image(scene: Scene, images: list[Scene], same_season: bool) -> Scene:
    """The earlier image the imagery check compares ``scene`` with, from ``images`` (newest first): the
    oldest; or, with ``same_season``, the one nearest in the day of the year among those at least
    ``SEASON_MIN_DAYS`` older (the oldest of equals), when there is one."""
    day = scene_date(scene)
    if same_season:
        year_old = [e for e in images if (day - scene_date(e)).days >= SEASON_MIN_DAYS]
        if year_old:
            def season_gap(e: Scene) -> int:
                d = abs(day.timetuple().tm_yday - scene_date(e).timetuple().tm_yday)
                return min(d, 365 - d)
            return min(reversed(year_old), key=season_gap)
    return images[-1]


def drop_unchanged(session: Session, scene: Scene, earlier: list[Scene], z: float,
                   same_season: bool = False) -> set[int]:
    """Delete the scene's diff changes whose imagery did not change, and return their ids: the mean
    change-vector magnitude inside each, against the oldest image the diff remembers (the oldest of
    ``earlier`` whose file is imagery; with ``same_season`` the one of ``reference_image``), is under
    ``z`` robust standard deviations above the scene's median (``imagery_check.unchanged``).
    Construction is new only when no remembered date saw it built, so the image must have changed
    since the oldest of them; comparing with the date the piece was decided on would miss a building
    the segmenter first finds some dates after it was built. An image of the same season a year or
    more before shows the same shadows, crops and leaves, so that only what was built since differs.
    Nothing is dropped when the scene or no earlier date has an image (imported rasters)."""
    images = [e for e in earlier if e.provider != Provider.IMPORT and e.file_path]
    if scene.provider == Provider.IMPORT or not scene.file_path or not images:
        return set()
    reference = reference_image(scene, images, same_season)
    clear = [to_shape(c) for c in (scene.clear_geom, reference.clear_geom) if c is not None]
    region = shapely.intersection_all(clear) if clear else None
    pieces = diff_pieces(session, scene)
    dropped = set(unchanged(pieces, str(scene.file_path), str(reference.file_path), z, region))
    if dropped:
        session.execute(delete(Change).where(Change.id.in_(dropped)))
    return dropped


def drop_seen_faintly(session: Session, scene: Scene, earlier: list[Scene], probability_dir: Path,
                      share: float) -> set[int]:
    """Delete the scene's diff changes that the segmenter saw faintly on an earlier date, and return their
    ids: on one of ``earlier`` (the dates the diff remembers), the mean of its probability raster (in
    ``probability_dir``, as the pipeline wrote it) inside the piece was at least ``share`` of that raster's
    threshold. A building found for the first time is often one the segmenter had seen all along just
    under its threshold; a truly new one was not there to be seen. Dates without a segmenter raster
    have no say."""
    pieces = [(i, shapely.force_2d(g)) for i, g in diff_pieces(session, scene)]
    dropped: set[int] = set()
    for before in earlier:
        found = sorted(probability_dir.glob(f"{before.id}_{ModelKind.SEGMENTER}_*.tif"), key=lambda f: f.stat().st_mtime)
        if not found:
            continue
        prob = read_probability(found[-1])
        with rasterio.open(found[-1]) as src:
            cut = share * float(src.tags().get("threshold", 0.5))
        values = np.nan_to_num(prob.values)
        for i, geom in pieces:
            if i in dropped:
                continue
            m = mean_inside(values, prob.valid, prob.transform, reproject(geom, 4326, prob.crs))
            if m is not None and m >= cut:
                dropped.add(i)
    if dropped:
        session.execute(delete(Change).where(Change.id.in_(dropped)))
    return dropped


def changed_share(session: Session, area: Area, scene: Scene) -> float:
    """The largest share of the area's clear land on the scene's date that one source of changes (the
    diff, a change model) calls new construction: 0 when nothing is clear or nothing changed. Settlement
    growth is left out: it is derived after this check, from the date's settlement layer."""
    row = session.execute(text("""
        SELECT COALESCE((SELECT max(m2) FROM (SELECT sum(area_m2) AS m2 FROM changes
                                              WHERE scene_id = :sid AND source <> 'settlement'
                                              GROUP BY source) x), 0) AS changed,
               ST_Area(ST_Transform(ST_CollectionExtract(ST_MakeValid(ST_Intersection(
                   COALESCE(s.clear_geom, a.footprint), a.footprint)), 3), :epsg)) AS clear
        FROM scenes s JOIN areas a ON a.id = s.area_id WHERE s.id = :sid"""),
        dict(sid=scene.id, epsg=int(area.utm_epsg))).one()
    return float(row.changed) / float(row.clear) if row.clear else 0.0


def suspect_reason(session: Session, area: Area, scene: Scene, settings: Settings) -> str | None:
    """Why a scene's changes cannot be trusted, or None: more than ``max_change_share`` of the area's
    clear land changed at once (a season, haze, a mis-registered or badly calibrated scene)."""
    share = changed_share(session, area, scene)
    if share <= settings.max_change_share:
        return None
    return (f"suspect: {share:.0%} of the area's clear land changed at once (more than MONITOR_MAX_CHANGE_SHARE "
            f"{settings.max_change_share:.0%}): a season, haze or mis-registration, not construction; no alerts "
            "raised from this date")

