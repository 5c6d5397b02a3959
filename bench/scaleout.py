"""N areas of the synthetic world processed in this process, then on a Dask ``LocalCluster`` of 1 and
of 2 worker processes (127.0.0.1 only): wall seconds, scenes per second and the speed-up.

    .venv/bin/python -m bench scaleout [--areas N] [--dates K] [--timeout S]

Each area is the demo world (``monitor.world.make_world``) with its parcels, its first K dates in a
drop folder of its own and a tiny real Keras segmenter whose weights encode a rule (a bright blue
band is a new roof), as in the tests, so nothing is trained. Every mode gets N fresh areas in the
same scratch database (the private cluster at ``MONITOR_PG_PORT``, or ``DATABASE_URL``), so every
mode does the same work: search, fetch (a copy from the drop folder), infer, vectorize, diff, judge.
In this process the areas run one after another, as one daemon runs them; on a cluster they run at
once, one thread per area submitting its steps (``MONITOR_DASK_SCHEDULER``). The workers load
TensorFlow and the model before the clock starts (their start is reported apart). Modes that would
pass ``--timeout`` seconds in all are not started; the clusters are closed in any case.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import print_table, scratch_database
from monitor.metrics import Metrics
from monitor.settings import Settings
from monitor.world import DATES, make_world


def rule_model(out: Path) -> Path:
    """The tests' roof model: one 1x1 convolution, saved and loaded like a trained segmenter."""
    import numpy as np

    from monitor.ml.modelstore import save_model
    from monitor.ml.runtime import keras

    k = keras()
    inputs = k.Input((None, None, 1))
    model = k.Model(inputs, k.layers.Conv2D(1, 1, activation="sigmoid")(inputs))
    model.layers[-1].set_weights([np.full((1, 1, 1, 1), 4.0, "float32"), np.zeros(1, "float32")])
    meta = {"kind": "segmenter", "version": "segmenter-roof-rule", "bands": ["B02"],
            "normalization": {"mean": [1900.0], "std": [100.0]}, "tile": 64, "threshold": 0.5,
            "resolution_m": 2.0, "architecture": {"depth": 0}}
    return save_model(model, out, meta)


def add_areas(engine, world, model: Path, root: Path, prefix: str, n: int, dates) -> list[int]:
    """``n`` fresh areas named ``prefix-i``, each with the world's parcels and its own drop folder."""
    from monitor.db.engine import transaction
    from monitor.domain import AreaSpec
    from monitor.inventory.areas import add_area, configure_area
    from monitor.inventory.parcels import import_parcels

    ids = []
    for i in range(n):
        name = f"{prefix}-{i}"
        drops = root / name
        drops.mkdir(parents=True)
        for date in dates:
            shutil.copy2(world.scenes[date], drops)
        with transaction(engine) as s:
            spec = AreaSpec.parse(name, cadence="1d", providers="local", max_cloud=40,
                                  sources={"local": str(drops)}, resolution_m=2.0)
            area = add_area(s, spec, world.area)
            import_parcels(s, area, world.parcels, "parcel_id")
            configure_area(s, name, models={"segmenter": str(model)})
            ids.append(area.id)
    return ids


def _warm(model: str) -> None:
    """On a worker: import TensorFlow and load the model, as its first inference would."""
    from monitor.ml.modelstore import load_model

    load_model(model)


def run_mode(engine, settings: Settings, areas: list[int], deadline: float, at_once: bool) -> dict:
    """Pass over ``areas`` (one after another, or one thread each); seconds, scenes and errors."""
    from monitor.pipeline import run_area

    results: dict[int, dict] = {}

    def one(area_id: int) -> None:
        results[area_id] = run_area(engine, area_id, settings, Metrics())

    t0 = time.perf_counter()
    if at_once:
        threads = [threading.Thread(target=one, args=(a,), daemon=True) for a in areas]
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(1.0, deadline - time.monotonic()))
    else:
        for a in areas:
            if time.monotonic() < deadline:
                one(a)
    wall = time.perf_counter() - t0
    done = list(results.values())
    errors = [e for r in done for e in r["errors"]]
    return {"wall_s": wall, "scenes": sum(r["processed"] for r in done), "alerts": sum(r["alerts"] for r in done),
            "errors": errors, "complete": len(done) == len(areas) and not errors}


TABLES = ("scenes", "detections", "changes", "parcel_changes", "alerts", "runs")


def table_sizes(engine) -> dict:
    """Rows and bytes (with indexes and TOAST) of the tables a pass fills, for sizing a database."""
    import sqlalchemy as sa

    with engine.connect() as conn:
        return {t: {"rows": conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar(),
                    "bytes": conn.execute(sa.text(f"SELECT pg_total_relation_size('{t}')")).scalar()} for t in TABLES}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench scaleout")
    parser.add_argument("--areas", type=int, default=2, help="areas per mode (default 2)")
    parser.add_argument("--dates", type=int, default=len(DATES), help=f"dates per area, 1-{len(DATES)}")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="cluster sizes (default 1 2)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds for the whole run (default 900)")
    args = parser.parse_args(argv or [])
    if not 1 <= args.dates <= len(DATES) or args.areas < 1:
        sys.exit(f"--areas must be at least 1 and --dates 1-{len(DATES)}")
    from distributed import Client, LocalCluster

    deadline = time.monotonic() + args.timeout
    dates = DATES[:args.dates]
    modes: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-scaleout-") as tmp, scratch_database("monitor_scaleout") as engine:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        world = make_world(tmp / "world", seed=7)
        model = rule_model(tmp / "models" / "roof")
        print(f"world and model in {time.perf_counter() - t0:.1f} s", flush=True)
        url = engine.url.render_as_string(hide_password=False)
        settings = Settings(database_url=url, home=tmp / "home")
        _warm(str(model))  # this process pays TensorFlow's import and the model's load before its clock too

        areas = add_areas(engine, world, model, tmp / "drops", "inproc", args.areas, dates)
        row = run_mode(engine, settings, areas, deadline, at_once=False)
        modes.append({"mode": "in-process", "workers": 0, "start_s": 0.0, **row})
        print(f"in-process: {row['wall_s']:.1f} s, {row['scenes']} scenes", flush=True)

        for n in args.workers:
            if time.monotonic() + 2 * modes[0]["wall_s"] > deadline:
                print(f"{n} worker(s): not started, --timeout {args.timeout:g} s would pass", flush=True)
                continue
            areas = add_areas(engine, world, model, tmp / "drops", f"dask{n}", args.areas, dates)
            t1 = time.perf_counter()
            with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                              dashboard_address="127.0.0.1:0", worker_dashboard_address="127.0.0.1:0") as cluster, \
                    Client(cluster.scheduler_address, set_as_default=False) as client:
                client.run(_warm, str(model))
                start = time.perf_counter() - t1
                on_cluster = settings.model_copy(update={"dask_scheduler": cluster.scheduler_address})
                row = run_mode(engine, on_cluster, areas, deadline, at_once=True)
            modes.append({"mode": f"LocalCluster {n}", "workers": n, "start_s": start, **row})
            print(f"{n} worker(s): {row['wall_s']:.1f} s, {row['scenes']} scenes (cluster start {start:.1f} s)",
                  flush=True)
        db = table_sizes(engine)

    base = modes[0]["scenes"] / modes[0]["wall_s"] if modes[0]["scenes"] else 0.0
    for m in modes:
        m["scenes_per_s"] = m["scenes"] / m["wall_s"] if m["wall_s"] else 0.0
        m["speedup"] = m["scenes_per_s"] / base if base else 0.0
    print()
    print_table([[m["mode"], m["scenes"], m["alerts"], f"{m['start_s']:.1f}", f"{m['wall_s']:.1f}",
                  f"{m['scenes_per_s']:.3f}", f"{m['speedup']:.2f}", "yes" if m["complete"] else "NO"] for m in modes],
                ["mode", "scenes", "alerts", "cluster start s", "wall s", "scenes/s", "x in-process", "complete"])
    print()
    print_table([[t, v["rows"], v["bytes"], f"{v['bytes'] / v['rows']:.0f}" if v["rows"] else "-"]
                 for t, v in db.items()], ["table (all modes)", "rows", "bytes", "bytes/row"])
    print(json.dumps({"areas": args.areas, "dates": args.dates, "db": db, "modes": [
        {**{k: v for k, v in m.items() if k != "errors"}, "errors": m["errors"][:5],
         **{k: round(m[k], 3) for k in ("wall_s", "start_s", "scenes_per_s", "speedup")}} for m in modes]}))


if __name__ == "__main__":
    main(sys.argv[1:])
