"""``monitor settings``: the settings in force (secrets masked)."""

from __future__ import annotations

import typer
from sqlalchemy.engine import make_url

from monitor.cli.common import echo_json, state


def show_settings(ctx: typer.Context) -> None:
    """Print every setting in force as JSON (secrets masked)."""
    s = state(ctx).settings
    out = {}
    for name in type(s).model_fields:
        value = getattr(s, name)
        if value is not None and ("password" in name or "secret" in name or name == "database_url"):
            value = "***" if name != "database_url" else _mask_url(str(value))
        out[name] = value
    echo_json(out)


def _mask_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "***"
