"""Diff + judge for areas of 1k, 10k and 100k parcels with proportional detections (target: close
to linear, 100k parcels under 10 s).

Every parcel (25 m x 25 m) holds a 10 m x 10 m building. The second date shows every building
moved by one pixel (misregistration, not new) and a new 8 m x 8 m building on 2 % of the parcels;
the third date still shows them (their alerts are confirmed). Detections are stored beforehand;
the table times `change.diff` and `change.judge` of the second and third dates. Scenes have no
files, so no evidence chips are rendered (see the last table for their cost).
"""

from __future__ import annotations

import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import shapely
from geoalchemy2.shape import from_shape
from rasterio.transform import from_origin
from sqlalchemy import text
from sqlalchemy.orm import Session

from bench.common import print_table, scratch_database
from monitor import change
from monitor.alerts.evidence import render_chips
from monitor.db.tables import Alert, Area, Scene
from monitor.geo import reproject
from monitor.metrics import Metrics
from monitor.settings import Settings

EPSG = 32721
X0, Y0 = 300000.0, 6180000.0
PARCEL, NEW_EVERY = 25.0, 50
SETTINGS = dict(shift_tolerance_m=1.5, min_change_m2=20, alert_min_m2=50, alert_min_fraction=0)


def _grid(n: int) -> tuple[np.ndarray, np.ndarray, int]:
    side = int(np.ceil(np.sqrt(n)))
    i = np.arange(n)
    return X0 + (i % side) * PARCEL, Y0 + (i // side) * PARCEL, side


def _world(session: Session, n: int, name: str) -> tuple[Area, list[Scene]]:
    x, y, side = _grid(n)
    footprint = shapely.MultiPolygon([reproject(shapely.box(X0, Y0, X0 + side * PARCEL, Y0 + side * PARCEL),
                                                EPSG, 4326)])
    area = Area(name=name, footprint=from_shape(footprint, srid=4326), utm_epsg=EPSG, cadence=dt.timedelta(days=5),
                providers=["local"], max_cloud=20)
    session.add(area)
    session.flush()
    parcels = reproject(shapely.box(x, y, x + PARCEL, y + PARCEL), EPSG, 4326)
    session.execute(text("""
        INSERT INTO parcels (area_id, external_id, geom, area_m2)
        SELECT :aid, 'p' || g.i, ST_Multi(ST_GeomFromWKB(g.w, 4326)), :m2
        FROM unnest(CAST(:wkb AS bytea[])) WITH ORDINALITY AS g(w, i)
    """), dict(aid=area.id, wkb=list(shapely.to_wkb(parcels)), m2=PARCEL * PARCEL))
    scenes = []
    for k, day in enumerate((dt.date(2024, 1, 1), dt.date(2024, 2, 1), dt.date(2024, 3, 1))):
        scene = Scene(area_id=area.id, provider="bench", product_id=f"{name}-{k}", status="processed",
                      acquired_at=dt.datetime.combine(day, dt.time(), tzinfo=dt.timezone.utc),
                      clear_geom=from_shape(footprint, srid=4326))
        session.add(scene)
        scenes.append(scene)
    session.flush()
    metrics = Metrics()
    new = np.arange(n) % NEW_EVERY == 0
    for k, (scene, (dx, dy)) in enumerate(zip(scenes, ((0, 0), (1, -1), (0, 0)))):
        polys = list(shapely.box(x + 12 + dx, y + 12 + dy, x + 22 + dx, y + 22 + dy))
        if k > 0:
            polys += list(shapely.box(x[new] + 2, y[new] + 2, x[new] + 10, y[new] + 10))
        change.store_detections(session, area, scene, [(p, 0.9) for p in polys], EPSG, "bench", metrics=metrics)
    return area, scenes


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def chip_cost(engine, count: int = 50) -> list:
    """Seconds per alert to render its two chips from 10 m, 4-band scene files."""
    settings = Settings(**SETTINGS)
    with tempfile.TemporaryDirectory() as tmp, Session(engine) as s, s.begin():
        tmp = Path(tmp)
        area = s.query(Area).filter(Area.name == "bench0").one()
        x, y, side = _grid(1000)
        size = int(side * PARCEL / 10) + 2
        for k, scene in enumerate(s.query(Scene).filter(Scene.area_id == area.id).order_by(Scene.id)):
            path = tmp / f"s{k}.tif"
            with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=4, dtype="uint16",
                               crs=f"EPSG:{EPSG}", transform=from_origin(X0 - 10, Y0 + side * PARCEL + 10, 10, 10)) as d:
                d.write(np.random.default_rng(k).integers(0, 3000, (4, size, size), dtype="uint16"))
                d.descriptions = ("B04", "B03", "B02", "B08")
            scene.file_path = str(path)
        s.flush()
        alerts = s.query(Alert).filter(Alert.area_id == area.id).limit(count).all()
        settings = Settings(**SETTINGS, home=tmp)
        _out, seconds = _timed(lambda: [render_chips(s, a, settings) for a in alerts])
        s.rollback()
    return [len(alerts), f"{seconds:.2f}", f"{1000 * seconds / max(1, len(alerts)):.0f}"]


def main(sizes=(1_000, 10_000, 100_000)) -> None:
    settings = Settings(**SETTINGS)
    rows = []
    with scratch_database() as engine:
        for k, n in enumerate(sizes):
            with Session(engine, expire_on_commit=False) as s, s.begin():
                area, scenes = _world(s, n, f"bench{k}")
            with engine.connect() as conn:
                conn.execute(text("ANALYZE"))
            metrics = Metrics()
            timings = []
            for scene in scenes[1:]:
                with Session(engine) as s, s.begin():
                    area_, scene_ = s.get(Area, area.id), s.get(Scene, scene.id)
                    changes, t_diff = _timed(lambda: change.diff(s, area_, scene_, settings, metrics=metrics))
                    events, t_judge = _timed(lambda: change.judge(s, area_, scene_, settings, metrics=metrics))
                timings.append((changes, events, t_diff, t_judge))
            (c2, e2, d2, j2), (c3, e3, d3, j3) = timings
            created = sum(1 for _a, e in e2 if e == "alert.created")
            escalated = sum(1 for _a, e in e3 if e == "alert.escalated")
            total = d2 + j2
            rows.append([f"{n:,}", f"{2 * n + n // NEW_EVERY:,}", c2, created, f"{d2:.2f}", f"{j2:.2f}",
                         f"{total:.2f}", f"{1e6 * total / n:.0f}", escalated, f"{d3 + j3:.2f}"])
        print_table(rows, ["parcels", "detections", "changes", "alerts", "diff s", "judge s", "diff+judge s",
                           "us/parcel", "confirmed (3rd date)", "3rd date s"])
        print()
        print_table([chip_cost(engine)], ["alerts", "chips s", "ms/alert"])


if __name__ == "__main__":
    main(tuple(int(a) for a in sys.argv[1:]) or (1_000, 10_000, 100_000))
