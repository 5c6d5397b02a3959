"""Imagery acquisition: download throughput (resumed once, MD5-verified) from a server on 127.0.0.1,
and preparation of the real Sentinel-2 L2A scene in ../shared/data onto 10 m area grids."""

from __future__ import annotations

import hashlib
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from shapely.geometry import box

from bench.common import print_table
from monitor.geo import reproject
from monitor.imagery.base import Band, Product
from monitor.imagery.fetch import RetryPolicy, download
from monitor.imagery.grid import area_grid
from monitor.imagery.prepare import prepare

ROOT = Path(__file__).resolve().parents[1]
SCENE = (ROOT.parent / "shared" / "data" / "stac_recordings" / "cogs" / "sentinel-cogs" / "sentinel-s2-l2a-cogs"
         / "29" / "R" / "KH" / "2020" / "2" / "S2A_29RKH_20200219_0_L2A")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_download(tmp: Path, mb: int) -> list:
    sys.path.insert(0, str(ROOT))
    from tests.replay import Replay

    data = os.urandom(mb << 20)
    (tmp / "srv").mkdir()
    (tmp / "srv" / "product.zip").write_bytes(data)
    md5 = hashlib.md5(data).hexdigest()
    with Replay(files={"/f/": tmp / "srv"}) as server:
        server.drop("/f/product.zip", after=(mb << 20) // 2)
        t0 = time.perf_counter()
        got = download(f"{server.url}/f/product.zip", tmp / "out" / "product.zip", size=len(data),
                       checksum=("md5", md5), policy=RetryPolicy(3, 0.01, 0.01, 30))
        dt = time.perf_counter() - t0
    assert got.verified_by == "md5"
    return [f"download {mb} MB (dropped at 50 %, resumed, MD5)", "", f"{dt:.2f}", f"{mb / dt:,.0f} MB/s", ""]


def bench_prepare(tmp: Path, side_km: float) -> list:
    x0, y1 = 240000.0, 2790000.0
    area = reproject(box(x0, y1 - side_km * 1000, x0 + side_km * 1000, y1), 32629, 4326)
    grid = area_grid(area, 32629, 10, 100)
    product = Product([Band(b, [str(SCENE / f"{b}.tif")]) for b in ("B02", "B03", "B04", "B08")],
                      scl=Band("SCL", [str(SCENE / "SCL.tif")]))
    t0 = time.perf_counter()
    prepare(product, grid, area, tmp / f"prep_{side_km}.tif")
    dt = time.perf_counter() - t0
    mpx = grid.width * grid.height / 1e6
    return [f"prepare {side_km:g} km x {side_km:g} km at 10 m (4 bands + SCL)", f"{grid.width}x{grid.height}",
            f"{dt:.2f}", f"{mpx / dt:.1f} Mpx/s", f"{peak_rss_mb():.0f}"]


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # preparation first, so that the peak memory it reports is its own
        if SCENE.is_dir():
            for side in (5, 20, 40):
                rows.append(bench_prepare(tmp, side))
        else:
            print(f"(the real scene {SCENE} is absent: preparation not measured)")
        rows.append(bench_download(tmp, 200))
    print_table(rows, ["run", "grid", "seconds", "rate", "peak RSS MB"])


if __name__ == "__main__":
    main()
