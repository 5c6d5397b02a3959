-- Construction held back on earlier dates until a later date sees it again (verdict 'unconfirmed'), per
-- parcel and date: its outline, how much of it is clear on this date (:sid) and how much of that is
-- still built (detections grown by :tol), a permit that covers it by now, and an alert the parcel
-- already has for it (open, or closed but covering that date).
WITH clear AS (
    SELECT ST_CollectionExtract(ST_MakeValid(ST_Transform(COALESCE(s.clear_geom, a.footprint), :epsg)), 3) AS g
    FROM scenes s JOIN areas a ON a.id = s.area_id WHERE s.id = :sid),
held AS (
    SELECT pc.parcel_id, pc.observed_on, array_agg(pc.id) AS ids, max(p.area_m2) AS parcel_m2,
           ST_Multi(ST_CollectionExtract(ST_Union(CASE WHEN ST_Covers(p.geom, c.geom) THEN c.geom
                   ELSE ST_CollectionExtract(ST_Intersection(c.geom, p.geom), 3) END), 3)) AS geom,
           (array_agg(c.source ORDER BY pc.area_m2 DESC))[1] AS source,
           (array_agg(c.model_version ORDER BY pc.area_m2 DESC))[1] AS model_version
    FROM parcel_changes pc JOIN changes c ON c.id = pc.change_id JOIN parcels p ON p.id = pc.parcel_id
    WHERE c.area_id = :aid AND pc.verdict = 'unconfirmed' AND pc.observed_on < :day
    GROUP BY pc.parcel_id, pc.observed_on),
cand AS (SELECT h.*, ST_Transform(h.geom, :epsg) AS g FROM held h)
SELECT cand.parcel_id, cand.observed_on, cand.ids, cand.geom, cand.parcel_m2, cand.source, cand.model_version,
       ST_Area(cand.g) AS total, ST_Area(v.g) AS clear_m2, COALESCE(ST_Area(ST_Intersection(v.g, b.g)), 0) AS built_m2,
       pm.id AS permit_id, COALESCE(oa.id, ca.id) AS alert_id
FROM cand CROSS JOIN clear
CROSS JOIN LATERAL (SELECT ST_Intersection(cand.g, clear.g) AS g) v
LEFT JOIN LATERAL (
    SELECT ST_Union(ST_Buffer(ST_Transform(d.geom, :epsg), :tol, 'quad_segs=2')) AS g
    FROM detections d  -- "+ 0": probe the GiST index only
    WHERE ST_Intersects(d.geom, cand.geom) AND d.scene_id + 0 = :sid AND d.kind = 'built') b ON true
LEFT JOIN LATERAL (
    SELECT pm.id FROM permits pm
    WHERE pm.parcel_id = cand.parcel_id AND pm.valid_from <= :day
      AND (pm.valid_to IS NULL OR pm.valid_to >= cand.observed_on)
    ORDER BY pm.valid_from DESC, pm.id DESC LIMIT 1) pm ON true
LEFT JOIN LATERAL (
    SELECT oa.id FROM alerts oa WHERE oa.parcel_id = cand.parcel_id AND oa.status = ANY(:open_statuses)
    ORDER BY oa.id DESC LIMIT 1) oa ON true
LEFT JOIN LATERAL (
    SELECT ca.id FROM alerts ca
    WHERE ca.parcel_id = cand.parcel_id AND ca.status <> ALL(:open_statuses)
      AND ca.first_seen <= cand.observed_on AND ca.last_seen >= cand.observed_on
    ORDER BY ca.id DESC LIMIT 1) ca ON true
ORDER BY cand.observed_on, cand.parcel_id
