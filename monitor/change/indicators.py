"""Per area and date: built-up km2, informal-settlement km2 and the clear fraction of the area."""

from __future__ import annotations

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from monitor.db.queries import scene_date, sql
from monitor.db.tables import Area, Indicator, Scene
from monitor.metrics import Metrics, default_metrics


def record_indicators(session: Session, area: Area, scene: Scene, settlement_km2: float | None = None,
                      metrics: Metrics | None = None, settlement_carried_km2: float | None = None) -> Indicator:
    """Upsert the area's indicators for the scene's date: built-up km2 (its built detections),
    informal-settlement km2 and the part of it carried over from earlier dates under cloud (when
    given; earlier values are kept otherwise) and the clear fraction."""
    session.flush()
    day = scene_date(scene)
    row = session.execute(text(sql("indicators_upsert")),
                          dict(day=day, settlement=settlement_km2, carried=settlement_carried_km2,
                               aid=area.id, sid=scene.id)).scalar_one()
    indicator = session.scalars(select(Indicator).where(Indicator.id == row)
                                .execution_options(populate_existing=True)).one()
    newest = session.scalar(select(func.max(Indicator.observed_on)).where(Indicator.area_id == area.id))
    if newest == day:
        metrics = metrics or default_metrics()
        metrics.built_km2.labels(area=area.name).set(indicator.built_km2 or 0.0)
        if indicator.settlement_km2 is not None:
            metrics.settlement_km2.labels(area=area.name).set(indicator.settlement_km2)
            metrics.settlement_carried_km2.labels(area=area.name).set(indicator.settlement_carried_km2 or 0.0)
    return indicator
