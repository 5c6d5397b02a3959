"""Parcel-level alert precision and recall on real imagery: OSCD cities through the whole pipeline.

    .venv/bin/python -m bench alerts_real --data DIR [--model SPEC | --loco-dir DIR [--seed 0]]
        [--cities a,b] [--cell 40] [--min-pixels 2]

For every labelled city of DIR (a `monitor dataset oscd` folder) an area over the city, a regular grid
of ``--cell`` m x ``--cell`` m parcels over it (in the area's UTM zone), no permits, and both dates as
scenes of a `local` drop folder; one pipeline pass (search, fetch, prepare, infer, vectorize, judge)
with the change model ``--model`` (default ``builtin:oscd-change``), or, with ``--loco-dir``, the model
``loco-<seed>-<city>`` that `bench.oscd_loco --out DIR` trained without that city. A parcel truly
changed when at least ``--min-pixels`` labelled change pixels (200 m2 at 10 m) fall inside it; it is
alerted when the pipeline opened an alert on it (``MONITOR_ALERT_MIN_M2`` 200: two pixels). Prints per
city and pooled precision and recall of alerted parcels, and JSON on the last line. Works in a scratch
database, dropped afterwards, on the server of the settings (``DATABASE_URL``, or the private cluster,
started when needed as `monitor db url` does).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import tempfile
from pathlib import Path

from bench.common import print_table, scratch_database


def _grid(area_utm, cell: float):
    import numpy as np
    from shapely.geometry import box

    x0, y0, x1, y1 = area_utm.bounds
    xs, ys = np.arange(x0, x1 - cell / 2, cell), np.arange(y0, y1 - cell / 2, cell)
    return [box(x, y, x + cell, y + cell) for y in ys for x in xs]


def main(args: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="bench.alerts_real", description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="a `monitor dataset oscd` folder")
    p.add_argument("--model", default="builtin:oscd-change", help="change model: directory or builtin:NAME")
    p.add_argument("--loco-dir", type=Path, default=None, help="bench.oscd_loco --out DIR: per-city held-out models")
    p.add_argument("--seed", type=int, default=0, help="seed of the --loco-dir models")
    p.add_argument("--cities", default=None, help="comma-separated cities (default: every labelled city)")
    p.add_argument("--cell", type=float, default=40.0, help="parcel side, metres")
    p.add_argument("--min-pixels", type=int, default=2, help="labelled change pixels that make a parcel changed")
    a = p.parse_args(args or [])

    import numpy as np
    import rasterio
    import shapely
    import shapely.ops
    from pyproj import Transformer
    from rasterio.features import rasterize
    from shapely.geometry import box, mapping
    from sqlalchemy import text
    from sqlalchemy.orm import Session

    from monitor.inventory.areas import add_area, area_spec, configure_area
    from monitor.inventory.parcels import import_parcels
    from monitor.ml.oscd import read_change_summary
    from monitor.pipeline import run_area
    from monitor.settings import Settings

    summary = read_change_summary(a.data)
    cities = a.cities.split(",") if a.cities else [c for c, e in summary["cities"].items() if e["labelled"]]
    results, totals = {}, {"tp": 0, "fp": 0, "fn": 0}
    with tempfile.TemporaryDirectory() as tmp, scratch_database("monitor_alerts_real") as engine:
        settings = Settings(home=Path(tmp) / "home", database_url=engine.url.render_as_string(hide_password=False),
                            alert_min_m2=100.0 * a.min_pixels, default_change_model="")
        for city in cities:
            entry = summary["cities"][city]
            model = str(a.loco_dir / f"loco-{a.seed}-{city}") if a.loco_dir else a.model
            drops = Path(tmp) / "drops" / city
            drops.mkdir(parents=True)
            for name, date in zip(("before", "after"), entry["dates"]):
                shutil.copy(a.data / city / f"{name}.tif", drops / f"{city}_{date.replace('-', '')}.tif")
            with rasterio.open(a.data / city / "change.tif") as src:
                change, crs, transform = src.read(1), src.crs, src.transform
                bounds = src.bounds
            to_4326 = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
            footprint = shapely.ops.transform(to_4326.transform, box(*bounds))
            with Session(engine) as s, s.begin():
                area = add_area(s, area_spec(settings, city, providers="local", sources={"local": str(drops)},
                                             resolution_m=10.0), footprint)
                utm = f"EPSG:{area.utm_epsg}"
                area_id = area.id
            to_utm = Transformer.from_crs("EPSG:4326", utm, always_xy=True)
            inner = shapely.ops.transform(to_utm.transform, footprint).buffer(-a.cell)  # whole cells inside
            cells = [c for c in _grid(inner, a.cell) if inner.contains(c)]
            parcels = Path(tmp) / f"{city}_parcels.geojson"
            back = Transformer.from_crs(utm, "EPSG:4326", always_xy=True)
            parcels.write_text(json.dumps({"type": "FeatureCollection", "features": [
                {"type": "Feature", "properties": {"pid": str(i)},
                 "geometry": mapping(shapely.ops.transform(back.transform, c))} for i, c in enumerate(cells)]}))
            with Session(engine) as s, s.begin():
                area = s.get(type(area), area_id)
                import_parcels(s, area, parcels, id_field="pid")
                configure_area(s, city, models={"change": model})
            run = run_area(engine, area_id, settings)
            # truth: labelled change pixels per parcel, on the label's own grid
            to_label = Transformer.from_crs(utm, crs, always_xy=True)
            ids = rasterize([(shapely.ops.transform(to_label.transform, c), i + 1) for i, c in enumerate(cells)],
                            out_shape=change.shape, transform=transform, fill=0, dtype="int32")
            counts = np.bincount(ids[change == 1].ravel(), minlength=len(cells) + 1)[1:]
            truth = {str(i) for i in np.flatnonzero(counts >= a.min_pixels)}
            with engine.connect() as conn:
                alerted = set(conn.execute(text(
                    "SELECT p.external_id FROM alerts al JOIN parcels p ON p.id = al.parcel_id "
                    "WHERE p.area_id = :a"), {"a": area_id}).scalars())
            tp, fp, fn = len(alerted & truth), len(alerted - truth), len(truth - alerted)
            for k, v in (("tp", tp), ("fp", fp), ("fn", fn)):
                totals[k] += v
            results[city] = {"parcels": len(cells), "changed": len(truth), "alerted": len(alerted), "tp": tp,
                             "precision": round(tp / (tp + fp), 4) if tp + fp else 0.0,
                             "recall": round(tp / (tp + fn), 4) if tp + fn else 0.0, "model": model,
                             "processed": run["processed"], "errors": run["errors"]}
            print(f"{city}: {json.dumps(results[city])}", flush=True)
    tp, fp, fn = totals["tp"], totals["fp"], totals["fn"]
    pooled = {**totals, "precision": round(tp / (tp + fp), 4) if tp + fp else 0.0,
              "recall": round(tp / (tp + fn), 4) if tp + fn else 0.0}
    rows = [[c, r["parcels"], r["changed"], r["alerted"], f"{r['precision']:.3f}", f"{r['recall']:.3f}"]
            for c, r in results.items()]
    rows.append(["pooled", sum(r["parcels"] for r in results.values()), tp + fn, tp + fp,
                 f"{pooled['precision']:.3f}", f"{pooled['recall']:.3f}"])
    print_table(rows, ["city", "parcels", "changed", "alerted", "precision", "recall"])
    print(json.dumps({"cities": results, "pooled": pooled, "settings": {
        "model": None if a.loco_dir else a.model, "loco_dir": str(a.loco_dir) if a.loco_dir else None,
        "seed": a.seed, "cell_m": a.cell, "min_pixels": a.min_pixels,
        "measured": dt.date.today().isoformat()}}))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
