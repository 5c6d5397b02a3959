"""Bulk parcel import: 100,000 generated parcels through `import_parcels` (target: under 30 s)."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyogrio
import shapely
from sqlalchemy.orm import Session

from bench.common import print_table, scratch_database
from monitor.domain import AreaSpec
from monitor.inventory.areas import add_area
from monitor.inventory.parcels import import_parcels

X0, Y0 = 300000.0, 6180000.0


def make_parcels(path: Path, n: int) -> None:
    side = int(np.ceil(np.sqrt(n)))
    i = np.arange(n)
    x, y = X0 + (i % side) * 12.0, Y0 + (i // side) * 12.0
    geoms = shapely.box(x, y, x + 10, y + 10)
    pyogrio.raw.write(path, geometry=shapely.to_wkb(geoms), field_data=[i.astype(str), np.full(n, "res")],
                      fields=["parcel_id", "use"], crs="EPSG:32721", geometry_type="Polygon", driver="GPKG")


def main(sizes=(10_000, 100_000)) -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp, scratch_database() as engine:
        tmp = Path(tmp)
        area_file = tmp / "area.gpkg"
        pyogrio.raw.write(area_file, geometry=shapely.to_wkb(np.array([shapely.box(X0 - 10, Y0 - 10, X0 + 4000,
                                                                                  Y0 + 4000)])),
                          field_data=[], fields=[], crs="EPSG:32721", geometry_type="Polygon", driver="GPKG")
        for k, n in enumerate(sizes):
            f = tmp / f"parcels_{n}.gpkg"
            make_parcels(f, n)
            with Session(engine) as s, s.begin():
                area = add_area(s, AreaSpec.parse(f"bench{k}", cadence="5d", providers="local", max_cloud=20),
                                area_file)
            for label in ("insert", "upsert again"):
                t0 = time.perf_counter()
                with Session(engine) as s, s.begin():
                    area = s.merge(area)
                    res = import_parcels(s, area, f)
                dt = time.perf_counter() - t0
                rows.append([n, label, f"{dt:.2f}", f"{n / dt:,.0f}", res.inserted, res.updated])
    print_table(rows, ["parcels", "run", "seconds", "parcels/s", "inserted", "updated"])


if __name__ == "__main__":
    main(tuple(int(a) for a in sys.argv[1:]) or (10_000, 100_000))
