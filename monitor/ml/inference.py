"""Tiled inference: overlapping windows, batched through one compiled call, blended without seams.

Scenes are read and written in strips of rows, so memory depends on the scene's width and the
window size, not on its height. Probability rasters are float32 on exactly the input's grid, with
nodata -1 where any input band had no data. A pixel is positive where its probability is above the
model's threshold.
"""

from __future__ import annotations

import functools
import logging
import math
import secrets
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window
from tqdm import tqdm

from monitor import builtins
from monitor.domain import ModelKind, ModelMeta, resolution_fits
from monitor.errors import BadInput, ModelError
from monitor.ml import scores
from monitor.ml.modelstore import LoadedModel, cva_model, image_stats, open_model
from monitor.ml.rasters import band_indexes, open_raster, pixel_size_m, same_grid, valid_mask
from monitor.ml.tiling import blend_weights, starts

log = logging.getLogger(__name__)

NODATA = -1.0
GDAL_CACHE_MB = 128
DEFAULT_WINDOW = 512  # MONITOR_INFERENCE_WINDOW

# read(row0, nrows) -> (normalized (nrows, W, C) float32, valid (nrows, W) bool)
Reader = Callable[[int, int], tuple[np.ndarray, np.ndarray]]
# write(row0, probabilities (nrows, W) float32 with NODATA where invalid)
Writer = Callable[[int, np.ndarray], None]


def window_plan(model: LoadedModel, height: int, width: int, window: int | None = None,
                overlap: float = 0.25) -> tuple[int, int]:
    """(side, margin) of the inference windows of ``model`` over a ``height`` x ``width`` scene.

    Neighbouring windows overlap by ``margin`` = ``overlap`` of the model's tile: the border a window
    sees with too little context depends on the network, not on the window. Windows are at most
    ``window`` pixels square (default: the model's tile) and never smaller than the model's tile; within
    that, the side is the smallest that covers the scene's longer side with as few windows as ``window``
    would need, so that no window hangs mostly over its neighbour. Rounded up to a multiple of 2**depth.
    """
    if model.kind == ModelKind.CLASSIFIER:
        raise ModelError(f"{model.path}: a classifier gives one value per tile; use classify_tiles")
    if not 0 <= overlap < 1:
        raise BadInput(f"overlap must be in [0, 1), not {overlap}", field="overlap")
    if window is not None and window < 1:
        raise BadInput(f"window must be positive, not {window}", field="window")
    step, margin = 2 ** model.depth, int(round(overlap * model.tile))
    longest, want = max(height, width), max(model.tile, window or model.tile)
    n = max(1, math.ceil((longest - margin) / (want - margin)))  # windows along the longer side
    side = max(model.tile, math.ceil((longest + (n - 1) * margin) / n))
    return math.ceil(side / step) * step, margin


def count_windows(model: LoadedModel, height: int, width: int, window: int | None = None,
                  overlap: float = 0.25) -> int:
    """How many windows the engine runs over a ``height`` x ``width`` scene (before skipping empty ones)."""
    side, margin = window_plan(model, height, width, window, overlap)
    return len(starts(height, side, side - margin)) * len(starts(width, side, side - margin))


def _pad_to(a: np.ndarray, rows: int, cols: int, mode: str = "symmetric") -> np.ndarray:
    pr, pc = rows - a.shape[0], cols - a.shape[1]
    if pr <= 0 and pc <= 0:
        return a
    widths = [(0, max(pr, 0)), (0, max(pc, 0))] + [(0, 0)] * (a.ndim - 2)
    return np.pad(a, widths, mode=mode) if mode != "constant" else np.pad(a, widths)  # type: ignore[call-overload]


def run_tiled(model: LoadedModel, height: int, width: int, read: Reader, write: Writer, *, window: int | None = None,
              overlap: float = 0.25, batch: int = 4, progress: bool = False) -> None:
    """The engine: windows of ``window_plan`` through the model, overlapping, blended.

    A call to the model takes ``batch`` windows. Window rows are processed in groups big enough to fill a call; a strip of rows is written as soon
    as no later window can touch it, so only one group of rows is held in memory (two while the next
    group is read ahead). Reading and writing run in threads of their own, beside the model.
    """
    tile, margin = window_plan(model, height, width, window, overlap)
    stride = tile - margin
    weights = blend_weights(tile, margin)
    rows, cols = starts(height, tile, stride), starts(width, tile, stride)
    per_group = max(1, math.ceil(batch / len(cols)))
    groups = [rows[i:i + per_group] for i in range(0, len(rows), per_group)]
    spans = [(g[0], min(g[-1] + tile, height)) for g in groups]
    buf_h = max(g[-1] + tile - g[0] for g in groups)
    wp = max(width, tile)
    acc = np.zeros((buf_h, wp), np.float32)
    wsum = np.zeros((buf_h, wp), np.float32)
    valid_buf = np.zeros((buf_h, wp), bool)
    top = 0  # scene row of the buffer's first row
    writes: list[Future] = []

    def flush(upto: int) -> None:
        nonlocal top
        n = upto - top
        if n <= 0:
            return
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(valid_buf[:n] & (wsum[:n] > 0), acc[:n] / wsum[:n], NODATA)[:, :width]
        writes.append(writer.submit(write, top, out.astype(np.float32)))
        for a in (acc, wsum, valid_buf):
            a[:-n] = a[n:].copy()
            a[-n:] = 0
        top = upto

    bar = tqdm(total=len(rows) * len(cols), unit="window", disable=not progress, desc="predict")
    with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as writer:
        ahead = reader.submit(read, spans[0][0], spans[0][1] - spans[0][0])
        for k, group in enumerate(groups):
            x, valid = ahead.result()
            if k + 1 < len(groups):
                ahead = reader.submit(read, spans[k + 1][0], spans[k + 1][1] - spans[k + 1][0])
            flush(group[0])
            r0, r1 = spans[k]
            x[~valid] = 0.0
            need = group[-1] + tile - r0
            x, valid = _pad_to(x, need, wp), _pad_to(valid, need, wp, mode="constant")
            valid_buf[: r1 - r0] = valid[: r1 - r0]
            todo = [(r - r0, c) for r in group for c in cols if valid[r - r0:r - r0 + tile, c:c + tile].any()]
            bar.update(len(group) * len(cols) - len(todo))
            for i in range(0, len(todo), batch):
                chunk = todo[i:i + batch]
                probs = model(np.stack([x[r:r + tile, c:c + tile] for r, c in chunk]))
                for (r, c), p in zip(chunk, probs):
                    acc[r:r + tile, c:c + tile] += p * weights
                    wsum[r:r + tile, c:c + tile] += weights
                bar.update(len(chunk))
            while writes and writes[0].done():
                writes.pop(0).result()  # a failed write stops the run here
        flush(height)
        for w in writes:
            w.result()
    bar.close()


def predict_array(model: LoadedModel, array_hwc: np.ndarray, nodata_mask: np.ndarray | None = None, *,
                  window: int | None = DEFAULT_WINDOW, overlap: float = 0.25, batch: int = 4) -> np.ndarray:
    """Probabilities (H, W) float32 of raw band values (H, W, C) in the model's input order.

    For a change model C is the before bands then the after bands. ``nodata_mask`` (H, W) is True
    where there is no data; those pixels come out as -1.
    """
    a = np.asarray(array_hwc)
    if a.ndim != 3 or a.shape[2] != model.channels:
        raise BadInput(f"array of shape {a.shape} does not fit a model of {model.channels} input channels")
    valid = np.all(np.isfinite(a), axis=2) if np.issubdtype(a.dtype, np.floating) else np.ones(a.shape[:2], bool)
    if nodata_mask is not None:
        valid &= ~np.asarray(nodata_mask, bool)
    out = np.empty(a.shape[:2], np.float32)
    stats = image_stats(a, valid) if model.per_image else None

    def read(r0: int, n: int):
        return model.normalize(a[r0:r0 + n], stats), valid[r0:r0 + n]

    def write(r0: int, p: np.ndarray):
        out[r0:r0 + p.shape[0]] = p

    run_tiled(model, a.shape[0], a.shape[1], read, write, window=window, overlap=overlap, batch=batch)
    return out


def rule_reference(model: LoadedModel, array_hwc: np.ndarray, nodata_mask: np.ndarray | None = None, *,
                   window: int | None = DEFAULT_WINDOW) -> np.ndarray | None:
    """The map the model's threshold rule reads beside the model's own, from the same input
    (``predict_array``'s): the pair's change-vector map for a ``cva_share`` rule; None for other rules."""
    if not scores.needs_reference(model.threshold_rule):
        return None
    return predict_array(_reference_model(tuple(model.bands)), array_hwc, nodata_mask, window=window)


@functools.lru_cache(maxsize=8)
def _reference_model(bands: tuple[str, ...]) -> LoadedModel:
    """The change-vector model a ``cva_share`` rule reads, one per band list (built once)."""
    return cva_model(list(bands))


def _raster_stats(srcs, idx, max_side: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Per-band statistics of whole rasters, from a decimated read (bounded memory)."""
    means, stds = [], []
    for s, ix in zip(srcs, idx):
        f = max(1, math.ceil(max(s.height, s.width) / max_side))
        d = s.read(ix, out_shape=(len(ix), math.ceil(s.height / f), math.ceil(s.width / f)),
                   resampling=rasterio.enums.Resampling.nearest)
        m, sd = image_stats(np.moveaxis(d, 0, -1), valid_mask(s, d))
        means.append(m)
        stds.append(sd)
    return np.concatenate(means), np.concatenate(stds)


def _check_resolution(model: LoadedModel, src) -> None:
    want, have = model.meta.get("resolution_m"), pixel_size_m(src)
    if want and have and abs(have - want) / want > 0.2:
        log.warning("%s has %.2f m pixels but model %s was trained at %.2f m", src.name, have, model.version, want)


def predict_raster(model: LoadedModel, scene: Path, out: Path, before: Path | None = None, progress: bool = False,
                   batch: int = 4, overlap: float = 0.25, window: int | None = DEFAULT_WINDOW) -> Path:
    """Probability GeoTIFF (float32, nodata -1) of ``scene`` on exactly its grid.

    A change model needs ``before``, a scene of the same grid from the earlier date. Bands are taken
    by description (B02, ...), by position from files without band descriptions.
    """
    scene, out = Path(scene), Path(out)
    if model.kind == ModelKind.CHANGE and before is None:
        raise BadInput(f"model {model.version} is a change model: give the earlier scene with --before", field="before")
    if model.kind != ModelKind.CHANGE and before is not None:
        raise BadInput(f"model {model.version} is a {model.kind}, it takes one scene, not --before", field="before")
    srcs = [open_raster(before)] if before is not None else []
    srcs.append(open_raster(scene))
    try:
        if len(srcs) == 2 and not same_grid(srcs[0], srcs[1]):
            raise BadInput(f"is not on the grid of {scene} (CRS, size and transform must match)", file=before)
        idx = [band_indexes(s, model.bands) for s in srcs]
        _check_resolution(model, srcs[-1])
        ref = srcs[-1]
        height, width = ref.height, ref.width
        stats = _raster_stats(srcs, idx) if model.per_image else None

        def reader(m: LoadedModel) -> Reader:
            def read(r0: int, n: int):
                parts, valid = [], np.ones((n, width), bool)
                for s, ix in zip(srcs, idx):
                    d = s.read(ix, window=Window(0, r0, width, n))
                    valid &= valid_mask(s, d)
                    parts.append(np.moveaxis(d, 0, -1))
                return m.normalize(np.concatenate(parts, axis=-1), stats), valid
            return read

        profile = {"driver": "GTiff", "width": width, "height": height, "count": 1, "dtype": "float32",
                   "crs": ref.crs, "transform": ref.transform, "nodata": NODATA, "compress": "deflate",
                   "predictor": 3, "BIGTIFF": "IF_SAFER"}
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.{secrets.token_hex(3)}.tmp")
        try:
            # GDAL's block cache would otherwise grow to 5 % of RAM over a large scene
            with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), rasterio.open(tmp, "w", **profile) as dst:
                dst.set_band_description(1, f"{model.kind} probability")
                dst.update_tags(model_version=model.version, model_kind=model.kind, threshold=str(model.threshold))

                def write(r0: int, p: np.ndarray):
                    dst.write(p[None], window=Window(0, r0, width, p.shape[0]))

                run_tiled(model, height, width, reader(model), write, window=window, overlap=overlap, batch=batch,
                          progress=progress)
                if scores.needs_reference(model.threshold_rule):
                    cva = _reference_model(tuple(model.bands))
                    ref = np.empty((height, width), np.float32)

                    def keep(r0: int, p: np.ndarray):
                        ref[r0:r0 + p.shape[0]] = p

                    run_tiled(cva, height, width, reader(cva), keep, window=window, overlap=overlap, batch=batch)
                    share = scores.reference_share(model.threshold_rule, ref, ref != NODATA)  # type: ignore[arg-type]
                    dst.update_tags(positive_share=repr(share))
            tmp.replace(out)
        finally:
            tmp.unlink(missing_ok=True)
    finally:
        for s in srcs:
            s.close()
    return out


def default_change_model(ref: str | Path | None, scene: Path, precision: str = "auto") -> LoadedModel | None:
    """The change model ``ref`` (``MONITOR_DEFAULT_CHANGE_MODEL``) for a scene of an area that names none:
    used only when the scene's pixel size is within 1.5x of the model's ``resolution_m`` and the scene has
    every band it reads (RGB imagery gets none from a model that needs near infrared), else None."""
    if not ref or not Path(scene).is_file():
        return None
    meta = ModelMeta.read(builtins.resolve(ref))
    want = meta.extra.get("resolution_m")
    try:  # an unreadable scene fails in inference, as with any model
        with open_raster(scene) as src:
            have = pixel_size_m(src)
            band_indexes(src, list(meta.bands))
    except BadInput:
        return None
    if not want or not have or not resolution_fits(want, have):
        return None
    return open_model(ref, precision=precision)


def raster_threshold(model: LoadedModel, raster: Path) -> float:
    """The threshold of a probability raster ``predict_raster`` wrote with ``model``: the model's fixed
    threshold, or its per-scene rule (``LoadedModel.threshold_for``) over the raster's valid pixels; for a
    ``cva_share`` rule the top share ``predict_raster`` recorded in the raster's ``positive_share`` tag."""
    if model.threshold_rule is None:
        return model.threshold
    with open_raster(raster) as src:
        p = src.read(1)
        share = src.tags().get("positive_share")
    if not scores.needs_reference(model.threshold_rule):
        return model.threshold_for(p, p != NODATA)
    if share is None:
        raise ModelError(f"{raster} has no positive_share tag, which model {model.version}'s "
                         f"{model.threshold_rule['rule']} rule needs: predict it again")
    return scores.scene_threshold(p, p != NODATA, {"rule": "top_quantile", "q": float(share)})


def classify_tiles(model: LoadedModel, scene: Path, *, batch: int = 32, min_valid: float = 0.5, span: int = 1,
                   progress: bool = False) -> tuple[np.ndarray, Affine]:
    """Settlement probability of tiles of ``scene``: a (rows, cols) float32 grid and its transform.

    A tile covers ``tile`` model pixels; when the model records its training resolution and the scene's
    differs, a tile covers the same ground as a training tile and is resampled to the model's input.
    Tiles start every 1/``span`` of a tile: cell ``(r, c)`` of the grid holds the tile whose top-left
    corner is the cell's, and a tile covers ``span`` x ``span`` cells (``span`` 1: side by side, 2:
    each overlapping its neighbours by half). Tiles run past the scene's right and bottom edges; a
    tile with less than ``min_valid`` of its pixels holding data is NaN.
    """
    if span < 1:
        raise BadInput(f"span must be at least 1, not {span}", field="span")
    if model.kind != ModelKind.CLASSIFIER:
        raise ModelError(f"{model.path}: classify_tiles needs a classifier, not a {model.kind} model")
    tile = model.tile
    with open_raster(scene) as src:
        ix = band_indexes(src, model.bands)
        stats = _raster_stats([src], [ix]) if model.per_image else None
        have, want = pixel_size_m(src), model.meta.get("resolution_m")
        ground = tile * want / have if have and want else tile  # scene pixels of a tile's side
        stride = max(1, int(round(ground / span)))
        step = stride * span
        ny, nx = math.ceil(src.height / stride), math.ceil(src.width / stride)
        grid = np.full((ny, nx), np.nan, np.float32)
        bar = tqdm(total=ny * nx, unit="tile", disable=not progress, desc="classify")
        pending: list[tuple[tuple[int, int], np.ndarray]] = []

        def run() -> None:
            probs = model(np.stack([x for _, x in pending]))
            for ((r, c), _), p in zip(pending, probs):
                grid[r, c] = p
            bar.update(len(pending))
            pending.clear()

        # one read per row of tiles: a strip a tile high, resampled to the model's pixels
        strip_px = (nx - 1) * stride + step
        scale = tile / step
        strip_w = int(round((nx - 1) * stride * scale)) + tile  # the last tile's offset, plus a tile
        inside_w = min(strip_w, int(round(src.width * scale)))
        for r in range(ny):
            d = src.read(ix, window=Window(0, r * stride, strip_px, step), out_shape=(len(ix), tile, strip_w),
                         boundless=True, fill_value=src.nodata if src.nodata is not None else 0,
                         resampling=rasterio.enums.Resampling.bilinear)
            inside = np.zeros((tile, strip_w), bool)
            inside[:min(tile, int(round((src.height - r * stride) * scale))), :inside_w] = True
            valid = valid_mask(src, d) & inside
            x = model.normalize(np.moveaxis(d, 0, -1), stats)
            x[~valid] = 0.0
            for c in range(nx):
                ox = int(round(c * stride * scale))
                if valid[:, ox:ox + tile].mean() < min_valid:
                    bar.update(1)
                    continue
                pending.append(((r, c), x[:, ox:ox + tile]))
                if len(pending) == batch:
                    run()
        if pending:
            run()
        bar.close()
        transform = src.transform @ Affine.scale(stride)
    return grid, transform
