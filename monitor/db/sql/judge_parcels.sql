-- Per parcel with new construction: its open alert, a permit covering [first seen, this date],
-- and an alert already closed (dismissed/resolved) for construction seen on this date.
SELECT j.parcel_id, j.source, j.new_m2, j.new_m2 / NULLIF(j.parcel_m2, 0) AS fraction, oa.id AS open_id,
       pm.id AS permit_id, ca.id AS closed_id
FROM _judge_parcels j
LEFT JOIN alerts oa ON oa.parcel_id = j.parcel_id AND oa.status = ANY(:open_statuses)
LEFT JOIN LATERAL (
    SELECT pm.id FROM permits pm
    WHERE pm.parcel_id = j.parcel_id AND pm.valid_from <= :day
      AND (pm.valid_to IS NULL OR pm.valid_to >= COALESCE(oa.first_seen, :day))
    ORDER BY pm.valid_from DESC, pm.id DESC LIMIT 1) pm ON true
LEFT JOIN LATERAL (
    SELECT ca.id FROM alerts ca
    WHERE ca.parcel_id = j.parcel_id AND ca.status <> ALL(:open_statuses) AND ca.first_seen <= :day AND ca.last_seen >= :day
    ORDER BY ca.id DESC LIMIT 1) ca ON true
ORDER BY j.parcel_id
