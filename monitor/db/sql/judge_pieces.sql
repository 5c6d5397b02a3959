-- The scene's changes cut by the area's parcels (GiST), and per parcel their union: the new
-- construction of the date on that parcel.
DROP TABLE IF EXISTS _judge_pieces, _judge_parcels;
CREATE TEMP TABLE _judge_pieces AS
SELECT c.id AS change_id, p.id AS parcel_id, c.source, c.model_version, x.g,
       ST_Area(ST_Transform(x.g, :epsg)) AS area_m2, p.area_m2 AS parcel_m2
FROM changes c
JOIN parcels p ON ST_Intersects(p.geom, c.geom) AND p.area_id + 0 = :aid  -- "+ 0": probe the GiST index only
CROSS JOIN LATERAL (
    SELECT CASE WHEN ST_Covers(p.geom, c.geom) THEN c.geom
                ELSE ST_Multi(ST_CollectionExtract(ST_Intersection(c.geom, p.geom), 3)) END AS g) x
WHERE c.scene_id = :sid;
DELETE FROM _judge_pieces WHERE area_m2 < :min_piece;
CREATE TEMP TABLE _judge_parcels AS
SELECT j.parcel_id, j.g, ST_Area(ST_Transform(j.g, :epsg)) AS new_m2, j.parcel_m2, j.source, j.model_version
FROM (SELECT parcel_id, ST_Multi(ST_CollectionExtract(ST_Union(g), 3)) AS g, max(parcel_m2) AS parcel_m2,
             (array_agg(source ORDER BY area_m2 DESC))[1] AS source,
             (array_agg(model_version ORDER BY area_m2 DESC))[1] AS model_version
      FROM _judge_pieces GROUP BY parcel_id) j;
