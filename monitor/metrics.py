"""Prometheus metrics of the daemon. One ``Metrics`` object holds them all; tests pass a fresh
``CollectorRegistry``. Names follow Prometheus conventions: units in names, ``_total`` counters.
Ages are exported as Unix timestamps; dashboards and rules take ``time() - metric``."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

STEP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class Metrics:
    """Every metric of the process, on one registry (a fresh one unless given)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry if registry is not None else CollectorRegistry()
        self.registry = r
        # imagery
        self.scenes_found = Counter("monitor_scenes_found_total", "New scenes recorded by a search",
                                    ["area", "provider"], registry=r)
        self.scenes_downloaded = Counter("monitor_scenes_downloaded_total", "Scenes downloaded and verified",
                                         ["area", "provider"], registry=r)
        self.scenes_skipped = Counter("monitor_scenes_skipped_total", "Scenes skipped, by reason",
                                      ["area", "provider", "reason"], registry=r)
        self.scenes_failed = Counter("monitor_scenes_failed_total", "Scenes that failed, by reason",
                                     ["area", "provider", "reason"], registry=r)
        self.download_bytes = Counter("monitor_download_bytes_total", "Bytes downloaded from providers",
                                      ["provider"], registry=r)
        self.provider_errors = Counter("monitor_provider_errors_total", "Provider calls that failed",
                                       ["provider", "operation"], registry=r)
        self.search_failures = Counter("monitor_search_failures_total",
                                       "Searches of an area in which every provider failed (the pass went on "
                                       "with the scenes already known)", ["area"], registry=r)
        self.provider_failovers = Counter("monitor_provider_failovers_total",
                                          "Searches that fell over to the next provider",
                                          ["area", "from_provider", "to_provider"], registry=r)
        # pipeline
        self.step_duration = Histogram("monitor_step_duration_seconds", "Duration of pipeline steps",
                                       ["step"], buckets=STEP_BUCKETS, registry=r)
        self.runs = Counter("monitor_runs_total", "Pipeline runs by outcome", ["area", "status"], registry=r)
        self.run_errors = Counter("monitor_run_errors_total", "Pipeline step failures", ["area", "step"],
                                  registry=r)
        self.last_success = Gauge("monitor_last_successful_run_timestamp_seconds",
                                  "Unix time of the last successful run of an area", ["area"], registry=r)
        self.newest_scene = Gauge("monitor_newest_scene_timestamp_seconds",
                                  "Acquisition time of the newest processed scene of an area", ["area"], registry=r)
        # models
        self.inference_windows = Counter("monitor_inference_windows_total", "Inference windows run through a model",
                                         ["kind"], registry=r)
        self.inference_windows_per_second = Gauge("monitor_inference_windows_per_second",
                                                  "Inference windows per second of the last inference", ["kind"],
                                                  registry=r)
        # results
        self.detections = Counter("monitor_detections_total", "Detection polygons stored", ["area"], registry=r)
        self.changes = Counter("monitor_changes_total", "Change polygons stored", ["area"], registry=r)
        self.suspect_dates = Counter("monitor_suspect_dates_total", "Dates on which too much of the area changed "
                                     "at once to trust (no alerts raised)", ["area"], registry=r)
        self.alert_events = Counter("monitor_alert_events_total",
                                    "Alert events by kind (created, updated, escalated, resolved)",
                                    ["area", "event", "confidence"], registry=r)
        self.open_alerts = Gauge("monitor_open_alerts", "Open alerts of an area", ["area"], registry=r)
        self.built_km2 = Gauge("monitor_built_up_km2", "Built-up area on the newest date", ["area"], registry=r)
        self.settlement_km2 = Gauge("monitor_settlement_km2", "Informal-settlement area on the newest date",
                                    ["area"], registry=r)
        self.settlement_carried_km2 = Gauge("monitor_settlement_carried_km2",
                                            "Part of the newest date's informal-settlement area carried over from "
                                            "an earlier date where that date was cloudy", ["area"], registry=r)
        # webhooks
        self.webhook_deliveries = Counter("monitor_webhook_deliveries_total",
                                          "Webhook delivery attempts by result (succeeded, failed)",
                                          ["result"], registry=r)
        self.webhook_failures = Counter("monitor_webhook_failures_total",
                                        "Webhook deliveries given up after every attempt", registry=r)
        # scheduler
        self.scheduler_leader = Gauge("monitor_scheduler_leader", "1 when this process schedules, else 0",
                                      registry=r)
        self.scheduled_areas = Gauge("monitor_scheduled_areas", "Areas with a scheduled job", registry=r)
        # Dask cluster (MONITOR_DASK_SCHEDULER)
        self.cluster_tasks = Gauge("monitor_cluster_tasks", "Tasks of pipeline steps on the Dask cluster, by state "
                                   "(queued, running)", ["step", "state"], registry=r)
        self.cluster_task_failures = Counter("monitor_cluster_task_failures_total", "Tasks of pipeline steps that "
                                             "failed on the Dask cluster after their retries", ["step"], registry=r)


_default: Metrics | None = None


def default_metrics() -> Metrics:
    """The process-wide metrics, registered on prometheus_client's global registry."""
    global _default
    if _default is None:
        _default = Metrics(REGISTRY)
    return _default
