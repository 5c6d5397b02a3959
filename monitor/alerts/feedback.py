"""Reviewers' verdicts as change-training data: ``monitor dataset feedback``.

Each reviewed alert of an area becomes one site of the change layout (``monitor.ml.oscd``): a chip
around its parcel, cut from the prepared scene the alert was found against (``before``, its baseline:
the newest image before the date it was first seen) and from the scene of that date (``after``), with
every named band of those files. A confirmed alert is a positive, its change polygons (the changes
that raised it, or its own outline) rasterized as the mask; a dismissed one is a negative, its mask
empty. ``monitor train change --init MODEL --data DIR`` fine-tunes a model on it.
"""

from __future__ import annotations

import datetime as dt
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import shapely
from geoalchemy2.shape import to_shape
from rasterio.features import rasterize
from rasterio.windows import Window, from_bounds
from sqlalchemy import select
from sqlalchemy.orm import Session

from monitor.builtins import canonical_band
from monitor.db import queries
from monitor.db.tables import Alert, Change, Parcel, ParcelChange, Scene
from monitor.domain import AlertStatus, Provider
from monitor.errors import BadInput
from monitor.geo import reproject
from monitor.inventory.areas import get_area
from monitor.ml.datasets import commit_out, prepare_out
from monitor.ml.oscd import UNKNOWN, write_city, write_summary

LABELS = {AlertStatus.CONFIRMED: "positive", AlertStatus.DISMISSED: "negative"}
CHIP_PX = 64  # the smallest chip side, pixels: context for the per-image standardization


@dataclass(frozen=True)
class Reviewed:
    """One reviewed alert with what its chip is cut from (read in one transaction)."""

    alert_id: int
    parcel: str
    status: str
    reviewed_at: dt.datetime | None
    parcel_geom: object  # shapely, EPSG:4326
    change_geom: object  # shapely, EPSG:4326: the changes that raised the alert, else its outline
    before: Scene | None
    after: Scene | None


def reviewed_alerts(session: Session, area_name: str, since: dt.date | None = None) -> list[Reviewed]:
    """The confirmed and dismissed alerts of an area (reviewed on or after ``since``), oldest first, with
    their parcel, change polygons and before/after scenes."""
    area = get_area(session, area_name)
    q = select(Alert).where(Alert.area_id == area.id, Alert.status.in_([str(s) for s in LABELS]))
    if since is not None:
        q = q.where(Alert.reviewed_at >= queries.day_start(since))
    out = []
    for alert in session.scalars(q.order_by(Alert.first_seen, Alert.id)):
        parcel = session.get(Parcel, alert.parcel_id)
        assert parcel is not None  # a foreign key
        changes = [to_shape(g) for g in session.scalars(
            select(Change.geom).join(ParcelChange, ParcelChange.change_id == Change.id)
            .where(ParcelChange.alert_id == alert.id))]
        after = queries.scene_on(session, area.id, alert.first_seen)
        found = queries.earlier_scenes(session, area.id, alert.first_seen, limit=1, images_only=True)
        out.append(Reviewed(alert.id, parcel.external_id, alert.status, alert.reviewed_at, to_shape(parcel.geom),
                            shapely.union_all(changes) if changes else to_shape(alert.geom),
                            found[0] if found else None, after))
    return out


def _skip_reason(r: Reviewed) -> str | None:
    if r.before is None or not r.before.file_path:
        return "no prepared image before the date it was first seen"
    if r.after is None or not r.after.file_path or r.after.provider == Provider.IMPORT:
        return "no prepared image of the date it was first seen"
    for scene in (r.before, r.after):
        if not Path(str(scene.file_path)).is_file():
            return f"the scene file {scene.file_path} is missing"
    return None


def _named_bands(src) -> list[str]:
    return [b for b in (canonical_band(d) for d in src.descriptions) if b]


def chip_window(src, geom_crs, size: int) -> Window:
    """A window of at least ``size`` x ``size`` pixels (or the whole raster, when smaller) centred on the
    geometry's bounds with a margin, shifted to lie inside the raster."""
    minx, miny, maxx, maxy = geom_crs.bounds
    w = from_bounds(minx, miny, maxx, maxy, transform=src.transform)
    margin = 3
    width = max(size, math.ceil(w.width) + 2 * margin)
    height = max(size, math.ceil(w.height) + 2 * margin)
    width, height = min(width, src.width), min(height, src.height)
    col = round(w.col_off + w.width / 2 - width / 2)
    row = round(w.row_off + w.height / 2 - height / 2)
    col = min(max(col, 0), src.width - width)
    row = min(max(row, 0), src.height - height)
    return Window(col, row, width, height)


def _day(scene: Scene) -> str:
    return queries.scene_date(scene).isoformat()


def build_feedback(session: Session, area_name: str, out: str | Path, *, since: dt.date | None = None,
                   size: int = CHIP_PX, overwrite: bool = False) -> dict:
    """Write the reviewed alerts of ``area_name`` as a change dataset in ``out``; returns its summary.

    Alerts whose scenes are gone are left out and listed under ``skipped``. Raises ``BadInput`` when
    the area has no reviewed alert (since ``since``) or none of them can be cut.
    """
    if size < 8:
        raise BadInput("the chip size must be at least 8 pixels", field="size")
    reviewed = reviewed_alerts(session, area_name, since)
    if not reviewed:
        when = f" reviewed since {since.isoformat()}" if since else ""
        raise BadInput(f"area {area_name!r} has no confirmed or dismissed alert{when}: review alerts first "
                       "(`monitor alerts confirm|dismiss ID`)", field="area")
    out = Path(out)
    tmp = prepare_out(out, overwrite)
    try:
        sites: dict[str, dict] = {}
        skipped: dict[str, str] = {}
        bands: list[str] | None = None
        for r in reviewed:
            name = f"alert-{r.alert_id}"
            reason = _skip_reason(r)
            if reason is not None:
                skipped[name] = reason
                continue
            assert r.before is not None and r.after is not None
            with rasterio.open(str(r.after.file_path)) as a_src, rasterio.open(str(r.before.file_path)) as b_src:
                names = _named_bands(a_src)
                if bands is None:
                    bands = names
                missing = [b for b in bands if b not in names or b not in _named_bands(b_src)]
                if not bands or missing:
                    skipped[name] = f"its scenes lack the bands {', '.join(missing or ['(none named)'])}"
                    continue
                parcel = reproject(r.parcel_geom, 4326, a_src.crs)
                win = chip_window(a_src, parcel, size)
                transform = a_src.window_transform(win)
                after = a_src.read([names.index(b) + 1 for b in bands], window=win)
                b_names = _named_bands(b_src)
                b_win = from_bounds(*rasterio.windows.bounds(win, a_src.transform), transform=b_src.transform)
                before = b_src.read([b_names.index(b) + 1 for b in bands], window=b_win, boundless=True,
                                    out_shape=(len(bands), int(win.height), int(win.width)),
                                    fill_value=b_src.nodata or 0)
                nodata = a_src.nodata if a_src.nodata is not None else b_src.nodata
                crs = a_src.crs
            label = LABELS[AlertStatus(r.status)]
            shape = (int(win.height), int(win.width))
            judged = [(parcel, 0)] + ([(reproject(r.change_geom, 4326, crs), 1)] if label == "positive" else [])
            mask = rasterize(judged, out_shape=shape, transform=transform, fill=UNKNOWN, dtype="uint8")
            entry = write_city(tmp, name, np.moveaxis(before, 0, -1), np.moveaxis(after, 0, -1), mask, crs=crs,
                               transform=transform, bands=bands, dates=(_day(r.before), _day(r.after)),
                               nodata=nodata)
            entry.update(alert=r.alert_id, parcel=r.parcel, status=r.status, label=label,
                         reviewed_at=r.reviewed_at.isoformat() if r.reviewed_at else None,
                         scenes={"before": r.before.id, "after": r.after.id}, change_pixels=int((mask == 1).sum()),
                         judged_pixels=int((mask != UNKNOWN).sum()))
            sites[name] = entry
        if not sites:
            raise BadInput(f"none of the {len(reviewed)} reviewed alerts of area {area_name!r} can be cut: "
                           + "; ".join(f"{k}: {v}" for k, v in skipped.items()), field="area")
        counts = {lab: sum(1 for e in sites.values() if e["label"] == lab) for lab in ("positive", "negative")}
        summary = write_summary(tmp, bands or [], sites, source="feedback", area=area_name,
                                since=since.isoformat() if since else None, chip_px=size, counts=counts,
                                skipped=skipped, resolution_m=_resolution(sites))
        commit_out(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _resolution(sites: dict[str, dict]) -> float | None:
    t = next(iter(sites.values()))["transform"]
    crs = rasterio.crs.CRS.from_user_input(next(iter(sites.values()))["crs"])
    return round(abs(t[0]), 2) if crs.is_projected else None
