-- New alerts, one per parcel of :ids, from the parcel's new construction of the date being judged.
INSERT INTO alerts (area_id, parcel_id, geom, first_seen, last_seen, new_area_m2, fraction, source, model_version)
SELECT :aid, j.parcel_id, j.g, :day, :day, j.new_m2, j.new_m2 / NULLIF(j.parcel_m2, 0), j.source, j.model_version
FROM _judge_parcels j WHERE j.parcel_id = ANY(:ids)
RETURNING id, parcel_id
