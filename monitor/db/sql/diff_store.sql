-- The new pieces become the scene's 'diff' changes. They are clipped to the area once more in
-- EPSG:4326, where the area is stored: a straight edge in UTM is not quite straight in 4326.
INSERT INTO changes (area_id, scene_id, observed_on, previous_on, geom, area_m2, source, model_version)
SELECT :aid, :sid, :day, x.previous_on, x.g, ST_Area(ST_Transform(x.g, :epsg)), 'diff',
       (SELECT max(model_version) FROM detections WHERE scene_id = :sid AND kind = 'built')
FROM (
    SELECT n.previous_on,
           CASE WHEN ST_Covers(a.footprint, t.g) THEN ST_Multi(t.g)
                ELSE ST_Multi(ST_CollectionExtract(ST_Intersection(t.g, a.footprint), 3)) END AS g
    FROM _diff_new n
    CROSS JOIN LATERAL (SELECT ST_Transform(n.g, 4326) AS g) t
    JOIN areas a ON a.id = :aid
    WHERE GeometryType(n.g) = 'POLYGON' AND ST_Area(n.g) >= :min_m2) x
WHERE NOT ST_IsEmpty(x.g) AND ST_Area(ST_Transform(x.g, :epsg)) >= :min_m2
RETURNING id
