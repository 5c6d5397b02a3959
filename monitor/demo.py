"""``monitor demo``: the whole job on the synthetic world of ``monitor.world``.

Trains (or reuses) two small models, registers the area, parcels and permits in the database
(the private cluster unless DATABASE_URL is set), delivers the scenes one date at a time into a
drop folder watched by the ``local`` provider, runs the pipeline after each delivery, and writes
the alerts, their evidence chips and an overview picture.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import rasterio
import typer
from PIL import Image, ImageDraw
from shapely.geometry import shape
from sqlalchemy import Engine, func, select

from monitor.alerts.evidence import render_chips
from monitor.alerts.lifecycle import list_alerts, to_geojson
from monitor.db import migrate
from monitor.db.engine import make_engine, transaction
from monitor.db.tables import Alert, Area, Detection, Indicator, Scene
from monitor.geo import reproject
from monitor.inventory.areas import add_area, area_spec, configure_area
from monitor.inventory.parcels import import_parcels
from monitor.inventory.permits import import_permits
from monitor.metrics import default_metrics
from monitor.ml.datasets import build_tiles
from monitor.ml.training import train_classifier, train_segmenter
from monitor.pipeline import run_area
from monitor.settings import Settings
from monitor.text import table
from monitor.world import DATES, World, make_world

AREA = "demo"
TILE = 64
CLASSIFIER_TILE = 32


def _say(text: str) -> None:
    typer.secho(text, fg="cyan", err=True)


def demo_models(world: World, models_dir: Path, seed: int) -> dict[str, Path]:
    """Train the demo segmenter and classifier on the first and last dates, or reuse them."""
    out = {"segmenter": models_dir / "segmenter", "classifier": models_dir / "classifier"}
    data = models_dir / "data"
    last = DATES[-1]
    if not (out["segmenter"] / "model.json").exists():
        _say("training the demo U-Net segmenter (64 x 64 tiles; a minute or two on 2 CPU cores)")
        t0 = time.perf_counter()
        build_tiles(world.scenes[last], world.buildings[last], data / "segmenter", kind="segmenter", tile=TILE,
                    seed=seed, overwrite=True)
        # the synthetic world has one sensor and no seasons: the recipe its 16 alerts were measured with
        train_segmenter(data / "segmenter", out["segmenter"], epochs=25, seed=seed, per_image=False, min_steps=0,
                        epoch_steps=1, ema=0.0, progress=True)
        _say(f"  trained in {time.perf_counter() - t0:.0f} s")
    if not (out["classifier"] / "model.json").exists():
        _say("training the demo settlement classifier (small backbone)")
        t0 = time.perf_counter()
        # 64 m tiles of the first and the last date (two seasons, a small and a large settlement; the
        # dates between are left for the measure); a randomly initialised small backbone needs a larger
        # step than the recipe's 1e-4, which is meant for fine-tuning ImageNet weights. Each tile is
        # standardized by its scene's statistics and training varies each band's gain, so that a date
        # brighter or darker in every band (the third is) reads like the training dates.
        merged = data / "classifier"
        shutil.rmtree(merged, ignore_errors=True)
        for date in (DATES[0], last):
            part = data / f"classifier_{date:%Y%m%d}"
            build_tiles(world.scenes[date], world.settlements[date], part, kind="classifier",
                        tile=CLASSIFIER_TILE, min_cover=0.5, seed=seed, overwrite=True)
            for tif in part.glob("*/*/*.tif"):
                target = merged / tif.parent.parent.name / tif.parent.name / f"{date:%Y%m%d}_{tif.name}"
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(tif, target)
            shutil.copy2(part / "summary.json", merged / "summary.json")  # bands and resolution: the same
        train_classifier(merged, out["classifier"], epochs=30, seed=seed, backbone="small", lr=0.01,
                         per_image=True, gain=0.1, progress=True)
        _say(f"  trained in {time.perf_counter() - t0:.0f} s")
    return out


def _register(engine: Engine, settings: Settings, world: World, drops: Path, models: dict[str, Path]) -> int:
    assert world.area and world.parcels and world.permits, "make_world writes every file"

    with transaction(engine) as s:
        old = s.scalar(select(Area).where(Area.name == AREA))
        if old is not None:
            s.delete(old)
            s.flush()
        spec = area_spec(settings, AREA, cadence="1d", providers="local", max_cloud=40.0,
                         sources={"local": str(drops)}, resolution_m=2.0)
        area = add_area(s, spec, world.area)
        import_parcels(s, area, world.parcels, "parcel_id")
        import_permits(s, world.permits, area)
        configure_area(s, AREA, models={k: str(v) for k, v in models.items()})
        return area.id


def run_demo(settings: Settings, out: Path, seed: int = 7) -> dict:
    """Run the demo: world, models, database, one pipeline pass per date; print the report and write the files under
    ``out``; returns the summary.
    """

    started = time.perf_counter()
    home = settings.home / "demo"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _say(f"synthetic world under {home / 'world'}")
    world = make_world(home / "world", seed=seed)
    models = demo_models(world, home / "models", seed)
    _say("database: " + ("DATABASE_URL" if settings.database_url else f"private PostGIS on port {settings.pg_port}"))
    engine = make_engine(settings)
    migrate.upgrade(engine)
    drops = home / "drops"
    shutil.rmtree(drops, ignore_errors=True)
    drops.mkdir(parents=True)
    shutil.rmtree(settings.data_dir / "scenes", ignore_errors=True)
    area_id = _register(engine, settings, world, drops, models)
    metrics = default_metrics()
    rows = []
    for date in DATES:
        shutil.copy2(world.scenes[date], drops / world.scenes[date].name)
        _say(f"{date}: new imagery delivered; running the pipeline")
        summary = run_area(engine, area_id, settings, metrics, progress=False)
        with transaction(engine) as s:
            scene = s.scalar(select(Scene).where(Scene.area_id == area_id,
                                                 func.date(Scene.acquired_at) == date))
            ind = s.scalar(select(Indicator).where(Indicator.area_id == area_id, Indicator.observed_on == date))
            dets = s.scalar(select(func.count()).select_from(Detection).where(
                Detection.area_id == area_id, Detection.observed_on == date))
        settled = ind.settlement_km2 if ind else None
        carried = ind.settlement_carried_km2 if ind else None
        rows.append([date.isoformat(), scene.status if scene else "-",
                     f"{scene.cloud_cover:.1f}" if scene and scene.cloud_cover is not None else "-", dets,
                     f"{ind.built_km2:.3f}" if ind and ind.built_km2 is not None else "-",
                     f"{settled:.3f}" if settled is not None else "-",
                     f"{world.truth['settlement_km2'][date.isoformat()]:.3f}",
                     f"{carried:.3f}" if carried is not None else "-",
                     summary["alerts"], "; ".join(summary["errors"]) or ""])
    with transaction(engine) as s:
        alerts = list_alerts(s, area=AREA)
        doc = to_geojson(s, alerts)
        alert_rows = [(a.id, f["properties"]["parcel"], a.first_seen, a.last_seen, round(a.new_area_m2), a.confidence, a.status)
                      for a, f in zip(alerts, doc["features"])]
        alerted = {f["properties"].get("parcel") for f in doc["features"]}
        # the chips a reviewer would open first, rendered here so that the demo's folder holds them
        evidence = [p for a in alerts for p in render_chips(s, a, settings).items()]
        total_alerts = s.scalar(select(func.count()).select_from(Alert).where(Alert.area_id == area_id))
    (out / "alerts.geojson").write_text(json.dumps(doc, indent=2, default=str))
    chips = out / "evidence"
    shutil.rmtree(chips, ignore_errors=True)
    chips.mkdir()
    for name, p in evidence:
        shutil.copy2(p, chips / f"{p.parent.name}_{name}.png")
    overview = overview_picture(world, doc, out / "overview.png")
    truth = world.truth
    unpermitted = {t["parcel"] for t in truth.get("new_unpermitted", [])}
    permitted = {t["parcel"] for t in truth.get("new_permitted", [])}
    settlement = [{"date": r[0], "km2": None if r[5] == "-" else float(r[5]), "truth_km2": float(r[6]),
                   "carried_km2": None if r[7] == "-" else float(r[7])} for r in rows]
    result = {
        "dates": rows, "alerts": total_alerts,
        "unpermitted_buildings": len(unpermitted), "alerted_unpermitted": len(unpermitted & alerted),
        "alerts_on_permitted": len(permitted & alerted),
        "alerts_elsewhere": len(alerted - unpermitted - permitted),
        "settlement": settlement,
        "seconds": round(time.perf_counter() - started, 1),
    }
    typer.echo("\nper date:")
    typer.echo(table(rows, ["date", "scene", "cloud %", "detections", "built km2", "settlement km2", "truth km2",
                            "carried over km2", "alerts raised/escalated", "errors"]))
    typer.echo("\nalerts:")
    typer.echo(table(alert_rows, ["id", "parcel", "first seen", "last seen", "new m2", "confidence", "status"]))
    typer.echo(f"\nagainst the world's truth: {result['alerted_unpermitted']} of {result['unpermitted_buildings']} "
               f"unpermitted new buildings alerted; {result['alerts_on_permitted']} alerts on permitted ones; "
               f"{result['alerts_elsewhere']} on parcels without new construction")
    off = [(d["km2"] - d["truth_km2"]) / d["truth_km2"] for d in settlement if d["km2"] is not None]
    if off:
        typer.echo(f"settlement km2 against the world's truth: {', '.join(f'{100 * e:+.0f} %' for e in off)} "
                   f"(at most {100 * max(abs(e) for e in off):.0f} % off)")
    typer.echo(f"files: {out / 'alerts.geojson'}, {chips}/ ({len(list(chips.iterdir()))} chips), {overview}")
    typer.echo(f"done in {result['seconds']} s")
    (out / "summary.json").write_text(json.dumps(result, indent=2, default=str))
    return result


def overview_picture(world: World, alerts_doc: dict, path: Path) -> Path:
    """First and last date side by side, true colour, alerts outlined in red."""

    panels = []
    for date in (DATES[0], DATES[-1]):
        with rasterio.open(world.scenes[date]) as src:
            rgb = src.read([3, 2, 1]).astype("float32")
            inv = ~src.transform
        img = Image.fromarray(np.clip(rgb / 3000 * 255, 0, 255).astype("uint8").transpose(1, 2, 0))
        draw = ImageDraw.Draw(img)
        for f in alerts_doc["features"]:
            geom = reproject(shape(f["geometry"]), 4326, world.crs_epsg)
            for poly in getattr(geom, "geoms", [geom]):
                pts = [inv * (x, y) for x, y in poly.exterior.coords]
                draw.line(pts + [pts[0]], fill=(255, 0, 0), width=2)
        draw.text((8, 8), date.isoformat(), fill=(255, 255, 255))
        panels.append(img)
    w, h = panels[0].size
    canvas = Image.new("RGB", (w * 2 + 10, h), (255, 255, 255))
    canvas.paste(panels[0], (0, 0))
    canvas.paste(panels[1], (w + 10, 0))
    canvas.save(path)
    return path
