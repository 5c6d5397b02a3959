-- One parcel_changes row per change piece of each judged parcel (rows: parcel, verdict, permit, alert, day;
-- inserted with psycopg2's execute_values, which fills in the VALUES).
INSERT INTO parcel_changes (change_id, parcel_id, observed_on, area_m2, fraction, permit_id, alert_id, verdict)
SELECT p.change_id, p.parcel_id, v.day, p.area_m2, p.area_m2 / NULLIF(p.parcel_m2, 0), v.permit_id,
       v.alert_id, v.verdict
FROM (VALUES %s) AS v(parcel_id, verdict, permit_id, alert_id, day)
JOIN _judge_pieces p ON p.parcel_id = v.parcel_id
