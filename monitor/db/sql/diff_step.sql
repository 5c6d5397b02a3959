-- One earlier scene (:pid) decides the places that it saw clear and no newer earlier scene did: there,
-- what is built now and lies farther than the tolerance (:tol) from what was built then is new.
-- Most of today's buildings are covered by one of that date's (grown) buildings; that test runs
-- as a hash join on grid cells (:cell m; each grown building is listed in every cell its box touches,
-- and a piece it covers has its lower-left corner in one of them), which is several times faster
-- than a GiST probe per building. The few pieces left are cut by the GiST-indexed union.
DROP TABLE IF EXISTS _diff_prev, _diff_cells;
CREATE TEMP TABLE _diff_prev AS
    SELECT ST_Buffer(ST_Transform(geom, :epsg), :tol, 'quad_segs=2') AS g
    FROM detections WHERE scene_id = :pid AND kind = 'built';
CREATE INDEX ON _diff_prev USING gist (g);
CREATE TEMP TABLE _diff_cells AS
    SELECT gx, gy, p.g FROM _diff_prev p
    CROSS JOIN LATERAL generate_series(floor(ST_XMin(p.g) / :cell)::bigint, floor(ST_XMax(p.g) / :cell)::bigint) gx
    CROSS JOIN LATERAL generate_series(floor(ST_YMin(p.g) / :cell)::bigint, floor(ST_YMax(p.g) / :cell)::bigint) gy;
ANALYZE _diff_prev;
ANALYZE _diff_cells;
UPDATE _diff_region r SET decide = ST_CollectionExtract(ST_Intersection(r.pending, c.g), 3),
                          pending = ST_CollectionExtract(ST_Difference(r.pending, c.g), 3)
FROM (SELECT ST_CollectionExtract(ST_MakeValid(ST_Transform(COALESCE(s.clear_geom, a.footprint), :epsg)), 3) AS g
      FROM scenes s JOIN areas a ON a.id = s.area_id WHERE s.id = :pid) c;
WITH x AS MATERIALIZED (
    SELECT y.g, floor(ST_XMin(y.g) / :cell)::bigint AS gx, floor(ST_YMin(y.g) / :cell)::bigint AS gy
    FROM (SELECT CASE WHEN ST_Covers(r.decide, c.g) THEN c.g
                      ELSE ST_CollectionExtract(ST_Intersection(c.g, r.decide), 3) END AS g
          FROM _diff_cur c CROSS JOIN _diff_region r
          WHERE ST_Intersects(c.g, r.decide)) y
    WHERE NOT ST_IsEmpty(y.g)),
left_over AS MATERIALIZED (
    SELECT x.g FROM x
    WHERE NOT EXISTS (SELECT 1 FROM _diff_cells p
                      WHERE p.gx = x.gx AND p.gy = x.gy AND p.g ~ x.g AND ST_Covers(p.g, x.g)))
INSERT INTO _diff_new (g, previous_on)
SELECT (ST_Dump(CASE WHEN u.g IS NULL THEN x.g ELSE ST_CollectionExtract(ST_Difference(x.g, u.g), 3) END)).geom,
       CAST(:previous_on AS date)
FROM left_over x
LEFT JOIN LATERAL (SELECT ST_Union(p.g) AS g FROM _diff_prev p WHERE ST_Intersects(p.g, x.g)) u ON true;
