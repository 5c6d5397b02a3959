-- An alert for held construction (:geom, EWKB) that a later date (:day) saw again, dated from its first
-- sighting (:first_seen).
INSERT INTO alerts (area_id, parcel_id, geom, first_seen, last_seen, new_area_m2, fraction, source, model_version,
                    confidence)
SELECT :aid, :pid, x.g, :first_seen, :day, ST_Area(ST_Transform(x.g, :epsg)),
       ST_Area(ST_Transform(x.g, :epsg)) / NULLIF(:parcel_m2, 0), :source, :model_version, :confidence
FROM (SELECT CAST(:geom AS geometry) AS g) x
RETURNING id
