"""Parcel alerts on a SpaceNet 7 tile, against its labelled new buildings, beside an untrained reference.

    .venv/bin/python -m bench alerts_sn7 [--data TILE_DIR] [--model SPEC] [--grid-m 25] [--part validation|train|all]
        [--months 2018-01,2018-07,2020-01] [--alert-min-m2 M2] [--segmenter SEG] [--thresholds 0.5,0.6,0.7]
        [--choose f1|recall:R] [--rasters DIR] [--out DIR]

A fresh database; the area is the tile's footprint, watched through the ``local`` provider with the
tile's ``images/`` as drop folder (each mosaic a scene dated the 1st of its month), prepared on the
tile's UTM grid at 4 m; parcels are a regular ``--grid-m`` grid over the tile; the pipeline runs over
every month with the model (a segmenter, or a change model). The truth: the buildings labelled in the
last month whose Id no label of the first month has, burnt into the 4 m grid; a parcel changed when
at least ``--min-px`` (3) of those pixels fall in it, alerted when it has an alert first seen by the
last month. Scored on the parcels whose centre is in ``--part`` (validation: the east fifth, the part
``monitor dataset spacenet7`` holds out). Prints a table and, on its last line, JSON:

- parcel precision and recall, changed and alerted parcel counts, false alerts per km², and the false
  alerts by what their parcel holds: no building of any month (ground, vegetation and their seasons), a
  new building reaching in by fewer than ``--min-px`` pixels, or only buildings of the first month;
- building recall: share of the new buildings (centre in the part) that touch an alerted parcel;
- median delay: months from a building's first label to the first alert on a parcel it touches
  (negative when the alert came before the label, which lags construction);
- the same for the model's confirmed alerts only (still seen on a later month, so never those first
  seen in the last month);
- the settings of the diff and the judge that decided the alerts (``RULES``; set in the environment);
- with ``--thresholds``: the change model runs through the pipeline once per threshold, and the one
  chosen on its validation band (the rows of the tile's west that ``monitor train change`` held out to
  choose its own threshold) by ``--choose`` (``CHOICE_RULES``: the highest parcel F1, or the highest
  threshold that keeps a band recall of R with a margin) is the one scored; ``choice`` holds the
  band's scores, ``sweep`` every threshold on the scored part (a diagnostic, since choosing there would
  look at the answer); the models' probability rasters are inferred once and shared by the passes
  (``RasterPool``; kept for later runs with ``--rasters``);
- the same for the reference: change-vector magnitude between the first and the last month (each
  date standardized per band), the top 1 % of the tile's pixels, a 3-pixel median filter.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import numpy as np
import rasterio
import shapely
from rasterio.features import rasterize
from rasterio.warp import transform_bounds
from scipy import ndimage
from sqlalchemy import func, select

from bench.common import print_table, scratch_database
from monitor.db.engine import transaction
from monitor.db.tables import Alert, Parcel, Scene
from monitor.domain import Confidence, ModelMeta
from monitor.geo import reproject
from monitor.inventory.areas import add_area, area_spec, configure_area
from monitor.inventory.parcels import import_parcels
from monitor.ml.modelstore import image_stats
from monitor.ml.spacenet7 import (
    find_months,
    footprint_mask,
    new_buildings,
    read_footprints,
    read_mosaic,
    split_column,
    utm_grid,
)
from monitor.pipeline import run_area
from monitor.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
SHARED_TILES = ROOT.parent / "shared" / "data" / "spacenet7"
RESOLUTION_M = 4.0
VAL_FRACTION = 0.2


#: The settings of the diff and the judge that decide the alerts, reported with the scores (set them in
#: the environment, MONITOR_<NAME>).
RULES = ("shift_tolerance_m", "min_change_m2", "change_min_z", "change_check_same_season", "faint_memory_share",
         "alert_min_px", "alert_min_m2", "alert_min_fraction",
         "alert_min_sightings", "persist_days", "change_needs_building")


def refuse(message: str) -> NoReturn:
    """Stop on bad input: ``message`` (naming the option or file) on stderr, exit status 2."""
    print(f"bench.alerts_sn7: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def months_between(a: str, b: str) -> int:
    """Whole months from YYYY-MM ``a`` to ``b``."""
    return (int(b[:4]) - int(a[:4])) * 12 + int(b[5:7]) - int(a[5:7])


def score(parcels: dict[str, dict], buildings: list[dict], alerts: dict[str, str], *, min_px: int,
          area_km2: float) -> dict:
    """Parcel and building scores.

    ``parcels``: id -> {"new_px": labelled new-building pixels in it}, the scored parcels only;
    ``buildings``: the scored new buildings, each {"first_month": YYYY-MM, "parcels": ids it touches};
    ``alerts``: parcel id -> YYYY-MM of its first alert (parcels without an alert absent).
    The false alerts are also counted by what their parcel holds: ``false_alerts_unbuilt`` where no
    footprint of any month lies (``"built_px"`` 0: ground, vegetation and their seasons, nothing built
    ever), ``false_alerts_beside_new`` where a new building reaches in by fewer than ``min_px`` pixels (a
    blob over a parcel line), ``false_alerts_old_building`` where only buildings of the first month stand
    (a house found late, or its outline grown).
    """
    changed = {p for p, v in parcels.items() if v["new_px"] >= min_px}
    alerted = {p for p in alerts if p in parcels}
    tp = len(changed & alerted)
    false = alerted - changed
    unbuilt = {p for p in false if parcels[p].get("built_px", 1) == 0}
    beside_new = {p for p in false if parcels[p]["new_px"] > 0}
    delays, hit = [], 0
    for b in buildings:
        when = sorted(alerts[p] for p in b["parcels"] if p in alerts)
        if when:
            hit += 1
            delays.append(months_between(b["first_month"], when[0]))
    return {
        "parcels": len(parcels), "changed": len(changed), "alerted": len(alerted), "true_alerts": tp,
        "precision": round(tp / len(alerted), 4) if alerted else 0.0,
        "recall": round(tp / len(changed), 4) if changed else 0.0,
        "false_alerts_per_km2": round((len(alerted) - tp) / area_km2, 3) if area_km2 else 0.0,
        "false_alerts_unbuilt": len(unbuilt), "false_alerts_beside_new": len(beside_new),
        "false_alerts_old_building": len(false) - len(unbuilt) - len(beside_new),
        "new_buildings": len(buildings), "building_recall": round(hit / len(buildings), 4) if buildings else 0.0,
        "median_delay_months": statistics.median(delays) if delays else None,
    }


class Truth:
    """The tile's grid, parcels and new buildings (first month to last), and the scored part."""

    def __init__(self, tile_dir: Path, grid_m: float, part: str, months: list[str] | None = None) -> None:
        self.months = [m for m in find_months(tile_dir) if not months or m.month in months]
        if len(self.months) < 2:
            refuse(f"{tile_dir}: needs at least two months, has {[m.month for m in self.months]}")
        first, last = self.months[0], self.months[-1]
        self.grid = g = utm_grid(first.image, RESOLUTION_M)
        with rasterio.open(first.image) as src:
            self.footprint_4326 = shapely.box(*transform_bounds(src.crs, "EPSG:4326", *src.bounds, densify_pts=21))
        per_month = {m.month: read_footprints(m.labels, g.epsg) for m in self.months}
        ids, geoms = new_buildings(per_month, first.month, last.month)
        first_seen: dict[int, str] = {}
        for month in sorted(per_month):
            for i in per_month[month][0].tolist():
                first_seen.setdefault(i, month)
        new_px = footprint_mask(geoms, g)
        x0, y1 = g.transform.c, g.transform.f
        x1, y0 = x0 + g.width * RESOLUTION_M, y1 - g.height * RESOLUTION_M
        x_split = x0 + split_column(g.width, VAL_FRACTION) * RESOLUTION_M
        nx, ny = math.ceil((x1 - x0) / grid_m), math.ceil((y1 - y0) / grid_m)
        cells = {f"p{r:04d}_{c:04d}": shapely.box(x0 + c * grid_m, y1 - (r + 1) * grid_m, x0 + (c + 1) * grid_m,
                                                   y1 - r * grid_m) for r in range(ny) for c in range(nx)}
        self.cells = cells
        names = list(cells)
        index = rasterize(((box, k + 1) for k, box in enumerate(cells.values())), out_shape=(g.height, g.width),
                          transform=g.transform, fill=0, dtype="uint32")
        counts = np.bincount(index[new_px > 0].ravel(), minlength=len(names) + 1)
        ever = footprint_mask([g for _ids, geoms in per_month.values() for g in geoms], g)
        built = np.bincount(index[ever > 0].ravel(), minlength=len(names) + 1)

        self.x_split, self.top = x_split, y1
        self.new_px_by_cell = {n: {"new_px": int(counts[k + 1]), "built_px": int(built[k + 1])}
                               for k, n in enumerate(names)}
        tree = shapely.STRtree(list(cells.values()))
        self.all_buildings = [{"id": i, "first_month": first_seen[i], "centre": geom.centroid,
                               "parcels": [names[k] for k in tree.query(geom, predicate="intersects")]}
                              for i, geom in zip(ids.tolist(), geoms)]
        self.index = index
        self.parcels, self.buildings, self.area_km2 = self.scored(self.where(part))

    def where(self, part: str, band_rows: tuple[int, int] | None = None) -> Callable[[shapely.Point], bool]:
        """Whether a point is in ``part``: ``all``, ``validation`` (the east fifth), ``train`` (the rest) or
        ``band`` (grid rows ``band_rows`` of the rest, the rows a change model chose its threshold on)."""
        if part == "band":
            if band_rows is None:
                raise ValueError("the band needs its rows")
            r0, r1 = band_rows
            y_top, y_bottom = self.top - r0 * RESOLUTION_M, self.top - r1 * RESOLUTION_M
            return lambda pt: pt.x < self.x_split and y_bottom < pt.y <= y_top
        return lambda pt: part == "all" or (pt.x >= self.x_split) == (part == "validation")

    def scored(self, inside: Callable[[shapely.Point], bool]) -> tuple[dict[str, dict], list[dict], float]:
        """The parcels (by centre), the new buildings (by centre) and the km² of a part."""
        parcels = {n: v for n, v in self.new_px_by_cell.items() if inside(self.cells[n].centroid)}
        buildings = [{k: b[k] for k in ("id", "first_month", "parcels")} for b in self.all_buildings
                     if inside(b["centre"])]
        return parcels, buildings, sum(self.cells[n].area for n in parcels) / 1e6

    def parcels_geojson(self, path: Path) -> Path:
        """The parcel grid as a GeoJSON file (EPSG:4326) with a ``parcel_id`` field."""
        feats = [{"type": "Feature", "properties": {"parcel_id": n},
                  "geometry": reproject(box, f"EPSG:{self.grid.epsg}", 4326).__geo_interface__}
                 for n, box in self.cells.items()]
        path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
        return path


def reference_alerts(truth: Truth, *, top: float = 0.01, median_px: int = 3, min_px: int = 3) -> dict[str, str]:
    """Parcels alerted by change-vector magnitude between the first and the last month."""
    first, last = truth.months[0], truth.months[-1]
    stack, valid = [], None
    for m in (first, last):
        img, ok = read_mosaic(m.image, truth.grid)
        x = np.moveaxis(img, 0, -1).astype(np.float32)
        mean, std = image_stats(x, ok)
        stack.append((x - mean) / std)
        valid = ok if valid is None else valid & ok
    assert valid is not None
    mag = np.linalg.norm(stack[1] - stack[0], axis=-1)
    cut = np.quantile(mag[valid], 1 - top)
    mask = ndimage.median_filter(((mag > cut) & valid).astype(np.uint8), size=median_px) > 0
    counts = np.bincount(truth.index[mask].ravel(), minlength=len(truth.cells) + 1)
    names = list(truth.cells)
    return {n: last.month for k, n in enumerate(names) if counts[k + 1] >= min_px}


def _link(src: Path, dst: Path) -> None:
    """``dst`` the same file as ``src``: a hard link, or a copy across file systems."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


class RasterPool:
    """Probability rasters shared by passes over one tile's months (``--rasters``): the pipeline names them
    ``<scene id>_<kind>_<model version>.tif`` and keeps one already there, so a pass whose models have the
    same versions (a change model at another threshold, another diff or judge setting) reuses what an
    earlier pass inferred. Scene ids are given in date order on a fresh database, so they match from pass
    to pass over the same months; ``scenes.json`` records them, and a pass that gave other ids is an error."""

    def __init__(self, folder: Path, truth: Truth) -> None:
        self.folder, self.index = folder, folder / "scenes.json"
        names = sorted(m.image.name for m in truth.months)
        if self.index.exists() and sorted(self.scenes().values()) != names:
            refuse(f"--rasters {folder}: its rasters are of other months ({self.index})")

    def scenes(self) -> dict[int, str]:
        return {int(k): v for k, v in json.loads(self.index.read_text()).items()} if self.index.exists() else {}

    def lend(self, probability_dir: Path) -> None:
        """Link the pool's rasters into a fresh pass's ``probability_dir``."""
        probability_dir.mkdir(parents=True, exist_ok=True)
        for f in self.folder.glob("*.tif"):
            _link(f, probability_dir / f.name)

    def take(self, probability_dir: Path, scenes: dict[int, str]) -> None:
        """Add the pass's new rasters; ``scenes``: its scene ids and product ids (the drop files' names)."""
        known = self.scenes()
        if known and known != scenes:
            refuse(f"--rasters {self.folder}: this pass gave the scenes other ids than {self.index}")
        self.folder.mkdir(parents=True, exist_ok=True)
        for f in probability_dir.glob("*.tif"):
            if not (self.folder / f.name).exists():
                _link(f, self.folder / f.name)
        if not known:
            self.index.write_text(json.dumps(scenes, indent=1))


def pipeline_alerts(engine, settings, truth: Truth, model: str, work: Path, segmenter: str | None = None,
                    pool: RasterPool | None = None) -> tuple[dict[str, str], dict[str, str], dict]:
    """Parcels alerted by the whole pipeline over the months, on ``engine`` (a migrated database):
    parcel id -> month of its first alert, the same for the alerts confirmed (still seen on a later
    month), and what the pass did. ``segmenter``: a segmenter beside a change model ``model``.
    ``pool``: probability rasters the pass reuses and adds to."""
    drops = work / "drops"
    drops.mkdir(parents=True, exist_ok=True)
    for m in truth.months:
        target = drops / m.image.name
        if not target.exists():
            os.symlink(m.image.resolve(), target)
    kind = ModelMeta.read(Path(model)).kind if Path(model).is_dir() else "change"
    models = {kind: model, **({"segmenter": segmenter} if segmenter else {})}
    with transaction(engine) as s:
        spec = area_spec(settings, "sn7", cadence="30d", providers="local", max_cloud=100.0,
                         sources={"local": str(drops)}, resolution_m=RESOLUTION_M)
        area = add_area(s, spec, truth.footprint_4326)
        import_parcels(s, area, truth.parcels_geojson(work / "parcels.geojson"), "parcel_id",
                       allow_outside=True)  # the grid covers the tile, the area its imagery
        configure_area(s, "sn7", models=models)
        area_id = area.id
    probability_dir = settings.probability_dir(area_id)
    if pool:
        pool.lend(probability_dir)
    run = run_area(engine, area_id, settings, progress=True)
    with transaction(engine) as s:
        if pool:
            pool.take(probability_dir, dict(s.execute(
                select(Scene.id, Scene.product_id).where(Scene.area_id == area_id)).all()))
        rows = s.execute(select(Parcel.external_id, func.min(Alert.first_seen),
                                func.bool_or(Alert.confidence == str(Confidence.CONFIRMED)))
                         .join(Alert, Alert.parcel_id == Parcel.id).where(Alert.area_id == area_id)
                         .group_by(Parcel.external_id)).all()
        scenes = s.scalar(select(func.count()).select_from(Scene).where(Scene.area_id == area_id))
    last = truth.months[-1].month
    alerts = {pid: f"{d:%Y-%m}" for pid, d, _ in rows if f"{d:%Y-%m}" <= last}
    confirmed = {pid: f"{d:%Y-%m}" for pid, d, ok in rows if ok and f"{d:%Y-%m}" <= last}
    return alerts, confirmed, {"scenes": scenes, "processed": run["processed"], "errors": run["errors"][:5]}


#: How ``--thresholds`` picks one: on the parcels of the rows the change model held out to choose its own
#: threshold (its ``model.json`` ``training.split``), never on the scored part; ``--choose`` names the rule.
CHOICE_RULES = {
    "f1": "the highest parcel F1 on the model's validation band; ties: the higher threshold",
    "recall": "the highest threshold whose parcel recall on the model's validation band is at least R plus one "
              "standard error of a recall measured on the band's changed parcels, sqrt(R(1-R)/n); none: the "
              "highest band recall",
}
SWEEP_KEYS = ("precision", "recall", "changed", "alerted")


def f1(r: dict) -> float:
    """Parcel F1 of a ``score``."""
    p, q = r["precision"], r["recall"]
    return round(2 * p * q / (p + q), 4) if p + q else 0.0


def choice_rule(text: str) -> tuple[str, float | None]:
    """``--choose``: ``f1``, or ``recall:R`` with R in (0, 1)."""
    name, _, value = text.partition(":")
    if name == "f1" and not value:
        return "f1", None
    try:
        target = float(value) if name == "recall" else math.nan
    except ValueError:
        target = math.nan
    if not 0 < target < 1:
        raise argparse.ArgumentTypeError(f"'{text}': give f1, or recall:R with R between 0 and 1")
    return "recall", target


def required_recall(target: float, changed: int) -> float:
    """The band recall the ``recall`` rule asks for: ``target`` plus one standard error on ``changed`` parcels."""
    return target + math.sqrt(target * (1 - target) / max(changed, 1))


def choose(on_band: dict[float, dict], rule: tuple[str, float | None]) -> float:
    """The threshold ``rule`` (from ``choice_rule``) picks from each threshold's ``score`` on the band."""
    name, target = rule
    if name == "f1":
        return max(on_band, key=lambda t: (f1(on_band[t]), t))
    assert target is not None
    need = required_recall(target, max(r["changed"] for r in on_band.values()))
    reaching = [t for t, r in on_band.items() if r["recall"] >= need]
    return max(reaching) if reaching else max(on_band, key=lambda t: (on_band[t]["recall"], t))


def threshold_list(text: str) -> list[float]:
    """``--thresholds``: comma-separated numbers in (0, 1), at least one."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of numbers") from None
    if not all(0 < v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"'{text}': every threshold must lie between 0 and 1")
    return values


def band_rows(model_dir: Path, tile: str) -> tuple[int, int]:
    """The grid rows a change model held out on ``tile`` to choose its threshold (west of the east fifth)."""
    split = ModelMeta.read(model_dir).extra.get("training", {}).get("split", {}).get(tile, {})
    if "validation_rows" not in split:
        refuse(f"{model_dir}: model.json records no validation rows for {tile}; "
               "--thresholds needs a change model trained on this tile")
    r0, r1 = split["validation_rows"]
    return int(r0), int(r1)


def with_threshold(model_dir: Path, threshold: float, out: Path) -> Path:
    """A copy of a model that alerts at a fixed ``threshold`` (any per-scene rule dropped)."""
    shutil.copytree(model_dir, out, dirs_exist_ok=True)
    meta = json.loads((out / "model.json").read_text())
    meta.update(threshold=threshold, threshold_rule=None)
    (out / "model.json").write_text(json.dumps(meta, indent=2))
    return out


def rules(settings: Settings) -> dict:
    """The settings of the diff and the judge that decided the alerts, by name."""
    return {k: getattr(settings, k) for k in RULES}


def bench_settings(home: Path, min_px: int, alert_min_m2: float | None = None):
    """The monitor's settings with the database of the environment, a private home, and alerts raised
    at ``min_px`` pixels of 4 m, or at ``alert_min_m2`` when given."""
    return Settings(home=home, alert_min_m2=min_px * RESOLUTION_M ** 2 - 1e-6 if alert_min_m2 is None else alert_min_m2)


def main(args: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="bench.alerts_sn7", description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=None,
                   help="SpaceNet 7 tile folder (images/, labels/); default: the first under ../shared/data/spacenet7")
    p.add_argument("--model", default=None, help="model directory (segmenter or change); none: the reference only")
    p.add_argument("--segmenter", default=None,
                   help="a segmenter beside the change model --model (see MONITOR_CHANGE_NEEDS_BUILDING)")
    p.add_argument("--grid-m", type=float, default=25.0, help="parcel grid cell, metres")
    p.add_argument("--part", choices=("validation", "train", "all"), default="validation",
                   help="parcels scored: the east fifth (validation), the rest (train) or all")
    p.add_argument("--months", default=None, help="comma-separated YYYY-MM months to use (default: all)")
    p.add_argument("--min-px", type=int, default=3, help="4 m pixels that make a parcel changed or alerted")
    p.add_argument("--alert-min-m2", type=float, default=None,
                   help="new built area on a parcel that raises an alert (MONITOR_ALERT_MIN_M2); default: --min-px pixels")
    p.add_argument("--thresholds", type=threshold_list, default=None,
                   help="comma-separated thresholds for the change model: the pipeline runs at each, and the one "
                        "chosen on the model's validation band is reported (see --choose)")
    p.add_argument("--choose", type=choice_rule, default=("f1", None),
                   help="how --thresholds picks one on the band: f1 (the highest parcel F1, the default) or "
                        "recall:R (the highest threshold whose band recall is at least R plus one standard error; "
                        "see CHOICE_RULES)")
    p.add_argument("--rasters", type=Path, default=None,
                   help="keep the probability rasters here and reuse them in later runs of the same models over "
                        "the same months (default: shared by the --thresholds of this run only)")
    p.add_argument("--out", type=Path, default=None,
                   help="keep the work folder here (its parcels.geojson: the grid; with --thresholds, "
                        "threshold-T/model: the model at threshold T)")
    a = p.parse_args(args or [])
    if a.data is None:
        found = sorted(d for d in SHARED_TILES.glob("*") if (d / "images").is_dir()) if SHARED_TILES.is_dir() else []
        if not found:
            refuse(f"no tile folder under {SHARED_TILES}: give one with --data")
        a.data = found[0]
    truth = Truth(a.data, a.grid_m, a.part, a.months.split(",") if a.months else None)
    if a.out:  # the parcel grid, for a user's own area over the tile (docs/walkthrough-spacenet7.md)
        a.out.mkdir(parents=True, exist_ok=True)
        truth.parcels_geojson(a.out / "parcels.geojson")
    common = {"min_px": a.min_px, "area_km2": truth.area_km2}
    result: dict = {"tile": a.data.name, "part": a.part, "grid_m": a.grid_m,
                    "months": [m.month for m in truth.months], "area_km2": round(truth.area_km2, 3)}
    result["reference"] = score(truth.parcels, truth.buildings, reference_alerts(truth, min_px=a.min_px), **common)
    if a.model:
        thresholds: list[float | None] = list(a.thresholds) if a.thresholds else [None]
        band = band_rows(Path(a.model), a.data.name) if len(thresholds) > 1 else None
        runs = {}
        with tempfile.TemporaryDirectory() as shared:
            folder = a.rasters or (Path(shared) / "rasters" if len(thresholds) > 1 else None)
            pool = RasterPool(folder, truth) if folder else None
            for t in thresholds:
                with tempfile.TemporaryDirectory() as tmp, scratch_database("monitor_bench_sn7") as engine:
                    work = (a.out / f"threshold-{t}" if t is not None else a.out) if a.out else Path(tmp)
                    work.mkdir(parents=True, exist_ok=True)
                    model = a.model if t is None else str(with_threshold(Path(a.model), t, work / "model"))
                    settings = bench_settings(work / "home", a.min_px, a.alert_min_m2)
                    runs[t] = pipeline_alerts(engine, settings, truth, model, work, a.segmenter, pool)
        chosen = thresholds[0]
        if band is not None:
            band_parcels, band_buildings, band_km2 = truth.scored(truth.where("band", band))
            on_band = {t: score(band_parcels, band_buildings, runs[t][0], min_px=a.min_px, area_km2=band_km2)
                       for t in thresholds}
            chosen = choose(on_band, a.choose)
            name, target = a.choose
            result["choice"] = {
                "on": "band", "rows": list(band), "rule": CHOICE_RULES[name], "chosen": chosen,
                **({"target_recall": target, "required_band_recall": round(
                    required_recall(target, on_band[chosen]["changed"]), 4)} if target is not None else {}),
                "band": [{"threshold": t, **{k: on_band[t][k] for k in SWEEP_KEYS}, "f1": f1(on_band[t])}
                         for t in thresholds]}
            swept = {t: score(truth.parcels, truth.buildings, runs[t][0], **common) for t in thresholds}
            result["sweep"] = [{"threshold": t, **{k: swept[t][k] for k in SWEEP_KEYS}} for t in thresholds]
        alerts, confirmed, run = runs[chosen]
        result["settings"] = rules(settings)
        result["model"] = {"spec": a.model, **({"threshold": chosen} if chosen is not None else {}),
                           **score(truth.parcels, truth.buildings, alerts, **common), "run": run}
        result["model_confirmed"] = score(truth.parcels, truth.buildings, confirmed, **common)
        if "sweep" in result:
            print_table([[r["threshold"], b["precision"], b["recall"], b["f1"], r["precision"], r["recall"],
                          "chosen" if r["threshold"] == chosen else ""]
                         for r, b in zip(result["sweep"], result["choice"]["band"])],
                        ["threshold", "band precision", "band recall", "band F1", f"{a.part} precision",
                         f"{a.part} recall", ""])
    rows = [[name, r["precision"], r["recall"], r["building_recall"], r["false_alerts_per_km2"],
             r["false_alerts_unbuilt"], r["false_alerts_beside_new"], r["false_alerts_old_building"],
             r["median_delay_months"], r["alerted"], r["changed"]]
            for name, r in (("reference", result["reference"]), ("model", result.get("model")),
                            ("model, confirmed alerts", result.get("model_confirmed"))) if r]
    print_table(rows, ["", "precision", "recall", "building recall", "false/km2", "false unbuilt", "false beside new",
                       "false old building", "median delay", "alerted", "changed"])
    print(json.dumps(result))


if __name__ == "__main__":

    main(sys.argv[1:])
