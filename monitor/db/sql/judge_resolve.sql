-- Open alerts that a permit now covers: one valid at some time between first seen and this date.
UPDATE alerts a SET status = 'resolved', updated_at = now(),
       note = concat_ws(E'\n', a.note, 'resolved by permit ' || pm.permit_number || ' (valid from ' || pm.valid_from
                        || COALESCE(' to ' || pm.valid_to, '') || ')')
FROM (SELECT DISTINCT ON (a2.id) a2.id AS alert_id, pm.permit_number, pm.valid_from, pm.valid_to
      FROM alerts a2 JOIN permits pm ON pm.parcel_id = a2.parcel_id
      WHERE a2.area_id = :aid AND a2.status = ANY(:open_statuses) AND a2.first_seen <= :day AND pm.valid_from <= :day
        AND (pm.valid_to IS NULL OR pm.valid_to >= a2.first_seen)
      ORDER BY a2.id, pm.valid_from DESC) pm
WHERE a.id = pm.alert_id
RETURNING a.id
