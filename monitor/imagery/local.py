"""The ``local`` provider: a drop folder of GeoTIFFs (very-high-resolution imagery, drone mosaics).

The product id is the file name; the acquisition date comes from the TIFF tags
(``ACQUISITIONDATETIME``, ``TIFFTAG_DATETIME``) or else the file name: ``MONITOR_LOCAL_DATE_PATTERN``
when set, then ``..._20180115.tif``, ``2018-01-15_....tif``, and last a month alone
(``global_monthly_2018_01_mosaic_....tif``, meaning its 1st); the footprint from the raster's bounds. Clouds are expected as nodata
or masked pixels. A file that is not a readable raster, or has no date, is reported and skipped.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from pathlib import Path
from typing import ClassVar

import rasterio
from rasterio.errors import RasterioError
from rasterio.warp import transform_bounds
from shapely.geometry import box

from monitor.domain import Provider
from monitor.errors import DownloadError, ProviderError
from monitor.imagery.base import AreaInfo, Candidate, Product
from monitor.imagery.fetch import copy_verified
from monitor.imagery.prepare import raster_bands
from monitor.metrics import Metrics
from monitor.settings import Settings

log = logging.getLogger(__name__)

SUFFIXES = (".tif", ".tiff")
_NAME_DATE = re.compile(r"(?<!\d)(\d{4})-?(\d{2})-?(\d{2})(?!\d)")
_NAME_MONTH = re.compile(r"(?<!\d)(?P<year>\d{4})[_-](?P<month>\d{2})(?!\d)")
_TAG_FORMATS = ("%Y:%m:%d %H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y/%m/%d %H:%M:%S")


def _parse_tag(value: str) -> dt.datetime | None:
    value = value.strip()
    for fmt in _TAG_FORMATS:
        try:
            return dt.datetime.strptime(value, fmt)
        except ValueError:
            pass
    try:
        return dt.datetime.fromisoformat(value)
    except ValueError:
        return None


def date_pattern(pattern: str | None) -> re.Pattern | None:
    """``MONITOR_LOCAL_DATE_PATTERN`` compiled; ProviderError when it is no regular expression with
    named groups ``year`` and ``month``."""
    if not pattern:
        return None
    try:
        compiled = re.compile(pattern)
    except re.error as e:
        raise ProviderError(f"MONITOR_LOCAL_DATE_PATTERN is not a regular expression: {e}", provider="local") from e
    if not {"year", "month"} <= set(compiled.groupindex):
        raise ProviderError("MONITOR_LOCAL_DATE_PATTERN needs the named groups (?P<year>...) and (?P<month>...)",
                            provider="local")
    return compiled


def _date(year: str, month: str, day: str | None) -> dt.datetime | None:
    try:
        d = dt.datetime(int(year), int(month), int(day or 1))
    except ValueError:
        return None
    return d if 1970 <= d.year <= 2100 else None


def date_from_name(name: str, pattern: re.Pattern | None = None) -> dt.datetime | None:
    """The acquisition date a file name carries, or None: ``pattern``'s groups year, month and day
    (the 1st without one), else ``..._20180115.tif`` or ``2018-01-15_....tif``, else a month alone
    (``..._2018_01_....tif``: the 1st of that month)."""
    for m in pattern.finditer(name) if pattern else ():
        if d := _date(m.group("year"), m.group("month"), m.groupdict().get("day")):
            return d
    for m in _NAME_DATE.finditer(name):
        if d := _date(m.group(1), m.group(2), m.group(3)):
            return d
    for m in _NAME_MONTH.finditer(name):
        if d := _date(m.group("year"), m.group("month"), None):
            return d
    return None


def acquisition_date(src, name: str, pattern: re.Pattern | None = None) -> dt.datetime | None:
    """From ACQUISITIONDATETIME (default or IMAGERY metadata domain), TIFFTAG_DATETIME, the name."""
    tags = {**src.tags(), **src.tags(ns="IMAGERY")}
    found = None
    for key in ("ACQUISITIONDATETIME", "TIFFTAG_DATETIME"):
        if tags.get(key) and (found := _parse_tag(tags[key])):
            break
    found = found or date_from_name(name, pattern)
    if found is None:
        return None
    return found.replace(tzinfo=dt.timezone.utc) if found.tzinfo is None else found.astimezone(dt.timezone.utc)


class LocalProvider:
    """GeoTIFFs in a folder: the area's ``local`` source, else ``MONITOR_LOCAL_DIR``."""

    name: ClassVar[str] = Provider.LOCAL
    windowed: ClassVar[bool] = False

    def __init__(self, settings: Settings, source: str | None = None, metrics: Metrics | None = None) -> None:
        folder = source or settings.local_dir
        self.folder = Path(folder).expanduser() if folder else None
        self.metrics = metrics
        self.pattern = settings.local_date_pattern

    def _report(self, area: AreaInfo, path: Path, reason: str, message: str) -> None:
        log.warning("local: skipping %s: %s", path, message)
        if self.metrics is not None:
            self.metrics.scenes_skipped.labels(area.name, self.name, reason).inc()

    def search(self, area: AreaInfo, since: dt.datetime, until: dt.datetime) -> list[Candidate]:
        """Every readable, dated GeoTIFF of the drop folder acquired in [since, until] over the area."""
        if self.folder is None:
            raise ProviderError("no drop folder: give the area --source local=DIR or set MONITOR_LOCAL_DIR",
                                provider=self.name)
        if not self.folder.is_dir():
            raise ProviderError(f"drop folder {self.folder} does not exist", provider=self.name)
        pattern = date_pattern(self.pattern)
        found = []
        for path in sorted(p for p in self.folder.iterdir() if p.suffix.lower() in SUFFIXES and p.is_file()):
            try:
                with rasterio.open(path) as src:
                    when = acquisition_date(src, path.name, pattern)
                    footprint = None
                    if src.crs is not None:
                        footprint = box(*transform_bounds(src.crs, "EPSG:4326", *src.bounds, densify_pts=21))
            except RasterioError as e:
                self._report(area, path, "unreadable", f"not a readable raster ({e})")
                continue
            if when is None:
                self._report(area, path, "no_date", "no acquisition date in its tags or file name")
                continue
            if not since <= when <= until:
                continue
            if footprint is not None and not footprint.intersects(area.footprint):
                continue
            stat = path.stat()
            found.append(Candidate(path.name, when, footprint, None,
                                   {"path": str(path.resolve()), "size": stat.st_size, "mtime": stat.st_mtime}))
        return found

    def fetch(self, product_id: str, remote: dict, bands: list[str], workdir: Path,
              progress: bool = False) -> Product:
        """Copy the file into ``workdir`` (checked) and hand over its bands."""
        src = Path(remote.get("path", ""))
        if not src.is_file():
            raise DownloadError(f"{product_id} is no longer in the drop folder ({src})")
        copied = copy_verified(src, Path(workdir) / src.name)
        return Product(raster_bands(copied.path, bands), scl=None, zero_is_nodata=False,
                       files={src.name: {"size": copied.size, **copied.checksums, "verified_by": copied.verified_by}})
