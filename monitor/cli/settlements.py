"""``monitor settlements``: the informal-settlement layer of a date and its growth."""

from __future__ import annotations

from pathlib import Path

import typer
from geoalchemy2.shape import to_shape

from monitor.change.settlements import GROWTH_COLUMNS, growth, list_settlements, to_geojson
from monitor.cli.common import echo_json, new_app, parse_date, state, table
from monitor.errors import BadInput
from monitor.inventory.areas import get_area
from monitor.readers import write_polygons

app = new_app("The informal-settlement layer of an area per date, and its growth.")
FORMATS = ("table", "json", "geojson", "gpkg")



@app.command("list")
def settlements_list(
    ctx: typer.Context,
    area: str = typer.Option(..., "--area", help="The area."),
    date: str = typer.Option(None, "--date", help="The date of the layer, YYYY-MM-DD (default: the newest)."),
    fmt: str = typer.Option("table", "--format", help="table, json, geojson or gpkg (gpkg needs --out)."),
    out: Path = typer.Option(None, "--out", help="Write the layer to this file (geojson or gpkg) instead of "
                             "printing it."),
) -> None:
    """The settlement polygons of a date: km2, the share carried over from an earlier date where this
    one was cloudy, mean probability and model version."""
    if fmt not in FORMATS:
        raise BadInput(f"{fmt!r} is not one of {', '.join(FORMATS)}", field="format")
    if fmt == "gpkg" and out is None:
        raise BadInput("a GeoPackage is a file: give it with --out", field="out")
    if out is not None and fmt not in ("geojson", "gpkg"):
        raise BadInput("--out writes geojson or gpkg: add --format geojson or --format gpkg", field="out")
    asked = parse_date(date, "date")
    with state(ctx).transaction() as session:
        a = get_area(session, area)
        day, rows = list_settlements(session, a, asked)
        doc = to_geojson(a, rows)
        geoms = [to_shape(r.geom) for r in rows]
    props = [f["properties"] for f in doc["features"]]
    if out is not None:
        for p, f in zip(props, doc["features"]):
            p["id"] = f["id"]
        write_polygons(out, geoms, props, "EPSG:4326", driver="GPKG" if fmt == "gpkg" else "GeoJSON")
        typer.echo(f"{len(rows)} settlement polygons of {area} on {day or '-'} written to {out}")
    elif fmt == "geojson":
        echo_json(doc)
    elif fmt == "json":
        echo_json([{"id": f["id"], **f["properties"]} for f in doc["features"]])
    elif not rows:
        typer.echo(f"no settlement layer for {area} yet" if day is None else f"no settlements on {day}")
    else:
        typer.echo(table([(f["id"], p["observed_on"], f"{p['area_m2'] / 1e6:.4f}", f"{p['carried_share']:.2f}",
                           "" if p["probability"] is None else f"{p['probability']:.2f}", p["model_version"] or "")
                          for f, p in zip(doc["features"], props)],
                         ["id", "date", "km2", "carried share", "probability", "model"]))
        total = sum(p["area_m2"] for p in props) / 1e6
        carried = sum(p["carried_m2"] for p in props) / 1e6
        typer.echo(f"{area} {day}: {len(rows)} settlements, {total:.4f} km2, {carried:.4f} km2 carried over")


@app.command("growth")
def settlements_growth(
    ctx: typer.Context,
    area: str = typer.Option(..., "--area", help="The area."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Between consecutive dates: each settlement that appeared, grew, shrank, stayed or disappeared,
    with its km2 before and after."""
    with state(ctx).transaction() as session:
        rows = growth(session, get_area(session, area))
    if as_json:
        echo_json(rows)
    elif not rows:
        typer.echo("fewer than two dates with a settlement layer")
    else:
        typer.echo(table([[", ".join(map(str, r[c])) if isinstance(r[c], list) else r[c] for c in GROWTH_COLUMNS]
                          for r in rows], GROWTH_COLUMNS))
