"""Settings: the only module that reads the environment.

Every setting is an environment variable ``MONITOR_<NAME>`` (``DATABASE_URL``
has no prefix) or a line in a ``.env`` file in the working directory. ``docs/configuration.md``
lists them all and is written from this class by ``python -m monitor.settings > docs/configuration.md``
(a test fails when the two differ); ``monitor settings`` prints the values in force.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from monitor.errors import BadInput


class Settings(BaseSettings):
    """Every setting of the project; ``Settings()`` reads them from the environment and ``.env``."""

    model_config = SettingsConfigDict(env_prefix="MONITOR_", env_file=".env", extra="ignore")

    # --- storage
    database_url: str | None = Field(
        None, validation_alias=AliasChoices("DATABASE_URL", "MONITOR_DATABASE_URL"),
        description="SQLAlchemy URL of an existing PostGIS database. Unset: the project starts "
                    "its own private PostGIS cluster under MONITOR_HOME/pg.")
    home: Path = Field(Path(".monitor"), description="Folder for the private database, scenes, models "
                       "and evidence chips (relative to the working directory).")
    pg_port: int = Field(55432, description="TCP port of the private PostGIS cluster (127.0.0.1 only).")
    pg_bin: Path | None = Field(None, description="Folder with initdb/pg_ctl of the private cluster; "
                                "found automatically when unset (the newest /usr/lib/postgresql/*/bin).")
    db_pool_size: int = Field(5, description="Database connection pool size.")

    # --- areas
    default_cadence: str = Field("5d", description="Cadence of a new area when `areas add` names none "
                                 "(30m, 12h, 5d, 2w; between 1 minute and 366 days).")
    default_providers: str = Field("stac,sentinelsat", description="Provider order of a new area when "
                                   "`areas add` names none.")
    default_max_cloud: float = Field(20.0, description="Max cloud/nodata percentage over the area for a "
                                     "scene to be used, when `areas add` names none.")

    # --- imagery providers
    stac_url: str = Field("https://earth-search.aws.element84.com/v1",
                          description="STAC API of the `stac` provider. Others: "
                          "https://stac.dataspace.copernicus.eu/v1 (Copernicus Data Space), "
                          "https://planetarycomputer.microsoft.com/api/stac/v1 (Planetary Computer).")
    stac_collection: str = Field("sentinel-2-l2a", description="STAC collection searched.")
    stac_query: str = Field("", description="Extra terms of the STAC `query` extension, as JSON, e.g. "
                            '{"s2:processing_baseline": {"eq": "05.00"}}.')
    stac_cloud_filter: Literal["none", "query", "cql2"] = Field(
        "none", description="Also send the area's cloud limit to the STAC server: none (filter on this "
        "side only), query (the `query` extension) or cql2 (a CQL2-JSON filter). Cloud cover is always enforced "
        "client-side too.")
    dhus_platform: str = Field("Sentinel-2", description="platformname of DHuS searches (empty: any).")
    dhus_product_type: str = Field("S2MSI2A", description="producttype of DHuS searches (empty: any).")
    search_lookback_days: int = Field(30, description="How far back the first search of an area in a catalogue "
                                      "(stac, sentinelsat) looks, days; later searches start a day before the newest "
                                      "scene found. Drop folders are searched whole.")
    offline_retry_s: float = Field(3600.0, description="Wait before fetching again a product that was "
                                   "offline (long-term archive), seconds.")
    scene_retry_s: float = Field(600.0, description="Wait before trying again a scene whose fetch or processing "
                                 "failed for a transient reason (disk full, read-only or unwritable MONITOR_HOME, "
                                 "database, network, HTTP 5xx); doubles with each failure in a row, seconds.")
    scene_retry_max_s: float = Field(21600.0, description="Cap of that wait, seconds.")
    scene_retry_attempts: int = Field(8, ge=1, description="Failed tries in a row after which a scene with "
                                      "transient failures is failed for good (`monitor scenes retry` re-queues it).")
    dhus_url: str = Field("https://apihub.copernicus.eu/apihub/",
                          description="DHuS API URL of the `sentinelsat` provider.")
    dhus_user: str | None = Field(None, description="DHuS user name (never logged).")
    dhus_password: SecretStr | None = Field(None, description="DHuS password (never logged).")
    allow_private_urls: bool = Field(False, description="Allow area sources and webhook URLs that point to "
                                     "loopback, link-local or private addresses (on-premises hubs and receivers). "
                                     "Off: such URLs are refused when registered and when connected to.")
    local_dir: Path | None = Field(None, description="Default drop folder of the `local` provider.")
    local_date_pattern: str | None = Field(
        None, description="Regular expression that finds the acquisition date in a `local` file name, with named "
        "groups `year`, `month` and optionally `day` (the 1st when absent), e.g. "
        "`global_monthly_(?P<year>\\d{4})_(?P<month>\\d{2})`. Tried before the built-in YYYYMMDD, "
        "YYYY-MM-DD and YYYY_MM (the 1st of the month) forms.")
    http_timeout_s: float = Field(60.0, description="Timeout of one HTTP request to a provider, seconds.")
    download_retries: int = Field(5, description="Download attempts before a scene is marked failed.")
    download_backoff_s: float = Field(2.0, description="First retry delay; doubles each attempt.")
    download_backoff_max_s: float = Field(60.0, description="Cap of the retry delay, seconds.")
    resolution_m: float = Field(10.0, description="Ground resolution scenes are prepared at, metres.")
    crop_margin_m: float = Field(100.0, description="Margin around the area when cropping a scene, metres.")
    max_scene_pixels: float = Field(1e10, gt=0, description="Most pixels (width x height) a scene's raster file may "
                                    "declare; a file that declares more fails from its header, unread.")
    max_scene_pixel_ratio: float = Field(
        1024.0, gt=0, description="Most source pixels read per pixel of the area's grid: a scene whose part over the "
        "area would be read at more (a source far finer than the grid with no overviews to read from, or a header "
        "that claims absurd dimensions) fails from its header, unread.")

    # --- models and inference
    segmenter_model: Path | None = Field(None, description="Model directory of the built-up segmenter, used by "
                                           "areas that name none of their own.")
    classifier_model: Path | None = Field(None, description="Model directory of the settlement classifier, used "
                                            "by areas that name none of their own.")
    change_model: Path | None = Field(None, description="Model directory of the change model (optional), used by "
                                        "areas that name none of their own.")
    default_change_model: str | None = Field("builtin:oscd-change", description="Change model (directory or "
                                             "builtin:NAME) of areas that name none and have no MONITOR_CHANGE_MODEL, "
                                             "used only on scenes whose pixel size is within 1.5x of the model's "
                                             "training resolution ('' for none).")
    inference_batch: int = Field(4, ge=1, description="Inference windows per call to a model.")
    inference_window: int = Field(512, ge=16, description="Largest side of an inference window, pixels "
                                  "(at least the model's tile; sized to cover the scene evenly, rounded up to a "
                                  "multiple of 2^depth).")
    inference_overlap: float = Field(0.25, ge=0, lt=1, description="Overlap of neighbouring inference windows, "
                                     "fraction of the model's tile.")
    inference_precision: Literal["auto", "float32", "mixed", "bfloat16"] = Field(
        "auto", description="Inference arithmetic: auto (mixed float16 on a GPU, mixed bfloat16 on a CPU with "
        "AMX bfloat16 units, float32 on other CPUs), float32, mixed (float16) or bfloat16.")

    # --- vectorize, diff, alerts
    min_region_px: int = Field(3, ge=1, description="Detected regions of fewer pixels of the scene than this are "
                               "dropped.")
    min_region_m2: float = Field(20.0, description="Detected regions smaller than this are dropped, m2 (a floor "
                                 "over MONITOR_MIN_REGION_PX).")
    median_filter_px: int = Field(3, description="Median filter size applied to masks before polygonizing.")
    shift_tolerance_m: float = Field(10.0, description="Misregistration tolerance of the date-to-date "
                                     "diff, metres (about one pixel).")
    min_change_px: int = Field(3, ge=1, description="Changes of fewer pixels of the scene than this are dropped.")
    min_change_m2: float = Field(20.0, description="Changes smaller than this are dropped, m2 (a floor over "
                                 "MONITOR_MIN_CHANGE_PX).")
    change_min_z: float = Field(0.0, ge=0, description="Keep a new construction piece of the diff only where "
                                "the imagery changed too: its mean change-vector magnitude against the oldest "
                                "image the diff remembers (bands standardized per image) at least this many "
                                "robust standard deviations (1.4826 x MAD) above the scene's median; drops a "
                                "segmenter's late first find of an old building (0 disables).")
    change_check_same_season: bool = Field(False, description="The imagery check (MONITOR_CHANGE_MIN_Z) "
                                           "compares with the remembered image nearest in the season among those "
                                           "at least 300 days older, when there is one (the oldest of equals), "
                                           "rather than with the oldest: shadows, crops and leaves then read the "
                                           "same.")
    change_needs_building: bool = Field(False, description="In an area with both a segmenter and a change "
                                        "model, new construction is where the change model sees change on a "
                                        "date and the segmenter sees a building on it (within one pixel); the "
                                        "diff of the segmenter's detections between dates is not run. Off: each "
                                        "raises its own alerts.")
    faint_memory_share: float = Field(0.0, ge=0, description="Drop a new construction piece of the diff when, "
                                      "on an earlier date the diff remembers, the segmenter's mean probability "
                                      "inside it was at least this share of its threshold: a building found "
                                      "for the first time that was there, just under the threshold, all along "
                                      "(0 disables).")
    alert_min_px: int = Field(3, ge=1, description="New built area on a parcel that raises an alert, pixels of "
                              "the scene.")
    alert_min_m2: float = Field(50.0, description="New built area on a parcel that raises an alert, m2 (a floor "
                                "over MONITOR_ALERT_MIN_PX).")
    alert_min_fraction: float = Field(0.0, description="Also require this fraction of the parcel to be new "
                                      "construction (0 disables).")
    max_change_share: float = Field(0.2, gt=0, le=1, description="A date on which more than this share of the "
                                    "area's clear land is new construction is marked `suspect` (a season, a "
                                    "mis-registered or badly calibrated scene): no alerts are raised from it and "
                                    "it is never the baseline of a later date.")
    alert_min_sightings: int = Field(1, ge=1, le=2, description="Clear dates that must see new construction "
                                     "on a parcel before its alert is raised: 1 raises it on the first; 2 holds it "
                                     "until the next date that sees the place clear still sees it built (a "
                                     "segmenter's one-date flicker is dropped), and dates the alert from the "
                                     "first sighting.")
    persist_days: int = Field(20, ge=0, description="A probable alert becomes confirmed when its construction is "
                              "still seen on a clear date at least this many days after it was first seen; "
                              "crops and ploughing revert before.")

    # --- daemon, API, metrics, webhooks
    api_host: str = Field("127.0.0.1", description="Address the API and /metrics listen on.")
    api_port: int = Field(8000, description="Port of the API and /metrics.")
    max_body_mb: float = Field(64.0, gt=0, description="Largest request body the API accepts (uploads "
                               "included), MB; a larger one is answered 413.")
    scheduler_jitter_s: int = Field(300, description="Random delay added to each scheduled area run, s.")
    webhook_timeout_s: float = Field(10.0, description="Timeout of one webhook POST, seconds.")
    webhook_max_attempts: int = Field(12, description="Delivery attempts before a webhook is given up.")
    webhook_backoff_s: float = Field(30.0, description="Delay before the first webhook retry, seconds; "
                                     "doubles each attempt.")
    webhook_backoff_max_s: float = Field(3600.0, description="Cap of the webhook retry delay, seconds; with the "
                                         "defaults a delivery is retried for about 5 hours.")
    webhook_poll_s: float = Field(15.0, description="How often the daemon sends due webhook deliveries, s.")
    scheduler_sync_s: float = Field(30.0, description="How often the daemon re-reads the areas, checks its "
                                    "leadership, and (standby) tries to take over, seconds: how soon a standby takes "
                                    "over.")
    log_level: str = Field("INFO", description="Logging level.")

    # --- Dask cluster
    dask_scheduler: str | None = Field(None, description="Address of a Dask distributed scheduler, e.g. "
                                       "tcp://dask-scheduler:8786: the steps of each scene (infer, vectorize, diff, "
                                       "judge) run as tasks on its workers, which need DATABASE_URL's database and "
                                       "MONITOR_HOME at the same path. Unset: everything runs in this process.")
    dask_retries: int = Field(2, ge=0, description="Retries of a failed step task on the cluster (tasks of a worker "
                              "that died are rerun by Dask besides).")
    dask_areas: int = Field(4, ge=1, description="Areas the daemon passes over at once when MONITOR_DASK_SCHEDULER "
                            "is set (in this process: one).")
    dask_connect_timeout_s: float = Field(30.0, description="Wait for the Dask scheduler to answer, seconds.")

    def probability_dir(self, area_id: int) -> Path:
        """Where the pipeline keeps an area's probability rasters, ``<scene id>_<kind>_<model version>.tif``."""
        return self.data_dir / "probability" / str(area_id)

    def min_area_m2(self, what: Literal["region", "change", "alert"], pixel_m: float) -> float:
        """The smallest region, change or alert that counts on scenes of ``pixel_m`` metre pixels:
        the setting's pixel count of such pixels, and never under its m2 floor."""
        pixels = {"region": self.min_region_px, "change": self.min_change_px, "alert": self.alert_min_px}[what]
        floor = {"region": self.min_region_m2, "change": self.min_change_m2, "alert": self.alert_min_m2}[what]
        return max(float(floor), pixels * float(pixel_m) ** 2)

    @property
    def data_dir(self) -> Path:
        """Scenes, probability rasters, downloads and evidence chips."""
        return self.home / "data"

    @property
    def models_dir(self) -> Path:
        """Where trained models go by default."""
        return self.home / "models"

    @property
    def pg_dir(self) -> Path:
        """The private PostGIS cluster."""
        return self.home / "pg"


# The first setting of each group, and the group's title in docs/configuration.md.
SECTIONS = {
    "database_url": "Storage",
    "default_cadence": "Areas",
    "stac_url": "Imagery providers",
    "segmenter_model": "Models and inference",
    "min_region_px": "Vectorize, diff and alerts",
    "api_host": "Daemon, API, metrics and webhooks",
    "dask_scheduler": "Dask cluster",
}


def variable(name: str) -> str:
    """The environment variable of the setting ``name``."""
    return "DATABASE_URL" if name == "database_url" else f"MONITOR_{name.upper()}"


def from_environment() -> Settings:
    """``Settings()``; a value that does not parse is ``BadInput`` naming its variable (never its value,
    which may be a secret)."""
    try:
        return Settings()
    except ValidationError as e:
        first = e.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else "settings"
        raise BadInput(first["msg"], field=name if name.isupper() else variable(name)) from None


def _default(value: object) -> str:
    if value is None:
        return "unset"
    if isinstance(value, str) and not value:
        return "empty"
    return f"`{value}`"


def markdown() -> str:
    """``docs/configuration.md``: every setting with its variable, default and meaning."""
    out = [
        "# Configuration",
        "",
        "<!-- Written by `python -m monitor.settings > docs/configuration.md` from monitor/settings.py;",
        "     tests/test_docs.py fails when this file and the code differ. -->",
        "",
        "Every setting is an environment variable (or a line in `.env` in the working directory).",
        "`monitor settings` prints the values in force, secrets masked. Durations are in seconds unless",
        "the name says otherwise; areas in m2.",
    ]
    for name, field in Settings.model_fields.items():
        if name in SECTIONS:
            out += ["", f"## {SECTIONS[name]}", "", "| variable | default | meaning |", "|---|---|---|"]
        meaning = " ".join((field.description or "").split()).replace("|", "\\|")
        out.append(f"| `{variable(name)}` | {_default(field.default)} | {meaning} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown())
