"""views for QGIS of every layer (area_parcels, area_detections, area_changes, scene_footprints);
permits named by their own number in parcel_history; open_alerts without stored evidence paths

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

ROLE = "monitor_reader"
NEW_VIEWS = ("area_parcels", "area_detections", "area_changes", "scene_footprints")
MPOLY = "geometry(MultiPolygon, 4326)"

# parcel_history as 0002 made it, but permit_id is the permit's own number (permits.permit_number,
# as in the permits file and the API), not the table's internal id.
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
    SELECT sum(pc.area_m2) AS new_m2, max(pc.verdict) AS verdict, max(pm.permit_number) AS permit_id,
           max(pc.alert_id) AS alert_id
    FROM parcel_changes pc
    JOIN changes c ON c.id = pc.change_id
    LEFT JOIN permits pm ON pm.id = pc.permit_id
    WHERE pc.parcel_id = p.id AND c.scene_id = d.scene_id
) n ON true
"""

# open_alerts as 0002 made it, less the evidence column (server paths; chips are now linked by URL).
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
       p.area_m2 AS parcel_m2,
       al.geom
FROM alerts al
JOIN areas a ON a.id = al.area_id
JOIN parcels p ON p.id = al.parcel_id
WHERE al.status IN ('new', 'acknowledged', 'confirmed')
"""

AREA_PARCELS = f"""
CREATE VIEW area_parcels AS
SELECT p.id,
       a.name AS area,
       p.area_id,
       p.external_id,
       p.area_m2,
       p.attributes,
       (SELECT string_agg(pm.permit_number, ', ' ORDER BY pm.valid_from, pm.permit_number)
        FROM permits pm WHERE pm.parcel_id = p.id) AS permits,
       (SELECT max(al.id) FROM alerts al
        WHERE al.parcel_id = p.id AND al.status IN ('new', 'acknowledged', 'confirmed')) AS open_alert,
       p.geom::{MPOLY} AS geom
FROM parcels p
JOIN areas a ON a.id = p.area_id
"""

AREA_DETECTIONS = f"""
CREATE VIEW area_detections AS
SELECT d.id,
       a.name AS area,
       d.area_id,
       d.scene_id,
       d.observed_on,
       d.kind,
       d.area_m2,
       d.mean_prob,
       d.model_version,
       d.geom::{MPOLY} AS geom
FROM detections d
JOIN areas a ON a.id = d.area_id
"""

AREA_CHANGES = f"""
CREATE VIEW area_changes AS
SELECT c.id,
       a.name AS area,
       c.area_id,
       c.scene_id,
       c.observed_on,
       c.previous_on,
       c.area_m2,
       c.source,
       c.model_version,
       c.geom::{MPOLY} AS geom
FROM changes c
JOIN areas a ON a.id = c.area_id
"""

# A scene without a recorded footprint is drawn over its whole area.
SCENE_FOOTPRINTS = f"""
CREATE VIEW scene_footprints AS
SELECT s.id,
       a.name AS area,
       s.area_id,
       s.provider,
       s.product_id,
       s.acquired_at,
       (s.acquired_at AT TIME ZONE 'UTC')::date AS observed_on,
       s.status,
       s.cloud_cover,
       s.pixel_m,
       s.footprint IS NOT NULL AS footprint_known,
       COALESCE(s.footprint, a.footprint)::{MPOLY} AS geom,
       s.clear_geom::{MPOLY} AS clear_geom
FROM scenes s
JOIN areas a ON a.id = s.area_id
"""


# The two views as 0002 made them, for the downgrade.
OLD_PARCEL_HISTORY = (PARCEL_HISTORY.replace("max(pm.permit_number) AS permit_id", "max(pc.permit_id) AS permit_id")
                      .replace("    LEFT JOIN permits pm ON pm.id = pc.permit_id\n", ""))
OLD_OPEN_ALERTS = OPEN_ALERTS.replace("       p.area_m2 AS parcel_m2,", "       al.evidence,\n       p.area_m2 AS parcel_m2,")


def _grant(views: tuple[str, ...]) -> str:
    return f"""
    DO $$
    BEGIN
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{ROLE}') THEN
            GRANT SELECT ON {', '.join(views)} TO {ROLE};
        END IF;
    END $$;
    """


def upgrade() -> None:
    op.execute("DROP VIEW parcel_history, open_alerts")
    op.execute(PARCEL_HISTORY)
    op.execute(OPEN_ALERTS)
    for view in (AREA_PARCELS, AREA_DETECTIONS, AREA_CHANGES, SCENE_FOOTPRINTS):
        op.execute(view)
    op.execute(_grant(("parcel_history", "open_alerts", *NEW_VIEWS)))


def downgrade() -> None:
    op.execute(f"DROP VIEW {', '.join(NEW_VIEWS)}, parcel_history, open_alerts")
    op.execute(OLD_PARCEL_HISTORY)
    op.execute(OLD_OPEN_ALERTS)
    op.execute(_grant(("parcel_history", "open_alerts")))
