"""The ``sentinelsat`` provider: a Copernicus DHuS API (OpenSearch + OData) through sentinelsat.

Searches with the area's footprint, dates, platform, product type and cloud cover (sentinelsat
pages through the results); fetches a product after reading its OData record (size, MD5 or
SHA3-256 checksum, online flag). A product in the long-term archive gets a retrieval request
(HTTP 202) and is reported offline, to be fetched on a later run. Credentials come from settings
and are never logged.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import ClassVar

import requests
import shapely
from sentinelsat import SentinelAPI, geojson_to_wkt
from sentinelsat.exceptions import InvalidKeyError, LTAError, SentinelAPIError, UnauthorizedError
from shapely.geometry import mapping

from monitor.domain import Provider
from monitor.errors import ProductOffline, ProviderError
from monitor.imagery.base import AreaInfo, Candidate, Product, safe_name
from monitor.imagery.fetch import USER_AGENT, Downloaded, RetryPolicy, download
from monitor.imagery.prepare import safe_product
from monitor.metrics import Metrics
from monitor.settings import Settings
from monitor.urlpolicy import GuardedAdapter, UnsafeURL, same_origin

log = logging.getLogger(__name__)
MAX_WKT = 1500  # DHuS refuses long query strings; larger footprints are sent as their convex hull


class _TimeoutAdapter(GuardedAdapter):
    """Gives every request of a session a timeout (requests has no session-wide one); ``guard``:
    connects only to public addresses."""

    def __init__(self, timeout: float, guard: bool = False) -> None:
        super().__init__(guard=guard)
        self.timeout = timeout

    def send(self, request, **kwargs):
        kwargs["timeout"] = kwargs.get("timeout") or self.timeout
        return super().send(request, **kwargs)


def footprint_wkt(footprint) -> str:
    """The area as DHuS query WKT (4 decimals, as sentinelsat writes it)."""
    parts = list(getattr(footprint, "geoms", [footprint]))
    # DHuS takes one polygon: an area in several parts is sent as their hull (results are then
    # checked against the parts themselves)
    geom = parts[0] if len(parts) == 1 else shapely.convex_hull(footprint)
    wkt = geojson_to_wkt(mapping(geom))
    if len(wkt) > MAX_WKT:
        wkt = geojson_to_wkt(mapping(shapely.convex_hull(footprint).simplify(0.001)))
    return wkt


def _number(x: float):
    return int(x) if float(x).is_integer() else x


class SentinelsatProvider:
    """A DHuS API: the area's ``sentinelsat`` source, else ``MONITOR_DHUS_URL``. The DHuS user and
    password go only to the configured server: an area's source on another host is asked without
    them, and (unless MONITOR_ALLOW_PRIVATE_URLS) only at public addresses."""

    name: ClassVar[str] = Provider.SENTINELSAT
    windowed: ClassVar[bool] = True

    def __init__(self, settings: Settings, source: str | None = None, metrics: Metrics | None = None) -> None:
        url = source or settings.dhus_url
        configured = same_origin(url, settings.dhus_url)
        password = settings.dhus_password.get_secret_value() if settings.dhus_password and configured else None
        self.api = SentinelAPI(settings.dhus_user if configured else None, password, url,
                               show_progressbars=False, timeout=settings.http_timeout_s)
        self.api.session.headers["User-Agent"] = f"{USER_AGENT} {self.api.user_agent}"
        adapter = _TimeoutAdapter(settings.http_timeout_s, guard=not configured and not settings.allow_private_urls)
        self.api.session.mount("http://", adapter)
        self.api.session.mount("https://", adapter)
        self.platform = settings.dhus_platform
        self.product_type = settings.dhus_product_type
        self.policy = RetryPolicy.from_settings(settings)
        self.metrics = metrics

    @property
    def url(self) -> str:
        """The DHuS API's URL."""
        return self.api.api_url

    def _error(self, e: Exception, what: str) -> ProviderError:
        if isinstance(e, UnsafeURL):
            return ProviderError(f"{what}: {e}", provider=self.name)
        if isinstance(e, requests.Timeout):
            return ProviderError(f"{what} at {self.url} timed out", provider=self.name, retryable=True)
        if isinstance(e, requests.RequestException):
            return ProviderError(f"{what} at {self.url} failed: {type(e).__name__}", provider=self.name,
                                 retryable=True)
        response = getattr(e, "response", None)
        status = response.status_code if response is not None else None
        msg = (getattr(e, "msg", "") or str(e)).strip().splitlines()[0][:300]
        if isinstance(e, UnauthorizedError):
            return ProviderError(f"{what} at {self.url}: invalid user name or password (HTTP 401); set "
                                 "MONITOR_DHUS_USER and MONITOR_DHUS_PASSWORD", provider=self.name, status=401)
        if isinstance(e, InvalidKeyError):
            return ProviderError(f"{what}: no such product at {self.url} (HTTP {status or 404}): {msg}",
                                 provider=self.name, status=status or 404)
        if isinstance(e, LTAError):
            return ProductOffline(f"{what}: the archive refused a retrieval request: {msg}", provider=self.name,
                                  status=status, retryable=True)
        return ProviderError(f"{what} at {self.url} failed" + (f" (HTTP {status})" if status else "") + f": {msg}",
                             provider=self.name, status=status, retryable=status is None or status >= 500)

    def search(self, area: AreaInfo, since: dt.datetime, until: dt.datetime) -> list[Candidate]:
        """Products over the area in [since, until] within its cloud limit (OpenSearch, every page)."""
        keywords: dict = {}
        if self.platform:
            keywords["platformname"] = self.platform
        if self.product_type:
            keywords["producttype"] = self.product_type
        if area.max_cloud < 100:
            keywords["cloudcoverpercentage"] = (0, _number(area.max_cloud))
        utc = dt.timezone.utc
        try:
            products = self.api.query(area=footprint_wkt(area.footprint),
                                      date=(since.astimezone(utc), until.astimezone(utc)), **keywords)
        except (SentinelAPIError, requests.RequestException, UnsafeURL) as e:
            raise self._error(e, "search") from e
        out = []
        for uuid, p in products.items():
            cloud = p.get("cloudcoverpercentage")
            if cloud is not None and cloud > area.max_cloud:
                continue
            when = p.get("beginposition") or p.get("ingestiondate")
            footprint = shapely.from_wkt(p["footprint"]) if p.get("footprint") else None
            if footprint is not None and not footprint.intersects(area.footprint):
                continue
            out.append(Candidate(p.get("title") or uuid, when.replace(tzinfo=utc), footprint, cloud, {
                "uuid": uuid, "platform": p.get("platformname"), "product_type": p.get("producttype"),
                "size": p.get("size")}))
        return out

    def download(self, product_id: str, remote: dict, workdir: Path, progress: bool = False) -> Downloaded:
        """The product's zip in ``workdir``, verified against its OData size and checksum."""
        uuid = remote.get("uuid")
        if not uuid:
            raise ProviderError(f"{product_id} has no DHuS product uuid", provider=self.name)
        try:
            info = self.api.get_product_odata(uuid)
            if not info.get("Online", True) and self.api.trigger_offline_retrieval(uuid):
                raise ProductOffline(f"{product_id} is in the long-term archive; retrieval was requested",
                                     provider=self.name, status=202, retryable=True)
        except (SentinelAPIError, requests.RequestException, UnsafeURL) as e:
            raise self._error(e, "product info") from e
        checksum = next(((a, info[a]) for a in ("sha3-256", "md5") if info.get(a)), None)
        url = f"{self.url}odata/v1/Products('{uuid}')/$value"
        return download(url, Path(workdir) / f"{safe_name(info.get('title') or product_id)}.zip",
                        session=self.api.session, size=info.get("size"), checksum=checksum, policy=self.policy,
                        progress=progress, on_bytes=self._count)

    def fetch(self, product_id: str, remote: dict, bands: list[str], workdir: Path,
              progress: bool = False) -> Product:
        """Download and verify the product's SAFE zip and hand over its bands."""
        got = self.download(product_id, remote, workdir, progress)
        product = safe_product(got.path, bands)
        product.files = {got.path.name: {"size": got.size, **got.checksums, "verified_by": got.verified_by}}
        return product

    def _count(self, n: int) -> None:
        if self.metrics is not None:
            self.metrics.download_bytes.labels(self.name).inc(n)
