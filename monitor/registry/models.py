"""The registry of model directories (``model.keras`` + ``model.json``); reads metadata only."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from monitor.db.tables import Model
from monitor.errors import BadInput, NotFound

KINDS = ("segmenter", "classifier", "change")


def read_meta(model_dir: str | Path) -> dict:
    model_dir = Path(model_dir)
    meta_file = model_dir / "model.json"
    if not meta_file.exists():
        raise BadInput("is not a model directory (no model.json)", file=model_dir)
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as e:
        raise BadInput(f"is not valid JSON: {e}", file=meta_file) from e
    for key in ("kind", "version"):
        if not meta.get(key):
            raise BadInput(f"has no {key}", file=meta_file, field=key)
    if meta["kind"] not in KINDS:
        raise BadInput(f"kind {meta['kind']!r} is not one of {', '.join(KINDS)}", file=meta_file, field="kind")
    return meta


def register_model(session: Session, model_dir: str | Path) -> Model:
    """Insert or refresh the row of a model directory, keyed by (kind, version)."""
    model_dir = Path(model_dir).resolve()
    meta = read_meta(model_dir)
    row = session.scalar(select(Model).where(Model.kind == meta["kind"], Model.version == meta["version"]))
    if row is None:
        row = Model(kind=meta["kind"], version=meta["version"], path=str(model_dir), meta=meta)
        session.add(row)
    else:
        row.path, row.meta = str(model_dir), meta
    session.flush()
    return row


def get_model(session: Session, model_id: int) -> Model:
    row = session.get(Model, model_id)
    if row is None:
        raise NotFound(f"no model with id {model_id}")
    return row
