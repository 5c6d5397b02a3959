"""Writing small vector files for tests (GeoJSON by hand, others through pyogrio)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyogrio
import shapely
from shapely.geometry import box, mapping


def geojson(path: Path, geoms, props: list[dict] | None = None, crs: str | None = None) -> Path:
    props = props or [{} for _ in geoms]
    doc = {"type": "FeatureCollection",
           "features": [{"type": "Feature", "properties": p, "geometry": mapping(g) if g is not None else None}
                        for g, p in zip(geoms, props)]}
    if crs:
        doc["crs"] = {"type": "name", "properties": {"name": crs}}
    path.write_text(json.dumps(doc))
    return path


def write(path: Path, geoms, props: list[dict], crs: str | None, driver: str | None = None) -> Path:
    fields = list(props[0].keys()) if props else []
    data = [np.array([p[f] for p in props]) for f in fields]
    kinds = {g.geom_type for g in geoms}
    gtype = "MultiPolygon" if "MultiPolygon" in kinds else next(iter(kinds))
    pyogrio.raw.write(path, geometry=shapely.to_wkb(np.array(geoms, dtype=object)), field_data=data,
                      fields=fields, crs=crs, geometry_type=gtype, driver=driver)
    return path


def squares(x0: float, y0: float, n: int, size: float, gap: float = 0.0):
    """n x n adjacent squares starting at (x0, y0)."""
    step = size + gap
    return [box(x0 + i * step, y0 + j * step, x0 + i * step + size, y0 + j * step + size)
            for j in range(n) for i in range(n)]
