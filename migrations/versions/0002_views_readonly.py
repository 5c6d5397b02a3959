"""views for psql/QGIS (parcel_history, area_indicators, open_alerts), the read-only role, alerts by parcel

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

ROLE = "monitor_reader"
# Marks a role this migration created, so that the downgrade never drops one a DBA made.
ROLE_COMMENT = "read-only access to the monitor views (created by the monitor schema)"
VIEWS = ("parcel_history", "area_indicators", "open_alerts")

PARCEL_HISTORY = """
CREATE VIEW parcel_history AS
WITH dates AS (
    SELECT DISTINCT ON (s.area_id, (s.acquired_at AT TIME ZONE 'UTC')::date)
           s.area_id, s.id AS scene_id, (s.acquired_at AT TIME ZONE 'UTC')::date AS observed_on, s.clear_geom
    FROM scenes s
    WHERE s.status = 'processed'
    ORDER BY s.area_id, (s.acquired_at AT TIME ZONE 'UTC')::date, s.acquired_at DESC, s.id DESC
)
SELECT p.id AS parcel_id,
       p.area_id,
       a.name AS area,
       p.external_id,
       d.observed_on,
       d.scene_id,
       CASE WHEN d.clear_geom IS NULL OR ST_Covers(d.clear_geom, p.geom) THEN true
            ELSE ST_Area(ST_Intersection(d.clear_geom, p.geom)) >= 0.99 * ST_Area(p.geom) END AS clear,
       COALESCE(b.built_m2, 0) AS built_m2,
       COALESCE(b.built_m2, 0) / NULLIF(p.area_m2, 0) AS built_fraction,
       COALESCE(n.new_m2, 0) AS new_m2,
       n.verdict,
       n.permit_id,
       n.alert_id,
       p.area_m2 AS parcel_m2,
       p.geom
FROM parcels p
JOIN areas a ON a.id = p.area_id
JOIN dates d ON d.area_id = p.area_id
LEFT JOIN LATERAL (
    SELECT sum(ST_Area(ST_Transform(
               CASE WHEN ST_Covers(p.geom, x.geom) THEN x.geom ELSE ST_Intersection(x.geom, p.geom) END,
               a.utm_epsg))) AS built_m2
    FROM detections x
    WHERE ST_Intersects(x.geom, p.geom) AND x.scene_id + 0 = d.scene_id AND x.kind = 'built'  -- GiST only
) b ON true
LEFT JOIN LATERAL (
    SELECT sum(pc.area_m2) AS new_m2, max(pc.verdict) AS verdict, max(pc.permit_id) AS permit_id,
           max(pc.alert_id) AS alert_id
    FROM parcel_changes pc
    JOIN changes c ON c.id = pc.change_id
    WHERE pc.parcel_id = p.id AND c.scene_id = d.scene_id
) n ON true
"""

AREA_INDICATORS = """
CREATE VIEW area_indicators AS
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
       COALESCE(al.raised, 0) AS alerts_raised
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

OPEN_ALERTS = """
CREATE VIEW open_alerts AS
SELECT al.id,
       a.name AS area,
       al.area_id,
       p.external_id AS parcel,
       al.parcel_id,
       al.first_seen,
       al.last_seen,
       al.new_area_m2,
       al.fraction,
       al.confidence,
       al.status,
       al.note,
       al.reviewed_by,
       al.reviewed_at,
       al.source,
       al.model_version,
       al.evidence,
       p.area_m2 AS parcel_m2,
       al.geom
FROM alerts al
JOIN areas a ON a.id = al.area_id
JOIN parcels p ON p.id = al.parcel_id
WHERE al.status IN ('new', 'acknowledged', 'confirmed')
"""


def upgrade() -> None:
    # The judge and the history look alerts up by parcel, closed ones included.
    op.create_index(op.f("ix_alerts_parcel_id"), "alerts", ["parcel_id"], unique=False)
    op.execute(PARCEL_HISTORY)
    op.execute(AREA_INDICATORS)
    op.execute(OPEN_ALERTS)
    # The role is server-wide: create it only where it is missing and this user may create roles.
    op.execute(f"""
    DO $$
    BEGIN
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{ROLE}') THEN
            IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = current_user AND (rolsuper OR rolcreaterole)) THEN
                CREATE ROLE {ROLE} NOLOGIN;
                COMMENT ON ROLE {ROLE} IS '{ROLE_COMMENT}';
            ELSE
                RAISE WARNING 'role {ROLE} is missing and % may not create roles; '
                              'ask an administrator for: CREATE ROLE {ROLE} NOLOGIN', current_user;
            END IF;
        END IF;
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{ROLE}') THEN
            GRANT USAGE ON SCHEMA public TO {ROLE};
            GRANT SELECT ON {', '.join(VIEWS)} TO {ROLE};
        END IF;
    END $$;
    """)


def downgrade() -> None:
    op.execute(f"""
    DO $$
    BEGIN
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{ROLE}') THEN
            REVOKE ALL ON {', '.join(VIEWS)} FROM {ROLE};
            REVOKE USAGE ON SCHEMA public FROM {ROLE};
        END IF;
    END $$;
    """)
    op.execute(f"DROP VIEW IF EXISTS {', '.join(reversed(VIEWS))}")
    op.drop_index(op.f("ix_alerts_parcel_id"), table_name="alerts")
    # Other databases of the same server may still grant to the role: then it stays.
    op.execute(f"""
    DO $$
    BEGIN
        IF EXISTS (SELECT 1 FROM pg_roles r JOIN pg_shdescription d ON d.objoid = r.oid
                   WHERE r.rolname = '{ROLE}' AND d.description = '{ROLE_COMMENT}') THEN
            BEGIN
                DROP ROLE {ROLE};
            EXCEPTION WHEN dependent_objects_still_exist OR insufficient_privilege THEN
                RAISE NOTICE 'role {ROLE} kept: other databases on this server still use it';
            END;
        END IF;
    END $$;
    """)
