"""The ``stac`` provider: Sentinel-2 L2A items from a STAC API through pystac-client.

Searches by the area's bounding box, a datetime range and the collection (default
``sentinel-2-l2a``), following every page; ``MONITOR_STAC_QUERY`` adds terms of the ``query``
extension and ``MONITOR_STAC_CLOUD_FILTER`` sends the cloud limit to servers that honour it.
Cloud cover and the area's footprint are always enforced here as well, since some servers ignore
filters they do not support. Band assets are found under the key conventions of Earth Search
(``blue``, ``nir``, ``scl``), Planetary Computer (``B02``, ``SCL``) and Copernicus Data Space
(``B02_10m``, ``SCL_20m``, with ``alternate.https`` hrefs) and downloaded in full.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlparse

import requests
from pystac import STACError
from pystac_client import Client
from pystac_client.exceptions import APIError
from pystac_client.stac_api_io import StacApiIO
from shapely.geometry import shape

from monitor.domain import Provider
from monitor.errors import ConfigError, ImageryError, ProviderError
from monitor.imagery.base import S2_BANDS, AreaInfo, Band, Candidate, Product
from monitor.imagery.fetch import USER_AGENT, RetryPolicy, download, new_session
from monitor.metrics import Metrics
from monitor.settings import Settings
from monitor.urlpolicy import guard_session, same_origin

log = logging.getLogger(__name__)

COMMON_NAMES = {"B01": "coastal", "B02": "blue", "B03": "green", "B04": "red", "B05": "rededge1",
                "B06": "rededge2", "B07": "rededge3", "B08": "nir", "B8A": "nir08", "B09": "nir09",
                "B11": "swir16", "B12": "swir22", "SCL": "scl"}
# Multihash codes of file:checksum (https://github.com/multiformats/multicodec).
MULTIHASH = {0x12: "sha256", 0x16: "sha3-256", 0xD5: "md5", 0x11: "sha1"}


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def decode_multihash(text: str | None) -> tuple[str, str] | None:
    """``file:checksum`` (hex multihash) -> (algorithm, hex digest), or None when unknown."""
    if not text or not re.fullmatch(r"[0-9a-fA-F]+", text):
        return None
    raw = bytes.fromhex(text)
    code, shift, i = 0, 0, 0
    while i < len(raw):  # unsigned varint
        code |= (raw[i] & 0x7F) << shift
        shift += 7
        i += 1
        if not raw[i - 1] & 0x80:
            break
    if i >= len(raw) or code not in MULTIHASH:
        return None
    length, digest = raw[i], raw[i + 1:]
    return (MULTIHASH[code], digest.hex()) if len(digest) == length else None


def _href(asset: dict) -> str | None:
    href = asset.get("href", "")
    if href.startswith(("http://", "https://")):
        return href
    alt = (asset.get("alternate") or {}).get("https", {}).get("href", "")
    return alt if alt.startswith(("http://", "https://")) else None


def band_assets(assets: dict[str, dict]) -> dict[str, dict]:
    """Band name (B02 ... B12, SCL) -> {href, size, checksum, resolution} of the finest usable asset."""
    out: dict[str, dict] = {}
    for band in (*S2_BANDS, "SCL"):
        options = []
        for key, asset in assets.items():
            m = re.fullmatch(rf"{band}(?:_(\d+)m)?", key, flags=re.I)
            named = key.lower() == COMMON_NAMES.get(band)
            eo = [b.get("name") for b in asset.get("eo:bands") or asset.get("bands") or []]
            if not (m or named or eo == [band]):
                continue
            href = _href(asset)
            if href:
                res = int(m.group(1)) if m and m.group(1) else int(asset.get("gsd") or 0)
                options.append((res, key, href, asset))
        if options:
            res, key, href, asset = min(options, key=lambda o: (o[0], o[1]))
            out[band] = {"key": key, "href": href, "size": asset.get("file:size"),
                         "checksum": decode_multihash(asset.get("file:checksum"))}
    return out


class StacProvider:
    """A STAC API: the area's ``stac`` source, else ``MONITOR_STAC_URL``."""

    name: ClassVar[str] = Provider.STAC
    windowed: ClassVar[bool] = True

    def __init__(self, settings: Settings, source: str | None = None, metrics: Metrics | None = None) -> None:
        self.url = source or settings.stac_url
        # an area's own catalogue (not the operator's) is connected to only at public addresses
        self.guard = bool(source) and not same_origin(self.url, settings.stac_url) and not settings.allow_private_urls
        self.collection = settings.stac_collection
        self.timeout = settings.http_timeout_s
        self.policy = RetryPolicy.from_settings(settings)
        self.cloud_filter = settings.stac_cloud_filter
        try:
            self.query = json.loads(settings.stac_query) if settings.stac_query else None
        except json.JSONDecodeError as e:
            raise ConfigError(f"MONITOR_STAC_QUERY is not JSON: {e}") from e
        self.metrics = metrics

    def _error(self, e: Exception, what: str) -> ProviderError:
        status = getattr(e, "status_code", None)
        if isinstance(e, requests.Timeout) or "timed out" in str(e).lower():
            return ProviderError(f"{what} at {self.url} timed out after {self.timeout:g}s", provider=self.name,
                                 retryable=True)
        message = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        return ProviderError(f"{what} at {self.url} failed" + (f" (HTTP {status})" if status else "")
                             + f": {message}", provider=self.name, status=status,
                             retryable=status is None or status >= 500)

    def search(self, area: AreaInfo, since: dt.datetime, until: dt.datetime) -> list[Candidate]:
        """Items of the collection over the area in [since, until] (every page), within its cloud limit."""
        query = dict(self.query or {})
        params: dict = {}
        if self.cloud_filter == "query":
            query["eo:cloud_cover"] = {"lte": area.max_cloud}
        elif self.cloud_filter == "cql2":
            params = {"filter": {"op": "<=", "args": [{"property": "eo:cloud_cover"}, area.max_cloud]},
                      "filter_lang": "cql2-json"}
        try:
            io = StacApiIO(headers={"User-Agent": USER_AGENT}, timeout=self.timeout)
            guard_session(io.session, guard=self.guard)
            client = Client.open(self.url, headers={"User-Agent": USER_AGENT}, timeout=self.timeout, stac_io=io)
            search = client.search(collections=[self.collection], bbox=list(area.footprint.bounds),
                                   datetime=f"{_iso(since)}/{_iso(until)}", query=query or None, **params)
            items = [item.to_dict(transform_hrefs=False) for item in search.items()]
        except (APIError, STACError, requests.RequestException, ValueError) as e:
            raise self._error(e, "search") from e
        return self.candidates(items, area)

    def candidates(self, items: list[dict], area: AreaInfo) -> list[Candidate]:
        """Items -> candidates, dropping those over the area's cloud limit or off its footprint."""
        out = []
        for item in items:
            props = item.get("properties", {})
            cloud = props.get("eo:cloud_cover")
            if cloud is not None and cloud > area.max_cloud:
                log.debug("stac: %s is %.1f%% cloudy, over %.1f%%", item["id"], cloud, area.max_cloud)
                continue
            footprint = shape(item["geometry"]) if item.get("geometry") else None
            if footprint is not None and not footprint.intersects(area.footprint):
                continue
            when = props.get("datetime") or props.get("start_datetime")
            acquired = dt.datetime.fromisoformat(when.replace("Z", "+00:00"))
            self_link = next((link["href"] for link in item.get("links", []) if link.get("rel") == "self"), None)
            out.append(Candidate(item["id"], acquired, footprint, cloud, {
                "collection": item.get("collection"), "item": self_link,
                "assets": band_assets(item.get("assets", {}))}))
        return out

    def fetch(self, product_id: str, remote: dict, bands: list[str], workdir: Path,
              progress: bool = False) -> Product:
        """Download and verify the band assets (and SCL) the area's models need."""
        assets = remote.get("assets") or {}
        missing = [b for b in bands if b not in assets]
        if missing:
            raise ImageryError(f"item {product_id} has no downloadable asset for band {', '.join(missing)}")
        session = new_session(guard=self.guard)
        files, paths = {}, {}
        for band in [*bands, *(["SCL"] if "SCL" in assets else [])]:
            a = assets[band]
            suffix = Path(urlparse(a["href"]).path).suffix or ".tif"
            got = download(a["href"], Path(workdir) / f"{band}{suffix}", session=session, size=a.get("size"),
                           checksum=tuple(a["checksum"]) if a.get("checksum") else None, policy=self.policy,
                           progress=progress, on_bytes=self._count)
            paths[band] = str(got.path)
            files[band] = {"size": got.size, **got.checksums, "verified_by": got.verified_by}
        return Product([Band(b, [paths[b]]) for b in bands],
                       scl=Band("SCL", [paths["SCL"]]) if "SCL" in paths else None, zero_is_nodata=True, files=files)

    def _count(self, n: int) -> None:
        if self.metrics is not None:
            self.metrics.download_bytes.labels(self.name).inc(n)
