"""Evidence chips: before/after PNGs of an alert's parcel with the new construction outlined, rendered
from the stored scenes' files when first asked for and kept on disk.

Nothing is rendered while a pass runs: ``monitor process`` stores alerts and moves on. The first
request for a chip renders it under ``data_dir/evidence/<alert id>/<name>-<key>.png``, where the key
hashes everything the picture shows (the scene, its file, the dates, the parcel and the construction),
so a chip is drawn again only after the alert has changed, and the older picture is removed then.

A chip is drawn as the map's tiles are (``monitor.tiles.scene_style``): true colour from the bands
named B04, B03 and B02 (the prepared scenes' band descriptions), stretched between the scene's 2nd
and 98th percentiles with one stretch shared by the three bands, so that colours keep their balance;
a file without those names is drawn from its first band in grey (0..1 probabilities as they are). A strip above the picture names the parcel and both dates (the one
shown in capitals), a scale bar sits in its lower left corner, and pixels without data are hatched.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from geoalchemy2.shape import to_shape
from PIL import Image, ImageDraw, ImageFont
from rasterio.errors import RasterioIOError
from rasterio.windows import Window, from_bounds
from sqlalchemy import select
from sqlalchemy.orm import Session

from monitor.db.tables import Alert, Parcel, Scene
from monitor.domain import Provider, SceneStatus
from monitor.errors import ImageryError, NoCRS, NotFound
from monitor.geo import reproject
from monitor.settings import Settings
from monitor.tiles import scene_style

log = logging.getLogger(__name__)

NAMES = ("before", "after")
RENDERING = "2"  # part of every chip's key: bump it when chips are drawn differently
CHIP_MIN_PX = 256  # chips are enlarged (nearest neighbour) to at least this many pixels a side
MARGIN = 0.25  # context around the parcel, as a fraction of its larger side
MARGIN_MIN_PX = 3
PARCEL_COLOUR = (255, 221, 0)
CONSTRUCTION_COLOUR = (255, 0, 0)
NODATA_COLOURS = ((70, 70, 70), (170, 170, 170))  # hatching: background, stripes
CAPTION_LINE_PX = 17


@dataclass(frozen=True)
class Caption:
    """What is printed above a chip."""

    parcel: str
    name: str  # before | after
    dates: dict[str, dt.date]  # before and after, where known
    imagery: bool = True  # False: the file is an imported detections raster, not imagery

    def lines(self) -> list[str]:
        """The parcel, then one line per date (the one shown in capitals)."""
        kind = "" if self.imagery else " (detections, no imagery)"
        return [f"parcel {self.parcel}"] + [
            f"{n.upper()} {d.isoformat()}{kind}" if n == self.name else f"{n} {d.isoformat()}"
            for n, d in sorted(self.dates.items(), key=lambda kv: NAMES.index(kv[0]))]


def _to_uint8(data: np.ma.MaskedArray, stretch) -> np.ndarray:
    """Each band from its (low, high) to 0-255."""
    out = np.zeros(data.shape, dtype=np.uint8)
    for i, (band, (lo, hi)) in enumerate(zip(data, stretch)):
        scaled = (band.filled(lo).astype("float64") - lo) / (hi - lo)
        out[i] = np.clip(np.nan_to_num(scaled) * 255, 0, 255).astype(np.uint8)
    return out


def _outline(draw: ImageDraw.ImageDraw, geom, to_px, colour, width: int) -> None:
    for poly in getattr(geom, "geoms", [geom]):
        for ring in [poly.exterior, *poly.interiors]:
            draw.line([to_px(x, y) for x, y in ring.coords], fill=colour, width=width, joint="curve")


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _hatch(rgb: np.ndarray, nodata: np.ndarray) -> None:
    """Paint the pixels without data with diagonal stripes, in place."""
    rows, cols = np.indices(nodata.shape)
    stripes = ((rows + cols) // 3) % 3 == 0
    rgb[nodata & ~stripes] = NODATA_COLOURS[0]
    rgb[nodata & stripes] = NODATA_COLOURS[1]


def _metres_per_unit(crs, y: float) -> float:
    if crs.is_projected:
        return float(crs.linear_units_factor[1])
    return 111_320.0 * math.cos(math.radians(y))  # degrees at this latitude


def _scale_bar(draw: ImageDraw.ImageDraw, width: int, height: int, metres_per_px: float) -> None:
    """A bar of a round length (1, 2 or 5 times a power of ten) about a quarter of the chip wide."""
    target = width / 4 * metres_per_px
    power = 10 ** math.floor(math.log10(target))
    length = max(m * power for m in (1, 2, 5) if m * power <= target)
    px = round(length / metres_per_px)
    x0, y0 = 8, height - 12
    draw.rectangle((x0 - 3, y0 - 17, x0 + px + 3, y0 + 6), fill=(255, 255, 255))
    draw.rectangle((x0, y0, x0 + px, y0 + 3), fill=(0, 0, 0))
    label = f"{length:g} m" if length < 1000 else f"{length / 1000:g} km"
    draw.text((x0, y0 - 15), label, fill=(0, 0, 0), font=_font(11))


def render_chip(path: str | Path, parcel_4326, construction_4326, out: Path, caption: Caption | None = None) -> Path:
    """Render one PNG chip of ``path`` around the parcel, with parcel and construction outlined, no-data
    hatched, a scale bar and, with ``caption``, the parcel and dates printed above it."""
    try:
        src = rasterio.open(path)
    except RasterioIOError as e:
        raise ImageryError(f"{Path(path).name}: cannot read the scene file for evidence: {e}") from e
    with src:
        style = scene_style(path)
        if src.crs is None:
            raise NoCRS(f"{Path(path).name}: has no CRS")
        parcel = reproject(parcel_4326, 4326, src.crs)
        construction = reproject(construction_4326, 4326, src.crs)
        minx, miny, maxx, maxy = parcel.union(construction).bounds
        px = math.sqrt(abs(src.transform.a * src.transform.e))
        margin = max(MARGIN * max(maxx - minx, maxy - miny), MARGIN_MIN_PX * px)
        win = from_bounds(minx - margin, miny - margin, maxx + margin, maxy + margin, transform=src.transform)
        col, row = math.floor(win.col_off), math.floor(win.row_off)
        win = Window(col, row, max(1, math.ceil(win.col_off + win.width) - col),
                     max(1, math.ceil(win.row_off + win.height) - row))
        data = src.read(list(style.indexes), window=win, boundless=True, masked=True)
        transform = src.window_transform(win)
        metres_per_px = px * _metres_per_unit(src.crs, (miny + maxy) / 2)
    data.mask = np.ma.getmaskarray(data) | ~np.isfinite(data.filled(0))
    img = _to_uint8(data, style.stretch)
    rgb = np.repeat(img, 3, axis=0) if img.shape[0] == 1 else img
    rgb = np.ascontiguousarray(np.moveaxis(rgb, 0, -1))
    scale = max(1, math.ceil(CHIP_MIN_PX / max(rgb.shape[:2])))
    rgb = rgb.repeat(scale, axis=0).repeat(scale, axis=1)
    nodata = np.ma.getmaskarray(data).any(axis=0).repeat(scale, axis=0).repeat(scale, axis=1)
    _hatch(rgb, nodata)
    image = Image.fromarray(rgb, "RGB")
    inverse = ~transform

    def to_px(x, y):
        c, r = inverse @ (x, y)
        return c * scale, r * scale

    draw = ImageDraw.Draw(image)
    width = max(2, min(4, scale // 4))
    _outline(draw, parcel, to_px, PARCEL_COLOUR, width)
    _outline(draw, construction, to_px, CONSTRUCTION_COLOUR, width)
    _scale_bar(draw, image.width, image.height, metres_per_px / scale)
    if caption is not None:
        lines = caption.lines()
        top = 6 + CAPTION_LINE_PX * len(lines)
        framed = Image.new("RGB", (image.width, image.height + top), (0, 0, 0))
        framed.paste(image, (0, top))
        text = ImageDraw.Draw(framed)
        for i, line in enumerate(lines):
            text.text((6, 3 + CAPTION_LINE_PX * i), line, fill=(255, 255, 255), font=_font(14))
        image = framed
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.stem}-", suffix=".png", delete=False) as tmp:
        image.save(tmp, format="PNG")
    os.replace(tmp.name, out)
    return out


def _day(scene: Scene) -> dt.date:
    return scene.acquired_at.astimezone(dt.timezone.utc).date()


def _scenes(session: Session, area_ids: set[int]) -> dict[int, list[Scene]]:
    """Area id -> its processed scenes with a file, oldest first."""
    by_area: dict[int, list[Scene]] = {a: [] for a in area_ids}
    for scene in session.scalars(select(Scene).where(
            Scene.area_id.in_(area_ids), Scene.status == SceneStatus.PROCESSED, Scene.file_path.is_not(None))
            .order_by(Scene.acquired_at, Scene.id)):
        by_area[scene.area_id].append(scene)
    return by_area


def _pick(scenes: Sequence[Scene], alert: Alert) -> dict[str, Scene]:
    """The scenes an alert's chips are drawn from: ``before``, the newest imagery (or, with none, any
    file) before the alert was first seen; ``after``, the scene of the date it was last seen."""
    earlier = [s for s in scenes if _day(s) < alert.first_seen]
    imagery = [s for s in earlier if s.provider != Provider.IMPORT]
    on = [s for s in scenes if _day(s) == alert.last_seen]
    picked = {"before": imagery or earlier, "after": on}
    return {name: found[-1] for name, found in picked.items() if found}


def available(session: Session, alerts: Sequence[Alert]) -> dict[int, tuple[str, ...]]:
    """Alert id -> the names of the chips it can have (a scene with a file to draw them from)."""
    scenes = _scenes(session, {a.area_id for a in alerts}) if alerts else {}
    return {a.id: tuple(n for n in NAMES if n in _pick(scenes[a.area_id], a)) for a in alerts}


def _key(alert: Alert, scene: Scene, parcel: str, dates: dict[str, dt.date]) -> str:
    try:
        stat = os.stat(scene.file_path or "")
        version: tuple = (stat.st_size, stat.st_mtime_ns)
    except OSError:
        version = ()
    parts = [RENDERING, scene.id, scene.file_path, version, parcel, alert.first_seen, alert.last_seen,
             to_shape(alert.geom).wkb_hex, sorted(dates.items())]
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def evidence_chip(session: Session, alert: Alert, name: str, settings: Settings) -> Path:
    """The PNG of the alert's chip ``name`` (before or after), rendered now unless it is on disk already."""
    if name not in NAMES:
        raise NotFound(f"no evidence named {name!r}: use before or after", field="name")
    picked = _pick(_scenes(session, {alert.area_id})[alert.area_id], alert)
    scene = picked.get(name)
    if scene is None:
        raise NotFound(f"alert {alert.id} has no {name} chip: no processed scene with a file "
                       f"{'before ' + alert.first_seen.isoformat() if name == 'before' else 'on ' + alert.last_seen.isoformat()}",
                       field="name")
    parcel_row = session.get(Parcel, alert.parcel_id)
    assert parcel_row is not None  # alerts.parcel_id is a foreign key
    dates = {n: _day(s) for n, s in picked.items()}
    folder = Path(settings.data_dir).resolve() / "evidence" / str(alert.id)
    out = folder / f"{name}-{_key(alert, scene, parcel_row.external_id, dates)}.png"
    if out.is_file():
        return out
    caption = Caption(parcel_row.external_id, name, dates, imagery=scene.provider != Provider.IMPORT)
    render_chip(scene.file_path or "", to_shape(parcel_row.geom), to_shape(alert.geom), out, caption)
    for stale in folder.glob(f"{name}-*.png"):
        if stale != out:
            stale.unlink(missing_ok=True)
    return out


def render_chips(session: Session, alert: Alert, settings: Settings) -> dict[str, Path]:
    """Both chips of the alert that it can have, rendered unless on disk: ``{name: png path}``."""
    names = available(session, [alert])[alert.id]
    return {name: evidence_chip(session, alert, name, settings) for name in names}


def evidence_path(alert_id: int, name: str) -> str:
    """The API path of a chip (relative to the API's root; the API signs it for the caller)."""
    return f"/alerts/{alert_id}/evidence/{name}.png"
