"""``monitor areas``, ``monitor parcels``, ``monitor permits``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from monitor.cli.common import echo_json, new_app, state, table, warn
from monitor.domain import ModelKind, parse_sources
from monitor.inventory.areas import (
    add_area,
    area_spec,
    configure_area,
    describe,
    get_area,
    list_areas,
    remove_area,
)
from monitor.inventory.parcels import import_parcels, list_imports, parcel_versions, undo_import
from monitor.inventory.permits import import_permits

areas = new_app("Register and inspect watched areas.")
parcels = new_app("Import cadastral parcels, list their imports and versions, undo an import.")
permits = new_app("Import building permits.")


BAND_ORDER_HELP = ("Sentinel-2 names of the bands of drop-folder files that carry no band descriptions, in file "
                   "order, '-' for a band to ignore: e.g. B04,B03,B02,B08 for red, green, blue, NIR.")
RESOLUTION_HELP = ("Run models trained at a resolution more than 1.5x away from the scenes' (refused by "
                   "default).")


@areas.command("add")
def areas_add(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="A unique name for the area."),
    geometry: Path = typer.Option(..., "--geometry", help="GeoJSON, GeoPackage or Shapefile with the area's "
                                  "polygon(s), any CRS; several features are united."),
    cadence: str = typer.Option(None, help="How often to look for new imagery (30m, 12h, 5d, 2w). "
                                "Default: MONITOR_DEFAULT_CADENCE."),
    provider: str = typer.Option(None, help="Provider order, tried in turn: stac,sentinelsat,local. "
                                 "Default: MONITOR_DEFAULT_PROVIDERS."),
    max_cloud: float = typer.Option(None, "--max-cloud", help="Max cloud/nodata % over the area. "
                                    "Default: MONITOR_DEFAULT_MAX_CLOUD."),
    source: list[str] = typer.Option([], "--source", help="PROVIDER=URL_OR_DIR endpoint for this area "
                                     "(repeatable), e.g. local=/data/drops/ba."),
    resolution: float = typer.Option(None, "--resolution", help="Pixel size scenes are prepared at, metres. "
                                     "Default: MONITOR_RESOLUTION_M."),
    band_order: str = typer.Option(None, "--band-order", help=BAND_ORDER_HELP),
    allow_resolution_mismatch: bool = typer.Option(False, "--allow-resolution-mismatch",
                                                   help=RESOLUTION_HELP),
) -> None:
    """Register a watched area."""
    st = state(ctx)
    spec = area_spec(st.settings, name, cadence=cadence, providers=provider, max_cloud=max_cloud, sources=source,
                     resolution_m=resolution, band_order=band_order,
                     allow_resolution_mismatch=allow_resolution_mismatch)
    with st.transaction() as session:
        area = add_area(session, spec, geometry)
        info = describe(session, area)
    typer.echo(f"area {info['name']!r} added: {info['area_km2']} km2, UTM EPSG:{info['utm_epsg']}, "
               f"every {info['cadence']}, providers {','.join(info['providers'])}, max cloud {info['max_cloud']}%")


@areas.command("configure")
def areas_configure(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="The area to change."),
    cadence: str = typer.Option(None, help="How often to look for new imagery (30m, 12h, 5d, 2w)."),
    provider: str = typer.Option(None, help="Provider order, e.g. local,stac."),
    max_cloud: float = typer.Option(None, "--max-cloud", help="Max cloud/nodata % over the area."),
    source: list[str] = typer.Option([], "--source", help="PROVIDER=URL_OR_DIR (repeatable)."),
    resolution: float = typer.Option(None, "--resolution", help="Pixel size scenes are prepared at, metres."),
    active: bool = typer.Option(None, "--active/--inactive", help="Watch the area, or pause it."),
    band_order: str = typer.Option(None, "--band-order", help=BAND_ORDER_HELP + " '' forgets it."),
    allow_resolution_mismatch: bool = typer.Option(None, "--allow-resolution-mismatch/--refuse-resolution-mismatch",
                                                   help=RESOLUTION_HELP),
    settlement_alerts: bool = typer.Option(None, "--settlement-alerts/--no-settlement-alerts",
                                           help="Judge new settlement growth over a parcel (the classifier's layer) "
                                           "like new construction: alerts of source 'settlement'."),
    segmenter_model: str = typer.Option(None, "--segmenter-model", help="Model directory ('' to unset)."),
    classifier_model: str = typer.Option(None, "--classifier-model", help="Model directory ('' to unset)."),
    change_model: str = typer.Option(None, "--change-model", help="Model directory or builtin:NAME, e.g. "
                                     "builtin:cva ('' to unset)."),
) -> None:
    """Change an area's cadence, providers, sources, resolution, models or activity."""
    models = {str(k): v for k, v in ((ModelKind.SEGMENTER, segmenter_model), (ModelKind.CLASSIFIER, classifier_model),
                                     (ModelKind.CHANGE, change_model)) if v is not None}
    st = state(ctx)
    with st.transaction() as session:
        area = configure_area(session, name, cadence=cadence, providers=provider, max_cloud=max_cloud,
                              sources=parse_sources(source, allow_private=st.settings.allow_private_urls),
                              resolution_m=resolution, active=active, models=models, band_order=band_order,
                              allow_resolution_mismatch=allow_resolution_mismatch,
                              settlement_alerts=settlement_alerts, allow_private_urls=st.settings.allow_private_urls)
        echo_json(describe(session, area))


@areas.command("list")
def areas_list(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List watched areas."""
    with state(ctx).transaction() as session:
        infos = [describe(session, a) for a in list_areas(session)]
    if as_json:
        echo_json(infos)
        return
    if not infos:
        typer.echo("no areas yet: add one with `monitor areas add NAME --geometry FILE`")
        return
    typer.echo(table([(i["name"], i["area_km2"], f"EPSG:{i['utm_epsg']}", i["cadence"], ",".join(i["providers"]),
                       i["max_cloud"], i["parcels"], i["scenes"], i["open_alerts"], "yes" if i["active"] else "no")
                      for i in infos],
                     ["name", "km2", "utm", "cadence", "providers", "max_cloud", "parcels", "scenes",
                      "open_alerts", "active"]))


@areas.command("show")
def areas_show(ctx: typer.Context, name: str) -> None:
    """Show one area as JSON."""
    with state(ctx).transaction() as session:
        echo_json(describe(session, get_area(session, name)))


@areas.command("remove")
def areas_remove(ctx: typer.Context, name: str) -> None:
    """Remove an area with its parcels, permits, scenes, detections and alerts."""
    with state(ctx).transaction() as session:
        remove_area(session, name)
    typer.echo(f"area {name!r} removed")


@parcels.command("import")
def parcels_import(
    ctx: typer.Context,
    file: Path = typer.Argument(..., help="GeoJSON, GeoPackage or Shapefile of parcel polygons, any CRS."),
    area: str = typer.Option(..., "--area", help="The area the parcels belong to."),
    id_field: str = typer.Option(None, "--id-field", help="Attribute holding the cadastral id "
                                 "(default: the first of parcel_id, id, external_id, lot_id, fid)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Count new, changed and unchanged parcels; write nothing."),
    allow_outside: bool = typer.Option(False, "--allow-outside", help="Import parcels that do not touch the area "
                                       "too (with a warning); refused otherwise."),
) -> None:
    """Import parcels, inserting new ones and updating known ones by their cadastral id."""
    with state(ctx).transaction() as session:
        result = import_parcels(session, get_area(session, area), file, id_field, dry_run=dry_run,
                                allow_outside=allow_outside)
    for w in result.warnings:
        warn(w)
    what = "would be imported (dry run, nothing written)" if dry_run else "imported"
    recorded = f" (import #{result.import_id})" if result.import_id else ""
    typer.echo(f"{result.total} parcels {what} into {area!r}{recorded}: {result.inserted} new, {result.updated} "
               f"updated ({result.changed} changed, {result.unchanged} unchanged)")


@parcels.command("imports")
def parcels_imports(ctx: typer.Context, area: str = typer.Option(..., "--area", help="The area."),
                    as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List an area's parcel imports: file, time, new, changed and unchanged parcels, undone or not."""
    with state(ctx).transaction() as session:
        rows = [{"import": i.id, "file": i.file, "imported_at": i.imported_at, "new": i.new, "changed": i.changed,
                 "unchanged": i.unchanged, "undone_at": i.undone_at} for i in list_imports(session, get_area(session, area))]
    if as_json:
        echo_json(rows)
        return
    typer.echo(table([(r["import"], f"{r['imported_at']:%Y-%m-%d %H:%M:%S}", r["new"], r["changed"], r["unchanged"],
                       f"{r['undone_at']:%Y-%m-%d %H:%M:%S}" if r["undone_at"] else "", r["file"]) for r in rows],
                     ["import", "imported_at", "new", "changed", "unchanged", "undone_at", "file"])
               if rows else f"no parcel imports in {area!r}")


@parcels.command("history")
def parcels_history(ctx: typer.Context, area: str = typer.Option(..., "--area", help="The area."),
                    parcel: str = typer.Option(None, "--parcel", help="One parcel's cadastral id (default: all)."),
                    as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the versions of an area's parcels: earlier ones kept by imports that changed them, then the current."""
    with state(ctx).transaction() as session:
        rows = parcel_versions(session, get_area(session, area), parcel)
    if as_json:
        echo_json(rows)
        return
    typer.echo(table([(r["external_id"], f"{r['valid_from']:%Y-%m-%d %H:%M:%S}",
                       f"{r['valid_to']:%Y-%m-%d %H:%M:%S}" if r["valid_to"] else "current",
                       r["import_id"] or "", r["replaced_by"] or "", round(r["area_m2"], 1),
                       json.dumps(r["attributes"], ensure_ascii=False)) for r in rows],
                     ["parcel", "valid_from", "valid_to", "import", "replaced_by", "m2", "attributes"])
               if rows else f"no parcels in {area!r}")


@parcels.command("undo")
def parcels_undo(ctx: typer.Context, area: str = typer.Option(..., "--area", help="The area."),
                 import_id: int = typer.Option(None, "--import", help="The import to undo (default: the last one "
                                               "not yet undone; `monitor parcels imports` lists them).")) -> None:
    """Undo a parcel import in one transaction: parcels it changed get their earlier version back, parcels it
    added are removed. Refused (exit 2, nothing changed) when a later import changed parcels it wrote or a
    parcel it added has permits, alerts or judged changes."""
    with state(ctx).transaction() as session:
        result = undo_import(session, get_area(session, area), import_id)
    typer.echo(f"import #{result.import_id} ({result.file}) undone in {area!r}: {result.restored} parcels restored "
               f"to their earlier version, {result.removed} new parcels removed")


@permits.command("import")
def permits_import(
    ctx: typer.Context,
    file: Path = typer.Argument(..., help="CSV or GeoJSON with parcel_id, permit_id, valid_from, valid_to "
                                "(empty valid_to: open-ended), optional kind."),
    area: str = typer.Option(None, "--area", help="Match parcel ids in this area only."),
    date_format: str = typer.Option(None, "--date-format", help="Format of the dates when not ISO 8601 "
                                    "(YYYY-MM-DD), in strptime codes, e.g. %d/%m/%Y."),
) -> None:
    """Import building permits (upserted by parcel and permit id)."""
    with state(ctx).transaction() as session:
        count = import_permits(session, file, get_area(session, area) if area else None, date_format)
    typer.echo(f"{count} permits imported")
