"""settlements: the informal-settlement layer per date, its reader view, the carried-over share of
the settlement indicator

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from geoalchemy2 import Geometry

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

ROLE = "monitor_reader"

AREA_SETTLEMENTS = """
CREATE VIEW area_settlements AS
SELECT st.id,
       a.name AS area,
       st.area_id,
       st.observed_on,
       st.scene_id,
       st.area_m2,
       st.carried_m2,
       st.carried_m2 / NULLIF(st.area_m2, 0) AS carried_share,
       st.probability,
       st.model_version,
       st.geom
FROM settlements st
JOIN areas a ON a.id = st.area_id
"""

# area_indicators as revision 0002 made it, with the carried-over settlement km2 added last
AREA_INDICATORS = """
{verb} VIEW area_indicators AS
SELECT i.id,
       a.name AS area,
       i.area_id,
       i.observed_on,
       i.scene_id,
       i.built_km2,
       i.built_km2 - lag(i.built_km2) OVER (PARTITION BY i.area_id ORDER BY i.observed_on) AS built_km2_change,
       i.settlement_km2,
       i.clear_fraction,
       COALESCE(c.changes, 0) AS changes,
       COALESCE(c.new_m2, 0) AS new_m2,
       COALESCE(al.raised, 0) AS alerts_raised{extra}
FROM indicators i
JOIN areas a ON a.id = i.area_id
LEFT JOIN LATERAL (
    SELECT count(*) AS changes, sum(x.area_m2) AS new_m2
    FROM changes x WHERE x.area_id = i.area_id AND x.observed_on = i.observed_on
) c ON true
LEFT JOIN LATERAL (
    SELECT count(*) AS raised
    FROM alerts x WHERE x.area_id = i.area_id AND x.first_seen = i.observed_on
) al ON true
"""
CARRIED = ",\n       i.settlement_carried_km2"


def _grant(views: str) -> None:
    op.execute(f"""
    DO $$
    BEGIN
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{ROLE}') THEN
            GRANT SELECT ON {views} TO {ROLE};
        END IF;
    END $$;
    """)


def upgrade() -> None:
    op.add_column("indicators", sa.Column("settlement_carried_km2", sa.Float(), nullable=True))
    op.create_table(
        "settlements",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("area_id", sa.Integer(), nullable=False),
        sa.Column("scene_id", sa.BigInteger(), nullable=True),
        sa.Column("observed_on", sa.Date(), nullable=False),
        sa.Column("geom", Geometry(geometry_type="MULTIPOLYGON", srid=4326, spatial_index=False), nullable=False),
        sa.Column("area_m2", sa.Float(), nullable=False),
        sa.Column("carried_m2", sa.Float(), server_default=sa.text("0"), nullable=False),
        sa.Column("probability", sa.Float(), nullable=True),
        sa.Column("model_version", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(["area_id"], ["areas.id"], name=op.f("fk_settlements_area_id_areas"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["scene_id"], ["scenes.id"], name=op.f("fk_settlements_scene_id_scenes"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_settlements")),
    )
    op.create_index("ix_settlements_area_date", "settlements", ["area_id", "observed_on"], unique=False)
    op.create_index(op.f("ix_settlements_scene_id"), "settlements", ["scene_id"], unique=False)
    op.create_geospatial_index("idx_settlements_geom", "settlements", ["geom"], unique=False,
                               postgresql_using="gist", postgresql_ops={})
    op.execute(AREA_SETTLEMENTS)
    op.execute(AREA_INDICATORS.format(verb="CREATE OR REPLACE", extra=CARRIED))
    _grant("area_settlements, area_indicators")


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS area_settlements")
    op.execute("DROP VIEW area_indicators")
    op.execute(AREA_INDICATORS.format(verb="CREATE", extra=""))
    _grant("area_indicators")
    op.drop_geospatial_index("idx_settlements_geom", table_name="settlements", postgresql_using="gist",
                             column_name="geom")
    op.drop_index(op.f("ix_settlements_scene_id"), table_name="settlements")
    op.drop_index("ix_settlements_area_date", table_name="settlements")
    op.drop_table("settlements")
    op.drop_column("indicators", "settlement_carried_km2")
