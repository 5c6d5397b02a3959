"""Evidence chips by URL: ``GET /alerts/{id}/evidence/{before|after}.png``, rendered on the first
request and kept on disk (``monitor.alerts.evidence``).

A chip answers a bearer token with the read scope, as every route does, or a signed link, so that an
``<img>`` tag, a browser tab or QGIS can open it without sending a header. The API hands out signed
links wherever it shows an alert (its ``evidence`` property): each carries the id of the token that
asked, an expiry and an HMAC-SHA256 over the alert, the chip, the token id and the expiry, keyed by
that token's stored hash. A link therefore opens one chip, until it expires (one to one and a half
hours after it was made), and only while its token is active and can read: revoking the token ends its
links at once. The token itself never appears in a URL, a log or a Referer header.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from typing import Annotated, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import FileResponse
from fastapi.security import HTTPAuthorizationCredentials
from sqlalchemy import select

from monitor.alerts.evidence import available, evidence_chip
from monitor.api.deps import BigId, Principal, Reader, _bearer, _principal, require_read, tx
from monitor.db.tables import Alert, ApiToken
from monitor.errors import ImageryError, NotFound

log = logging.getLogger(__name__)
router = APIRouter()

TTL_S = 3600  # a link lives at least this long ...
STEP_S = 1800  # ... and at most this much longer: links made within one step are the same (browser caches)
ChipName = Literal["before", "after"]  # monitor.alerts.evidence.NAMES


def _signature(token_hash: str, alert_id: int, name: str, token_id: int, expires: int) -> str:
    message = f"evidence:{alert_id}:{name}:{token_id}:{expires}".encode()
    return hmac.new(bytes.fromhex(token_hash), message, hashlib.sha256).hexdigest()


def sign_evidence(request: Request, who: Principal, features: list[dict]) -> list[dict]:
    """Replace the API paths in the features' ``evidence`` properties by links signed for ``who``."""
    if not any(f["properties"].get("evidence") for f in features):
        return features
    with tx(request) as s:
        token_hash = s.scalar(select(ApiToken.token_hash).where(ApiToken.id == who.token_id))
    if token_hash is None:
        raise HTTPException(401, "invalid or revoked token", headers={"WWW-Authenticate": "Bearer"})
    expires = (int(time.time()) // STEP_S + 1) * STEP_S + TTL_S
    for f in features:
        props = f["properties"]
        props["evidence"] = {name: _link(request, token_hash, props["id"], name, who.token_id, expires)
                             for name in props.get("evidence") or {}}
    return features


def _link(request: Request, token_hash: str, alert_id: int, name: str, token_id: int, expires: int) -> str:
    query = urlencode({"token": token_id, "expires": expires,
                       "sig": _signature(token_hash, alert_id, name, token_id, expires)})
    return f"{request.url_for('evidence_png', alert_id=alert_id, name=name)}?{query}"


def _caller(request: Request, alert_id: int, name: str,
            creds: HTTPAuthorizationCredentials | None, token: int | None, expires: int | None,
            sig: str | None) -> None:
    """Let in a bearer token with the read scope, or a valid signed link."""
    if token is None and expires is None and sig is None:
        require_read(_principal(request, creds))
        return
    if token is None or expires is None or sig is None:
        raise HTTPException(403, "a signed evidence link needs token, expires and sig")
    if expires < time.time():
        raise HTTPException(403, "this evidence link has expired: ask the API for the alert again for a fresh one")
    if expires > time.time() + TTL_S + STEP_S:
        raise HTTPException(403, "this evidence link is not valid")
    with tx(request) as s:
        row = s.scalar(select(ApiToken).where(ApiToken.id == token, ApiToken.revoked_at.is_(None)))
        valid = (row is not None and "read" in row.scopes
                 and hmac.compare_digest(_signature(row.token_hash, alert_id, name, token, expires), sig))
    if not valid:
        raise HTTPException(403, "this evidence link is not valid (its token may have been revoked)")


@router.get("/alerts/{alert_id}/evidence", tags=["alerts"], summary="Signed links to an alert's evidence chips")
def list_evidence(request: Request, alert_id: BigId, who: Reader) -> dict[str, str]:
    """``{"before": url, "after": url}``: the chips the alert can have (a scene with a file to draw them
    from), as links signed for the calling token that open without a header."""
    with tx(request) as s:
        alert = s.get(Alert, alert_id)
        if alert is None:
            raise NotFound(f"no alert with id {alert_id}", field="id")
        names = available(s, [alert])[alert.id]
    feature = {"properties": {"id": alert_id, "evidence": dict.fromkeys(names, "")}}
    return sign_evidence(request, who, [feature])[0]["properties"]["evidence"]


@router.get("/alerts/{alert_id}/evidence/{name}.png", tags=["alerts"],
            summary="One evidence chip (PNG), rendered on the first request",
            response_class=FileResponse, responses={200: {"content": {"image/png": {}}}})
def evidence_png(request: Request, alert_id: BigId, name: ChipName,
                 creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
                 token: Annotated[int | None, Query(ge=1, le=2**63 - 1, description="Signed link: token id.")] = None,
                 expires: Annotated[int | None, Query(ge=0, le=2**40, description="Signed link: expiry "
                                                      "(Unix seconds).")] = None,
                 sig: Annotated[str | None, Query(pattern=r"^[0-9a-f]{64}$", description="Signed link: "
                                                  "signature.")] = None) -> FileResponse:
    """The chip ``before`` (the newest scene before the alert was first seen) or ``after`` (the scene of
    the date it was last seen): true colour where the bands are named B04, B03, B02, parcel (yellow) and
    new construction (red) outlined, parcel id and both dates printed, a scale bar, no-data hatched.
    Needs a bearer token with the read scope or the signed link the API gives in ``evidence``."""
    _caller(request, alert_id, name, creds, token, expires, sig)
    with tx(request) as s:
        alert = s.get(Alert, alert_id)
        if alert is None:
            raise NotFound(f"no alert with id {alert_id}", field="id")
        try:
            path = evidence_chip(s, alert, name, request.app.state.settings)
        except ImageryError as e:
            log.warning("evidence chip %s of alert %s: %s", name, alert_id, e)
            raise NotFound(f"the scene file of alert {alert_id}'s {name} chip cannot be read on the server",
                           field="name") from None
    return FileResponse(path, media_type="image/png", filename=f"alert-{alert_id}-{name}.png",
                        content_disposition_type="inline", headers={"Cache-Control": "private, max-age=3600"})
