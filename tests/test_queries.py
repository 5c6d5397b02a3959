"""The questions several parts ask the database, answered once (monitor.db.queries)."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.orm import Session

from monitor.db import queries
from monitor.db.tables import Scene

UTC = dt.timezone.utc


def test_an_imported_raster_is_never_a_before_image(engine):
    with Session(engine) as s, s.begin():
        area_id = s.execute(sa.text(
            "INSERT INTO areas (name, footprint, utm_epsg, cadence, providers, max_cloud) VALUES "
            "('a', ST_Multi(ST_MakeEnvelope(0, 0, 1, 1, 4326)), 32631, interval '5 days', ARRAY['local'], 20) "
            "RETURNING id")).scalar()

        def scene(day: int, provider: str, status: str = "processed", file: str | None = "/x.tif",
                  hour: int = 10) -> Scene:
            row = Scene(area_id=area_id, provider=provider, product_id=f"{provider}-{day}-{hour}", status=status,
                        acquired_at=dt.datetime(2024, 1, day, hour, tzinfo=UTC), file_path=file)
            s.add(row)
            s.flush()
            return row

        real = scene(1, "local")
        scene(2, "local", status="prepared")  # not processed
        imported = scene(3, "import")
        no_file = scene(4, "local", file=None)
        same_day = scene(5, "local")
        later = scene(5, "local", hour=18)
        # a change model compares with imagery of an earlier date: never an import, never the same day
        assert queries.before_image(s, later).id == real.id
        # the diff compares with every earlier processed date, imports included, newest first
        assert [x.id for x in queries.earlier_scenes(s, area_id, dt.date(2024, 1, 5))] == [
            no_file.id, imported.id, real.id]
        assert queries.scene_on(s, area_id, dt.date(2024, 1, 5)).id == later.id != same_day.id
