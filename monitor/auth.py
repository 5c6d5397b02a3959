"""Bearer tokens of the HTTP API: random, shown once, stored as a SHA-256 hash.

Scopes: ``read`` (every GET) and ``write`` (changes; implies ``read``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from monitor.db.tables import ApiToken
from monitor.errors import BadInput, Conflict, NotFound

SCOPES = ("read", "write")
PREFIX = "mon_"


def hash_token(token: str) -> str:
    """The stored form of a token: its SHA-256, hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def scopes_for(scope: str) -> list[str]:
    """The scopes a token created with ``scope`` holds: write implies read."""
    if scope not in SCOPES:
        raise BadInput(f"unknown scope {scope!r}; use read or write", field="scope")
    return ["read", "write"] if scope == "write" else ["read"]


def create_token(session: Session, name: str, scope: str = "read") -> tuple[ApiToken, str]:
    """Make a token; returns its row and the token itself, which is stored nowhere."""
    name = name.strip()
    if not name:
        raise BadInput("a token needs a name", field="name")
    scopes = scopes_for(scope)
    if session.scalar(select(ApiToken.id).where(ApiToken.name == name, ApiToken.revoked_at.is_(None))):
        raise Conflict(f"an active token named {name!r} exists already (revoke it first)", field="name")
    token = PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(name=name, token_hash=hash_token(token), scopes=scopes)
    session.add(row)
    session.flush()
    return row, token


def verify_token(session: Session, token: str) -> ApiToken | None:
    """The active token row matching ``token``, or None."""
    if not token:
        return None
    return session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(token),
                                                 ApiToken.revoked_at.is_(None)))


def list_tokens(session: Session) -> list[ApiToken]:
    """Every token, revoked ones too, oldest first."""
    return list(session.scalars(select(ApiToken).order_by(ApiToken.id)))


def revoke_token(session: Session, name_or_id: str) -> int:
    """Revoke the active tokens named ``name_or_id`` (or with that id); returns how many."""
    query = select(ApiToken).where(ApiToken.revoked_at.is_(None))
    if name_or_id.isdigit() and int(name_or_id) < 2**31:
        query = query.where((ApiToken.name == name_or_id) | (ApiToken.id == int(name_or_id)))
    else:
        query = query.where(ApiToken.name == name_or_id)
    rows = list(session.scalars(query))
    if not rows:
        raise NotFound(f"no active token named {name_or_id!r} (see `monitor tokens list`)", field="token")
    now = session.scalar(select(func.now())) or dt.datetime.now(dt.timezone.utc)
    for row in rows:
        row.revoked_at = now
    session.flush()
    return len(rows)
