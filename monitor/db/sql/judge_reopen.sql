-- Alerts first seen on the date being judged again that an earlier reprocess reverted (judge_unseen's
-- note line) and no reviewer has looked at: open again, so that the current models' verdicts decide
-- them anew (judge_unseen reverts them again, with the same note, when the models still do not see
-- them). One per parcel, and none where the parcel has an open alert already.
UPDATE alerts a SET status = 'new', updated_at = now(),
       note = NULLIF(regexp_replace(a.note, E'\n?reverted: not seen when [0-9-]+ was processed again', '', 'g'), '')
WHERE a.id IN (
    SELECT DISTINCT ON (r.parcel_id) r.id FROM alerts r
    WHERE r.area_id = :aid AND r.first_seen = :day AND r.status = 'reverted' AND r.reviewed_at IS NULL
      AND r.note ~ 'reverted: not seen when [0-9-]+ was processed again'
      AND NOT EXISTS (SELECT 1 FROM alerts o WHERE o.parcel_id = r.parcel_id AND o.status = ANY(:open_statuses))
    ORDER BY r.parcel_id, r.id DESC)
RETURNING a.id
