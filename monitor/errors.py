"""One exception root for the project.

Every error a user can cause or meet carries a message meant for that user. What each kind of
error means to the entry points is said once, as class attributes (as pygeoapi's exceptions do):
``exit_code`` is what the ``monitor`` command exits with (2 for bad input, 1 for anything else),
``http_status`` what the API answers, and ``reason`` the label a failed scene is counted under
in the metrics. ``is_transient`` tells a failure worth trying again later (storage, database,
network) from one that will fail the same way every time (a corrupt file, bad input).
"""

from __future__ import annotations

import errno
import os

import requests
from sqlalchemy import exc as sa_exc


class MonitorError(Exception):
    """Root of every error the project raises on purpose."""

    exit_code = 1
    http_status = 500
    reason = "error"
    #: Whether this kind of failure may go away by itself (``is_transient``).
    transient = False
    #: Whether an HTTP status of a remote server (``status`` in the data) names the failure better.
    labelled_by_status = False

    def __init__(self, message: str, **data: object) -> None:
        super().__init__(message)
        self.message = message
        self.data = data

    def __str__(self) -> str:
        return self.message

    @property
    def label(self) -> str:
        """The metric label of this failure: ``reason``, or ``http_<status>`` for a remote's HTTP error."""
        status = self.data.get("status")
        return f"http_{status}" if self.labelled_by_status and status else self.reason


class BadInput(MonitorError):
    """The user gave something unusable: a file, a row, a field, an option."""

    exit_code = 2
    http_status = 422
    reason = "bad_input"

    def __init__(self, message: str, *, file: object | None = None, row: object | None = None,
                 field: str | None = None, **data: object) -> None:
        where = []
        if file is not None:
            where.append(str(file))
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field {field!r}")
        full = f"{': '.join([', '.join(where), message]) if where else message}"
        super().__init__(full, file=file, row=row, field=field, **data)
        self.detail = message
        self.field = field


class NotFound(BadInput):
    """A named thing (area, parcel, alert, model) does not exist."""

    http_status = 404
    reason = "not_found"


class Conflict(BadInput):
    """The request clashes with what is stored (a duplicate name, say)."""

    http_status = 409
    reason = "conflict"


class ConfigError(MonitorError):
    """Settings are missing or inconsistent."""

    exit_code = 2
    reason = "config"


class DatabaseError(MonitorError):
    """The database is unreachable, unmigrated or refused a statement."""

    http_status = 503
    reason = "database"
    transient = True


class ProviderError(MonitorError):
    """An imagery provider failed: network, HTTP status, bad response."""

    reason = "provider"
    labelled_by_status = True

    def __init__(self, message: str, *, provider: str = "", status: int | None = None,
                 retryable: bool = False, **data: object) -> None:
        super().__init__(f"{provider}: {message}" if provider else message,
                         provider=provider, status=status, **data)
        self.provider = provider
        self.status = status
        self.retryable = retryable


class ProductOffline(ProviderError):
    """The product is in long-term archive; retrieval was requested, try again later."""

    reason = "offline"
    labelled_by_status = False


class DownloadError(MonitorError):
    """A download failed or did not verify (size, checksum)."""

    reason = "download"
    labelled_by_status = True


class SizeMismatch(DownloadError):
    """A downloaded file is not as long as announced (truncated, or the wrong file)."""

    reason = "size"
    labelled_by_status = False


class ChecksumMismatch(DownloadError):
    """A downloaded file's checksum differs from the provider's."""

    reason = "checksum"
    labelled_by_status = False


class ImageryError(MonitorError):
    """A raster could not be read or prepared (no CRS, corrupt, wrong bands)."""

    reason = "imagery"


class NoCRS(ImageryError):
    """A raster has no coordinate reference system: it cannot be put on an area's grid."""

    reason = "no_crs"


class SceneTooLarge(ImageryError):
    """A raster whose header declares more pixels than a scene of its area may hold (checked before reading)."""

    reason = "too_large"


class UnnamedBands(ImageryError):
    """A drop-folder raster whose bands carry no names, for an area with no band order."""

    reason = "band_order"


class ModelError(MonitorError):
    """A model directory is missing, unreadable or does not fit the input."""

    reason = "model"


class ModelMismatch(ModelError):
    """A model made for other imagery (another resolution, other bands) than the scene's."""

    reason = "model_mismatch"


#: OS errors of the storage or the network that go away once an operator or the network acts: a full
#: disk or quota, a read-only or unwritable MONITOR_HOME, an I/O error, a refused or lost connection.
TRANSIENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO,
                              errno.EAGAIN, errno.ETIMEDOUT, errno.ECONNREFUSED, errno.ECONNRESET,
                              errno.ECONNABORTED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN})
# GDAL reports them as text only ("...: Read-only file system"), and a write that failed on a full
# disk as "Write failed" or "Write error" without the cause: storage, not the data written.
_TRANSIENT_TEXTS = (*(os.strerror(n) for n in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES)),
                    "Write failed", "Write error")


def _transient_one(e: BaseException) -> bool:
    if isinstance(e, MonitorError):
        status = e.data.get("status")
        if isinstance(status, int):
            return status >= 500 or status == 429
        return e.transient or bool(e.data.get("retryable"))
    if isinstance(e, sa_exc.OperationalError | sa_exc.InterfaceError | sa_exc.DisconnectionError):
        return True
    if isinstance(e, requests.HTTPError):
        return e.response is not None and (e.response.status_code >= 500 or e.response.status_code == 429)
    if isinstance(e, requests.ConnectionError | requests.Timeout | ConnectionError | TimeoutError):
        return True
    if isinstance(e, OSError):
        return e.errno in TRANSIENT_ERRNOS or any(t in str(e) for t in _TRANSIENT_TEXTS)
    return False


def is_transient(e: BaseException) -> bool:
    """Whether a failure may go away by itself, so that trying again later makes sense: full or
    read-only storage, permissions, the database, the network, timeouts and HTTP 5xx (or 429), here
    or in what caused it. Anything else (a corrupt file, bad input, a model that does not fit) fails
    the same way every time."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if _transient_one(cur):
            return True
        cur = cur.__cause__ or (None if cur.__suppress_context__ else cur.__context__)
    return False
