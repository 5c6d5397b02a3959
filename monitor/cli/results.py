"""``monitor detections``, ``monitor alerts``, ``monitor history``."""

from __future__ import annotations

import datetime as dt
import getpass
import os
from pathlib import Path

import typer

from monitor.alerts.export import alerts_file, file_format, write_alerts
from monitor.alerts.lifecycle import list_alerts, names, review
from monitor.cli.common import echo_json, new_app, parse_date, state, table
from monitor.errors import BadInput
from monitor.history import AREA_COLUMNS, PARCEL_COLUMNS, area_history, parcel_history
from monitor.pipeline import import_detections

detections = new_app("Import detections made elsewhere (probability or 0/1 mask rasters).")
alerts = new_app("List and review alerts of unpermitted construction.")
history = new_app("Built-up history of a parcel or an area.")



@detections.command("import")
def detections_import(
    ctx: typer.Context,
    raster: Path = typer.Argument(..., help="GeoTIFF (any CRS): built-up probabilities 0..1, or a 0/1 (0/255) "
                                  "mask; nodata pixels count as not observed."),
    area: str = typer.Option(..., "--area", help="The area the raster covers."),
    date: str = typer.Option(..., "--date", help="Acquisition date of the imagery, YYYY-MM-DD."),
    threshold: float = typer.Option(None, "--threshold", help="Probability at or above which a pixel is built "
                                    "(default 0.5)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Vectorize a raster as the area's detections of DATE, diff it against the previous date,
    judge the changes against parcels and permits, and record the indicators (one transaction)."""
    day = parse_date(date, "date")
    if day > dt.datetime.now(dt.timezone.utc).date() + dt.timedelta(days=1):
        raise BadInput(f"{day} is in the future: give the acquisition date of the imagery", field="date")
    st = state(ctx)
    summary = import_detections(st.engine, area, day, raster, threshold, st.settings)
    if as_json:
        echo_json(summary)
        return
    a = summary["alerts"]
    typer.echo(f"{summary['area']} {summary['date']}: {summary['detections']} detections "
               f"({summary['built_km2']} km2 built, {100 * (summary['clear_fraction'] or 0):.1f}% clear); "
               f"{summary['changes']} changes since {summary['previous_date'] or '(first date: baseline)'}; "
               f"alerts: {a['created']} new, {a['updated']} updated, {a['escalated']} confirmed, "
               f"{a['resolved']} resolved")


def _print_alerts(session, rows) -> None:
    labels = names(session, rows)
    if not rows:
        typer.echo("no alerts")
        return
    typer.echo(table([(a.id, *labels.get(a.id, ("", "")), a.first_seen, a.last_seen, f"{a.new_area_m2:.1f}",
                       f"{a.fraction:.3f}", a.confidence, a.status, " / ".join((a.note or "").splitlines()))
                      for a in rows],
                     ["id", "area", "parcel", "first_seen", "last_seen", "new_m2", "fraction", "confidence",
                      "status", "note"]))


@alerts.command("list")
def alerts_list(
    ctx: typer.Context,
    area: str = typer.Option(None, "--area", help="Only this area."),
    status: str = typer.Option(None, "--status", help="new, acknowledged, confirmed, dismissed, resolved, or "
                               "'open' (the first three); several separated by commas."),
    since: str = typer.Option(None, "--since", help="Last seen on or after this date (YYYY-MM-DD)."),
    until: str = typer.Option(None, "--until", help="First seen on or before this date (YYYY-MM-DD)."),
    bbox: str = typer.Option(None, "--bbox", help="minlon,minlat,maxlon,maxlat (EPSG:4326)."),
    fmt: str = typer.Option("table", "--format", help="table, or a file format: geojson, gpkg (GeoPackage), csv "
                            "(WKT geometry) or fgb (FlatGeobuf), written with GDAL."),
    out: Path = typer.Option(None, "--out", help="Write the file here (needed for gpkg and fgb; geojson and csv "
                             "are printed without it)."),
    parcel_geometry: bool = typer.Option(False, "--parcel-geometry", help="Add the parcel's outline as WKT "
                                         "(column parcel_wkt) beside the new construction."),
) -> None:
    """List alerts, oldest first: as a table, or as a GIS file (EPSG:4326, 7 decimals)."""
    if fmt != "table":
        spec = file_format(fmt)
        if spec.binary and out is None:
            raise BadInput(f"{fmt} is a binary format: give --out FILE", field="out")
    elif out is not None or parcel_geometry:
        raise BadInput("--out and --parcel-geometry need a file --format (geojson, gpkg, csv, fgb)", field="format")
    with state(ctx).transaction() as session:
        rows = list_alerts(session, area=area, status=status, since=since, until=until, bbox=bbox)
        if fmt == "table":
            _print_alerts(session, rows)
        elif out is not None:
            write_alerts(session, rows, out, fmt, parcel_geometry=parcel_geometry)
            typer.echo(f"{len(rows)} alerts written to {out}", err=True)
        else:
            typer.echo(alerts_file(session, rows, fmt, parcel_geometry=parcel_geometry).decode(), nl=False)


def _review(ctx: typer.Context, alert_id: int, action: str, note: str | None, reviewer: str | None) -> None:
    who = reviewer or os.environ.get("USER") or getpass.getuser()
    with state(ctx).transaction() as session:
        alert = review(session, alert_id, action, note, who)
        typer.echo(f"alert {alert.id} {alert.status} by {alert.reviewed_by} at "
                   f"{alert.reviewed_at:%Y-%m-%d %H:%M:%S %Z}")


_NOTE = typer.Option(None, "--note", help="Why (kept with the alert).")
_REVIEWER = typer.Option(None, "--reviewer", help="Who reviews (default: the login name).")
_ID = typer.Argument(..., help="Alert id (see `monitor alerts list`).")


@alerts.command("ack")
def alerts_ack(ctx: typer.Context, alert_id: int = _ID, note: str = _NOTE, reviewer: str = _REVIEWER) -> None:
    """Acknowledge an alert: someone is looking into it."""
    _review(ctx, alert_id, "ack", note, reviewer)


@alerts.command("confirm")
def alerts_confirm(ctx: typer.Context, alert_id: int = _ID, note: str = _NOTE, reviewer: str = _REVIEWER) -> None:
    """Confirm an alert: the construction is real and unpermitted."""
    _review(ctx, alert_id, "confirm", note, reviewer)


@alerts.command("dismiss")
def alerts_dismiss(ctx: typer.Context, alert_id: int = _ID, note: str = _NOTE, reviewer: str = _REVIEWER) -> None:
    """Dismiss an alert as a false alarm (kept as a negative example for retraining)."""
    _review(ctx, alert_id, "dismiss", note, reviewer)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else str(v)


@history.command("parcel")
def history_parcel(
    ctx: typer.Context,
    parcel_id: str = typer.Argument(..., help="The parcel's cadastral id."),
    area: str = typer.Option(None, "--area", help="The parcel's area (needed when the id exists in several)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Every processed date of a parcel: built m2, new construction and its verdict (the view parcel_history)."""
    with state(ctx).transaction() as session:
        rows = parcel_history(session, parcel_id, area)
    if as_json:
        echo_json(rows)
    elif not rows:
        typer.echo("no processed dates yet")
    else:
        typer.echo(table([[_fmt(r[c]) for c in PARCEL_COLUMNS] for r in rows], PARCEL_COLUMNS))


@history.command("area")
def history_area(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="The area."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Every processed date of an area: built-up and settlement km2, clear fraction, changes, alerts
    (the view area_indicators)."""
    with state(ctx).transaction() as session:
        rows = area_history(session, name)
    if as_json:
        echo_json(rows)
    elif not rows:
        typer.echo("no processed dates yet")
    else:
        typer.echo(table([[_fmt(r[c]) for c in AREA_COLUMNS] for r in rows], AREA_COLUMNS))
