"""The registry of model directories (``model.keras`` + ``model.json``): what areas name as their models.

Only the metadata is read (``monitor.domain.ModelMeta``, the same check ``load_model`` makes), so
registering a model needs no TensorFlow.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from monitor import builtins
from monitor.db.tables import Model
from monitor.domain import ModelMeta


def register_model(session: Session, model_dir: str | Path) -> Model:
    """Insert or refresh the row of a model directory or built-in (``builtin:<name>``), keyed by (kind, version).

    A built-in is recorded by its name, not by where the package is installed."""
    meta = ModelMeta.read(builtins.resolve(model_dir))
    path = builtins.reference(builtins.resolve(model_dir))
    row = session.scalar(select(Model).where(Model.kind == meta.kind, Model.version == meta.version))
    if row is None:
        row = Model(kind=str(meta.kind), version=meta.version, path=path, meta=meta.to_dict())
        session.add(row)
    else:
        row.path, row.meta = path, meta.to_dict()
    session.flush()
    return row
