"""One contract, every provider: what the acquisition service relies on, checked on stac (a recorded
Earth Search session and a real scene), sentinelsat (recorded DHuS sessions) and local (a drop folder)."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import rasterio

from monitor.db.engine import transaction
from monitor.db.tables import Area, Scene
from monitor.errors import ProviderError
from monitor.imagery.base import AreaInfo, Provider, get_provider
from monitor.imagery.service import area_info, fetch_scene, grid_for, search_scenes
from monitor.metrics import Metrics
from tests.replay import Replay
from tests.test_imagery_dhus import S3A_TITLE, S3A_UUID, add_area, add_scene, dhus_query, dhus_settings, map_area
from tests.test_imagery_local import make_area, write_scene
from tests.test_imagery_stac import AREA_29N, KEY

pytestmark = pytest.mark.realdata
UTC = dt.timezone.utc


@dataclass
class World:
    """A provider's endpoint with something to find and something to fetch."""

    name: str
    settings: object
    area_id: int
    since: dt.datetime
    until: dt.datetime
    expect_found: int
    fetch_status: str  # what fetching the fetchable scene ends as
    fetch_reason: str | None
    server: Replay | None = None
    fetchable: int | None = None  # a scene id; None: the first one found
    missing: dict | None = None  # remote of a product that does not exist

    def unreachable(self):
        """The same provider pointed at an endpoint that is not there."""
        dead = {"stac": {"stac_url": "http://127.0.0.1:9/v1"},
                "sentinelsat": {"dhus_url": "http://127.0.0.1:9/apihub/"}}.get(self.name, {})
        return self.settings.model_copy(update={**dead, "http_timeout_s": 2}), \
            ("/no/such/folder" if self.name == "local" else None)


@pytest.fixture(params=["stac", "sentinelsat", "local"])
def world(request, engine, settings, shared_data, tmp_path):
    name = request.param
    if name == "stac":
        root = shared_data / "stac_recordings"
        cogs = root / "cogs" / "sentinel-cogs"
        item = json.loads((cogs / KEY / "S2A_29RKH_20200219_0_L2A.json").read_text())
        landing = root / "cassettes/xcube-stac/test_store/StacDataStoreTest.test_search_data_searchable_catalog.yaml"
        answer = {"type": "FeatureCollection", "features": [item], "links": []}
        server = Replay([landing], files={"/sentinel-cogs/": cogs},
                        routes={("POST", "/v1/search"): lambda inc: (200, {}, answer)})
        server.start()
        server.rewrites["https://sentinel-cogs.s3.us-west-2.amazonaws.com"] = server.url + "/sentinel-cogs"
        s = settings.model_copy(update={"stac_url": server.url + "/v1", "download_backoff_s": 0.01})
        area_id = make_area(engine, "contract", AREA_29N, 32629, providers=("stac",), max_cloud=20, resolution_m=100)
        nowhere = {b: {"href": f"{server.url}/sentinel-cogs/nothing/{b}.tif"} for b in ("B02", "B03", "B04", "B08")}
        w = World(name, s, area_id, dt.datetime(2020, 2, 1, tzinfo=UTC), dt.datetime(2020, 2, 29, tzinfo=UTC), 1,
                  "prepared", None, server, missing={"assets": nowhere})
    elif name == "sentinelsat":
        root = shared_data / "dhus_recordings" / "cassettes"
        names = ("test_s2_cloudcover", "test_download", "test_download_invalid_id")
        server = Replay([root / f"{c}.yaml" for c in names],
                        data_dir=root / "data", match_on=("method", "path", dhus_query, "body", "range")).start()
        area_id = add_area(engine, map_area(shared_data), name="contract", max_cloud=10)
        # the recordings hold product info and bytes for one (Sentinel-3) product only
        fetchable = add_scene(engine, area_id, S3A_UUID, S3A_TITLE)
        w = World(name, dhus_settings(settings, server), area_id, dt.datetime(2018, 12, 12, tzinfo=UTC),
                  dt.datetime(2018, 12, 28, tzinfo=UTC), 5, "failed", "holds no Sentinel-2 band", server,
                  fetchable, missing={"uuid": "1f62a176-c980-41dc-xxxx-c735d660c910"})
    else:
        drops = tmp_path / "drops"
        drops.mkdir()
        write_scene(drops / "ba_20180115.tif")
        write_scene(drops / "ba_20180301.tif", seed=1)
        area_id = make_area(engine, "contract", sources={"local": str(drops)})
        w = World(name, settings, area_id, dt.datetime(2018, 1, 1, tzinfo=UTC), dt.datetime(2018, 12, 31, tzinfo=UTC),
                  2, "prepared", None, missing={"path": str(drops / "gone_20180101.tif")})
    yield w
    if w.server:
        w.server.close()


def area_of(engine, w: World):
    with transaction(engine) as s:
        return s.get(Area, w.area_id)


def test_search_contract(engine, world):
    area = area_of(engine, world)
    info = area_info(area, world.name)
    provider = get_provider(world.name, world.settings, info, Metrics())
    assert isinstance(provider, Provider) and provider.name == world.name
    found = provider.search(info, world.since, world.until)
    assert len(found) == world.expect_found
    assert len({c.product_id for c in found}) == len(found) and all(c.product_id for c in found)
    for c in found:
        assert c.acquired_at.tzinfo is not None and world.since <= c.acquired_at <= world.until
        assert c.footprint is None or c.footprint.intersects(info.footprint)
        assert c.cloud_cover is None or c.cloud_cover <= info.max_cloud
        json.dumps(c.remote)  # stored as JSONB
    if world.server:
        assert world.server.unmatched == []


def test_recording_is_idempotent(engine, world):
    metrics = Metrics()
    with transaction(engine) as s:
        before = s.query(Scene).count()
        new = search_scenes(s, s.get(Area, world.area_id), world.settings, metrics, world.since, world.until)
    assert len(new) == world.expect_found and {x.status for x in new} == {"found"}
    assert {x.provider for x in new} == {world.name}
    with transaction(engine) as s:
        assert search_scenes(s, s.get(Area, world.area_id), world.settings, metrics, world.since, world.until) == []
        assert s.query(Scene).count() == before + world.expect_found
    assert metrics.registry.get_sample_value("monitor_scenes_found_total",
                                             {"area": "contract", "provider": world.name}) == world.expect_found


def test_unreachable_endpoint_is_a_provider_error(engine, world):
    area = area_of(engine, world)
    dead_settings, folder = world.unreachable()
    info = AreaInfo(area.id, area.name, area_info(area, world.name).footprint, area.max_cloud, folder)
    with pytest.raises(ProviderError) as e:
        get_provider(world.name, dead_settings, info).search(info, world.since, world.until)
    assert e.value.provider == world.name and str(e.value).startswith(f"{world.name}: ")


def test_fetch_contract(engine, world):
    if world.fetchable is None:
        with transaction(engine) as s:
            world.fetchable = search_scenes(s, s.get(Area, world.area_id), world.settings, Metrics(),
                                            world.since, world.until)[0].id
    metrics = Metrics()
    scene = fetch_scene(engine, world.fetchable, world.settings, metrics)
    assert scene.status == world.fetch_status and scene.attempts == (0 if scene.status == "prepared" else 1)
    data = Path(world.settings.data_dir)
    assert not [p for p in (data / "downloads").rglob("*") if p.is_file()] if (data / "downloads").exists() else True
    if scene.status == "prepared":
        grid = grid_for(area_of(engine, world), world.settings)
        with rasterio.open(scene.file_path) as ds:
            assert ds.transform == grid.transform and ds.shape == grid.shape and ds.crs.to_epsg() == grid.crs
        assert scene.checksum and scene.size_bytes == Path(scene.file_path).stat().st_size
        assert 0 <= scene.cloud_cover <= 100 and scene.remote["files"]
    else:
        assert world.fetch_reason in scene.status_reason and scene.file_path is None
        assert not (data / "scenes").exists() or not [p for p in (data / "scenes").rglob("*") if p.is_file()]


def test_missing_product_fails_alone(engine, world):
    with transaction(engine) as s:
        gone = Scene(area_id=world.area_id, provider=world.name, product_id="gone_20180101.tif",
                     acquired_at=world.since, remote=world.missing, status="found")
        s.add(gone)
        s.flush()
        gone_id = gone.id
    scene = fetch_scene(engine, gone_id, world.settings.model_copy(update={"download_retries": 2}), Metrics())
    assert scene.status == "failed" and scene.status_reason and scene.file_path is None
    data = Path(world.settings.data_dir)
    assert not data.exists() or not [p for p in data.rglob("*") if p.is_file()]
