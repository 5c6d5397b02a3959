"""``monitor settings``: the settings in force (secrets masked)."""

from __future__ import annotations

import typer

from monitor.cli.common import echo_json, state
from monitor.redact import MASK, redact


def show_settings(ctx: typer.Context) -> None:
    """Print every setting in force as JSON (secrets masked)."""
    s = state(ctx).settings
    out = {}
    for name in type(s).model_fields:
        value = getattr(s, name)
        if value is not None and ("password" in name or "secret" in name or "token" in name):
            value = MASK
        elif isinstance(value, str):
            value = redact(value)
        out[name] = value
    echo_json(out)
