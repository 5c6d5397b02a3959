-- The diff of one scene (:sid) begins: its built detections in the area's UTM zone (:epsg), and the
-- region still to decide (the clear part of the area this date sees).
DROP TABLE IF EXISTS _diff_cur, _diff_region, _diff_new, _diff_prev, _diff_cells;
CREATE TEMP TABLE _diff_cur AS
    SELECT ST_Transform(geom, :epsg) AS g FROM detections WHERE scene_id = :sid AND kind = 'built';
CREATE TEMP TABLE _diff_region AS
    SELECT ST_CollectionExtract(ST_MakeValid(ST_Transform(
               CASE WHEN s.clear_geom IS NULL THEN a.footprint ELSE ST_Intersection(s.clear_geom, a.footprint) END,
               :epsg)), 3) AS pending,
           NULL::geometry AS decide
    FROM scenes s JOIN areas a ON a.id = s.area_id WHERE s.id = :sid;
CREATE TEMP TABLE _diff_new (g geometry, previous_on date);
