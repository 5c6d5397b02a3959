-- Open alerts from earlier dates, measured against this date: how much of each is clear now,
-- and how much of that is still built (detections grown by the shift tolerance).
WITH clear AS (
    SELECT ST_CollectionExtract(ST_MakeValid(ST_Transform(COALESCE(s.clear_geom, a.footprint), :epsg)), 3) AS g
    FROM scenes s JOIN areas a ON a.id = s.area_id WHERE s.id = :sid),
cand AS (
    SELECT al.id, al.status, al.source, al.first_seen, al.geom, ST_Transform(al.geom, :epsg) AS g FROM alerts al
    WHERE al.area_id = :aid AND al.status = ANY(:open_statuses) AND al.first_seen < :day AND al.last_seen < :day)
SELECT cand.id, cand.status, cand.source, cand.first_seen, ST_Area(cand.g) AS total, ST_Area(v.g) AS clear_m2,
       COALESCE(ST_Area(ST_Intersection(v.g, b.g)), 0) AS built_m2
FROM cand CROSS JOIN clear
CROSS JOIN LATERAL (SELECT ST_Intersection(cand.g, clear.g) AS g) v
LEFT JOIN LATERAL (
    SELECT ST_Union(ST_Buffer(ST_Transform(d.geom, :epsg), :tol, 'quad_segs=2')) AS g
    FROM detections d  -- "+ 0": probe the GiST index only
    WHERE ST_Intersects(d.geom, cand.geom) AND d.scene_id + 0 = :sid AND d.kind = 'built') b ON true
