"""What the routes share: bearer-token auth, one transaction per request, uploads, input types."""

from __future__ import annotations

import contextlib
import csv
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path as FsPath
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Query, Request, UploadFile
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from monitor.auth import verify_token
from monitor.db.engine import transaction
from monitor.errors import BadInput

# PostgreSQL text cannot hold NUL; refusing it here turns a database error into a precise 422.
NO_NUL = r"^[^\x00]*$"
# A name: no NUL anywhere and not blank (``\S`` alone would match a NUL).
NAME_PATTERN = r"^[^\x00]*[^\x00\s][^\x00]*$"
Name = Annotated[str, Path(min_length=1, max_length=200, pattern=NO_NUL, description="Area name.")]
ExternalId = Annotated[str, Path(min_length=1, max_length=500, pattern=NO_NUL, description="Cadastral parcel id.")]
BigId = Annotated[int, Path(ge=1, le=2**63 - 1)]
Limit = Annotated[int, Query(ge=1, le=10000, description="At most this many items.")]
Offset = Annotated[int, Query(ge=0, le=2**62, description="Skip this many items.")]
BboxQuery = Annotated[str | None, Query(max_length=200, pattern=NO_NUL,
                                        description="minlon,minlat,maxlon,maxlat (EPSG:4326).",
                                        examples=["-58.5,-34.7,-58.3,-34.5"])]


@dataclass(frozen=True)
class Principal:
    """Who called: the token's name, scopes and id."""

    name: str
    scopes: frozenset[str]
    token_id: int = 0


_bearer = HTTPBearer(auto_error=False, description="A token made by `monitor tokens create NAME --scope read|write`.")


def engine(request: Request) -> Engine:
    """The application's database engine."""
    return request.app.state.engine


@contextlib.contextmanager
def tx(request: Request) -> Iterator[Session]:
    """One transaction for a request: everything it writes is committed together or not at all."""
    with transaction(engine(request)) as session:
        yield session


def _principal(request: Request,
               creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Principal:
    unauthorized = {"WWW-Authenticate": "Bearer"}
    if creds is None or creds.scheme.lower() != "bearer":
        raise HTTPException(401, "missing bearer token (Authorization: Bearer <token>)", headers=unauthorized)
    with tx(request) as s:
        row = verify_token(s, creds.credentials)
        if row is None:
            raise HTTPException(401, "invalid or revoked token", headers=unauthorized)
        return Principal(row.name, frozenset(row.scopes), row.id)


def _require(scope: str):
    def check(principal: Annotated[Principal, Depends(_principal)]) -> Principal:
        if scope not in principal.scopes:
            raise HTTPException(403, f"token {principal.name!r} lacks the {scope!r} scope")
        return principal

    check.__name__ = f"require_{scope}"
    return check


require_read = _require("read")
require_write = _require("write")
Reader = Annotated[Principal, Depends(require_read)]
Writer = Annotated[Principal, Depends(require_write)]


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


@contextlib.contextmanager
def upload_path(upload: UploadFile, field: str = "file") -> Iterator[FsPath]:
    """The uploaded file written to a private temporary folder, under its own (sanitized) name,
    so that readers recognise its format. Errors naming the temporary path name the upload."""
    original = FsPath(upload.filename or "upload").name
    safe = _SAFE.sub("_", original).strip("._") or "upload"
    with tempfile.TemporaryDirectory(prefix="monitor-upload-") as tmp:
        path = FsPath(tmp) / safe[-120:]
        with open(path, "wb") as out:
            shutil.copyfileobj(upload.file, out)
        try:
            yield path
        except BadInput as e:
            if e.data.get("file") is not None and str(e.data["file"]).startswith(tmp):
                raise BadInput(e.detail, file=original, row=e.data.get("row"), field=e.field) from e
            raise
        except (UnicodeDecodeError, ValueError, csv.Error) as e:
            # Readers meant for text files meet binary or oddly encoded uploads here.
            raise BadInput(f"cannot be read: {e}", file=original, field=field) from e
