"""Diff + judge for areas of 1k, 10k and 100k parcels with proportional detections (target: close
to linear, 100k parcels under 10 s), then a pass with many alerts.

Every parcel (25 m x 25 m) holds a 10 m x 10 m building. The second date shows every building
moved by one pixel (misregistration, not new) and a new 8 m x 8 m building on 2 % of the parcels;
the third date still shows them (their alerts are confirmed). Detections are stored beforehand;
the table times `change.diff` and `change.judge` of the second and third dates.

Many alerts: the area of the issue that measured evidence inside judge, 4096 x 4096 pixels at 2 m
with a 40 m parcel grid (41,616 parcels), a new building on one parcel in twelve. Its second date
is timed from the probability raster on: vectorize (`vectorize.polygonize` of the 4096 x 4096
raster), diff and judge, with alerts per second of diff + judge. Evidence chips are no part of a
pass; the last table times rendering them on request (first request, then from the disk).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import shapely
from geoalchemy2.shape import from_shape
from rasterio.features import rasterize
from rasterio.transform import from_origin
from sqlalchemy import text
from sqlalchemy.orm import Session

from bench.common import print_table, scratch_database
from monitor import change
from monitor.alerts.evidence import evidence_chip
from monitor.db.tables import Alert, Area, Scene
from monitor.geo import reproject
from monitor.metrics import Metrics
from monitor.settings import Settings
from monitor.vectorize import polygonize

EPSG = 32721
X0, Y0 = 300000.0, 6180000.0
PARCEL, NEW_EVERY = 25.0, 50
SETTINGS = dict(shift_tolerance_m=1.5, min_change_m2=20, alert_min_m2=50, alert_min_fraction=0)


def _grid(n: int, parcel: float = PARCEL) -> tuple[np.ndarray, np.ndarray, int]:
    side = int(np.ceil(np.sqrt(n)))
    i = np.arange(n)
    return X0 + (i % side) * parcel, Y0 + (i // side) * parcel, side


def _boxes(n: int, parcel: float, new_every: int, k: int, pixel_m: float = 1.0) -> list:
    """Date ``k``'s buildings: each parcel's own (moved by a pixel on the second date) and, after the
    first date, the new ones; on the grid of ``pixel_m`` pixels."""
    x, y, _side = _grid(n, parcel)
    dx, dy = ((0, 0), (pixel_m, -pixel_m), (0, 0))[k]
    at = parcel / 2 - (0.5 if pixel_m == 1 else 0)
    polys = list(shapely.box(x + at + dx, y + at + dy, x + at + 10 + dx, y + at + 10 + dy))
    if k > 0:
        new = np.arange(n) % new_every == 0
        polys += list(shapely.box(x[new] + 2, y[new] + 2, x[new] + 10, y[new] + 10))
    return polys


def _world(session: Session, n: int, name: str, parcel: float = PARCEL, new_every: int = NEW_EVERY,
           detections: tuple[int, ...] = (0, 1, 2), pixel_m: float = 1.0) -> tuple[Area, list[Scene]]:
    x, y, side = _grid(n, parcel)
    footprint = shapely.MultiPolygon([reproject(shapely.box(X0, Y0, X0 + side * parcel, Y0 + side * parcel),
                                                EPSG, 4326)])
    area = Area(name=name, footprint=from_shape(footprint, srid=4326), utm_epsg=EPSG, cadence=dt.timedelta(days=5),
                providers=["local"], max_cloud=20)
    session.add(area)
    session.flush()
    parcels = reproject(shapely.box(x, y, x + parcel, y + parcel), EPSG, 4326)
    session.execute(text("""
        INSERT INTO parcels (area_id, external_id, geom, area_m2)
        SELECT :aid, 'p' || g.i, ST_Multi(ST_GeomFromWKB(g.w, 4326)), :m2
        FROM unnest(CAST(:wkb AS bytea[])) WITH ORDINALITY AS g(w, i)
    """), dict(aid=area.id, wkb=list(shapely.to_wkb(parcels)), m2=parcel * parcel))
    scenes = []
    for k, day in enumerate((dt.date(2024, 1, 1), dt.date(2024, 2, 1), dt.date(2024, 3, 1))):
        scene = Scene(area_id=area.id, provider="local", product_id=f"{name}-{k}", status="processed", pixel_m=pixel_m,
                      acquired_at=dt.datetime.combine(day, dt.time(), tzinfo=dt.timezone.utc),
                      clear_geom=from_shape(footprint, srid=4326))
        session.add(scene)
        scenes.append(scene)
    session.flush()
    metrics = Metrics()
    for k in detections:
        change.store_detections(session, area, scenes[k], [(p, 0.9) for p in _boxes(n, parcel, new_every, k, pixel_m)],
                                EPSG, "bench", metrics=metrics)
    return area, scenes


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def chip_cost(engine, count: int = 50) -> list:
    """Milliseconds per chip rendered on its first request, then served from the disk, from 10 m,
    4-band scene files."""
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
        chips = [(a, name) for a in alerts for name in ("before", "after")]
        _out, first = _timed(lambda: [evidence_chip(s, a, name, settings) for a, name in chips])
        _out, again = _timed(lambda: [evidence_chip(s, a, name, settings) for a, name in chips])
        s.rollback()
    n = max(1, len(chips))
    return [len(chips), f"{1000 * first / n:.1f}", f"{1000 * again / n:.1f}"]


SIDE_PX, PIXEL_M, MANY_PARCEL, MANY_EVERY = 4096, 2.0, 40.0, 12


def many_alerts(engine, inference_s: float) -> list:
    """The second date of the many-alerts area, from its probability raster: vectorize, diff, judge."""
    # the tolerance in pixels of the other areas (1.5 m at 1 m): a building moved by a pixel in x and
    # in y has a corner 1.41 pixels away, which a tolerance of a pixel and a quarter would not cover
    settings = Settings(**{**SETTINGS, "shift_tolerance_m": 1.5 * PIXEL_M})
    n = int(SIDE_PX * PIXEL_M // MANY_PARCEL) ** 2
    with Session(engine, expire_on_commit=False) as s, s.begin():
        area, scenes = _world(s, n, "many", MANY_PARCEL, MANY_EVERY, detections=(0,), pixel_m=PIXEL_M)
    with engine.connect() as conn:
        conn.execute(text("ANALYZE"))
    transform = from_origin(X0, Y0 + SIDE_PX * PIXEL_M, PIXEL_M, PIXEL_M)
    prob = rasterize(((b, 1) for b in _boxes(n, MANY_PARCEL, MANY_EVERY, 1, PIXEL_M)), out_shape=(SIDE_PX, SIDE_PX),
                     transform=transform, dtype="uint8").astype("float32") * 0.9
    metrics = Metrics()
    polygons, t_vec = _timed(lambda: polygonize(prob, transform, threshold=0.5, median_px=3, min_area_m2=20))
    with Session(engine) as s, s.begin():
        area_, scene_ = s.get(Area, area.id), s.get(Scene, scenes[1].id)
        _n, t_store = _timed(lambda: change.store_detections(s, area_, scene_, polygons, EPSG, "bench",
                                                             metrics=metrics))
        changes, t_diff = _timed(lambda: change.diff(s, area_, scene_, settings, metrics=metrics))
        events, t_judge = _timed(lambda: change.judge(s, area_, scene_, settings, metrics=metrics))
    created = sum(1 for _a, e in events if e == "alert.created")
    vectorize = t_vec + t_store
    ratio = (inference_s + vectorize + t_diff + t_judge) / (inference_s + vectorize)
    return [f"{n:,}", f"{len(polygons):,}", changes, f"{created:,}", f"{t_vec:.2f}", f"{t_store:.2f}",
            f"{t_diff:.2f}", f"{t_judge:.2f}", f"{created / t_judge:,.0f}", f"{created / (t_diff + t_judge):,.0f}",
            f"{ratio:.2f}"]


def main(argv: list[str] | None = None) -> None:
    """``[PARCELS ...] [--inference-s S]``: the area sizes of the first table (1k, 10k and 100k parcels),
    and the model inference time of the many-alerts area that its pass is compared with (8.5 s, as
    measured in issue 15)."""
    parser = argparse.ArgumentParser(prog="bench diff_judge")
    parser.add_argument("sizes", nargs="*", type=int, default=[1_000, 10_000, 100_000])
    parser.add_argument("--inference-s", type=float, default=8.5)
    args = parser.parse_args(argv or [])
    sizes, inference_s = args.sizes, args.inference_s
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
        print_table([many_alerts(engine, inference_s)],
                    ["parcels", "polygons", "changes", "alerts", "polygonize s", "store s", "diff s", "judge s",
                     "alerts/s (judge)", "alerts/s (diff+judge)", f"pass / (inference {inference_s:g} s + vectorize)"])
        print()
        print_table([chip_cost(engine)], ["chips", "ms/chip, first request", "ms/chip, from disk"])


if __name__ == "__main__":
    main(sys.argv[1:])
