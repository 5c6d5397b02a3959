"""Tiled inference engine against a naive loop calling `model.predict` on each 256 x 256 tile.

    .venv/bin/python -m bench.inference [--size 2048] [--large 10980] [--models tiny,segmenter]

Throughput: the same model over the same synthetic 4-band uint16 scene, read from and written to
GeoTIFF by both. Tiles/s counts 256 x 256 tiles of scene area per second, so that the engine's
overlapping windows (more windows than tiles) are not counted as extra work done. Memory: the peak
resident memory of a child process that runs `predict_raster` over a `--large` square scene with the
tiny model, next to its resident memory just before (TensorFlow and the model loaded).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import print_table

TILE = 256
BANDS = ["B02", "B03", "B04", "B08"]
MODELS = {"tiny": {"depth": 2, "base_filters": 4}, "segmenter": {"depth": 4, "base_filters": 16}}


def make_scene(path: Path, size: int, seed: int = 0) -> Path:
    """A size x size 4-band uint16 GeoTIFF of smooth fields with bright blocks, written in strips."""
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    rng = np.random.default_rng(seed)
    profile = {"driver": "GTiff", "width": size, "height": size, "count": 4, "dtype": "uint16", "crs": "EPSG:32631",
               "transform": Affine(10, 0, 500000, 0, -10, 5000000), "tiled": True, "blockxsize": 256,
               "blockysize": 256, "compress": "deflate", "nodata": 0, "BIGTIFF": "IF_SAFER"}
    base = (1000 + 300 * np.sin(np.arange(size) / 37.0)).astype(np.float32)
    with rasterio.open(path, "w", **profile) as dst:
        for i, b in enumerate(BANDS, 1):
            dst.set_band_description(i, b)
        for r0 in range(0, size, 1024):
            n = min(1024, size - r0)
            strip = np.broadcast_to(base, (4, n, size)).copy()
            strip += rng.integers(0, 50, (4, n, 1))
            strip[:, :, (np.arange(size) // 64) % 5 == 0] += 800
            dst.write(strip.astype(np.uint16), window=Window(0, r0, size, n))
    return path


def make_model(folder: Path, depth: int, base_filters: int) -> Path:
    from monitor.ml.modelstore import save_model
    from monitor.ml.runtime import seed_everything
    from monitor.ml.unet import build_unet

    seed_everything(0)
    net = build_unet(len(BANDS), depth=depth, base_filters=base_filters, dropout=0.0)
    meta = {"kind": "segmenter", "bands": BANDS, "tile": TILE, "threshold": 0.5, "resolution_m": 10.0,
            "normalization": {"mean": [1200.0] * 4, "std": [400.0] * 4},
            "architecture": {"type": "unet", "depth": depth, "base_filters": base_filters}}
    return save_model(net, folder, meta)


def naive(model, scene: Path, out: Path) -> float:
    """One `model.predict` call per non-overlapping 256 x 256 tile; seconds taken."""
    import rasterio
    from rasterio.windows import Window

    t0 = time.perf_counter()
    with rasterio.open(scene) as src:
        profile = {**src.profile, "count": 1, "dtype": "float32", "nodata": -1.0}
        with rasterio.open(out, "w", **profile) as dst:
            for r in range(0, src.height, TILE):
                for c in range(0, src.width, TILE):
                    win = Window(c, r, min(TILE, src.width - c), min(TILE, src.height - r))
                    x = np.moveaxis(src.read(window=win), 0, -1)
                    x = np.pad(x, ((0, TILE - x.shape[0]), (0, TILE - x.shape[1]), (0, 0)))
                    p = model.keras_model.predict(model.normalize(x)[None], verbose=0)[0, ..., 0]
                    dst.write(p[None, :win.height, :win.width], window=win)
    return time.perf_counter() - t0


def engine(model, scene: Path, out: Path, overlap: float, batch: int, window: int) -> float:
    from monitor.ml.inference import predict_raster

    t0 = time.perf_counter()
    predict_raster(model, scene, out, overlap=overlap, batch=batch, window=window)
    return time.perf_counter() - t0


def _read(path: Path) -> np.ndarray:
    import rasterio

    with rasterio.open(path) as src:
        return src.read(1)


_CHILD = """
import json, resource, sys, time
from monitor.ml.modelstore import load_model
from monitor.ml.inference import predict_raster
m = load_model(sys.argv[1], precision=sys.argv[4])
m(m.normalize(__import__("numpy").zeros((1, 512, 512, 4))))
before = int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1024
t0 = time.perf_counter()
predict_raster(m, sys.argv[2], sys.argv[3], overlap=0.25, batch=4, window=512)
dt = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"before_mb": before, "peak_mb": peak, "seconds": dt}))
"""


def main(args: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="bench.inference", description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=2048, help="side of the throughput scene, pixels")
    p.add_argument("--large", type=int, default=10980, help="side of the memory scene (0 skips it)")
    p.add_argument("--models", default="tiny,segmenter", help=f"comma-separated, of {', '.join(MODELS)}")
    p.add_argument("--batch", type=int, default=4, help="windows per call of the engine")
    p.add_argument("--precision", default="auto", help="inference precision of the engine's fast rows")
    a = p.parse_args(args or [])

    from monitor.ml.modelstore import load_model
    from monitor.ml.runtime import inference_policy

    fast = inference_policy(a.precision)
    rows, agreement = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        scene = make_scene(tmp / "scene.tif", a.size)
        tiles = (a.size / TILE) ** 2
        for name in a.models.split(","):
            folder = make_model(tmp / name, **MODELS[name])
            exact, quick = load_model(folder, precision="float32"), load_model(folder, precision=a.precision)
            exact.keras_model.predict(np.zeros((1, TILE, TILE, len(BANDS)), np.float32), verbose=0)  # warm-up
            runs = [(exact, "float32", 256, 0.25), (exact, "float32", 512, 0.0), (exact, "float32", 512, 0.25)]
            if fast != "float32":
                runs += [(quick, fast, 512, 0.0), (quick, fast, 512, 0.25)]
            for m, _, window, overlap in runs:  # traces the compiled call for each window size once
                engine(m, scene, tmp / "warm.tif", overlap, a.batch, window)
            t_naive = naive(exact, scene, tmp / "naive.tif")
            rows.append([name, "naive model.predict per 256 x 256 tile", "float32", "-", "-", f"{tiles / t_naive:.1f}",
                         "1.0"])
            for m, policy, window, overlap in runs:
                t = engine(m, scene, tmp / f"engine-{policy}-{window}-{overlap}.tif", overlap, a.batch, window)
                rows.append([name, f"engine, batch {a.batch}", policy, window, overlap, f"{tiles / t:.1f}",
                             f"{t_naive / t:.1f}"])
            if fast != "float32":
                d = np.abs(_read(tmp / f"engine-{fast}-512-0.25.tif") - _read(tmp / "engine-float32-512-0.25.tif"))
                agreement.append([name, fast, f"{d.mean():.4f}", f"{np.quantile(d, 0.999):.4f}", f"{d.max():.4f}"])
        print(f"throughput on a {a.size} x {a.size} 4-band scene ({tiles:.0f} tiles of {TILE} x {TILE}):")
        print_table(rows, ["model", "method", "precision", "window", "overlap", "tiles/s", "x naive"])
        if agreement:
            print("\n|probability - float32 probability| over the scene (untrained networks):")
            print_table(agreement, ["model", "precision", "mean", "99.9th percentile", "max"])
        if a.large:
            large = make_scene(tmp / "large.tif", a.large)
            tiny = tmp / "tiny" if (tmp / "tiny").exists() else make_model(tmp / "tiny", **MODELS["tiny"])
            res = subprocess.run([sys.executable, "-c", _CHILD, str(tiny), str(large), str(tmp / "large_p.tif"),
                                  a.precision], capture_output=True, text=True, check=True)
            m = json.loads(res.stdout.strip().splitlines()[-1])
            print(f"\nmemory on a {a.large} x {a.large} 4-band uint16 scene, tiny model, {fast}, window 512, "
                  f"overlap 0.25, batch 4:")
            in_memory = a.large ** 2 * (4 * 4 + 4 * 2) / 2 ** 20
            print_table([[f"{m['before_mb']:.0f}", f"{m['peak_mb']:.0f}", f"{m['peak_mb'] - m['before_mb']:.0f}",
                          f"{in_memory:.0f}", f"{m['seconds']:.0f}"]],
                        ["RSS before (MB)", "peak RSS (MB)", "added by inference (MB)",
                         "whole scene in memory: float32 input, sums, weights (MB)", "seconds"])


if __name__ == "__main__":
    main(sys.argv[1:])
