"""The ``sentinelsat`` provider driven through real recorded sessions of the Copernicus DHuS API,
replayed from 127.0.0.1: searches with cloud cover and paging, product info with checksums,
downloads (resumed after a dropped connection), the long-term archive (202), 401, 404, 500."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re

import pytest
import shapely
from geoalchemy2.shape import from_shape
from pydantic import SecretStr
from shapely.geometry import Polygon, box

from monitor.db.engine import transaction
from monitor.db.tables import Area, Scene
from monitor.errors import ImageryError, ProviderError
from monitor.geo import as_multipolygon
from monitor.imagery.base import AreaInfo
from monitor.imagery.sentinelsat_ import SentinelsatProvider
from monitor.imagery.service import fetch_scene, pending_scenes, search_scenes
from monitor.metrics import Metrics
from tests.replay import Replay, recorded_response

pytestmark = pytest.mark.realdata
UTC = dt.timezone.utc
PASSWORD = "not-the-real-pw-7f3a"
S3A_UUID = "b1d8a9ab-6072-4ecd-bc44-8d64419d71cb"
S3A_TITLE = "S3A_SR_1_SRA____20230309T204558_20230309T204623_20230309T225028_0024_096_214______PS1_O_NR_004"
S3A_MD5 = "1495b98f859949929b14c1b7cd62dffc"


def dhus_query(r1, r2) -> None:
    """vcrpy-style query matcher that compares the footprint of a DHuS ``q`` as geometry: the
    recordings wrote one area as GEOMETRYCOLLECTION(POLYGON(...)), others as POLYGON(...)."""
    def norm(query):
        q = dict(query)
        m = re.search(r'footprint:"(\w+)\((.*)\)"', q.get("q", ""))
        if m:
            g = shapely.normalize(shapely.from_wkt(m.group(2)))
            if g.geom_type == "GeometryCollection" and len(g.geoms) == 1:
                g = g.geoms[0]
            q["q"] = q["q"][:m.start()] + f'footprint:"{m.group(1).lower()}({g.wkt})"' + q["q"][m.end():]
        return q

    if norm(r1.query) != norm(r2.query):
        raise AssertionError(f"{norm(r1.query)} != {norm(r2.query)}")


@pytest.fixture
def dhus(shared_data):
    root = shared_data / "dhus_recordings" / "cassettes"
    servers = []

    def start(*names: str) -> Replay:
        r = Replay([root / f"{n}.yaml" for n in names], data_dir=root / "data",
                   match_on=("method", "path", dhus_query, "body", "range")).start()
        servers.append(r)
        return r

    start.root = root
    yield start
    for r in servers:
        r.close()


def dhus_settings(settings, server: Replay, **kw):
    return settings.model_copy(update={"dhus_url": f"{server.url}/apihub/", "dhus_user": "monitor",
                                       "dhus_password": SecretStr(PASSWORD), "dhus_product_type": "",
                                       "http_timeout_s": 5,
                                       "download_backoff_s": 0.01, "download_backoff_max_s": 0.02, **kw})


def add_area(engine, footprint, name="hub", providers=("sentinelsat",), max_cloud=10.0, sources=None) -> int:
    from monitor.geo import utm_epsg_for

    with transaction(engine) as s:
        a = Area(name=name, footprint=from_shape(as_multipolygon(footprint), srid=4326),
                 utm_epsg=utm_epsg_for(footprint), cadence=dt.timedelta(days=5), providers=list(providers),
                 sources=sources or {}, max_cloud=max_cloud)
        s.add(a)
        s.flush()
        return a.id


def add_scene(engine, area_id: int, uuid: str, title: str) -> int:
    with transaction(engine) as s:
        sc = Scene(area_id=area_id, provider="sentinelsat", product_id=title, remote={"uuid": uuid},
                   acquired_at=dt.datetime(2023, 3, 9, tzinfo=UTC), status="found")
        s.add(sc)
        s.flush()
        return sc.id


def map_area(shared_data):
    doc = json.loads((shared_data / "dhus_recordings" / "map.geojson").read_text())
    return shapely.from_geojson(json.dumps(doc["features"][0]["geometry"]))


# --- search --------------------------------------------------------------------------------------

def test_search_with_cloud_cover(engine, settings, dhus, shared_data, caplog):
    caplog.set_level(logging.DEBUG)
    server = dhus("test_s2_cloudcover")
    area_id = add_area(engine, map_area(shared_data), max_cloud=10)
    s2 = dhus_settings(settings, server)
    metrics = Metrics()
    with transaction(engine) as s:
        new = search_scenes(s, s.get(Area, area_id), s2, metrics,
                            since=dt.datetime(2018, 12, 12, tzinfo=UTC), until=dt.datetime(2018, 12, 28, tzinfo=UTC))
        found = [(x.product_id, x.acquired_at, x.remote["scene_cloud_cover"], x.remote["uuid"]) for x in new]
    assert server.unmatched == []
    assert len(found) == 5
    assert ("S2B_MSIL1C_20181219T142029_N0207_R010_T20MPS_20181219T160056",
            dt.datetime(2018, 12, 19, 14, 20, 29, 24000, tzinfo=UTC), 3.6476,
            "bf652bc4-299c-4c39-9238-ee5a3fdc0d3e") in found
    assert all(0 <= c <= 10 for _, _, c, _ in found)
    assert [f[1] for f in found] == sorted(f[1] for f in found)
    # the query asked the hub for cloud cover, platform and the area; credentials went as Basic auth
    q = server.log[0].path
    assert "cloudcoverpercentage%3A%5B%220%22+TO+%2210%22%5D" in q and "platformname%3A%22Sentinel-2%22" in q
    assert server.log[0].headers["Authorization"].startswith("Basic ")
    with transaction(engine) as s:
        assert search_scenes(s, s.get(Area, area_id), s2, metrics, since=dt.datetime(2018, 12, 12, tzinfo=UTC),
                             until=dt.datetime(2018, 12, 28, tzinfo=UTC)) == []
        footprints = s.scalar(Scene.__table__.select().with_only_columns(
            Scene.footprint.ST_IsValid().is_(True)).limit(1))
    assert footprints
    assert metrics.registry.get_sample_value("monitor_scenes_found_total",
                                             {"area": "hub", "provider": "sentinelsat"}) == 5
    assert PASSWORD not in caplog.text


def test_search_pages_through_results(settings, dhus):
    server = dhus("test_large_query")
    p = SentinelsatProvider(dhus_settings(settings, server, dhus_platform=""))
    area = AreaInfo(1, "x", Polygon([(0, 0), (0, 10), (10, 10), (10, 0)]), 100)
    found = p.search(area, dt.datetime(2015, 12, 1, tzinfo=UTC), dt.datetime(2015, 12, 31, tzinfo=UTC))
    # the hub returned 630 products over 7 pages; 3 of them lie just off the area (its spatial
    # index is lenient, by up to 0.03 degrees) and are dropped
    assert len(found) == 627 == len({c.remote["uuid"] for c in found})
    assert all(c.footprint.intersects(area.footprint) for c in found)
    starts = [re.search(r"start=(\d+)", r.path).group(1) for r in server.log]
    assert starts == ["0", "100", "200", "300", "400", "500", "600"]
    assert server.unmatched == []


def test_wrong_credentials_fall_over_to_the_next_provider(engine, settings, dhus, tmp_path):
    from tests.test_imagery_local import write_scene

    server = dhus("test_SentinelAPI_wrong_credentials")
    drops = tmp_path / "drops"
    drops.mkdir()
    # a local drop folder over the same triangle, as the second provider
    write_scene(drops / "tri_20150101.tif", epsg=32631, x0=160000, y1=111000, size=(100, 100), res=100)
    area_id = add_area(engine, Polygon([(0, 0), (1, 1), (0, 1)]), providers=("sentinelsat", "local"),
                       sources={"local": str(drops)}, max_cloud=100)
    metrics = Metrics()
    with transaction(engine) as s:
        new = search_scenes(s, s.get(Area, area_id), dhus_settings(settings, server, dhus_platform=""), metrics,
                            since=dt.datetime(2015, 1, 1, tzinfo=UTC), until=dt.datetime(2015, 1, 2, tzinfo=UTC))
    assert [x.provider for x in new] == ["local"]
    assert server.unmatched == [] and len(server.log) == 1
    v = metrics.registry.get_sample_value
    assert v("monitor_provider_errors_total", {"provider": "sentinelsat", "operation": "search"}) == 1
    assert v("monitor_provider_failovers_total",
             {"area": "hub", "from_provider": "sentinelsat", "to_provider": "local"}) == 1
    p = SentinelsatProvider(dhus_settings(settings, server, dhus_platform=""))
    with pytest.raises(ProviderError) as e:
        p.search(AreaInfo(1, "x", Polygon([(0, 0), (1, 1), (0, 1)]), 100), dt.datetime(2015, 1, 1, tzinfo=UTC),
                 dt.datetime(2015, 1, 2, tzinfo=UTC))
    assert e.value.status == 401 and not e.value.retryable
    assert "invalid user name or password" in str(e.value) and PASSWORD not in str(e.value)


def test_server_error_and_timeout(settings, dhus):
    server = dhus("test_small_query")
    area = AreaInfo(1, "x", Polygon([(0, 0), (1, 1), (0, 1)]), 100)
    when = dt.datetime(2015, 1, 1, tzinfo=UTC), dt.datetime(2015, 1, 2, tzinfo=UTC)
    p = SentinelsatProvider(dhus_settings(settings, server, dhus_platform=""))
    assert p.search(area, *when) == []  # the recorded answer: no products
    # the hub's real 500 (its Solr backend refusing a query), served for the same search
    server.inject("GET", "/apihub/search", recorded_response(dhus.root / "test_too_long_query.yaml", "GET", "search",
                                                             status=500))
    with pytest.raises(ProviderError) as e:
        p.search(area, *when)
    assert e.value.status == 500 and e.value.retryable and "HTTP 500" in str(e.value)
    server.delay("/apihub/search", 1.0, times=1)
    slow = SentinelsatProvider(dhus_settings(settings, server, dhus_platform="", http_timeout_s=0.3))
    with pytest.raises(ProviderError, match="timed out") as e:
        slow.search(area, *when)
    assert e.value.retryable


# --- product info, download, offline, failures ---------------------------------------------------

def test_download_verifies_the_odata_md5_and_resumes(settings, dhus, tmp_path):
    server = dhus("test_download")
    metrics = Metrics()
    p = SentinelsatProvider(dhus_settings(settings, server), metrics=metrics)
    server.drop(f"/apihub/odata/v1/Products('{S3A_UUID}')/$value", after=250_000)
    got = p.download(S3A_TITLE, {"uuid": S3A_UUID}, tmp_path / "work")
    assert got.verified_by == "md5" and got.checksums["md5"] == S3A_MD5 and got.size == 599540
    assert got.path == tmp_path / "work" / f"{S3A_TITLE}.zip"
    ranges = [r.headers.get("Range") for r in server.log if r.path.endswith("/$value")]
    assert ranges[0] is None and re.fullmatch(r"bytes=\d+-", ranges[1])
    assert 0 < int(ranges[1][6:-1]) <= 250_000
    # the second request fetched only the rest: every byte was downloaded once
    assert metrics.registry.get_sample_value("monitor_download_bytes_total", {"provider": "sentinelsat"}) == 599540
    assert sorted(x.name for x in (tmp_path / "work").iterdir()) == [got.path.name]
    assert server.unmatched == []
    # downloaded and verified, but not Sentinel-2 imagery: preparation refuses it clearly
    with pytest.raises(ImageryError, match="holds no Sentinel-2 band B02"):
        p.fetch(S3A_TITLE, {"uuid": S3A_UUID}, ["B02"], tmp_path / "work2")


def test_offline_product_requests_retrieval_and_waits(engine, settings, dhus):
    server = dhus("test_download_all_lta")
    uuid, title = "0cbef871-b908-4410-a197-af0888ad048c", "S3A_OL_2_LFR____20161127T173119"
    area_id = add_area(engine, box(-60, -10, -50, 0))
    scene_id = add_scene(engine, area_id, uuid, title)
    s2 = dhus_settings(settings, server, offline_retry_s=7200)
    before = dt.datetime.now(UTC)
    scene = fetch_scene(engine, scene_id, s2, Metrics())
    assert scene.status == "offline" and "long-term archive" in scene.status_reason
    assert dt.timedelta(hours=1.9) < scene.next_attempt_at - before < dt.timedelta(hours=2.1)
    # sentinelsat asks for two bytes to trigger the retrieval; the hub answered 202
    trigger = [r for r in server.log if r.path.endswith("/$value")]
    assert len(trigger) == 1 and trigger[0].headers.get("Range") == "bytes=0-1"
    with transaction(engine) as s:
        area = s.get(Area, area_id)
        assert pending_scenes(s, area) == []
        s.get(Scene, scene_id).next_attempt_at = dt.datetime.now(UTC) - dt.timedelta(minutes=1)
    with transaction(engine) as s:
        assert [x.id for x in pending_scenes(s, s.get(Area, area_id))] == [scene_id]
    assert not (settings.data_dir / "downloads").exists() or not any((settings.data_dir / "downloads").rglob("*.*"))


@pytest.mark.parametrize("fault", ["not_found", "wrong_checksum", "not_sentinel2", "truncated"])
def test_failed_fetches_are_recorded_and_leave_nothing(engine, settings, dhus, tmp_path, fault):
    if fault == "not_found":
        server = dhus("test_download_invalid_id")
        uuid, title = "1f62a176-c980-41dc-xxxx-c735d660c910", "missing-product"
    else:
        server = dhus("test_download")
        uuid, title = S3A_UUID, S3A_TITLE
    if fault == "wrong_checksum":  # the same bytes, one of them flipped in transit
        data = bytearray((dhus.root / "data" / f"{S3A_TITLE}.zip").read_bytes())
        data[300_000] ^= 0xFF
        (tmp_path / "flipped.zip").write_bytes(bytes(data))
        server.serve_body(f"{S3A_TITLE}.zip", tmp_path / "flipped.zip")
    if fault == "truncated":  # the connection drops at the same place on every try
        server.drop(f"/apihub/odata/v1/Products('{S3A_UUID}')/$value", after=100_000, times=None)
    area_id = add_area(engine, box(60, -1, 66, 2))
    scene_id = add_scene(engine, area_id, uuid, title)
    other_id = add_scene(engine, area_id, "another", "another-product")
    metrics = Metrics()
    scene = fetch_scene(engine, scene_id, dhus_settings(settings, server, download_retries=3), metrics)
    assert scene.status == "failed" and scene.attempts == 1
    reason, label = {"not_found": ("no such product", "http_404"),
                     "wrong_checksum": (f"checksum mismatch .*MD5 .*, expected {S3A_MD5}", "checksum"),
                     "not_sentinel2": ("holds no Sentinel-2 band", "imagery"),
                     "truncated": ("failed after 3 attempts", "download")}[fault]
    assert re.search(reason, scene.status_reason), scene.status_reason
    assert metrics.registry.get_sample_value("monitor_scenes_failed_total",
                                             {"area": "hub", "provider": "sentinelsat", "reason": label}) == 1
    assert scene.file_path is None and scene.checksum is None
    data_files = [p for p in settings.data_dir.rglob("*") if p.is_file()] if settings.data_dir.exists() else []
    assert data_files == []
    assert PASSWORD not in scene.status_reason
    # the failure was this scene's alone: the other one is still pending
    with transaction(engine) as s:
        assert [x.id for x in pending_scenes(s, s.get(Area, area_id))] == [other_id]

