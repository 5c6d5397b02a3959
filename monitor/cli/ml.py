"""``monitor dataset``, ``monitor train``, ``monitor models``, ``monitor predict``, ``monitor evaluate``.

TensorFlow itself is loaded (by ``monitor.ml.runtime``) only when a command builds, trains or runs a model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import typer
from sqlalchemy import select

from monitor import builtins
from monitor.alerts.feedback import CHIP_PX, build_feedback
from monitor.cli.common import echo_json, new_app, parse_date, state, table
from monitor.db.tables import Model
from monitor.domain import ModelKind, ModelMeta
from monitor.errors import BadInput
from monitor.inventory.models import register_model
from monitor.ml import finetune, training
from monitor.ml.changenet import EMA, train_change_features
from monitor.ml.datasets import build_tiles
from monitor.ml.evaluation import evaluate as run_evaluation
from monitor.ml.inference import NODATA, classify_tiles, predict_raster, raster_threshold
from monitor.ml.modelstore import LoadedModel, new_version, open_model
from monitor.ml.oscd import convert_oscd
from monitor.ml.runtime import INFERENCE_PRECISIONS
from monitor.ml.spacenet7 import convert_spacenet7
from monitor.settings import Settings

dataset = new_app("Build training datasets from scenes and labels.")
train = new_app("Train the segmenter, the settlement classifier or the change model.")
models = new_app("Model directories and the registry of models.")


def _bands(text: str | None) -> list[str] | None:
    return [b.strip() for b in text.split(",") if b.strip()] if text else None


def _out_dir(ctx: typer.Context, out: Path | None, kind: str) -> tuple[Path, str]:
    version = new_version(kind)
    return (out if out is not None else state(ctx).settings.models_dir / version), version


def _report(model_dir: Path) -> None:
    meta = ModelMeta.read(model_dir).to_dict()
    v = meta["metrics"]["validation"]
    typer.echo(f"saved {meta['kind']} model {meta['version']} to {model_dir}\n"
               f"threshold {meta['threshold']:.2f}; validation precision {v['precision']:.3f} recall {v['recall']:.3f} "
               f"F1 {v['f1']:.3f} IoU {v['iou']:.3f}; {meta['training']['epochs_run']} epochs "
               f"({meta['training']['stopped']}), {meta['training']['seconds']} s")
    if meta["training"].get("members"):
        typer.echo(f"the mean of {len(meta['training']['members'])} networks; seeds, best epochs: " + ", ".join(
            f"{m['seed']}: {m['best_epoch']}" for m in meta["training"]["members"]))
    if v.get("building_recall"):
        r = v["building_recall"]
        typer.echo(f"building recall {r['recall']:.3f} of {r['buildings']} building-months; by size: " + ", ".join(
            f"{c} m2 {r[c]['recall']:.3f} ({r[c]['buildings']})" for c in ("<100", "100-300", ">300")))


# ---------------------------------------------------------------- dataset

@dataset.command("build")
def dataset_build(
    scene: Path = typer.Option(..., "--scene", help="GeoTIFF to cut into tiles."),
    labels: Path = typer.Option(..., "--labels", help="Polygons (settlements or buildings): GeoJSON, GeoPackage or "
                                "Shapefile, any CRS."),
    out: Path = typer.Option(..., "--out", help="Dataset folder to write."),
    tile: int = typer.Option(256, "--tile", help="Tile side, pixels."),
    kind: str = typer.Option("classifier", "--kind", help="classifier (train|validation/true|false/) or segmenter "
                             "(image/mask pairs)."),
    min_cover: float = typer.Option(0.0, "--min-cover", help="A tile is true when polygons cover more than this "
                                    "fraction of it."),
    val_fraction: float = typer.Option(0.2, "--val-fraction", help="Share of tiles (per class) for validation."),
    seed: int = typer.Option(0, "--seed", help="Seed of the train/validation split."),
    split: str = typer.Option("random", "--split", help="random (stratified by class) or east (the easternmost "
                              "columns of tiles: validation on a place training never saw)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
) -> None:
    """Cut a scene into tiles labelled by polygons, split into train and validation."""
    s = build_tiles(scene, labels, out, kind=kind, tile=tile, min_cover=min_cover, val_fraction=val_fraction,
                    seed=seed, split=split, overwrite=overwrite, progress=True)
    t = s["tiles"]
    typer.echo(table([(split, c["true"], c["false"]) for split, c in t.items()], ["split", "true", "false"]))
    typer.echo(f"{kind} dataset written to {out} ({s['polygons']} polygons, {s['skipped_without_data']} tiles "
               f"without data skipped)")


@dataset.command("oscd")
def dataset_oscd(
    src: Path = typer.Argument(..., help="OSCD folder: images/<city>/imgs_1|imgs_2, labels/<city>/cm/<city>-cm.tif."),
    out: Path = typer.Option(..., "--out", help="Change dataset folder to write."),
    city: list[str] = typer.Option([], "--city", help="Convert only this city (repeatable). Default: every city."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
) -> None:
    """Convert OSCD Sentinel-2 pairs and change maps into the change-training layout."""
    s = convert_oscd(src, out, cities=city or None, overwrite=overwrite, progress=True)
    typer.echo(table([(c, e["width"], e["height"], " / ".join(e["dates"] or []), e.get("change_fraction", ""))
                      for c, e in s["cities"].items()], ["city", "width", "height", "dates", "change_fraction"]))
    typer.echo(f"{len(s['cities'])} cities, {len(s['bands'])} bands, written to {out}")


@dataset.command("feedback")
def dataset_feedback(
    ctx: typer.Context,
    area: str = typer.Option(..., "--area", help="Area whose reviewed alerts to write."),
    out: Path = typer.Option(..., "--out", help="Change dataset folder to write."),
    since: str = typer.Option(None, "--since", help="Only alerts reviewed on or after this date (YYYY-MM-DD)."),
    size: int = typer.Option(CHIP_PX, "--size", help="Smallest chip side, pixels (larger parcels get larger chips)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
) -> None:
    """Reviewed alerts as before/after chips in the change layout: confirmed ones with their change
    polygons as the mask, dismissed ones with an empty mask (for `monitor train change --init`)."""
    day = parse_date(since, "since")
    with state(ctx).transaction() as session:
        s = build_feedback(session, area, out, since=day, size=size, overwrite=overwrite)
    typer.echo(table([(c, e["parcel"], e["status"], e["width"], e["height"], " / ".join(e["dates"]),
                       e["change_pixels"]) for c, e in s["cities"].items()],
                     ["site", "parcel", "status", "width", "height", "dates", "change_px"]))
    for c, reason in s["skipped"].items():
        typer.echo(f"skipped {c}: {reason}")
    typer.echo(f"{s['counts']['positive']} positive and {s['counts']['negative']} negative sites, bands "
               f"{','.join(s['bands'])}, written to {out}")



@dataset.command("spacenet7")
def dataset_spacenet7(
    src: Path = typer.Argument(..., help="SpaceNet 7 tile folder: images/global_monthly_YYYY_MM_mosaic_*.tif and "
                               "labels/*_Buildings.geojson."),
    out: Path = typer.Option(..., "--out", help="Dataset folder to write."),
    tile: int = typer.Option(128, "--tile", help="Tile side, pixels (a multiple of 16)."),
    resolution: float = typer.Option(4.0, "--resolution", help="Pixel size of the UTM grid, metres."),
    val_fraction: float = typer.Option(0.2, "--val-fraction", help="Share of the columns, in the east, held out "
                                       "for validation."),
    before: str = typer.Option(None, "--before", help="First month (YYYY-MM) of the change layout. Default: the "
                               "first month."),
    after: str = typer.Option(None, "--after", help="Second month (YYYY-MM) of the change layout. Default: the "
                              "last month."),
    validation_rows: str = typer.Option(None, "--validation-rows", help="R0:R1, grid rows of the west: the "
                                        "segmenter's validation is the tiles reaching into them, and the east "
                                        "--val-fraction goes to test/, never trained on."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
) -> None:
    """Convert a SpaceNet 7 tile: segmenter tiles per month on its UTM grid, a change layout, a building table."""
    rows = None
    if validation_rows is not None:
        try:
            r0, r1 = (int(v) for v in validation_rows.split(":"))
        except ValueError:
            raise BadInput(f"'{validation_rows}' is not R0:R1 (two whole numbers)", field="validation_rows") from None
        rows = (r0, r1)
    s = convert_spacenet7(src, out, resolution_m=resolution, tile=tile, val_fraction=val_fraction, before=before,
                          after=after, validation_rows=rows, overwrite=overwrite, progress=True)
    typer.echo(table([(split, n, s["positive_pixel_fraction"][split]) for split, n in s["tiles"].items()],
                     ["split", "tiles", "building_fraction"]))
    c = s["change"]
    typer.echo(f"{len(s['months'])} months on {s['crs']} at {s['resolution_m']:g} m, {s['buildings']['total']} "
               f"buildings, {c['new_buildings']} new between {c['before']} and {c['after']}; written to {out}")


# ---------------------------------------------------------------- train

_DATA = typer.Option(..., "--data", help="Dataset folder (from `monitor dataset ...`).")
_OUT = typer.Option(None, "--out", help="Model directory to write. Default: MONITOR_HOME/models/<version>.")
_SEED = typer.Option(0, "--seed", help="Random seed; the same seed repeats a run.")
_BANDS = typer.Option(None, "--bands", help="Comma-separated input bands in order. Default: the dataset's.")
_LIMIT = typer.Option(0.0, "--time-limit", help="Stop after this many minutes, keeping the best epoch (0: none).")


@train.command("segmenter")
def train_segmenter(
    ctx: typer.Context, data: Path = _DATA, out: Path = _OUT, epochs: int = typer.Option(50, "--epochs"),
    seed: int = _SEED, bands: str = _BANDS,
    depth: int = typer.Option(4, "--depth", help="U-Net levels (poolings)."),
    base_filters: int = typer.Option(16, "--base-filters", help="Filters of the first level, doubled per level."),
    upsample: int = typer.Option(1, "--upsample", min=1, max=4, help="Enlarge the input this many times inside the "
                                 "network (probabilities come out on the input's grid): small buildings a few pixels "
                                 "wide get more pixels, for upsample² times the computation."),
    batch: int = typer.Option(8, "--batch"), lr: float = typer.Option(1e-3, "--lr", help="Adam learning rate."),
    patience: int = typer.Option(10, "--patience", help="Early-stopping patience, epochs."),
    min_steps: int = typer.Option(200, "--min-steps", help="Training steps before epochs are compared and early "
                                  "stopping may stop."),
    epoch_steps: int = typer.Option(30, "--epoch-steps", min=1, help="Batches per epoch at least: an epoch is one "
                                    "pass over the training tiles, or more passes up to this many batches on a "
                                    "small dataset, so that --epochs and --patience mean enough training."),
    per_image: bool = typer.Option(True, "--per-image/--global", help="Standardize each tile by the band statistics "
                                   "of its scene (default), or all by the training data's."),
    tta: bool = typer.Option(False, "--tta/--no-tta", help="Average the model's maps over the 8 flips and rotations "
                             "of its input (8 times the inference time); the threshold is chosen on such maps."),
    time_limit: float = _LIMIT,
    ema: float = typer.Option(training.SEGMENTER_EMA, "--ema", help="Score and keep each epoch with a moving average "
                              "of the weights, this the weight of the past at every batch (0: the raw weights)."),
) -> None:
    """U-Net on image/mask tiles; loss BCE + Dice; IoU and F1 metrics."""
    out, version = _out_dir(ctx, out, "segmenter")
    _report(training.train_segmenter(data, out, epochs=epochs, seed=seed, bands=_bands(bands), depth=depth,
                                     base_filters=base_filters, upsample=upsample, batch=batch, lr=lr, patience=patience,
                                     min_steps=min_steps, epoch_steps=epoch_steps, per_image=per_image, tta=tta,
                                     progress=True, ema=ema,
                                     time_limit_s=time_limit * 60 or None, version=version))


@train.command("classifier")
def train_classifier(
    ctx: typer.Context, data: Path = _DATA, out: Path = _OUT, epochs: int = typer.Option(50, "--epochs"),
    seed: int = _SEED, bands: str = _BANDS,
    backbone: str = typer.Option("resnet50", "--backbone", help="resnet50, mobilenetv2, or small (a light CNN "
                                 "for CPU-only machines)."),
    weights: Path = typer.Option(None, "--weights", help="Local weights file of the backbone without top "
                                 "(ImageNet, say). Without it the backbone starts from random weights."),
    freeze: int = typer.Option(60, "--freeze", help="Backbone layers kept frozen."),
    dense: int = typer.Option(1024, "--dense", help="Units of the dense layer of the head."),
    batch: int = typer.Option(8, "--batch"), lr: float = typer.Option(1e-4, "--lr", help="SGD learning rate."),
    patience: int = typer.Option(10, "--patience", help="Early-stopping patience, epochs."),
    per_image: bool = typer.Option(None, "--per-image/--global", help="Standardize each tile by the band statistics "
                                   "of its scene (the default without --weights), or by the training data's."),
    gain: float = typer.Option(0.0, "--gain", min=0.0, max=0.5, help="Multiply each training tile's bands by random "
                               "factors 1 + N(0, GAIN), one per band (a brighter or darker date)."),
    time_limit: float = _LIMIT,
) -> None:
    """Settlement classifier on train|validation/true|false tiles (ResNet50 recipe by default)."""
    out, version = _out_dir(ctx, out, "classifier")
    _report(training.train_classifier(data, out, epochs=epochs, seed=seed, bands=_bands(bands), backbone=backbone,
                                      weights=weights, freeze=freeze, dense=dense, batch=batch, lr=lr,
                                      patience=patience, per_image=per_image, gain=gain, progress=True,
                                      time_limit_s=time_limit * 60 or None, version=version))


@train.command("change")
def train_change(
    ctx: typer.Context, data: Path = _DATA, out: Path = _OUT,
    init: str = typer.Option(None, "--init", help="Fine-tune this change model (a model directory or builtin:NAME, "
                             "e.g. builtin:oscd-change) instead of starting from scratch: its architecture, bands "
                             "and normalization, a lower learning rate and fewer, shorter epochs (see "
                             "docs/models.md). The new model.json names it as its parent."),
    arch: str = typer.Option(None, "--arch", help="features (the default: a small network over change "
                             "features, made to carry over to unseen places) or unet (early-fusion U-Net). "
                             "With --init: the parent's."),
    epochs: int = typer.Option(None, "--epochs", help=f"Default: 30 (features), 60 (unet), {finetune.EPOCHS} "
                               "(--init)."),
    seed: int = _SEED,
    bands: str = typer.Option(None, "--bands", help="Comma-separated bands per date. Default: B02,B03,B04,B08 "
                              "(features; the dataset's own bands when it has none of them, e.g. red, green, "
                              "blue); the 10 m and 20 m bands B02-B08, B8A, B11, B12 (unet); the parent's "
                              "(--init, which takes no other)."),
    city: list[str] = typer.Option([], "--city", help="Train on this city (repeatable). Default: every labelled city."),
    patch: int = typer.Option(None, "--patch", help=f"Training patch side, pixels. Default: 64; {finetune.PATCH} "
                              "(--init)."),
    steps: int = typer.Option(None, "--steps", help=f"Batches per epoch. Default: 50 (features), 60 (unet), "
                              f"{finetune.STEPS} (--init)."),
    batch: int = typer.Option(16, "--batch"),
    lr: float = typer.Option(None, "--lr", help=f"Adam learning rate. Default: 0.003 (features), 0.001 (unet), "
                             f"{finetune.LR:g} (--init)."),
    pos_weight: float = typer.Option(None, "--pos-weight", help="Weight of change pixels in the cross-entropy. "
                                     "Default: 3 (features, --init), 2 (unet)."),
    jitter: float = typer.Option(None, "--jitter", help="Random gain and offset (std) per band and date added to "
                                 "training patches. Default: 0.1 (features), 0 (unet), 0.05 (--init)."),
    patience: int = typer.Option(None, "--patience", help=f"Early-stopping patience, epochs. Default: 8 (features), "
                                 f"15 (unet), {finetune.PATIENCE} (--init)."),
    time_limit: float = typer.Option(25.0, "--time-limit", help="Stop after this many minutes, keeping the best "
                                     "epoch (0: none)."),
    swap: float = typer.Option(0.5, "--swap", help="features and --init: share of training patches whose dates "
                               "are swapped."),
    members: int = typer.Option(1, "--members", min=1, help="features: train this many networks (seeds SEED, "
                                "SEED+1, ...; the time limit shared between them) and keep their mean."),
    ema: float = typer.Option(EMA, "--ema", help="features: score and keep each epoch with a moving average of the "
                              "weights, this the weight of the past at every batch (0: the raw weights)."),
    base_filters: int = typer.Option(16, "--base-filters", help="unet: filters of the first U-Net level."),
    per_image: bool = typer.Option(True, "--per-image/--global", help="unet: standardize each image by its own band "
                                   "statistics first (robust to radiometric differences between dates and places), "
                                   "or only by the training data's. The features network always does."),
    shift: int = typer.Option(0, "--shift", min=0, help="unet: move the earlier date of half the training patches "
                              "by up to this many pixels (misregistration is no change)."),
    tta: bool = typer.Option(True, "--tta/--no-tta", help="unet: average the model's maps over the 8 flips and "
                             "rotations of its input at inference (8 times the work; the threshold is chosen that way)."),
) -> None:
    """Change model on before/after pairs (`monitor dataset oscd` or `monitor dataset feedback` layout), from
    scratch or fine-tuned from an existing model with --init; see docs/models.md."""
    out, version = _out_dir(ctx, out, "change")
    given = {"epochs": epochs, "steps_per_epoch": steps, "pos_weight": pos_weight, "jitter": jitter,
             "patience": patience, "patch": patch, "lr": lr}
    common: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    common.update(seed=seed, batch=batch, progress=True, time_limit_s=time_limit * 60 or None, version=version)
    if init is not None:
        if arch is not None or bands or city or members > 1 or ema != EMA:
            raise BadInput("--init keeps the parent's architecture and bands and trains on every site: drop "
                           "--arch, --bands, --city, --members and --ema", field="init")
        model_dir = finetune.fine_tune_change(data, out, init, swap=swap, **common)
        _report(model_dir)
        m = ModelMeta.read(model_dir).to_dict()
        v = m["metrics"]["validation"]
        typer.echo(f"fine-tuned from {m['parent']['model']} ({m['parent']['version']}); threshold from "
                   f"{m['training']['threshold_chosen_by']}; share of validation pixels flagged "
                   f"{v['parent']['positive_share']:.4f} (parent) -> {v['positive_share']:.4f}")
        return
    common.update(bands=_bands(bands), cities=city or None)
    if arch in (None, "features"):
        _report(train_change_features(data, out, swap=swap, members=members, ema=ema, **common))
    elif members > 1 or ema != EMA:
        raise BadInput("--members and --ema train the features network only", field="members" if members > 1
                       else "ema")
    elif arch == "unet":
        _report(training.train_change(data, out, base_filters=base_filters, per_image=per_image, shift=shift, tta=tta,
                                      **common))
    else:
        raise BadInput(f"must be features or unet, not {arch!r}", field="arch")


# ---------------------------------------------------------------- models

@models.command("list")
def models_list(ctx: typer.Context,
                register: bool = typer.Option(False, "--register", help="Register the model directories found "
                                              "under MONITOR_HOME/models that are not registered yet."),
                as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Registered models, model directories under MONITOR_HOME/models not registered yet, and the built-ins."""

    st = state(ctx)
    root = st.settings.models_dir
    found = sorted(p.parent.resolve() for p in root.glob("*/model.json")) if root.is_dir() else []
    with st.transaction() as session:
        known = {r.path for r in session.scalars(select(Model))}
        new = [d for d in found if str(d) not in known]
        if register:
            for d in new:
                register_model(session, d)
        rows = [{"id": r.id, "kind": r.kind, "version": r.version, "path": r.path, "registered": True,
                 "created_at": r.created_at, "threshold": (r.meta or {}).get("threshold")}
                for r in session.scalars(select(Model).order_by(Model.id))]
    if not register:
        for d in new:
            meta = ModelMeta.read(d).to_dict()
            rows.append({"id": None, "kind": meta["kind"], "version": meta["version"], "path": str(d),
                         "registered": False, "created_at": meta.get("created_at"), "threshold": meta.get("threshold")})
    registered = {r["path"] for r in rows}
    for name in builtins.names():
        ref = builtins.PREFIX + name
        if ref in registered:
            continue
        meta = ModelMeta.read(builtins.resolve(ref)).to_dict()
        rows.append({"id": None, "kind": meta["kind"], "version": meta["version"], "path": ref, "registered": False,
                     "created_at": meta.get("created_at"), "threshold": meta.get("threshold")})
    for r in rows:
        if builtins.is_builtin(r["path"]):
            meta = ModelMeta.read(builtins.resolve(r["path"])).to_dict()
            r["threshold_rule"] = meta.get("threshold_rule")
            r["scores"] = (meta.get("metrics") or {}).get("oscd_loco")
    if as_json:
        echo_json(rows)
        return
    if not rows:
        typer.echo(f"no models yet: train one with `monitor train ...` (directories under {root} are listed)")
        return
    typer.echo(table([(r["id"] or "-", r["kind"], r["version"], _threshold_text(r), _scores_text(r.get("scores")),
                       "yes" if r["registered"] else "no", r["path"]) for r in rows],
                     ["id", "kind", "version", "threshold", "scores", "registered", "path"]))


def _threshold_text(row: dict) -> str:
    rule = row.get("threshold_rule")
    if not rule:
        return str(row["threshold"])
    return rule["rule"] + "".join(f" {k}={v}" for k, v in rule.items() if k != "rule")


def _scores_text(s: dict | None) -> str:
    """A built-in's recorded scores: pooled F1 on leave-one-city-out OSCD."""
    if not s:
        return ""
    return f"OSCD LOCO pooled F1 {s['pooled']['f1']:.3f}"


@models.command("register")
def models_register(ctx: typer.Context, model_dir: Path = typer.Argument(..., help="Model directory.")) -> None:
    """Register a model directory (model.keras + model.json)."""
    with state(ctx).transaction() as session:
        row = register_model(session, model_dir)
        typer.echo(f"model {row.id}: {row.kind} {row.version} at {row.path}")


# ---------------------------------------------------------------- predict, evaluate

def predict(
    ctx: typer.Context,
    model: str = typer.Option(..., "--model", help="Model directory, or builtin:NAME (`monitor models list`)."),
    scene: Path = typer.Option(..., "--scene", help="GeoTIFF; bands are found by description (B02, ...), by "
                               "position when it has none."),
    before: Path = typer.Option(None, "--before", help="Earlier scene on the same grid (change models)."),
    out: Path = typer.Option(..., "--out", help="Probability GeoTIFF to write (float32, nodata -1)."),
    batch: int = typer.Option(None, "--batch", min=1, help="Windows per model call. Default: MONITOR_INFERENCE_BATCH."),
    window: int = typer.Option(None, "--window", min=16, help="Largest window side, pixels. Default: MONITOR_INFERENCE_WINDOW."),
    overlap: float = typer.Option(None, "--overlap", help="Window overlap, fraction of the model's tile. Default: "
                                  "MONITOR_INFERENCE_OVERLAP."),
    precision: str = typer.Option(None, "--precision", help="auto, float32, mixed or bfloat16. Default: "
                                  "MONITOR_INFERENCE_PRECISION."),
) -> None:
    """Probability raster of a scene on its own grid (one value per tile for a classifier)."""
    s = state(ctx).settings
    m = open_model(model, precision=_precision(precision, s))
    batch = batch or s.inference_batch
    if m.kind == ModelKind.CLASSIFIER:
        if before is not None:
            raise BadInput("a classifier takes one scene, not --before", field="before")
        _write_tile_grid(m, scene, out, batch)
    else:
        predict_raster(m, scene, out, before=before, progress=True, batch=batch, window=window or s.inference_window,
                       overlap=s.inference_overlap if overlap is None else overlap)
    if m.kind == ModelKind.CLASSIFIER:
        threshold = m.threshold
    else:
        threshold = raster_threshold(m, out)
    rule = f", rule {m.threshold_rule['rule']}" if m.threshold_rule else ""
    typer.echo(f"{m.kind} probability of {scene} written to {out} (model {m.version}, threshold {threshold:.4g}{rule})")


def _write_tile_grid(m: LoadedModel, scene: Path, out: Path, batch: int) -> None:

    grid, transform = classify_tiles(m, scene, batch=batch, progress=True)
    with rasterio.open(scene) as src:
        crs = src.crs
    out.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(out, "w", driver="GTiff", width=grid.shape[1], height=grid.shape[0], count=1,
                       dtype="float32", crs=crs, transform=transform, nodata=NODATA) as dst:
        dst.write(np.where(np.isnan(grid), NODATA, grid)[None].astype("float32"))
        dst.update_tags(model_version=m.version, model_kind=m.kind, threshold=str(m.threshold))


def evaluate(
    ctx: typer.Context,
    model: str = typer.Option(..., "--model", help="Model directory, or builtin:NAME (`monitor models list`)."),
    data: Path = typer.Option(..., "--data", help="Dataset folder of the model's kind."),
    split: str = typer.Option("validation", "--split", help="Tile datasets: train, validation or test (a part training never read)."),
    city: list[str] = typer.Option([], "--city", help="Change datasets: score this city (repeatable). Default: "
                                   "every labelled city."),
    window: int = typer.Option(None, "--window", min=16, help="Change datasets: inference window side, pixels. "
                               "Default: MONITOR_INFERENCE_WINDOW."),
    precision: str = typer.Option(None, "--precision", help="auto, float32, mixed or bfloat16. Default: "
                                  "MONITOR_INFERENCE_PRECISION."),
) -> None:
    """Precision, recall, F1 and IoU of the positive class as JSON (per city and pooled for change data)."""
    s = state(ctx).settings
    m = open_model(model, precision=_precision(precision, s))
    echo_json(run_evaluation(m, data, split=split, cities=city or None, batch=s.inference_batch, progress=True,
                  window=window or s.inference_window, overlap=s.inference_overlap))


def _precision(precision: str | None, settings: Settings) -> str:
    if precision is not None and precision not in INFERENCE_PRECISIONS:
        raise BadInput(f"must be one of {', '.join(INFERENCE_PRECISIONS)}, not {precision!r}", field="precision")
    return precision or settings.inference_precision
