-- Construction seen on any earlier date of the lookback (:ids) is not new, even where the dates that
-- decided above did not see it: a building a segmenter misses one month and finds the next is no new
-- building. The new pieces lose what any earlier date's buildings (grown by :tol) cover. Candidates are
-- found by bounding boxes (&&), which never raise on a slightly invalid outline as GEOS predicates can
-- (a topology exception would fail the whole date); a buffer whose box overlaps but whose shape does
-- not takes nothing away in the difference.
DROP TABLE IF EXISTS _diff_seen, _diff_kept;
CREATE TEMP TABLE _diff_seen AS
    SELECT ST_Buffer(ST_Transform(d.geom, :epsg), :tol, 'quad_segs=2') AS g
    FROM detections d
    WHERE d.scene_id = ANY(:ids) AND d.kind = 'built'
      AND d.geom && (SELECT ST_Transform(ST_SetSRID(ST_Extent(g)::geometry, :epsg), 4326) FROM _diff_new);
CREATE INDEX ON _diff_seen USING gist (g);
ANALYZE _diff_seen;
CREATE TEMP TABLE _diff_kept AS
    SELECT (ST_Dump(CASE WHEN u.g IS NULL THEN n.g
                         ELSE ST_CollectionExtract(ST_Difference(ST_MakeValid(n.g), u.g), 3) END)).geom AS g,
           n.previous_on
    FROM _diff_new n
    LEFT JOIN LATERAL (SELECT ST_Union(s.g) AS g FROM _diff_seen s WHERE s.g && n.g) u ON true;
TRUNCATE _diff_new;
INSERT INTO _diff_new (g, previous_on) SELECT g, previous_on FROM _diff_kept WHERE NOT ST_IsEmpty(g);
DROP TABLE _diff_seen, _diff_kept;
