"""One exception root for the project.

Every error a user can cause or meet carries a message meant for that user.
``exit_code`` is what the ``monitor`` command exits with: 2 for bad input,
1 for anything else.
"""

from __future__ import annotations


class MonitorError(Exception):
    """Root of every error the project raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, **data: object) -> None:
        super().__init__(message)
        self.message = message
        self.data = data

    def __str__(self) -> str:
        return self.message


class BadInput(MonitorError):
    """The user gave something unusable: a file, a row, a field, an option."""

    exit_code = 2

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
        self.reason = message


class NotFound(BadInput):
    """A named thing (area, parcel, alert, model) does not exist."""


class Conflict(BadInput):
    """The request clashes with what is stored (a duplicate name, say)."""


class ConfigError(MonitorError):
    """Settings are missing or inconsistent."""

    exit_code = 2


class DatabaseError(MonitorError):
    """The database is unreachable, unmigrated or refused a statement."""


class ProviderError(MonitorError):
    """An imagery provider failed: network, HTTP status, bad response."""

    def __init__(self, message: str, *, provider: str = "", status: int | None = None,
                 retryable: bool = False, **data: object) -> None:
        super().__init__(f"{provider}: {message}" if provider else message,
                         provider=provider, status=status, **data)
        self.provider = provider
        self.status = status
        self.retryable = retryable


class ProductOffline(ProviderError):
    """The product is in long-term archive; retrieval was requested, try again later."""


class DownloadError(MonitorError):
    """A download failed or did not verify (size, checksum)."""


class ImageryError(MonitorError):
    """A raster could not be read or prepared (no CRS, corrupt, wrong bands)."""


class ModelError(MonitorError):
    """A model directory is missing, unreadable or does not fit the input."""
