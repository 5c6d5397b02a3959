"""parcel imports recorded and earlier versions of changed parcels kept (parcel_imports,
parcel_versions, parcels.import_id); the area_parcel_versions view for psql, QGIS and the reader role

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from geoalchemy2 import Geometry
from sqlalchemy.dialects import postgresql

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

ROLE = "monitor_reader"
MPOLY = "geometry(MultiPolygon, 4326)"

# Every version of every parcel: the earlier ones kept by imports, and the current one (valid_to NULL).
# import_id: the import that wrote the version; replaced_by: the import that replaced it.
AREA_PARCEL_VERSIONS = f"""
CREATE VIEW area_parcel_versions AS
SELECT a.name AS area,
       v.area_id,
       v.parcel_id,
       v.external_id,
       v.id AS version_id,
       v.valid_from,
       v.valid_to,
       v.written_by AS import_id,
       v.import_id AS replaced_by,
       v.area_m2,
       v.attributes,
       v.geom::{MPOLY} AS geom
FROM parcel_versions v
JOIN areas a ON a.id = v.area_id
UNION ALL
SELECT a.name,
       p.area_id,
       p.id,
       p.external_id,
       NULL,
       p.updated_at,
       NULL,
       p.import_id,
       NULL,
       p.area_m2,
       p.attributes,
       p.geom::{MPOLY}
FROM parcels p
JOIN areas a ON a.id = p.area_id
"""


def upgrade() -> None:
    op.create_table(
        "parcel_imports",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("area_id", sa.Integer(), nullable=False),
        sa.Column("file", sa.Text(), nullable=False),
        sa.Column("new", sa.Integer(), nullable=False),
        sa.Column("changed", sa.Integer(), nullable=False),
        sa.Column("unchanged", sa.Integer(), nullable=False),
        sa.Column("imported_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("undone_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["area_id"], ["areas.id"], name=op.f("fk_parcel_imports_area_id_areas"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_parcel_imports")),
    )
    op.create_index(op.f("ix_parcel_imports_area_id"), "parcel_imports", ["area_id"], unique=False)
    op.add_column("parcels", sa.Column("import_id", sa.Integer(), nullable=True))
    op.create_foreign_key(op.f("fk_parcels_import_id_parcel_imports"), "parcels", "parcel_imports",
                          ["import_id"], ["id"], ondelete="SET NULL")
    op.create_table(
        "parcel_versions",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("parcel_id", sa.BigInteger(), nullable=False),
        sa.Column("area_id", sa.Integer(), nullable=False),
        sa.Column("external_id", sa.Text(), nullable=False),
        sa.Column("geom", Geometry(geometry_type="MULTIPOLYGON", srid=4326, spatial_index=False), nullable=False),
        sa.Column("area_m2", sa.Float(), nullable=False),
        sa.Column("attributes", postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"),
                  nullable=False),
        sa.Column("valid_from", sa.DateTime(timezone=True), nullable=False),
        sa.Column("valid_to", sa.DateTime(timezone=True), nullable=False),
        sa.Column("import_id", sa.Integer(), nullable=False),
        sa.Column("written_by", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["area_id"], ["areas.id"], name=op.f("fk_parcel_versions_area_id_areas"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["import_id"], ["parcel_imports.id"],
                                name=op.f("fk_parcel_versions_import_id_parcel_imports"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["parcel_id"], ["parcels.id"], name=op.f("fk_parcel_versions_parcel_id_parcels"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["written_by"], ["parcel_imports.id"],
                                name=op.f("fk_parcel_versions_written_by_parcel_imports"), ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_parcel_versions")),
    )
    op.create_index("ix_parcel_versions_area_external", "parcel_versions", ["area_id", "external_id"], unique=False)
    op.create_index(op.f("ix_parcel_versions_parcel_id"), "parcel_versions", ["parcel_id"], unique=False)
    op.create_index(op.f("ix_parcel_versions_import_id"), "parcel_versions", ["import_id"], unique=False)
    op.create_geospatial_index("idx_parcel_versions_geom", "parcel_versions", ["geom"], unique=False,
                               postgresql_using="gist", postgresql_ops={})
    op.execute(AREA_PARCEL_VERSIONS)
    op.execute(f"""
    DO $$
    BEGIN
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{ROLE}') THEN
            GRANT SELECT ON area_parcel_versions TO {ROLE};
        END IF;
    END $$;
    """)


def downgrade() -> None:
    op.execute("DROP VIEW area_parcel_versions")
    op.drop_geospatial_index("idx_parcel_versions_geom", table_name="parcel_versions", postgresql_using="gist",
                             column_name="geom")
    op.drop_table("parcel_versions")
    op.drop_constraint(op.f("fk_parcels_import_id_parcel_imports"), "parcels", type_="foreignkey")
    op.drop_column("parcels", "import_id")
    op.drop_index(op.f("ix_parcel_imports_area_id"), table_name="parcel_imports")
    op.drop_table("parcel_imports")
