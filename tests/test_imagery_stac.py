"""The ``stac`` provider against real recorded STAC API sessions (Earth Search, Planetary Computer,
Copernicus Data Space), and end to end on a real Sentinel-2 L2A scene stored as COGs behind its real
Item, served from 127.0.0.1 by a server that drops the connection mid-file once."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest
import rasterio
from geoalchemy2.shape import to_shape
from pystac_client import Client
from shapely.geometry import box, shape

from monitor.db.engine import transaction
from monitor.db.tables import Area, Model, Scene
from monitor.errors import ProviderError
from monitor.imagery.base import AreaInfo
from monitor.imagery.prepare import SCL_CLEAR, area_mask, clear_path_for
from monitor.imagery.service import fetch_scene, grid_for, search_scenes
from monitor.imagery.stac import StacProvider, band_assets, decode_multihash
from monitor.metrics import Metrics
from tests.replay import Replay
from tests.test_imagery_local import make_area

pytestmark = pytest.mark.realdata
UTC = dt.timezone.utc
ES_SEARCH = "xcube-stac/test_store/StacDataStoreTest.test_search_data_searchable_catalog.yaml"
ES_QUERY = "xcube-stac/historical-0a09f8e/test_store/StacDataStoreTest.test_open_data_stack_mode.yaml"
CDSE_SEARCH = "xcube-stac/test_store/StacDataStoreTest.test_search_data_cdse_sentinel_2.yaml"
ES_FILTER = "pystac-client/test_cli/TestCLISearch.test_filter[inprocess].yaml"
ES_404 = "pystac-client/test_client/test_get_collection_returns_none_if_not_found.yaml"
KEY = "sentinel-s2-l2a-cogs/29/R/KH/2020/2/S2A_29RKH_20200219_0_L2A"


@pytest.fixture
def stac(shared_data):
    root = shared_data / "stac_recordings"
    servers = []

    def start(*cassettes: str, **kw) -> Replay:
        r = Replay([root / "cassettes" / c for c in cassettes], **kw).start()
        servers.append(r)
        return r

    start.root = root
    yield start
    for r in servers:
        r.close()


def provider(settings, server: Replay, path: str = "/v1", **kw) -> StacProvider:
    return StacProvider(settings.model_copy(update={"stac_url": server.url + path, "http_timeout_s": 5, **kw}))


def day(y, m, d, end=False):
    return dt.datetime(y, m, d, 23, 59, 59, tzinfo=UTC) if end else dt.datetime(y, m, d, tzinfo=UTC)


# --- searches against the recordings -------------------------------------------------------------

def test_earth_search_bbox_datetime_and_paging(settings, stac):
    server = stac(ES_SEARCH)
    p = provider(settings, server)
    found = p.search(AreaInfo(1, "alps", box(9, 47, 10, 48), 100), day(2020, 3, 1), day(2020, 3, 5, end=True))
    assert server.unmatched == []
    assert len(found) == 16 and len({c.product_id for c in found}) == 16
    assert [r.method for r in server.requests_to("/v1/search")] == ["POST"] * 3  # two pages and an empty one
    assert all(day(2020, 3, 1) <= c.acquired_at <= day(2020, 3, 5, end=True) for c in found)
    first = found[0]
    assert first.product_id == "S2A_32TMT_20200305_1_L2A" and first.cloud_cover == pytest.approx(99.9852)
    assert first.remote["assets"]["B02"]["key"] == "blue" and first.remote["assets"]["SCL"]["key"] == "scl"
    assert first.remote["assets"]["B08"]["href"].endswith("/B08.tif")
    # the cloud limit is enforced here: 16 very cloudy scenes, and only those under 96 % remain
    fewer = p.search(AreaInfo(1, "alps", box(9, 47, 10, 48), 96), day(2020, 3, 1), day(2020, 3, 5, end=True))
    assert sorted(c.product_id for c in fewer) == sorted(c.product_id for c in found if c.cloud_cover <= 96)
    assert 0 < len(fewer) < 16


def test_query_extension_and_client_side_cloud(settings, stac):
    server = stac(ES_QUERY)
    p = provider(settings, server, stac_query='{"s2:processing_baseline": {"eq": "02.14"}}')
    found = p.search(AreaInfo(1, "alps", box(9, 47, 10, 48), 50), day(2020, 7, 1), day(2020, 7, 5, end=True))
    assert server.unmatched == []
    body = json.loads(server.requests_to("/v1/search")[0].body)
    assert body["query"] == {"s2:processing_baseline": {"eq": "02.14"}}
    # the server applied the query (8 items, 9.3 % to 99.4 % cloudy); 4 are under 50 %
    assert sorted((c.product_id, c.cloud_cover) for c in found) == [
        ("S2B_32TMT_20200705_0_L2A", 9.336263), ("S2B_32TNT_20200705_0_L2A", 29.927673),
        ("S2B_32UMU_20200705_0_L2A", 44.90251), ("S2B_32UNU_20200705_0_L2A", 36.537333)]


def test_copernicus_data_space_assets(settings, stac):
    server = stac(CDSE_SEARCH)
    found = provider(settings, server).search(AreaInfo(1, "x", box(9, 47, 9.1, 47.1), 100), day(2020, 7, 1),
                                              day(2020, 7, 5, end=True))
    assert server.unmatched == [] and len(found) == 4
    a = found[0].remote["assets"]
    # s3:// hrefs are replaced by their https alternates; the finest resolution of each band is used
    assert a["B02"]["key"] == "B02_10m" and a["B05"]["key"] == "B05_20m" and a["SCL"]["key"] == "SCL_20m"
    assert a["B02"]["href"].startswith("https://zipper.dataspace.copernicus.eu/odata/v1/Products(")
    assert a["B02"]["size"] == 118720689 and a["B02"]["checksum"][0] == "sha3-256"
    assert len(a["B02"]["checksum"][1]) == 64


def test_multihash_checksums():
    assert decode_multihash("1620" + "ab" * 32) == ("sha3-256", "ab" * 32)
    assert decode_multihash("d50110" + "cd" * 16) == ("md5", "cd" * 16)
    assert decode_multihash("1220" + "ef" * 32) == ("sha256", "ef" * 32)
    assert decode_multihash("1620abcd") is None and decode_multihash("zz") is None and decode_multihash(None) is None


def test_ignored_cloud_filter_is_enforced_here(settings, stac):
    """Earth Search ignored this CQL2 cloud filter (it does not support FILTER): items over the
    limit came back, and the provider drops them."""
    server = stac(ES_FILTER)
    with pytest.warns(Warning):
        search = Client.open(server.url + "/v1").search(
            filter={"op": "lte", "args": [{"property": "eo:cloud_cover"}, 40]}, filter_lang="cql2-json",
            max_items=20)
        items = [i.to_dict() for i in search.items()]
    assert server.unmatched == [] and len(items) == 20
    clouds = [i["properties"].get("eo:cloud_cover") for i in items]
    assert max(c for c in clouds if c is not None) > 40  # what the server ignored
    kept = provider(settings, server).candidates(items, AreaInfo(1, "world", box(-180, -90, 180, 90), 40))
    assert all(c.cloud_cover is None or c.cloud_cover <= 40 for c in kept)
    assert len(kept) == sum(c is None or c <= 40 for c in clouds)


def test_not_found_and_timeout(settings, stac):
    server = stac(ES_404)
    with pytest.raises(ProviderError) as e:  # a STAC URL that is not an API root
        provider(settings, server, path="/v1/collections/foo").search(
            AreaInfo(1, "x", box(9, 47, 10, 48), 100), day(2020, 3, 1), day(2020, 3, 5))
    assert e.value.status == 404 and not e.value.retryable and "HTTP 404" in str(e.value)
    server.delay("/v1", 0.5)  # pystac-client retries read timeouts itself: every try is late
    with pytest.raises(ProviderError, match="timed out after 0.2s") as e:
        provider(settings, server, http_timeout_s=0.2).search(AreaInfo(1, "x", box(9, 47, 10, 48), 100),
                                                              day(2020, 3, 1), day(2020, 3, 5))
    assert e.value.retryable


def test_band_assets_of_a_planetary_computer_item(shared_data):
    item = json.loads((shared_data / "stac_recordings/items/odc-stac/"
                       "S2B_MSIL2A_20190629T212529_R043_T06VVN_20201006T080531.json").read_text())
    a = band_assets(item["assets"])
    assert {"B02", "B03", "B04", "B08"} <= set(a) and a["B02"]["key"] == "B02"


# --- end to end on the real L2A scene ------------------------------------------------------------

@pytest.fixture
def cog_server(stac):
    """A STAC API on 127.0.0.1: the real Earth Search landing page, a search that answers with the
    real Item of the stored scene when it matches, and the COGs under their S3 key."""
    cogs = stac.root / "cogs" / "sentinel-cogs"
    item = json.loads((cogs / KEY / "S2A_29RKH_20200219_0_L2A.json").read_text())

    def search(inc):
        q = inc.json()
        start, end = (dt.datetime.fromisoformat(t.replace("Z", "+00:00")) for t in q["datetime"].split("/"))
        hit = box(*q["bbox"]).intersects(shape(item["geometry"])) and \
            start <= dt.datetime.fromisoformat(item["properties"]["datetime"].replace("Z", "+00:00")) <= end
        return 200, {"Content-Type": "application/geo+json"}, {
            "type": "FeatureCollection", "features": [item] if hit else [], "links": []}

    server = stac(ES_SEARCH, files={"/sentinel-cogs/": cogs}, routes={("POST", "/v1/search"): search})
    server.rewrites["https://sentinel-cogs.s3.us-west-2.amazonaws.com"] = server.url + "/sentinel-cogs"
    return server


# 39 km x 39 km in the tile's cloudy north-east (UTM 29N); prepared at the COGs' 100 m
AREA_29N = box(260000, 2760000, 299000, 2799000)


def scl_cloud_percent(scl_path, area_utm) -> float:
    """Cloud/nodata share of the area straight from the SCL: its pixels whose centres lie inside."""
    with rasterio.open(scl_path) as src:
        scl = src.read(1)
        rows, cols = np.mgrid[0:src.height, 0:src.width]
        xs, ys = rasterio.transform.xy(src.transform, rows.ravel(), cols.ravel())
    inside = ((np.asarray(xs) > area_utm.bounds[0]) & (np.asarray(xs) < area_utm.bounds[2])
              & (np.asarray(ys) > area_utm.bounds[1]) & (np.asarray(ys) < area_utm.bounds[3]))
    return 100 * float((~np.isin(scl.ravel()[inside], SCL_CLEAR)).mean())


def test_real_scene_end_to_end(engine, settings, cog_server, stac):
    s = settings.model_copy(update={"stac_url": cog_server.url + "/v1", "download_backoff_s": 0.01})
    area_id = make_area(engine, "sahara", AREA_29N, 32629, providers=("stac",), max_cloud=20, resolution_m=100)
    strict_id = make_area(engine, "strict", AREA_29N, 32629, providers=("stac",), max_cloud=10, resolution_m=100)
    cog_server.drop(f"/sentinel-cogs/{KEY}/B04.tif", after=1_200_000)
    metrics = Metrics()
    with transaction(engine) as session:
        new = search_scenes(session, session.get(Area, area_id), s, metrics, since=dt.date(2020, 2, 1),
                            until=dt.date(2020, 2, 29))
        strict = search_scenes(session, session.get(Area, strict_id), s, metrics, since=dt.date(2020, 2, 1),
                               until=dt.date(2020, 2, 29))
        assert search_scenes(session, session.get(Area, area_id), s, metrics, since=dt.date(2020, 2, 1)) == []
    assert [x.product_id for x in new] == ["S2A_29RKH_20200219_0_L2A"] and len(strict) == 1
    assert new[0].remote["scene_cloud_cover"] == pytest.approx(4.051854)

    scene = fetch_scene(engine, new[0].id, s, metrics)
    assert scene.status == "prepared", scene.status_reason
    # B04 was cut off mid-file once; the download resumed from where it stopped and verified
    b04 = [r.headers.get("Range") for r in cog_server.requests_to(f"/sentinel-cogs/{KEY}/B04.tif")]
    assert b04[0] is None and b04[1].startswith("bytes=") and len(b04) == 2
    files = scene.remote["files"]
    assert set(files) == {"B02", "B03", "B04", "B08", "SCL"} and files["B04"]["verified_by"] == "etag"
    assert files["B04"]["size"] == (stac.root / "cogs/sentinel-cogs" / KEY / "B04.tif").stat().st_size
    assert metrics.registry.get_sample_value("monitor_download_bytes_total", {"provider": "stac"}) == sum(
        f["size"] for f in files.values())
    # the cloud fraction over the area comes from the SCL, and agrees with the SCL read directly
    expected = scl_cloud_percent(stac.root / "cogs/sentinel-cogs" / KEY / "SCL.tif", AREA_29N)
    assert 5 < expected < 20 and scene.cloud_cover == pytest.approx(expected, abs=1.5)
    with transaction(engine) as session:
        grid = grid_for(session.get(Area, area_id), s)
        clear = to_shape(session.get(Scene, scene.id).clear_geom)
        footprint = to_shape(session.get(Area, area_id).footprint)
    assert clear.area / footprint.area == pytest.approx(1 - scene.cloud_cover / 100, abs=0.01)
    with rasterio.open(scene.file_path) as ds, rasterio.open(stac.root / "cogs/sentinel-cogs" / KEY / "B04.tif") as src:
        assert ds.transform == grid.transform and ds.crs.to_epsg() == 32629 and ds.shape == grid.shape
        assert ds.descriptions == ("B02", "B03", "B04", "B08") and ds.nodata == 0 and ds.dtypes[0] == "uint16"
        # the area's 100 m grid is offset by 20 m from the tile's: values agree after bilinear resampling
        ours = ds.read(3)[10:-10, 10:-10].astype(float)
        left, top = ds.transform.c + 10 * 100, ds.transform.f - 10 * 100
        win = rasterio.windows.from_bounds(left, top - ours.shape[0] * 100, left + ours.shape[1] * 100, top,
                                           transform=src.transform)
        theirs = src.read(1, window=win.round_offsets().round_lengths()).astype(float)
        h, w = min(ours.shape[0], theirs.shape[0]), min(ours.shape[1], theirs.shape[1])
        assert np.corrcoef(ours[:h, :w].ravel(), theirs[:h, :w].ravel())[0, 1] > 0.9
    with rasterio.open(clear_path_for(scene.file_path)) as m:
        assert m.transform == grid.transform and m.dtypes[0] == "uint8"
        inside = area_mask(footprint, grid)
        clear_px = m.read(1).astype(bool)
        assert not clear_px[~inside].any()
        assert 100 * (1 - clear_px.sum() / inside.sum()) == pytest.approx(scene.cloud_cover, abs=1e-3)

    # the same scene over the stricter area is skipped, with the fraction given
    skipped = fetch_scene(engine, strict[0].id, s, metrics)
    assert skipped.status == "skipped" and skipped.cloud_cover == pytest.approx(scene.cloud_cover)
    assert f"{scene.cloud_cover:.1f}%" in skipped.status_reason and skipped.file_path is None
    assert not any((s.data_dir / "downloads").rglob("*.*"))


def test_asset_that_404s(engine, settings, cog_server):
    """A model that needs B05: the Item lists it, but the server has no such file."""
    s = settings.model_copy(update={"stac_url": cog_server.url + "/v1"})
    area_id = make_area(engine, "sahara", AREA_29N, 32629, providers=("stac",), max_cloud=20, resolution_m=100)
    with transaction(engine) as session:
        m = Model(kind="segmenter", version="v5", path="/m", meta={"bands": ["B02", "B05"]})
        session.add(m)
        session.flush()
        area = session.get(Area, area_id)
        area.segmenter_model_id = m.id
        new = search_scenes(session, area, s, Metrics(), since=dt.date(2020, 2, 1), until=dt.date(2020, 2, 29))
    metrics = Metrics()
    scene = fetch_scene(engine, new[0].id, s, metrics)
    assert scene.status == "failed" and "HTTP 404" in scene.status_reason and "B05.tif" in scene.status_reason
    assert metrics.registry.get_sample_value("monitor_scenes_failed_total",
                                             {"area": "sahara", "provider": "stac", "reason": "http_404"}) == 1
    assert not [p for p in s.data_dir.rglob("*") if p.is_file()]
