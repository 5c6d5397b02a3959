"""The provider protocol and a lazy name -> class registry.

A provider finds products over an area (``search``) and fetches one product's raster files into
a work folder (``fetch``), verified. Providers know nothing of the database: the service records
what they find and prepares what they fetch.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol, runtime_checkable

from shapely.geometry.base import BaseGeometry

from monitor.domain import Provider as ProviderName
from monitor.errors import ConfigError
from monitor.metrics import Metrics
from monitor.settings import Settings

# Modules are imported on first use, so a provider's client library is only loaded when needed.
PROVIDERS: dict[str, str] = {  # every area provider of monitor.domain.AREA_PROVIDERS
    ProviderName.STAC: "monitor.imagery.stac:StacProvider",
    ProviderName.SENTINELSAT: "monitor.imagery.sentinelsat_:SentinelsatProvider",
    ProviderName.LOCAL: "monitor.imagery.local:LocalProvider",
}

# Sentinel-2 band names in their natural order.
S2_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
DEFAULT_BANDS = ("B02", "B03", "B04", "B08")


@dataclass(frozen=True)
class AreaInfo:
    """What a provider needs to know of an area."""

    id: int
    name: str
    footprint: BaseGeometry  # EPSG:4326
    max_cloud: float
    source: str | None = None  # the area's endpoint or folder for this provider (areas.sources)


@dataclass
class Candidate:
    """A product a search found. ``cloud_cover`` is the provider's whole-scene figure, if any."""

    product_id: str
    acquired_at: dt.datetime
    footprint: BaseGeometry | None = None
    cloud_cover: float | None = None
    remote: dict = field(default_factory=dict)


@dataclass
class Band:
    """One band to put on the area's grid: a GDAL-readable path (several for a multi-granule
    product) and the band's index in it."""

    name: str | None
    paths: list[str]
    index: int = 1


@dataclass
class Product:
    """What a fetch hands to preparation: the bands, the scene classification layer if there is
    one, whether 0 means nodata (Sentinel-2), and the verified files with their checksums."""

    bands: list[Band]
    scl: Band | None = None
    zero_is_nodata: bool = True
    files: dict[str, dict] = field(default_factory=dict)  # name -> {size, sha256, md5, verified_by}


@runtime_checkable
class Provider(Protocol):
    """What an imagery provider does: search an area, fetch a product."""

    name: ClassVar[str]
    # True for catalogues searched by date window; False for a drop folder, where every file not
    # yet recorded is new whatever its date (searched without a lower bound unless one is given).
    windowed: ClassVar[bool]

    def search(self, area: AreaInfo, since: dt.datetime, until: dt.datetime) -> list[Candidate]:
        """Products over the area acquired in [since, until], at most ``area.max_cloud`` % cloudy
        where the provider knows; raises ``ProviderError`` when the provider fails."""

    def fetch(self, product_id: str, remote: dict, bands: list[str], workdir: Path,
              progress: bool = False) -> Product:
        """Download and verify what preparation needs into ``workdir``. Raises ``ProductOffline``,
        ``ProviderError``, ``DownloadError`` or ``ImageryError``."""


def provider_class(name: str) -> type:
    """The provider class registered under ``name`` (its module imported on first use)."""
    try:
        target = PROVIDERS[name]
    except KeyError:
        raise ConfigError(f"unknown imagery provider {name!r}; known: {', '.join(PROVIDERS)}") from None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)


def get_provider(name: str, settings: Settings, area: AreaInfo | None = None,
                 metrics: Metrics | None = None) -> Provider:
    """An instance of the named provider, configured from settings and the area's source."""
    return provider_class(name)(settings, source=area.source if area else None, metrics=metrics)


def safe_name(text: str, limit: int = 120) -> str:
    """A file-name-safe form of a product id (without a raster or archive extension)."""
    text = re.sub(r"\.(tiff?|jp2|zip|safe)$", "", text, flags=re.I)
    text = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "product"
    if len(text) > limit:
        text = text[: limit - 9] + "_" + hashlib.sha1(text.encode()).hexdigest()[:8]
    return text


def band_sort_key(name: str):
    """Sort key of band names: Sentinel-2 order, then any other name."""
    return (S2_BANDS.index(name), name) if name in S2_BANDS else (len(S2_BANDS), name)
