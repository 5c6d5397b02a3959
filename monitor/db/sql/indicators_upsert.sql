-- The area's indicators of a date: built-up km2 (the scene's built detections), informal-settlement
-- km2 (:settlement, of which :carried carried over from earlier dates under cloud; earlier values are
-- kept when it is NULL) and the clear fraction of the area.
INSERT INTO indicators (area_id, scene_id, observed_on, built_km2, settlement_km2, settlement_carried_km2,
                        clear_fraction)
SELECT a.id, s.id, :day,
       (SELECT COALESCE(sum(d.area_m2), 0) / 1e6 FROM detections d WHERE d.scene_id = s.id AND d.kind = 'built'),
       :settlement, :carried,
       CASE WHEN s.clear_geom IS NULL THEN NULL
            ELSE ST_Area(ST_Transform(ST_Intersection(s.clear_geom, a.footprint), a.utm_epsg))
                 / NULLIF(ST_Area(ST_Transform(a.footprint, a.utm_epsg)), 0) END
FROM areas a JOIN scenes s ON s.area_id = a.id WHERE a.id = :aid AND s.id = :sid
ON CONFLICT (area_id, observed_on) DO UPDATE
   SET scene_id = EXCLUDED.scene_id, built_km2 = EXCLUDED.built_km2,
       settlement_km2 = COALESCE(EXCLUDED.settlement_km2, indicators.settlement_km2),
       settlement_carried_km2 = CASE WHEN EXCLUDED.settlement_km2 IS NULL THEN indicators.settlement_carried_km2
                                     ELSE EXCLUDED.settlement_carried_km2 END,
       clear_fraction = EXCLUDED.clear_fraction
RETURNING id
