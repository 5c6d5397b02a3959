"""How far a threshold rule can take the leave-one-city-out change models: rules chosen per fold on the
training cities' validation rows, and an oracle that picks each held-out city's best share of pixels.

    .venv/bin/python -m bench.oscd_rules --loco DIR [--seeds 0,1]

DIR is the ``--out`` of ``python -m bench.oscd_loco`` (its ``oscd`` dataset and ``loco-<seed>-<city>``
models). Every fold model's maps of all cities are cached in ``DIR/maps``. For each family of rules
(the recipe's; a top-q rule with a probability floor; the map smoothed first; only where CVA's
magnitude is above the scene's robust z; regions under 3 pixels dropped) the best rule on the eight
training cities' validation rows is applied to the held-out city, and the held-out cities' confusion
counts are pooled. The oracle's per-city share looks at the held-out labels: it is a ceiling, not a
method. Prints a table, then everything as JSON on the last line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy import ndimage

from bench.common import print_table

SHARES = (0.01, 0.015, 0.02, 0.03, 0.04, 0.06)
FLOORS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
FAMILIES = ("recipe", "floor", "smooth", "cva_gate", "all")


def _robust_z(v: np.ndarray, k: float) -> float:
    med = float(np.median(v))
    return med + k * 1.4826 * float(np.median(np.abs(v - med)))


def _smooth(p: np.ndarray, valid: np.ndarray, kind: str) -> np.ndarray:
    if kind == "none":
        return p
    f = (lambda a: ndimage.uniform_filter(a, 3)) if kind == "mean3" else (lambda a: ndimage.gaussian_filter(a, 1.0))
    return f(np.where(valid, p, 0).astype(np.float32)) / np.maximum(f(valid.astype(np.float32)), 1e-6)


def _threshold(p: np.ndarray, valid: np.ndarray, rule: tuple) -> float:
    x = p[valid]
    if rule[0] == "fixed":
        return rule[1]
    if rule[0] == "robust_z":
        return _robust_z(x, rule[1])
    q = float(np.quantile(x, 1 - rule[1]))
    return max(rule[2], q) if rule[0] == "floor" else q


def _predict(p, valid, rule, gate, min_px):
    b = (p > _threshold(p, valid, rule)) & valid
    if gate is not None:
        b &= gate
    if min_px > 1:
        lab, n = ndimage.label(b, np.ones((3, 3)))
        if n:
            b &= (np.bincount(lab.ravel()) >= min_px)[lab]
    return b


def _in_family(family: str, rule: tuple, smooth: str, gate_k, min_px: int) -> bool:
    plain = smooth == "none" and gate_k is None and min_px == 1
    return {"recipe": plain and rule[0] != "floor", "floor": plain,
            "smooth": gate_k is None and min_px == 1 and rule[0] != "floor",
            "cva_gate": smooth == "none" and min_px == 1 and rule[0] != "floor", "all": True}[family]


def _maps(loco: Path, seeds: list[str], cities: list[str]) -> Path:
    from monitor.ml.inference import predict_array
    from monitor.ml.modelstore import cva_model, load_model
    from monitor.ml.oscd import load_city

    out = loco / "maps"
    out.mkdir(exist_ok=True)
    data = loco / "oscd"
    if not (out / "truth.npz").exists():
        cva = cva_model()
        d = {c: load_city(data, c, cva.bands) for c in cities}
        np.savez_compressed(out / "cva.npz", **{c: predict_array(cva, d[c]["x"], ~d[c]["valid"]) for c in cities})
        np.savez_compressed(out / "truth.npz", **{f"{c}_truth": d[c]["change"] == 1 for c in cities},
                            **{f"{c}_valid": d[c]["valid"] for c in cities})
    for seed in seeds:
        for held in cities:
            f, m = out / f"{seed}-{held}.npz", loco / f"loco-{seed}-{held}"
            if f.exists() or not (m / "model.json").exists():
                continue
            model = load_model(m)
            maps = {}
            for c in cities:
                d = load_city(data, c, model.bands)
                maps[c] = predict_array(model, d["x"], ~d["valid"]).astype(np.float16)
            np.savez_compressed(f, **maps)
            print(f"maps of fold {seed}-{held}", flush=True)
    return out


def main(args: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="bench.oscd_rules", description=__doc__.splitlines()[0])
    p.add_argument("--loco", type=Path, default=None, help="the --out folder of bench.oscd_loco")
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds of the fold models")
    a = p.parse_args(args or [])
    if a.loco is None:
        print("needs the models of a leave-one-city-out run: python -m bench.oscd_loco --out DIR, then "
              "python -m bench.oscd_rules --loco DIR")
        return

    from monitor.ml import scores
    from monitor.ml.oscd import read_change_summary

    summary = read_change_summary(a.loco / "oscd")
    cities = [c for c, e in summary["cities"].items() if e["labelled"]]
    seeds = a.seeds.split(",")
    out = _maps(a.loco, seeds, cities)
    t, cv = np.load(out / "truth.npz"), np.load(out / "cva.npz")
    truth = {c: t[f"{c}_truth"] for c in cities}
    valid = {c: t[f"{c}_valid"] for c in cities}
    cva_odds = {c: cv[c] / (1 - cv[c]) for c in cities}
    gates = {k: {c: cva_odds[c] > _robust_z(cva_odds[c][valid[c]], k) for c in cities} for k in (2.0, 3.0)}
    gates[None] = {c: None for c in cities}
    rules = ([("fixed", round(float(x), 2)) for x in np.arange(0.3, 0.96, 0.05)]
             + [("robust_z", k) for k in (3.0, 4.0, 5.0, 6.0, 8.0, 10.0)] + [("top", q) for q in SHARES]
             + [("floor", q, f) for q in SHARES for f in FLOORS])
    results: dict = {"seeds": {}, "oracle_cva": None}
    for seed in seeds:
        pooled: dict[str, list] = {f: [] for f in FAMILIES}
        pooled["oracle"] = []
        for held in cities:
            maps = np.load(out / f"{seed}-{held}.npz")
            split = json.loads((a.loco / f"loco-{seed}-{held}" / "model.json").read_text())["training"]["split"]
            train = [c for c in cities if c != held]
            rows = {}
            for c in train:
                rows[c] = np.zeros_like(valid[c])
                rows[c][slice(*split[c]["validation_rows"])] = True
            sm = {(s, c): _smooth(maps[c].astype(np.float32), valid[c], s)
                  for s in ("none", "mean3", "gauss1") for c in cities}
            combos = []
            for s in ("none", "mean3", "gauss1"):
                for gk in (None, 2.0, 3.0):
                    for r in rules:
                        cms = [scores.confusion(_predict(sm[s, c], valid[c], r, gates[gk][c], 1), truth[c],
                                                valid[c] & rows[c]) for c in train]
                        combos.append((scores.scores(scores.add(*cms))["f1"], r, s, gk, 1))
            best_all = sorted(combos, key=lambda x: -x[0])[:4]
            for _, r, s, gk, _ in list(best_all):
                cms = [scores.confusion(_predict(sm[s, c], valid[c], r, gates[gk][c], 3), truth[c],
                                        valid[c] & rows[c]) for c in train]
                best_all.append((scores.scores(scores.add(*cms))["f1"], r, s, gk, 3))
            for fam in FAMILIES:
                cands = best_all if fam == "all" else [x for x in combos if _in_family(fam, *x[1:])]
                _, r, s, gk, mp = max(cands, key=lambda x: x[0])
                pooled[fam].append(scores.confusion(_predict(sm[s, held], valid[held], r, gates[gk][held], mp),
                                                    truth[held], valid[held]))
            x, y = sm["none", held][valid[held]], truth[held][valid[held]]
            pooled["oracle"].append(max((scores.confusion(x > np.quantile(x, 1 - q), y)
                                         for q in np.geomspace(0.002, 0.1, 40)),
                                        key=lambda cm: scores.scores(cm)["f1"]))
        results["seeds"][seed] = {k: scores.scores(scores.add(*v)) for k, v in pooled.items()}
    cva_cms = []
    for c in cities:
        x, y = cv[c][valid[c]], truth[c][valid[c]]
        cva_cms.append(max((scores.confusion(x > np.quantile(x, 1 - q), y) for q in np.geomspace(0.002, 0.1, 40)),
                           key=lambda cm: scores.scores(cm)["f1"]))
    results["oracle_cva"] = scores.scores(scores.add(*cva_cms))
    print_table([[k] + [f"{results['seeds'][s][k]['f1']:.3f}" for s in seeds] for k in (*FAMILIES, "oracle")]
                + [["oracle, builtin:cva"] + [f"{results['oracle_cva']['f1']:.3f}"] * len(seeds)],
                ["rules validation may choose from"] + [f"seed {s} pooled F1" for s in seeds])
    print(json.dumps(results))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
