"""The project's vocabulary and the rules that go with it, in one place.

Pure: no database, no HTTP, no TensorFlow. The names here are what the database stores (each
enum has a CHECK constraint, see ``monitor.db.tables``), what the CLI and the API accept and what
the webhooks send. The rules are the ones more than one entry point applies: the bbox of a query,
the cadence of an area, an area's specification, and a model directory's ``model.json``.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from monitor.errors import BadInput, is_transient
from monitor.urlpolicy import check_source

E = TypeVar("E", bound=StrEnum)


class ModelKind(StrEnum):
    """What a model directory holds."""

    SEGMENTER = "segmenter"  # one date -> built-up probability per pixel
    CLASSIFIER = "classifier"  # one tile -> settlement probability
    CHANGE = "change"  # two dates stacked band-wise -> change probability per pixel


class Provider(StrEnum):
    """Where a scene comes from. ``import`` marks a raster brought in by ``detections import``."""

    STAC = "stac"
    SENTINELSAT = "sentinelsat"
    LOCAL = "local"
    IMPORT = "import"


#: The providers an area may search, in the order the documentation lists them.
AREA_PROVIDERS: tuple[Provider, ...] = (Provider.STAC, Provider.SENTINELSAT, Provider.LOCAL)


class SceneStatus(StrEnum):
    """found -> prepared -> processed; or skipped (too cloudy, unusable), offline (retried later),
    failed; or suspect (processed, but too much of the area changed at once to trust: no alerts, and
    never the baseline of a later date)."""

    FOUND = "found"
    PREPARED = "prepared"
    PROCESSED = "processed"
    SUSPECT = "suspect"
    SKIPPED = "skipped"
    OFFLINE = "offline"
    FAILED = "failed"


class FailureKind(StrEnum):
    """Why a scene failed: transient (disk full, read-only or unwritable storage, database, network:
    retried with backoff) or permanent (a corrupt or unreadable file, bad input: not retried)."""

    TRANSIENT = "transient"
    PERMANENT = "permanent"

    @classmethod
    def of(cls, error: BaseException) -> FailureKind:
        """The kind of a failure (``monitor.errors.is_transient``)."""
        return cls.TRANSIENT if is_transient(error) else cls.PERMANENT


#: A scene in one of these states is done with acquisition; fetching it again changes nothing.
ACQUIRED_STATUSES: tuple[SceneStatus, ...] = (SceneStatus.PREPARED, SceneStatus.PROCESSED, SceneStatus.SKIPPED)


class AlertStatus(StrEnum):
    """An alert's review state."""

    NEW = "new"
    ACKNOWLEDGED = "acknowledged"
    CONFIRMED = "confirmed"
    DISMISSED = "dismissed"
    RESOLVED = "resolved"
    REVERTED = "reverted"  # the place looked as before again on a later clear date: a crop, ploughing


#: At most one alert of a parcel is in one of these states.
OPEN_ALERT_STATUSES: tuple[AlertStatus, ...] = (AlertStatus.NEW, AlertStatus.ACKNOWLEDGED, AlertStatus.CONFIRMED)


class Confidence(StrEnum):
    """How sure an alert is: probable when raised, confirmed when a later date still shows it."""

    PROBABLE = "probable"
    CONFIRMED = "confirmed"

    @property
    def rank(self) -> int:
        """Order of confidences: a subscription's minimum compares by it."""
        return list(Confidence).index(self)


class ChangeSource(StrEnum):
    """What found a change: the date-to-date diff of detections, a change model, or the growth of the
    settlement layer (areas with settlement alerts)."""

    DIFF = "diff"
    CHANGE_MODEL = "change_model"
    SETTLEMENT = "settlement"


class DetectionKind(StrEnum):
    """Detections are built-up polygons (the segmenter's); change polygons are stored as changes."""

    BUILT = "built"
    CHANGE = "change"


class Verdict(StrEnum):
    """How the new construction on a parcel was judged on a date."""

    PERMITTED = "permitted"
    ALERT = "alert"
    BELOW_THRESHOLD = "below_threshold"
    UNCONFIRMED = "unconfirmed"  # enough for an alert, held until a later date sees it again
    VANISHED = "vanished"  # held, and a later clear date no longer saw it built


class AlertEvent(StrEnum):
    """What happened to an alert: the webhook event names, and the ``event`` label of the metric."""

    CREATED = "alert.created"
    UPDATED = "alert.updated"
    ESCALATED = "alert.escalated"
    RESOLVED = "alert.resolved"
    REVERTED = "alert.reverted"

    @property
    def short(self) -> str:
        """``created``, ``updated``, ...: the name without the ``alert.`` prefix."""
        return self.value.split(".", 1)[1]


class RunStatus(StrEnum):
    """A pipeline run's outcome (and a step's)."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # stopped, killed or cut off from the database before it finished


class DeliveryStatus(StrEnum):
    """A webhook delivery: pending until it succeeds or every attempt failed."""

    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


def values(enum: Iterable[StrEnum]) -> list[str]:
    """The stored values of an enum (or a tuple of its members)."""
    return [str(member) for member in enum]


def parse_enum(enum: type[E], text: str, field: str) -> E:
    """``text`` as a member of ``enum``; a ``BadInput`` naming ``field`` and the known values otherwise."""
    try:
        return enum(text)
    except ValueError:
        raise BadInput(f"unknown {field} {text!r}; known: {', '.join(values(enum))}", field=field) from None


# --- bounding boxes

BBox = tuple[float, float, float, float]


def parse_bbox(value: str | Sequence[float] | None) -> BBox | None:
    """'minlon,minlat,maxlon,maxlat' (or a 4-sequence) -> a lon/lat box within -180..180, -90..90.

    None or an empty string is no box. Anything else that is not four finite numbers with
    min <= max inside those ranges is a ``BadInput`` on the field ``bbox``.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        box = tuple(float(p) for p in parts)
    except (TypeError, ValueError):
        box = ()
    if len(box) != 4 or not all(math.isfinite(v) for v in box):
        raise BadInput(f"{value!r} is not minlon,minlat,maxlon,maxlat", field="bbox")
    x0, y0, x1, y1 = box
    if not (-180 <= x0 <= x1 <= 180 and -90 <= y0 <= y1 <= 90):
        raise BadInput(f"{value!r} is not a box within -180..180, -90..90 with min <= max", field="bbox")
    return x0, y0, x1, y1


# --- durations and cadences

#: The shortest and longest cadence an area may have (the database checks the same range).
MIN_CADENCE = dt.timedelta(minutes=1)
MAX_CADENCE = dt.timedelta(days=366)
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([mhdw])\s*")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str) -> dt.timedelta:
    """'30m', '12h', '5d', '2w' -> a positive timedelta; ValueError otherwise."""
    m = _DURATION.fullmatch(text or "")
    if not m:
        raise ValueError(f"{text!r} is not a duration like 30m, 12h, 5d or 2w")
    try:
        delta = dt.timedelta(**{_UNITS[m.group(2)]: float(m.group(1))})
    except OverflowError as e:
        raise ValueError(f"{text!r} is too long a duration") from e
    if delta.total_seconds() <= 0:
        raise ValueError(f"{text!r} must be longer than zero")
    return delta


def format_duration(delta: dt.timedelta) -> str:
    """The shortest of '2w', '5d', '12h', '30m' that says ``delta`` exactly (else seconds, '90s')."""
    s = int(delta.total_seconds())
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if s % size == 0:
            return f"{s // size}{unit}"
    return f"{s}s"


def parse_cadence(text: str) -> dt.timedelta:
    """An area's cadence: a duration between ``MIN_CADENCE`` and ``MAX_CADENCE``; ``BadInput`` otherwise."""
    try:
        delta = parse_duration(text)
    except ValueError:
        raise BadInput(f"{text!r} is not a duration like 30m, 12h, 5d or 2w", field="cadence") from None
    if not MIN_CADENCE <= delta <= MAX_CADENCE:
        raise BadInput(f"{text!r} is not between {format_duration(MIN_CADENCE)} and 366 days", field="cadence")
    return delta


# --- areas

def parse_providers(text: str | Sequence[str]) -> tuple[Provider, ...]:
    """A provider order ('local,stac' or a list): known area providers, each once, at least one."""
    names = [p.strip() for p in (text.split(",") if isinstance(text, str) else text) if p.strip()]
    if not names:
        raise BadInput("names no provider", field="provider")
    known = values(AREA_PROVIDERS)
    for n in names:
        if n not in known:
            raise BadInput(f"unknown provider {n!r}; known: {', '.join(known)}", field="provider")
    if len(set(names)) != len(names):
        raise BadInput("names a provider twice", field="provider")
    return tuple(Provider(n) for n in names)


def parse_sources(items: Iterable[str] | Mapping[str, str], *, allow_private: bool = False) -> dict[str, str]:
    """Per-provider endpoints: 'PROVIDER=URL_OR_DIR' items (or a mapping) -> {provider: endpoint}, each
    checked by ``urlpolicy.check_source`` (public http(s) URLs; a folder for ``local``)."""
    pairs = items.items() if isinstance(items, Mapping) else [_source_item(i) for i in items]
    known = values(AREA_PROVIDERS)
    out: dict[str, str] = {}
    for name, value in pairs:
        if name not in known:
            raise BadInput(f"unknown provider {name!r} in {name}={value}", field="source")
        out[str(name)] = check_source(str(name), value, allow_private=allow_private)
    return out


def _source_item(item: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not sep or not value:
        raise BadInput(f"{item!r} is not PROVIDER=URL_OR_DIR", field="source")
    return name, value


def check_max_cloud(value: float) -> float:
    """A cloud/nodata limit: a percentage 0-100."""
    if not 0 <= value <= 100:
        raise BadInput(f"{value} is not a percentage 0-100", field="max-cloud")
    return float(value)


#: The pixel sizes an area may be prepared at, metres (the API's limit; finer or coarser is a typo).
MIN_RESOLUTION_M, MAX_RESOLUTION_M = 0.01, 10000.0
#: The largest area one area may cover, km2 (larger ones are split into several areas).
MAX_AREA_KM2 = 100_000.0


def check_resolution(value: float | None) -> float | None:
    """A pixel size in metres between ``MIN_RESOLUTION_M`` and ``MAX_RESOLUTION_M`` (None: the settings' default)."""
    if value is not None and not (math.isfinite(value) and MIN_RESOLUTION_M <= value <= MAX_RESOLUTION_M):
        raise BadInput(f"{value} is not a pixel size between {MIN_RESOLUTION_M:g} and {MAX_RESOLUTION_M:g} metres",
                       field="resolution")
    return value


#: A band of a drop-folder file that no model reads (an alpha or a spare band), in ``--band-order``.
SKIP_BAND = "-"
_BAND_NAME = re.compile(r"^(B\d[\dA]|SCL|-)$")


def parse_band_order(value: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """``--band-order B04,B03,B02,B08``: the Sentinel-2 name of each band of a file without band
    descriptions, in file order (``-`` for a band to ignore); None or empty: none given."""
    if value is None:
        return None
    names = [n.strip().upper() for n in (value.split(",") if isinstance(value, str) else value)]
    if not any(names):
        return None
    for n in names:
        if not _BAND_NAME.match(n):
            raise BadInput(f"{n!r} is not a Sentinel-2 band name (B01..B12, B8A) or '-'", field="band-order")
    named = [n for n in names if n != SKIP_BAND]
    if len(set(named)) != len(named):
        raise BadInput(f"names a band twice: {','.join(names)}", field="band-order")
    if not named:
        raise BadInput("names no band", field="band-order")
    return tuple(names)


#: A model runs on scenes whose pixels are at most this factor finer or coarser than its training data's.
RESOLUTION_TOLERANCE = 1.5


def resolution_fits(model_m: float | None, scene_m: float | None) -> bool:
    """Whether a model trained on ``model_m`` metre pixels may run on ``scene_m`` metre pixels
    (unknown on either side: it may)."""
    if not model_m or not scene_m:
        return True
    return max(model_m, scene_m) / min(model_m, scene_m) <= RESOLUTION_TOLERANCE


def check_area_name(name: str) -> str:
    """An area's name: not blank (surrounding white space is dropped), no NUL character."""
    name = (name or "").strip()
    if not name:
        raise BadInput("an area needs a name", field="name")
    if "\x00" in name:
        raise BadInput("must not contain a NUL character", field="name")
    return name


@dataclass(frozen=True)
class AreaSpec:
    """What a new area is, checked once: ``AreaSpec.parse`` is what the CLI and the API build."""

    name: str
    cadence: dt.timedelta
    providers: tuple[Provider, ...]
    max_cloud: float
    sources: dict[str, str] = field(default_factory=dict)
    resolution_m: float | None = None
    band_order: tuple[str, ...] | None = None
    allow_resolution_mismatch: bool = False

    @classmethod
    def parse(cls, name: str, *, cadence: str, providers: str | Sequence[str], max_cloud: float,
              sources: Iterable[str] | Mapping[str, str] = (), resolution_m: float | None = None,
              band_order: str | Sequence[str] | None = None, allow_resolution_mismatch: bool = False,
              allow_private_urls: bool = False) -> AreaSpec:
        """Check every field, raising ``BadInput`` naming the first one that is wrong."""
        return cls(name=check_area_name(name), cadence=parse_cadence(cadence), providers=parse_providers(providers),
                   max_cloud=check_max_cloud(max_cloud), sources=parse_sources(sources, allow_private=allow_private_urls),
                   resolution_m=check_resolution(resolution_m), band_order=parse_band_order(band_order),
                   allow_resolution_mismatch=bool(allow_resolution_mismatch))


# --- model metadata

MODEL_FILE = "model.keras"
META_FILE = "model.json"


@dataclass(frozen=True)
class ModelMeta:
    """A model directory's ``model.json``, checked: what training writes, the store loads and the
    model registry records.

    ``kind``, ``version``, ``bands`` (per date for a change model, whose input is before then after),
    ``normalization`` ({"mean", "std"} per input channel, optional "per_image"), ``tile`` and
    ``threshold`` are required; the rest (``resolution_m``, ``architecture``, ``inference``,
    ``training``, ``metrics``, ``created_at``, ...) is kept as it is in ``extra``.
    """

    kind: ModelKind
    version: str
    bands: tuple[str, ...]
    normalization: dict[str, Any]
    tile: int
    threshold: float
    extra: dict[str, Any] = field(default_factory=dict)

    REQUIRED = ("kind", "version", "bands", "normalization", "tile", "threshold")

    @property
    def input_bands(self) -> list[str]:
        """Names of the model's input channels: the bands, twice (before, after) for a change model."""
        return input_bands(self.kind, self.bands)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object ``model.json`` holds."""
        return {**self.extra, "kind": str(self.kind), "version": self.version, "bands": list(self.bands),
                "normalization": dict(self.normalization), "tile": self.tile, "threshold": self.threshold}

    @classmethod
    def from_dict(cls, meta: Mapping[str, Any], source: Path | str | None = None) -> ModelMeta:
        """Check a ``model.json`` object; ``source`` names the file in errors."""
        if not isinstance(meta, Mapping):
            raise BadInput("is not a JSON object", file=source)
        for key in cls.REQUIRED:
            if meta.get(key) in (None, ""):
                raise BadInput("lacks a required field", file=source, field=key)
        try:
            kind = ModelKind(meta["kind"])
        except ValueError:
            raise BadInput(f"kind {meta['kind']!r} is not one of {', '.join(values(ModelKind))}", file=source,
                           field="kind") from None
        bands = meta["bands"]
        if isinstance(bands, str) or not isinstance(bands, Sequence) or not bands:
            raise BadInput("must be a list of band names", file=source, field="bands")
        norm = meta["normalization"]
        n = len(input_bands(kind, bands))
        if not isinstance(norm, Mapping) or len(norm.get("mean") or []) != n or len(norm.get("std") or []) != n:
            raise BadInput(f"normalization must have {n} means and stds", file=source, field="normalization")
        try:
            tile, threshold = int(meta["tile"]), float(meta["threshold"])
        except (TypeError, ValueError):
            raise BadInput("tile and threshold must be numbers", file=source, field="tile") from None
        extra = {k: v for k, v in meta.items() if k not in cls.REQUIRED}
        return cls(kind, str(meta["version"]), tuple(str(b) for b in bands), dict(norm), tile, threshold, extra)

    @classmethod
    def read(cls, model_dir: str | Path) -> ModelMeta:
        """The checked ``model.json`` of a model directory, which must also hold ``model.keras``."""
        model_dir = Path(model_dir)
        meta_file = model_dir / META_FILE
        if not (model_dir / MODEL_FILE).is_file() or not meta_file.is_file():
            raise BadInput(f"is not a model directory (needs {MODEL_FILE} and {META_FILE})", file=model_dir)
        try:
            raw = json.loads(meta_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BadInput(f"is not valid JSON: {e}", file=meta_file) from e
        return cls.from_dict(raw, source=meta_file)


def input_bands(kind: str, bands: Sequence[str]) -> list[str]:
    """Input channels of a model of ``kind`` over ``bands``: before and after for a change model."""
    bands = list(bands)
    if kind == ModelKind.CHANGE:
        return [f"before:{b}" for b in bands] + [f"after:{b}" for b in bands]
    return bands
