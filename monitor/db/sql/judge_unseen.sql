-- Open alerts first seen on the date being judged again that no verdict of that date names any more
-- (the current models do not see their construction), unless a reviewer has looked at them: reverted.
UPDATE alerts a SET status = 'reverted', updated_at = now(),
       note = concat_ws(E'\n', a.note, 'reverted: not seen when ' || :day || ' was processed again')
WHERE a.area_id = :aid AND a.first_seen = :day AND a.status = ANY(:open_statuses) AND a.reviewed_at IS NULL
  AND NOT EXISTS (SELECT 1 FROM parcel_changes pc WHERE pc.alert_id = a.id AND pc.observed_on = :day)
RETURNING a.id
