"""A synthetic world for the demo and the end-to-end tests: a few km2 near Buenos Aires at 2 m,
with fields, roads, formal blocks of parcels and an informal settlement that grows from date to
date; new buildings appear on parcels (some with permits); one date is partly cloudy.

Everything is deterministic for a seed. Scenes are 4-band uint16 GeoTIFFs (B02, B03, B04, B08,
reflectance x 10000, nodata 0 where clouds were masked) named with their date, as a commercial
provider would drop them into a folder; ground truth (building masks, settlement polygons) is
written beside them for training the demo models.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
import shapely
from rasterio.features import rasterize
from rasterio.transform import from_origin
from scipy import ndimage
from shapely.geometry import box

from monitor.readers import write_polygons

EPSG = 32721  # UTM 21S, the outskirts of Buenos Aires
X0, Y0 = 318000.0, 6172000.0  # top-left corner
RES = 2.0
WIDTH, HEIGHT = 900, 700  # 1.8 km x 1.4 km
BANDS = ("B02", "B03", "B04", "B08")
DATES = (dt.date(2026, 1, 12), dt.date(2026, 3, 13), dt.date(2026, 5, 12), dt.date(2026, 7, 11))
CLOUDY_DATE = DATES[2]

# mean reflectance x 10000 per band (B02 blue, B03 green, B04 red, B08 nir)
SURFACES = {
    "field": (450, 800, 600, 3600),
    "soil": (900, 1200, 1500, 2300),
    "road": (1200, 1250, 1300, 1500),
    "formal_roof": (2300, 2400, 2600, 2700),
    "informal_roof": (1500, 1450, 1450, 1600),
    "shadow_yard": (700, 750, 800, 1200),
}


@dataclass
class Building:
    """A building of the synthetic world: footprint, the date it appears, its parcel and permit."""

    geom: shapely.Polygon
    appears: dt.date
    kind: str  # formal | informal | new_permitted | new_unpermitted
    parcel: str | None = None


@dataclass
class World:
    """The files of a synthetic world and its ground truth."""

    root: Path
    scenes: dict[dt.date, Path] = field(default_factory=dict)
    masks: dict[dt.date, Path] = field(default_factory=dict)
    area: Path | None = None
    parcels: Path | None = None
    permits: Path | None = None
    settlements: dict[dt.date, Path] = field(default_factory=dict)
    buildings: dict[dt.date, Path] = field(default_factory=dict)
    truth: dict = field(default_factory=dict)

    crs_epsg: int = EPSG


def transform():
    """The world's raster transform (2 m pixels, UTM 21S)."""
    return from_origin(X0, Y0, RES, RES)


def _extent() -> shapely.Polygon:
    return box(X0, Y0 - HEIGHT * RES, X0 + WIDTH * RES, Y0)


def _layout(rng: np.random.Generator):
    """Roads, parcels and buildings in UTM metres."""
    left, bottom, right, top = _extent().bounds
    roads = [box(left, top - 420, right, top - 408), box(left + 700, bottom, left + 712, top),
             box(left, top - 1000, right, top - 990)]
    parcels: list[tuple[str, shapely.Polygon, str]] = []
    buildings: list[Building] = []
    # formal blocks: 30 m x 40 m lots north of the first road, west of the north-south road
    n = 0
    for row in range(9):
        for col in range(20):
            x = left + 20 + col * 33
            y = top - 20 - row * 43
            if x + 30 > left + 690:
                continue
            lot = box(x, y - 40, x + 30, y)
            pid = f"F-{row:02d}-{col:02d}"
            parcels.append((pid, lot, "formal"))
            if rng.random() < 0.75:  # existing house, with small positional jitter
                w, h = rng.uniform(10, 16), rng.uniform(12, 20)
                bx, by = x + rng.uniform(3, 30 - w - 3), y - 4 - h - rng.uniform(0, 40 - h - 8)
                buildings.append(Building(box(bx, by, bx + w, by + h), DATES[0], "formal", pid))
            n += 1
    # larger rural parcels east of the north-south road: empty fields where new construction appears
    for row in range(4):
        for col in range(10):
            x = left + 730 + col * 105
            y = top - 20 - row * 95
            if x + 100 > right - 10:
                continue
            parcels.append((f"R-{row}-{col}", box(x, y - 90, x + 100, y), "rural"))
    # informal settlement south of the first road: a core on date 1 that grows on later dates
    cx, cy = left + 450, top - 700
    for d_i, date in enumerate(DATES):
        radius = 150 + 70 * d_i
        count = 260 if d_i == 0 else 110
        placed = 0
        tries = 0
        while placed < count and tries < count * 40:
            tries += 1
            ang, rad = rng.uniform(0, 2 * np.pi), radius * np.sqrt(rng.uniform(0.0 if d_i == 0 else 0.55, 1))
            bx, by = cx + rad * np.cos(ang) * 1.4, cy + rad * np.sin(ang) * 0.8
            w, h = rng.uniform(5, 9), rng.uniform(5, 9)
            g = shapely.affinity.rotate(box(bx, by, bx + w, by + h), rng.uniform(-25, 25))
            if not _extent().buffer(-10).contains(g) or any(g.intersects(r.buffer(3)) for r in roads):
                continue
            if any(b.geom.buffer(1.0).intersects(g) for b in buildings if b.kind == "informal"):
                continue
            buildings.append(Building(g, date, "informal"))
            placed += 1
    # new construction on parcels at later dates: some with permits, some without
    rural = [p for p in parcels if p[2] == "rural"]
    formal_empty = [p for p in parcels if p[2] == "formal" and not any(b.parcel == p[0] for b in buildings)]
    candidates = rural[:14] + formal_empty[:10]
    order = rng.permutation(len(candidates))
    for k, idx in enumerate(order):
        pid, lot, kind = candidates[idx]
        date = DATES[1 + k % 3]
        size = (rng.uniform(20, 28), rng.uniform(18, 26)) if kind == "rural" else (rng.uniform(11, 15), rng.uniform(14, 20))
        lx, ly, rx, ty = lot.bounds
        bx = rng.uniform(lx + 4, rx - size[0] - 4)
        by = rng.uniform(ly + 4, ty - size[1] - 4)
        b_kind = "new_permitted" if k % 3 == 0 else "new_unpermitted"
        buildings.append(Building(box(bx, by, bx + size[0], by + size[1]), date, b_kind, pid))
    return roads, parcels, buildings


def _texture(rng, shape, scale, sigma):
    return ndimage.gaussian_filter(rng.normal(0, 1, shape), sigma) * scale


def _render(date: dt.date, roads, buildings, rng: np.random.Generator, base_noise) -> tuple[np.ndarray, np.ndarray]:
    tr = transform()
    shape = (HEIGHT, WIDTH)
    img = np.zeros((4, *shape), dtype=np.float32)
    fieldness = base_noise["fields"]
    season = 1.0 + 0.12 * np.sin((date.timetuple().tm_yday / 365.0) * 2 * np.pi)
    for b in range(4):
        img[b] = np.where(fieldness > 0, SURFACES["field"][b] * (season if b == 3 else 1.0), SURFACES["soil"][b])
    def burn(geoms, surface, jitter=0.0):
        if not geoms:
            return np.zeros(shape, bool)
        mask = rasterize([(g, 1) for g in geoms], out_shape=shape, transform=tr, all_touched=False).astype(bool)
        for b in range(4):
            img[b][mask] = SURFACES[surface][b] * (1 + jitter * rng.normal())
        return mask
    burn(roads, "road")
    present = [b for b in buildings if b.appears <= date]
    yards = [b.geom.buffer(2.5) for b in present if b.kind == "informal"]
    burn(yards, "shadow_yard")
    formal = burn([b.geom for b in present if b.kind != "informal"], "formal_roof")
    informal_geoms = [b.geom for b in present if b.kind == "informal"]
    informal = np.zeros(shape, bool)
    for g in informal_geoms:  # each informal roof its own material
        m = rasterize([(g, 1)], out_shape=shape, transform=tr).astype(bool)
        tone = rng.uniform(0.75, 1.35)
        for b in range(4):
            img[b][m] = SURFACES["informal_roof"][b] * tone
        informal |= m
    gain = rng.uniform(0.93, 1.07)
    for b in range(4):
        img[b] = img[b] * gain + base_noise["texture"][b] + rng.normal(0, 45, shape)
    img = np.clip(img, 1, 10000).astype(np.uint16)
    return img, (formal | informal)


def _cloud_mask(rng: np.random.Generator) -> np.ndarray:
    blob = ndimage.gaussian_filter(rng.normal(0, 1, (HEIGHT, WIDTH)), 40)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    # a cloud bank over the eastern fields
    return (blob + 0.02 * ((xx - 650) / 300.0)) > np.quantile(blob, 0.8)


def _write(path: Path, data: np.ndarray, dtype: str, nodata=None, descriptions=None, tags=None) -> None:
    profile = dict(driver="GTiff", width=WIDTH, height=HEIGHT, count=data.shape[0], dtype=dtype, crs=f"EPSG:{EPSG}",
                   transform=transform(), tiled=True, blockxsize=256, blockysize=256, compress="deflate")
    if nodata is not None:
        profile["nodata"] = nodata
    tmp = path.with_suffix(".tmp")
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(data)
        for i, d in enumerate(descriptions or []):
            dst.set_band_description(i + 1, d)
        if tags:
            dst.update_tags(**tags)
    tmp.replace(path)


def _geojson(path: Path, geoms, props, epsg: int = EPSG) -> Path:
    return write_polygons(path, geoms, props, f"EPSG:{epsg}", driver="GeoJSON")


def make_world(root: Path, seed: int = 7) -> World:
    """Write the synthetic world under ``root`` (idempotent: reuses files that exist)."""
    root = Path(root)
    world = World(root=root)
    marker = root / "world.json"
    rng = np.random.default_rng(seed)
    roads, parcels, buildings = _layout(rng)
    for sub in ("scenes", "truth", "drops"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    world.area = root / "area.geojson"
    world.parcels = root / "parcels.geojson"
    world.permits = root / "permits.csv"
    for date in DATES:
        stamp = date.strftime("%Y%m%d")
        world.scenes[date] = root / "scenes" / f"demo_{stamp}.tif"
        world.masks[date] = root / "truth" / f"buildings_{stamp}.tif"
        world.settlements[date] = root / "truth" / f"settlement_{stamp}.geojson"
        world.buildings[date] = root / "truth" / f"buildings_{stamp}.geojson"
    world.truth = _truth(buildings, parcels)
    if marker.exists() and json.loads(marker.read_text()).get("seed") == seed and all(
            p.exists() for p in [*world.scenes.values(), *world.masks.values(), *world.buildings.values()]):
        return world
    _geojson(world.area, [_extent().buffer(-4)], [{"name": "demo"}])
    _geojson(world.parcels, [g for _, g, _ in parcels], [{"parcel_id": pid, "use": kind} for pid, _, kind in parcels])
    with open(world.permits, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["parcel_id", "permit_id", "valid_from", "valid_to", "kind"])
        for k, b in enumerate(b for b in buildings if b.kind == "new_permitted"):
            start = b.appears - dt.timedelta(days=40)
            w.writerow([b.parcel, f"PB-{2026}-{k:03d}", start.isoformat(), (start + dt.timedelta(days=365)).isoformat(),
                        "new building"])
        # an expired permit: it does not cover construction seen after it ended
        expired = next(b for b in buildings if b.kind == "new_unpermitted")
        w.writerow([expired.parcel, "PB-2024-900", "2024-01-01", "2024-12-31", "new building"])
    noise_rng = np.random.default_rng(seed + 1)
    base = {"fields": _texture(noise_rng, (HEIGHT, WIDTH), 1.0, 25),
            "texture": np.stack([_texture(noise_rng, (HEIGHT, WIDTH), 60, 3) for _ in range(4)])}
    cloud = _cloud_mask(np.random.default_rng(seed + 2))
    for i, date in enumerate(DATES):
        img, mask = _render(date, roads, buildings, np.random.default_rng(seed + 10 + i), base)
        if date == CLOUDY_DATE:
            img[:, cloud] = 0
        _write(world.scenes[date], img, "uint16", nodata=0, descriptions=BANDS,
               tags={"TIFFTAG_DATETIME": date.strftime("%Y:%m:%d 10:30:00")})
        _write(world.masks[date], mask[None].astype(np.uint8), "uint8", descriptions=["buildings"])
        settlement = _settlement(buildings, date)
        present = [b for b in buildings if b.appears <= date]
        _geojson(world.buildings[date], [b.geom for b in present], [{"kind": b.kind} for b in present])
        _geojson(world.settlements[date], [settlement], [{"class": "informal settlement", "date": date.isoformat()}])
    marker.write_text(json.dumps({"seed": seed, "dates": [d.isoformat() for d in DATES], "truth": world.truth}, indent=2))
    return world


def _settlement(buildings: list[Building], date: dt.date) -> shapely.Geometry:
    """The informal settlement's extent on a date: its buildings, 12 m around them closed, 6 m kept."""
    return shapely.union_all([b.geom.buffer(12) for b in buildings
                              if b.kind == "informal" and b.appears <= date]).buffer(-6)


def _truth(buildings: list[Building], parcels) -> dict:
    """What a correct run should find: new buildings (permitted or not) per date and parcel, and the
    informal settlement's km2 per date."""
    out: dict = {}
    for b in buildings:
        if b.kind in ("new_permitted", "new_unpermitted"):
            out.setdefault(b.kind, []).append({"parcel": b.parcel, "date": b.appears.isoformat(),
                                               "area_m2": round(b.geom.area, 1)})
    out["settlement_km2"] = {d.isoformat(): round(_settlement(buildings, d).area / 1e6, 4) for d in DATES}
    return out
