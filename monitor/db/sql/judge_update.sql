-- Open alerts :ids take in their parcel's new construction of the date being judged; returns how much
-- each grew and when it was last seen before, from which the caller tells an update worth announcing.
-- With :replace (the date processed again) an alert first seen on the date takes this construction
-- instead of adding it: what the earlier models saw that date is replaced.
WITH old AS (SELECT id, new_area_m2, last_seen FROM alerts WHERE id = ANY(:ids)),
merged AS (
    SELECT a.id, CASE WHEN :replace AND a.first_seen = :day THEN ST_Multi(j.g)
                      ELSE ST_Multi(ST_CollectionExtract(ST_Union(a.geom, j.g), 3)) END AS g, j.parcel_m2
    FROM alerts a JOIN _judge_parcels j ON j.parcel_id = a.parcel_id WHERE a.id = ANY(:ids))
UPDATE alerts a SET geom = m.g, new_area_m2 = ST_Area(ST_Transform(m.g, :epsg)),
       fraction = ST_Area(ST_Transform(m.g, :epsg)) / NULLIF(m.parcel_m2, 0),
       last_seen = GREATEST(a.last_seen, :day), updated_at = now()
FROM merged m JOIN old o ON o.id = m.id
WHERE a.id = m.id
RETURNING a.id, a.new_area_m2 - o.new_area_m2 AS grown, o.last_seen
