"""From polygons to alerts, in the caller's transaction.

- ``detections``: a scene's polygons stored as detections (or a change model's as changes);
- ``diff``: this date's detections minus those of earlier dates, in PostGIS;
- ``judge``: changes x parcels x permits -> verdicts and alert events;
- ``indicators``: built-up and settlement km2 of a date;
- ``settlements``: the settlement layer of a date (cloudy parts carried over) and its growth;
- ``imports``: a raster made elsewhere run through the same path.

Geometries are stored in EPSG:4326 and every length and area is computed in the area's UTM zone.
Each function works inside the caller's session (the caller owns the transaction) and replaces
what an earlier run of the same step wrote for the same scene, so re-running a step is
idempotent. Nothing here sends anything: ``judge`` returns its events and the caller queues the
webhooks (in the same transaction); evidence chips are rendered when first asked for.
"""

from monitor.change.detections import store_change_polygons, store_detections
from monitor.change.diff import diff, suspect_reason
from monitor.change.imports import Imported, import_detections
from monitor.change.indicators import record_indicators
from monitor.change.judge import Event, judge, judge_events, revert_unseen
from monitor.change.settlements import settlement_sightings, store_settlement_changes, store_settlements

__all__ = ["Event", "Imported", "diff", "suspect_reason", "import_detections", "judge", "judge_events",
           "record_indicators", "revert_unseen", "settlement_sightings", "store_change_polygons", "store_detections",
           "store_settlement_changes", "store_settlements"]
