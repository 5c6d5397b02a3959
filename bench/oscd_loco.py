"""Leave-one-city-out on OSCD: each city scored by a change model trained on the other cities, beside
change vector analysis (``builtin:cva``) measured in the same run.

    .venv/bin/python -m bench.oscd_loco [--src ../shared/data/oscd] [--data DIR] [--out DIR]
        [--seeds 0,1] [--cities a,b] [--arch features|unet] [--time-limit MIN] [--members N] [--ema M] [--reuse]

For each held-out city and seed, ``monitor train change``'s default recipe (``--arch features``) is
trained on the other cities and scored on the held-out one at its own threshold rule. CVA's k (of the
``robust_z`` rule) is chosen per fold as the one with the best pooled F1 on the training cities.
Prints per-city and pooled precision, recall and F1 (pooled: the held-out cities' confusion counts
summed), the mean and spread (standard deviation) of pooled F1 over seeds, and all of it as JSON on the
last line. With ``--reuse`` the models a run left in ``--out`` are scored again without training
(``seconds`` is then the training time recorded in each model).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import print_table

ROOT = Path(__file__).resolve().parents[1]
CVA_KS = (3.0, 4.0, 5.0, 6.0, 8.0, 10.0)


def main(args: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="bench.oscd_loco", description=__doc__.splitlines()[0])
    p.add_argument("--src", type=Path, default=ROOT.parent / "shared" / "data" / "oscd", help="OSCD folder")
    p.add_argument("--data", type=Path, default=None, help="an already converted `monitor dataset oscd` folder")
    p.add_argument("--out", type=Path, default=None, help="keep the models and loco.json here")
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds")
    p.add_argument("--cities", default=None, help="comma-separated held-out cities (default: every city)")
    p.add_argument("--arch", default="features", choices=["features", "unet"], help="recipe to train")
    p.add_argument("--time-limit", type=float, default=25.0, help="minutes per fold")
    p.add_argument("--members", type=int, default=1, help="features: networks averaged per model (seeds SEED, SEED+1, ...)")
    p.add_argument("--ema", type=float, default=None, help="features: score and keep epochs with this moving "
                   "average of the weights (default: the recipe's)")
    p.add_argument("--reuse", action="store_true", help="score the models already in --out (loco-<seed>-<city>) "
                   "instead of training them again")
    a = p.parse_args(args or [])


    from monitor.ml import scores
    from monitor.ml.changenet import train_change_features
    from monitor.ml.evaluation import evaluate
    from monitor.ml.inference import predict_array
    from monitor.ml.modelstore import cva_model, load_model
    from monitor.ml.oscd import convert_oscd, load_city, read_change_summary
    from monitor.ml.training import train_change

    seeds = [int(s) for s in a.seeds.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        out = a.out or Path(tmp)
        data = a.data or out / "oscd"
        summary = read_change_summary(data) if a.data else convert_oscd(a.src, data, overwrite=True)
        cities = [c for c, e in summary["cities"].items() if e["labelled"]]
        held_out = a.cities.split(",") if a.cities else cities

        # CVA: one magnitude map per city; k chosen per fold on the training cities
        cva = cva_model()
        maps, truth, valid = {}, {}, {}
        for c in cities:
            d = load_city(data, c, cva.bands)
            maps[c] = predict_array(cva, d["x"], ~d["valid"])
            truth[c], valid[c] = d["change"] == 1, d["valid"]

        def cva_cm(c: str, k: float) -> dict:
            t = scores.scene_threshold(maps[c], valid[c], {**cva.threshold_rule, "k": k})
            return scores.confusion(maps[c] > t, truth[c], valid[c])

        results: dict = {"cva": {"cities": {}}, "trained": {str(s): {"cities": {}} for s in seeds}}
        cva_cms = []
        for city in held_out:
            train = [c for c in cities if c != city]
            k = max(CVA_KS, key=lambda k_: scores.scores(scores.add(*(cva_cm(c, k_) for c in train)))["f1"])
            cm = cva_cm(city, k)
            cva_cms.append(cm)
            results["cva"]["cities"][city] = {**scores.scores(cm), "k": k, "confusion": cm}
        results["cva"]["pooled"] = scores.scores(scores.add(*cva_cms))

        for seed in seeds:
            cms, res = [], results["trained"][str(seed)]
            for city in held_out:
                t0 = time.perf_counter()
                train = [c for c in cities if c != city]
                target = out / f"loco-{seed}-{city}"
                if a.reuse and (target / "model.json").is_file():
                    model_dir = target
                elif a.arch == "features":
                    model_dir = train_change_features(data, target, cities=train, seed=seed, members=a.members,
                                                      **({"ema": a.ema} if a.ema is not None else {}),
                                                      time_limit_s=a.time_limit * 60 * a.members)
                else:
                    model_dir = train_change(data, target, cities=train, seed=seed, time_limit_s=a.time_limit * 60)
                model = load_model(model_dir)
                r = evaluate(model, data, cities=[city])["cities"][city]
                cms.append(r["confusion"])
                res["cities"][city] = {**r, "rule": model.threshold_rule or {"rule": "fixed"},
                                       "fixed_threshold": model.threshold,
                                       "seconds": round(model.meta["training"]["seconds"] if a.reuse
                                                        else time.perf_counter() - t0),
                                       "best_epoch": model.meta["training"]["best_epoch"]}
                print(f"seed {seed} {city}: F1 {r['f1']:.3f} (CVA {results['cva']['cities'][city]['f1']:.3f}) "
                      f"{json.dumps(res['cities'][city]['rule'])} {res['cities'][city]['seconds']} s", flush=True)
            res["pooled"] = scores.scores(scores.add(*cms))

    f1s = [results["trained"][str(s)]["pooled"]["f1"] for s in seeds]
    results["trained_pooled_f1"] = {"mean": round(statistics.mean(f1s), 4),
                                    "std": round(statistics.pstdev(f1s), 4), "min": min(f1s), "max": max(f1s)}
    results["cva_pooled_f1"] = results["cva"]["pooled"]["f1"]
    results["margin_over_cva"] = {str(s): round(f - results["cva_pooled_f1"], 4) for s, f in zip(seeds, f1s)}
    results["settings"] = {"arch": a.arch, "seeds": seeds, "cities": held_out, "time_limit_min": a.time_limit,
                           "members": a.members, "ema": a.ema}
    rows = []
    for city in held_out:
        c = results["cva"]["cities"][city]
        row = [city, f"{c['f1']:.3f}", f"{c['precision']:.3f}", f"{c['recall']:.3f}"]
        for s in seeds:
            t = results["trained"][str(s)]["cities"][city]
            row += [f"{t['f1']:.3f}", f"{t['precision']:.3f}", f"{t['recall']:.3f}"]
        rows.append(row)
    c = results["cva"]["pooled"]
    row = ["pooled", f"{c['f1']:.3f}", f"{c['precision']:.3f}", f"{c['recall']:.3f}"]
    for s in seeds:
        t = results["trained"][str(s)]["pooled"]
        row += [f"{t['f1']:.3f}", f"{t['precision']:.3f}", f"{t['recall']:.3f}"]
    rows.append(row)
    print_table(rows, ["held-out city", "CVA F1", "CVA P", "CVA R"]
                + [f"seed {s} {m}" for s in seeds for m in ("F1", "P", "R")])
    print(f"trained pooled F1 mean {results['trained_pooled_f1']['mean']:.3f} "
          f"(std {results['trained_pooled_f1']['std']:.3f}); CVA {results['cva_pooled_f1']:.3f}")
    if a.out:
        (out / "loco.json").write_text(json.dumps(results, indent=2, default=str))
    print(json.dumps(results, default=str))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
