"""Evidence chips: before/after PNGs of an alert's parcel with the new construction outlined,
rendered from the stored scenes' files."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import rasterio
from geoalchemy2.shape import to_shape
from PIL import Image, ImageDraw
from rasterio.enums import ColorInterp
from rasterio.errors import RasterioIOError
from rasterio.windows import Window, from_bounds
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from monitor.db.engine import transaction
from monitor.db.queries import earlier_scenes, row, scene_on
from monitor.db.tables import Alert, Parcel, Scene
from monitor.errors import ImageryError, NoCRS
from monitor.geo import reproject
from monitor.settings import Settings

log = logging.getLogger(__name__)

CHIP_MIN_PX = 256  # chips are enlarged (nearest neighbour) to at least this many pixels a side
MARGIN = 0.25  # context around the parcel, as a fraction of its larger side
MARGIN_MIN_PX = 3
RGB_BANDS = ("B04", "B03", "B02")
PARCEL_COLOUR = (255, 221, 0)
CONSTRUCTION_COLOUR = (255, 0, 0)


def _band_indexes(src) -> list[int]:
    """Band indexes to render: red, green, blue when the file has them, else the first band."""
    names = [(d or "").upper() for d in src.descriptions]
    if all(b in names for b in RGB_BANDS):
        return [names.index(b) + 1 for b in RGB_BANDS]
    if src.count >= 3 and tuple(src.colorinterp[:3]) == (ColorInterp.red, ColorInterp.green, ColorInterp.blue):
        return [1, 2, 3]
    return [1]


def _to_uint8(data: np.ma.MaskedArray) -> np.ndarray:
    """Stretch each band to 0-255: probabilities as they are, anything else between its 2nd and 98th
    percentiles."""
    out = np.zeros(data.shape, dtype=np.uint8)
    for i, band in enumerate(data):
        values = band.compressed().astype("float64")
        values = values[np.isfinite(values)]
        if values.size == 0:
            continue
        if np.issubdtype(band.dtype, np.floating) and values.min() >= 0 and values.max() <= 1:
            lo, hi = 0.0, 1.0
        else:
            lo, hi = np.percentile(values, (2, 98))
            if hi <= lo:
                lo, hi = values.min(), max(values.max(), values.min() + 1)
        scaled = (band.filled(lo).astype("float64") - lo) / (hi - lo)
        out[i] = np.clip(np.nan_to_num(scaled) * 255, 0, 255).astype(np.uint8)
    return out


def _outline(draw: ImageDraw.ImageDraw, geom, to_px, colour, width: int) -> None:
    for poly in getattr(geom, "geoms", [geom]):
        for ring in [poly.exterior, *poly.interiors]:
            draw.line([to_px(x, y) for x, y in ring.coords], fill=colour, width=width, joint="curve")


def render_chip(path: str | Path, parcel_4326, construction_4326, out: Path) -> Path:
    """Render one PNG chip of ``path`` around the parcel, with parcel and construction outlined."""
    try:
        src = rasterio.open(path)
    except RasterioIOError as e:
        raise ImageryError(f"{path}: cannot read the scene file for evidence: {e}") from e
    with src:
        if src.crs is None:
            raise NoCRS(f"{path}: has no CRS")
        parcel = reproject(parcel_4326, 4326, src.crs)
        construction = reproject(construction_4326, 4326, src.crs)
        minx, miny, maxx, maxy = parcel.union(construction).bounds
        px = math.sqrt(abs(src.transform.a * src.transform.e))
        margin = max(MARGIN * max(maxx - minx, maxy - miny), MARGIN_MIN_PX * px)
        win = from_bounds(minx - margin, miny - margin, maxx + margin, maxy + margin, transform=src.transform)
        col, row = math.floor(win.col_off), math.floor(win.row_off)
        win = Window(col, row, max(1, math.ceil(win.col_off + win.width) - col),
                     max(1, math.ceil(win.row_off + win.height) - row))
        data = src.read(_band_indexes(src), window=win, boundless=True, masked=True)
        transform = src.window_transform(win)
    img = _to_uint8(data)
    image = Image.fromarray(img[0] if img.shape[0] == 1 else np.moveaxis(img, 0, -1)).convert("RGB")
    scale = max(1, math.ceil(CHIP_MIN_PX / max(image.size)))
    image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    inverse = ~transform

    def to_px(x, y):
        c, r = inverse @ (x, y)
        return c * scale, r * scale

    draw = ImageDraw.Draw(image)
    width = max(2, min(4, scale // 4))
    _outline(draw, parcel, to_px, PARCEL_COLOUR, width)
    _outline(draw, construction, to_px, CONSTRUCTION_COLOUR, width)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, format="PNG")
    return out


def render_chips(session: Session, alert: Alert, settings: Settings) -> dict:
    """Render the alert's chips under ``data_dir/evidence/<alert id>/``: ``before`` (the last processed
    date before it was first seen) and ``after`` (the date it was last seen); stores and returns
    ``{name: png path}``. Scenes without a stored file are left out."""
    parcel = to_shape(row(session, Parcel, alert.parcel_id).geom)
    construction = to_shape(alert.geom)
    folder = Path(settings.data_dir).resolve() / "evidence" / str(alert.id)
    evidence: dict = {}
    before = earlier_scenes(session, alert.area_id, alert.first_seen, limit=1)
    for name, scene in (("before", before[0] if before else None),
                        ("after", scene_on(session, alert.area_id, alert.last_seen))):
        if scene is None or not scene.file_path:
            continue
        out = render_chip(scene.file_path, parcel, construction, folder / f"{name}.png")
        evidence[name] = str(out)
    if evidence:
        alert.evidence = evidence
    return evidence


def render_evidence(engine: Engine, alert_ids: list[int], settings: Settings) -> None:
    """Render the chips of these alerts, each in a transaction of its own, after the transaction that
    stored them. Evidence is a convenience: a chip that cannot be rendered (a file gone) is logged and
    the alert is kept without it."""
    ids = sorted(set(alert_ids))
    if not ids:
        return
    with transaction(engine) as s:
        area_ids = set(s.scalars(select(Alert.area_id).where(Alert.id.in_(ids))))
        if not s.scalar(select(func.count()).select_from(Scene).where(Scene.area_id.in_(area_ids),
                                                                      Scene.file_path.is_not(None))):
            return  # no scene has a file to render from
    for alert_id in ids:
        try:
            with transaction(engine) as s:
                alert = s.get(Alert, alert_id)
                if alert is not None:
                    render_chips(s, alert, settings)
        except Exception as e:
            log.warning("evidence chips of alert %s not rendered: %s", alert_id, e)
