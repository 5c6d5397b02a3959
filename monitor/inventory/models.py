"""The registry of model directories (``model.keras`` + ``model.json``): what areas name as their models.

Only the metadata is read (``monitor.domain.ModelMeta``, the same check ``load_model`` makes), so
registering a model needs no TensorFlow.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from monitor.db.tables import Model
from monitor.domain import ModelMeta


def register_model(session: Session, model_dir: str | Path) -> Model:
    """Insert or refresh the row of a model directory, keyed by (kind, version)."""
    model_dir = Path(model_dir).resolve()
    meta = ModelMeta.read(model_dir)
    row = session.scalar(select(Model).where(Model.kind == meta.kind, Model.version == meta.version))
    if row is None:
        row = Model(kind=str(meta.kind), version=meta.version, path=str(model_dir), meta=meta.to_dict())
        session.add(row)
    else:
        row.path, row.meta = str(model_dir), meta.to_dict()
    session.flush()
    return row
