"""Rebuild the shipped change models: ``builtin:oscd-change`` (trained on the nine labelled OSCD cities
with a fixed seed) and ``builtin:cva`` (no training), each with its scores in its ``model.json``.

    .venv/bin/python -m bench.ship_oscd [--src ../shared/data/oscd] [--data DIR] [--loco loco.json] [--seed 0]
        [--scores-only]

``--loco`` is the JSON that ``python -m bench.oscd_loco --out DIR`` writes (DIR/loco.json): its
leave-one-city-out scores of the same recipe, and of CVA, go into the models' ``metrics.oscd_loco``.
CVA's own ``metrics.oscd_loco`` is its score at its fixed k on every city (it never sees a label).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = {"name": "OSCD (Onera Satellite Change Detection), Sentinel-2 L1C pairs and urban-change masks",
          "licence": "imagery: Copernicus (open); labels: CC BY-NC-SA"}


def _loco_scores(loco: dict, key: str) -> dict:
    if key == "cva":
        return {"pooled": loco["cva"]["pooled"], "k_chosen_per_fold": True,
                "cities": {c: {m: v[m] for m in ("f1", "precision", "recall")} for c, v in loco["cva"]["cities"].items()}}
    seeds = loco["trained"]
    return {"pooled_f1_mean_over_seeds": loco["trained_pooled_f1"]["mean"],
            "pooled_f1_std_over_seeds": loco["trained_pooled_f1"]["std"],
            "pooled": seeds[min(seeds)]["pooled"], "seeds": {s: v["pooled"] for s, v in seeds.items()},
            "cva_pooled_same_run": loco["cva"]["pooled"],
            "cities": {c: {m: v[m] for m in ("f1", "precision", "recall")}
                       for c, v in seeds[min(seeds)]["cities"].items()},
            "command": "python -m bench.oscd_loco --seeds " + ",".join(seeds)}


def main(args: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="bench.ship_oscd", description=__doc__.splitlines()[0])
    p.add_argument("--src", type=Path, default=ROOT.parent / "shared" / "data" / "oscd", help="OSCD folder")
    p.add_argument("--data", type=Path, default=None, help="an already converted `monitor dataset oscd` folder")
    p.add_argument("--loco", type=Path, default=None, help="loco.json of bench.oscd_loco (scores to record)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scores-only", action="store_true", help="only record --loco's scores in the shipped models")
    a = p.parse_args(args or [])

    from monitor import builtins
    from monitor.domain import ModelMeta
    from monitor.ml.changenet import save_cva, train_change_features
    from monitor.ml.evaluation import evaluate
    from monitor.ml.modelstore import load_model
    from monitor.ml.oscd import convert_oscd, read_change_summary

    loco = json.loads(a.loco.read_text()) if a.loco else None
    with tempfile.TemporaryDirectory() as tmp:
        data = a.data or Path(tmp) / "oscd"
        summary = read_change_summary(data) if a.data else convert_oscd(a.src, data, overwrite=True)
        cities = [c for c, e in summary["cities"].items() if e["labelled"]]

        cva_dir = save_cva(builtins.SHIPPED / "cva")
        r = evaluate(load_model(cva_dir), data)
        cva_scores = {"pooled": {m: r["pooled"][m] for m in ("f1", "precision", "recall", "iou")},
                      "cities": {c: {m: v[m] for m in ("f1", "precision", "recall")} for c, v in r["cities"].items()},
                      "note": "no training: every city is unseen; k fixed", "command": "python -m bench.ship_oscd"}
        if loco:
            cva_scores["per_fold_k"] = _loco_scores(loco, "cva")
        save_cva(cva_dir, metrics={"oscd_loco": cva_scores})

        out = builtins.SHIPPED / "oscd-change"
        if not a.scores_only:
            train_change_features(data, out, cities=cities, seed=a.seed, version="builtin-oscd-change-4")
        meta = json.loads((out / "model.json").read_text())
        meta["training"]["data"] = {**SOURCE, "cities": cities}
        meta["resolution_m"] = 10.0
        meta["description"] = ("change model for Sentinel-2 (10 m): per-image standardized B02, B03, B04, B08 of both "
                               "dates, change features and a small network (`monitor train change` defaults), "
                               f"trained on the nine labelled OSCD cities, seed {a.seed}")
        meta["rebuild"] = f"python -m bench.ship_oscd --seed {a.seed}"
        if loco:
            meta["metrics"]["oscd_loco"] = _loco_scores(loco, "trained")
        ModelMeta.from_dict(meta)
        (out / "model.json").write_text(json.dumps(meta, indent=2))
    print(json.dumps({"cva": str(cva_dir), "oscd-change": str(out), "cva_pooled_f1": cva_scores["pooled"]["f1"],
                      "validation": meta["metrics"]["validation"]}))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
