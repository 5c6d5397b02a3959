"""Leave-one-city-out on OSCD: each city scored by a change model trained on the other cities.

    .venv/bin/python -m bench.oscd_loco [--src ../shared/data/oscd] [--out DIR] [--epochs N] [--bands all]
        [--cities a,b] [--seed 0] [--shift 1] [--no-tta]

Training uses `train_change`'s defaults except that it runs a fixed number of epochs (no time limit),
so that the numbers do not depend on the machine's load. Prints per-city precision, recall, F1 and
IoU of the change class, and the five held-out cities pooled (their confusion counts summed).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from bench.common import print_table

ROOT = Path(__file__).resolve().parents[1]


def main(args: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="bench.oscd_loco", description=__doc__.splitlines()[0])
    p.add_argument("--src", type=Path, default=ROOT.parent / "shared" / "data" / "oscd", help="OSCD folder")
    p.add_argument("--out", type=Path, default=None, help="keep the converted data, models and loco.json here")
    p.add_argument("--epochs", type=int, default=None, help="epochs per fold (default: train_change's)")
    p.add_argument("--bands", default=None, help="comma-separated bands, or 'all' (default: train_change's)")
    p.add_argument("--cities", default=None, help="comma-separated held-out cities (default: every city)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shift", type=int, default=None, help="date shift of training patches (default: train_change's)")
    p.add_argument("--no-tta", action="store_true", help="score without test-time augmentation")
    a = p.parse_args(args or [])

    from monitor.ml import scores
    from monitor.ml.evaluation import evaluate
    from monitor.ml.modelstore import load_model
    from monitor.ml.oscd import OSCD_BANDS, convert_oscd
    from monitor.ml.training import train_change

    with tempfile.TemporaryDirectory() as tmp:
        out = a.out or Path(tmp)
        data = out / "oscd"
        summary = convert_oscd(a.src, data, overwrite=True)
        cities = [c for c, e in summary["cities"].items() if e["labelled"]]
        held_out = a.cities.split(",") if a.cities else cities
        kw = {"seed": a.seed, "time_limit_s": None, "progress": True}
        if a.epochs:
            kw["epochs"] = a.epochs
        if a.shift is not None:
            kw["shift"] = a.shift
        if a.no_tta:
            kw["tta"] = False
        if a.bands:
            kw["bands"] = OSCD_BANDS if a.bands == "all" else a.bands.split(",")
        rows, results, cms = [], {}, []
        for city in held_out:
            t0 = time.perf_counter()
            model_dir = train_change(data, out / f"loco-{city}", cities=[c for c in cities if c != city], **kw)
            train_s = time.perf_counter() - t0
            model = load_model(model_dir)
            r = evaluate(model, data, cities=[city])["cities"][city]
            cms.append(r["confusion"])
            results[city] = {**r, "threshold": model.threshold, "train_seconds": round(train_s),
                             "epochs_run": model.meta["training"]["epochs_run"],
                             "best_epoch": model.meta["training"]["best_epoch"],
                             "validation_f1": model.meta["metrics"]["validation"]["f1"]}
            rows.append([city, f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}", f"{r['iou']:.3f}",
                         f"{model.threshold:.2f}", results[city]["best_epoch"], round(train_s)])
            print(f"{city}: {json.dumps(results[city])}", flush=True)
        pooled = scores.scores(scores.add(*cms))
        rows.append(["pooled", f"{pooled['precision']:.3f}", f"{pooled['recall']:.3f}", f"{pooled['f1']:.3f}",
                     f"{pooled['iou']:.3f}", "", "", ""])
        mean_f1 = sum(results[c]["f1"] for c in held_out) / len(held_out)
        rows.append(["mean of cities", "", "", f"{mean_f1:.3f}", "", "", "", ""])
        if a.out:
            (out / "loco.json").write_text(json.dumps({"settings": {k: v for k, v in kw.items() if k != "progress"},
                                                       "cities": results, "pooled": pooled}, indent=2, default=str))
    print_table(rows, ["held-out city", "precision", "recall", "F1", "IoU", "threshold", "best epoch", "train s"])


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
