"""The ``local`` provider, the acquisition service on its drop folders, and ``monitor scenes``."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil
import sqlalchemy as sa
from affine import Affine
from geoalchemy2.shape import from_shape, to_shape
from shapely.geometry import box

from monitor.db.engine import transaction
from monitor.db.tables import Area, Model, Scene
from monitor.errors import ProviderError
from monitor.geo import as_multipolygon, reproject
from monitor.imagery.base import AreaInfo, get_provider
from monitor.imagery.local import LocalProvider, acquisition_date, date_from_name, date_pattern
from monitor.imagery.service import fetch_scene, grid_for, model_bands, pending_scenes, search_scenes
from monitor.metrics import Metrics

UTC = dt.timezone.utc
# A 2 km x 1.5 km area near Buenos Aires (UTM 21S) and the 10 m rasters that cover it with room to spare.
EPSG = 32721
X0, Y0 = 314000.0, 6183400.0
AREA_UTM = box(X0, Y0, X0 + 2000, Y0 + 1500)
BANDS = ["B02", "B03", "B04", "B08"]


def make_area(engine, name: str = "ba", area_utm=AREA_UTM, epsg: int = EPSG, providers=("local",),
              sources: dict | None = None, max_cloud: float = 20.0, resolution_m: float | None = None) -> int:
    """An area row as the registry stores it (4326 footprint, UTM zone)."""
    footprint = as_multipolygon(reproject(area_utm.segmentize(100), epsg, 4326))
    with transaction(engine) as s:
        area = Area(name=name, footprint=from_shape(footprint, srid=4326), utm_epsg=epsg,
                    cadence=dt.timedelta(days=5), providers=list(providers), sources=sources or {},
                    max_cloud=max_cloud, resolution_m=resolution_m)
        s.add(area)
        s.flush()
        return area.id


def get(engine, model, ident):
    with transaction(engine) as s:
        return s.get(model, ident)


def write_scene(path: Path, *, cloud_rows: int = 0, epsg: int = EPSG, x0: float = X0 - 500, y1: float = Y0 + 2000,
                size: tuple[int, int] = (260, 310), res: float = 10.0, descriptions=BANDS, nodata=0, crs=True,
                tags: dict | None = None, seed: int = 0) -> Path:
    """A 4-band uint16 GeoTIFF as a drop folder receives it: top ``cloud_rows`` rows are clouds (nodata)."""
    rng = np.random.default_rng(seed)
    h, w = size
    data = rng.integers(200, 4000, size=(len(descriptions), h, w), dtype=np.uint16)
    data[:, :cloud_rows, :] = 0
    profile = dict(driver="GTiff", width=w, height=h, count=len(descriptions), dtype="uint16", nodata=nodata,
                   transform=Affine(res, 0, x0, 0, -res, y1), tiled=True, blockxsize=256, blockysize=256)
    if crs:
        profile["crs"] = f"EPSG:{epsg}"
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
        for i, d in enumerate(descriptions, 1):
            ds.set_band_description(i, d)
        if tags:
            ds.update_tags(**tags)
    return path


@pytest.fixture
def drops(tmp_path) -> Path:
    d = tmp_path / "drops"
    d.mkdir()
    return d


# --- dates and reading ---------------------------------------------------------------------------

@pytest.mark.parametrize("name, expected", [
    ("ba_20180115.tif", dt.datetime(2018, 1, 15)), ("2018-01-15_worldview.tif", dt.datetime(2018, 1, 15)),
    ("S2A_OPER_MSI_L1C_TL_MPS__20161130T130757_A007527_T31UDQ_B01.tif", dt.datetime(2016, 11, 30)),
    ("drone_mosaic.tif", None), ("ba_20181345.tif", None),
    ("global_monthly_2018_01_mosaic_L15-0357E-1223N_1429_3296_13.tif", dt.datetime(2018, 1, 1)),
    ("mosaic_2019-10.tif", dt.datetime(2019, 10, 1)), ("tile_3296_13.tif", None)])
def test_date_from_file_name(name, expected):
    assert date_from_name(name) == expected


def test_a_configured_date_pattern_comes_first():
    pattern = date_pattern(r"acq(?P<day>\d{2})(?P<month>\d{2})(?P<year>\d{4})")
    assert date_from_name("site_2020_05_acq17032021.tif", pattern) == dt.datetime(2021, 3, 17)
    assert date_from_name("site_2020_05.tif", pattern) == dt.datetime(2020, 5, 1)  # the built-in forms after it
    assert date_from_name("q_2021-07.tif", date_pattern(r"q_(?P<year>\d{4})-(?P<month>\d{2})")) == \
        dt.datetime(2021, 7, 1)
    with pytest.raises(ProviderError, match="named groups"):
        date_pattern(r"(\d{4})_(\d{2})")
    with pytest.raises(ProviderError, match="not a regular expression"):
        date_pattern(r"(?P<year>\d{4}")


def test_dates_from_tags_win_over_the_name(tmp_path):
    f = write_scene(tmp_path / "x_20180115.tif", tags={"TIFFTAG_DATETIME": "2019:03:04 10:11:12"})
    with rasterio.open(f) as src:
        assert acquisition_date(src, f.name) == dt.datetime(2019, 3, 4, 10, 11, 12, tzinfo=UTC)
    f = write_scene(tmp_path / "y_20180115.tif", tags={"ACQUISITIONDATETIME": "2017-06-01T09:30:00.5Z",
                                                       "TIFFTAG_DATETIME": "2019:03:04 10:11:12"})
    with rasterio.open(f) as src:
        assert acquisition_date(src, f.name) == dt.datetime(2017, 6, 1, 9, 30, 0, 500000, tzinfo=UTC)
    f = write_scene(tmp_path / "z_20180115.tif")
    with rasterio.open(f) as src:
        assert acquisition_date(src, f.name) == dt.datetime(2018, 1, 15, tzinfo=UTC)


def test_search_reports_and_skips_unusable_files(settings, drops):
    write_scene(drops / "ba_20180115.tif")
    write_scene(drops / "ba_20180301.tif", seed=1)
    write_scene(drops / "far_20180301.tif", epsg=32618)  # another zone: nowhere near the area
    (drops / "notes_20180201.tif").write_text("this is not a raster")
    write_scene(drops / "undated.tif")
    (drops / "readme.txt").write_text("ignored: not a GeoTIFF name")
    metrics = Metrics()
    fp = as_multipolygon(reproject(AREA_UTM, EPSG, 4326))
    info = AreaInfo(1, "ba", fp, 20.0, str(drops))
    found = LocalProvider(settings, source=str(drops), metrics=metrics).search(
        info, dt.datetime(2018, 1, 1, tzinfo=UTC), dt.datetime(2018, 12, 31, tzinfo=UTC))
    assert [c.product_id for c in found] == ["ba_20180115.tif", "ba_20180301.tif"]
    assert found[0].acquired_at == dt.datetime(2018, 1, 15, tzinfo=UTC)
    assert found[0].footprint.contains(fp)
    skipped = metrics.registry.get_sample_value
    assert skipped("monitor_scenes_skipped_total", {"area": "ba", "provider": "local", "reason": "unreadable"}) == 1
    assert skipped("monitor_scenes_skipped_total", {"area": "ba", "provider": "local", "reason": "no_date"}) == 1
    # the date range applies
    later = LocalProvider(settings, source=str(drops)).search(
        info, dt.datetime(2018, 2, 1, tzinfo=UTC), dt.datetime(2018, 12, 31, tzinfo=UTC))
    assert [c.product_id for c in later] == ["ba_20180301.tif"]


# --- the service on a drop folder ----------------------------------------------------------------

def test_search_fetch_prepare_and_skip_cloudy(engine, settings, drops):
    write_scene(drops / "ba_20180115.tif")
    write_scene(drops / "ba_20180301.tif", cloud_rows=150, seed=1)  # half of the area under cloud
    area_id = make_area(engine, sources={"local": str(drops)}, max_cloud=20)
    metrics = Metrics()
    with transaction(engine) as s:
        area = s.get(Area, area_id)
        # a drop folder is searched whole: files from 2018 are new although far older than the
        # search lookback
        new = search_scenes(s, area, settings, metrics)
        assert [(x.product_id, x.status) for x in new] == [("ba_20180115.tif", "found"), ("ba_20180301.tif", "found")]
        assert [x.id for x in pending_scenes(s, area)] == [x.id for x in new]
    with transaction(engine) as s:  # searching again finds nothing new
        assert search_scenes(s, s.get(Area, area_id), settings, metrics, since=dt.date(2018, 1, 1)) == []
    assert metrics.registry.get_sample_value("monitor_scenes_found_total", {"area": "ba", "provider": "local"}) == 2

    clear, cloudy = (fetch_scene(engine, x.id, settings, metrics) for x in new)
    assert clear.status == "prepared", clear.status_reason
    assert clear.cloud_cover == 0.0 and clear.size_bytes == Path(clear.file_path).stat().st_size
    path = Path(clear.file_path)
    assert path == (settings.data_dir / "scenes" / str(area_id) / "20180115_local_ba_20180115.tif").resolve()
    with transaction(engine) as s:
        grid = grid_for(s.get(Area, area_id), settings)
    with rasterio.open(path) as ds, rasterio.open(drops / "ba_20180115.tif") as src:
        assert ds.crs.to_epsg() == EPSG and ds.transform == grid.transform and ds.shape == grid.shape
        assert ds.descriptions == tuple(BANDS) and ds.nodata == 0 and ds.dtypes[0] == "uint16"
        assert ds.profile["tiled"] and ds.profile["compress"] == "deflate"
        # the source is on a 10 m grid aligned with the area's: pixels come through unchanged
        win = rasterio.windows.from_bounds(*grid.bounds, transform=src.transform)
        assert np.array_equal(ds.read(), src.read(window=win))
    with rasterio.open(path.with_name(path.stem + ".clear.tif")) as m:
        assert m.transform == grid.transform and m.dtypes[0] == "uint8"
        inside = to_shape(get(engine, Area, area_id).footprint)
        assert abs(m.read(1).sum() * 100 - reproject(inside, 4326, EPSG).area) < 0.01 * AREA_UTM.area
    assert to_shape(get(engine, Scene, clear.id).clear_geom).equals_exact(
        to_shape(get(engine, Area, area_id).footprint), 1e-6) or \
        abs(to_shape(get(engine, Scene, clear.id).clear_geom).area / inside.area - 1) < 0.01

    # clouds (nodata) over rows 0-149 of 310, i.e. y > Y0 + 2000 - 1500: the top 1000 m of the 1500 m area
    assert cloudy.status == "skipped"
    assert abs(cloudy.cloud_cover - 100 * 1000 / 1500) < 1.0
    assert f"{cloudy.cloud_cover:.1f}%" in cloudy.status_reason and "20%" in cloudy.status_reason
    assert cloudy.file_path is None and not list(path.parent.glob("20180301*"))
    assert not (settings.data_dir / "downloads").exists() or not any((settings.data_dir / "downloads").rglob("*.*"))
    assert metrics.registry.get_sample_value("monitor_scenes_skipped_total",
                                             {"area": "ba", "provider": "local", "reason": "cloud"}) == 1
    # the newest scene metric counts processed scenes, not fetched ones
    assert metrics.registry.get_sample_value("monitor_newest_scene_timestamp_seconds", {"area": "ba"}) is None
    # fetching a prepared scene again changes nothing
    assert fetch_scene(engine, clear.id, settings, metrics).file_path == clear.file_path
    with transaction(engine) as s:
        assert pending_scenes(s, s.get(Area, area_id)) == []


def test_bad_rasters_fail_alone(engine, settings, drops):
    write_scene(drops / "good_20180115.tif")
    write_scene(drops / "nocrs_20180116.tif", crs=False)
    # a COG keeps its header in front: cut short, it opens but its pixels cannot be read
    full = write_scene(drops.parent / "full.tif", size=(600, 600), x0=X0 - 1000, y1=Y0 + 3000)
    rasterio.shutil.copy(full, drops.parent / "full_cog.tif", driver="COG")
    data = (drops.parent / "full_cog.tif").read_bytes()
    (drops / "cut_20180117.tif").write_bytes(data[: len(data) // 3])
    # a plain GeoTIFF cut short loses its header: it is not a raster at all, and is skipped
    (drops / "cutplain_20180118.tif").write_bytes(full.read_bytes()[: full.stat().st_size // 3])
    area_id = make_area(engine, sources={"local": str(drops)})
    with transaction(engine) as s:
        new = search_scenes(s, s.get(Area, area_id), settings, Metrics(), since=dt.date(2018, 1, 1),
                            until=dt.date(2018, 1, 31))
    ids = {x.product_id: x.id for x in new}
    assert sorted(ids) == ["cut_20180117.tif", "good_20180115.tif", "nocrs_20180116.tif"]
    metrics = Metrics()
    out = {name: fetch_scene(engine, i, settings, metrics) for name, i in ids.items()}
    assert out["good_20180115.tif"].status == "prepared"
    assert out["nocrs_20180116.tif"].status == "failed"
    assert "has no CRS" in out["nocrs_20180116.tif"].status_reason
    assert out["cut_20180117.tif"].status == "failed"
    assert "cannot read cut_20180117.tif" in out["cut_20180117.tif"].status_reason
    assert metrics.registry.get_sample_value("monitor_scenes_failed_total",
                                             {"area": "ba", "provider": "local", "reason": "no_crs"}) == 1
    scenes_dir = settings.data_dir / "scenes" / str(area_id)
    assert sorted(p.name for p in scenes_dir.iterdir()) == ["20180115_local_good_20180115.clear.tif",
                                                            "20180115_local_good_20180115.tif"]
    assert not any((settings.data_dir / "downloads").rglob("*.*"))


def test_bands_follow_the_area_models(engine, settings, drops):
    write_scene(drops / "x_20180115.tif", descriptions=["B02", "B03", "B04", "B05", "B08"])
    area_id = make_area(engine, sources={"local": str(drops)})
    with transaction(engine) as s:
        seg = Model(kind="segmenter", version="s1", path="/m/s", meta={"bands": ["B08", "B04", "B03"]})
        cls = Model(kind="classifier", version="c1", path="/m/c", meta={"bands": ["B02", "B04", "B05"]})
        s.add_all([seg, cls])
        s.flush()
        area = s.get(Area, area_id)
        assert model_bands(s, area) == BANDS
        area.segmenter_model_id, area.classifier_model_id = seg.id, cls.id
        s.flush()
        assert model_bands(s, area) == ["B02", "B03", "B04", "B05", "B08"]
        scene = search_scenes(s, area, settings, Metrics(), since=dt.date(2018, 1, 1))[0]
        cls.meta = {"bands": ["B02", "B04"]}
    done = fetch_scene(engine, scene.id, settings, Metrics())
    with rasterio.open(done.file_path) as ds:
        assert ds.descriptions == ("B02", "B03", "B04", "B08")  # the segmenter's and the classifier's


def test_failover_to_the_next_provider(engine, settings, drops):
    write_scene(drops / "ba_20180115.tif")
    # the first provider's folder does not exist; the second (a local folder under another key) works
    area_id = make_area(engine, providers=("stac", "local"), sources={"local": str(drops)})
    metrics = Metrics()
    bad = settings.model_copy(update={"stac_url": "http://127.0.0.1:9/v1", "http_timeout_s": 2})
    with transaction(engine) as s:
        new = search_scenes(s, s.get(Area, area_id), bad, metrics, since=dt.date(2018, 1, 1))
    assert [(x.provider, x.product_id) for x in new] == [("local", "ba_20180115.tif")]
    v = metrics.registry.get_sample_value
    assert v("monitor_provider_errors_total", {"provider": "stac", "operation": "search"}) == 1
    assert v("monitor_provider_failovers_total", {"area": "ba", "from_provider": "stac", "to_provider": "local"}) == 1
    # every provider failing is an error naming the last one
    shutil.rmtree(drops)
    with transaction(engine) as s, pytest.raises(ProviderError, match="local: drop folder .* does not exist"):
        search_scenes(s, s.get(Area, area_id), bad, metrics, since=dt.date(2018, 1, 1))
    assert v("monitor_provider_errors_total", {"provider": "local", "operation": "search"}) == 1


def test_registry_builds_providers_lazily(settings):
    p = get_provider("local", settings, AreaInfo(1, "a", box(0, 0, 1, 1), 10, "/tmp/somewhere"))
    assert isinstance(p, LocalProvider) and p.folder == Path("/tmp/somewhere")
    from monitor.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown imagery provider 'planet'"):
        get_provider("planet", settings)


# --- the command ---------------------------------------------------------------------------------

def test_scenes_commands(cli, engine, drops, tmp_path):
    write_scene(drops / "ba_20180115.tif")
    write_scene(drops / "ba_20180301.tif", cloud_rows=150, seed=1)
    (drops / "broken_20180201.tif").write_bytes(b"II*\x00 not really a tiff")
    area_file = tmp_path / "ba.geojson"
    area_file.write_text(json.dumps({"type": "Feature", "properties": {},
                                     "geometry": reproject(AREA_UTM, EPSG, 4326).__geo_interface__}))
    cli("areas", "add", "ba", "--geometry", area_file, "--provider", "local", "--source", f"local={drops}")
    for sub in ("search", "fetch", "list"):
        assert "--area" in cli("scenes", sub, "--help").stdout
    out = cli("scenes", "search", "--area", "ba", "--since", "2018-01-01", "--until", "2018-06-30")
    assert "2 new scene(s)" in out.stdout and "ba_20180115.tif" in out.stdout
    assert "0 new scene(s)" in cli("scenes", "search", "--area", "ba", "--since", "2018-01-01").stdout
    out = cli("scenes", "fetch", "--area", "ba")
    assert "2 scene(s) fetched for 'ba': 1 prepared, 1 skipped, 0 offline, 0 failed" in out.stdout
    listing = json.loads(cli("scenes", "list", "--area", "ba", "--json").stdout)
    assert [(x["product_id"], x["status"]) for x in listing] == [("ba_20180115.tif", "prepared"),
                                                                 ("ba_20180301.tif", "skipped")]
    assert Path(listing[0]["file_path"]).exists() and len(listing[0]["checksum"]) == 64
    assert "prepared" in cli("scenes", "list", "--area", "ba", "--status", "prepared").stdout
    assert "0 scene(s) fetched" in cli("scenes", "fetch", "--area", "ba").stdout
    bad = cli("scenes", "search", "--area", "ba", "--since", "last tuesday", expect=2)
    assert "since" in bad.stderr
    assert "no area named 'nowhere'" in cli("scenes", "list", "--area", "nowhere", expect=2).stderr
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM scenes")).scalar() == 2


@pytest.mark.realdata
def test_buenos_aires_drop_folder(engine, settings, drops, shared_data):
    """The real before/after crop as a drop folder: both dates on the area's grid."""
    src = shared_data / "buenos_aires_lots"
    shutil.copy(src / "before.tif", drops / "ba_20170101.tif")
    shutil.copy(src / "after.tif", drops / "ba_20190101.tif")
    with rasterio.open(src / "before.tif") as ds:
        bounds = ds.bounds
    area_utm = box(bounds.left + 300, bounds.bottom + 300, bounds.right - 300, bounds.top - 300)
    area_id = make_area(engine, area_utm=area_utm, sources={"local": str(drops)})
    with transaction(engine) as s:
        new = search_scenes(s, s.get(Area, area_id), settings, Metrics(), since=dt.date(2016, 1, 1))
    # its bands carry no names: never read by position, the scenes fail until the area says which is which
    metrics = Metrics()
    done = [fetch_scene(engine, x.id, settings, metrics) for x in new]
    assert [d.status for d in done] == ["failed", "failed"]
    assert all("carry no names" in d.status_reason and "--band-order" in d.status_reason for d in done)
    assert metrics.registry.get_sample_value("monitor_scenes_failed_total",
                                             {"area": "ba", "provider": "local", "reason": "band_order"}) == 2
    with transaction(engine) as s:
        s.get(Area, area_id).band_order = ["B04", "B03", "B02", "B08"]  # the alpha band (5) needs no name
        s.execute(sa.update(Scene).values(status="found"))
    done = [fetch_scene(engine, x.id, settings, Metrics()) for x in new]
    # band 4 of before.tif is all zeros: kept (the models read an empty band as no change), named B08
    assert [d.status for d in done] == ["prepared", "prepared"], [d.status_reason for d in done]
    with rasterio.open(done[0].file_path) as a:
        assert a.descriptions == ("B02", "B03", "B04", "B08")
    with transaction(engine) as s:
        s.get(Area, area_id).band_order = ["B04", "B03", "B02", "-", "-"]
        s.execute(sa.update(Scene).values(status="found"))
    done = [fetch_scene(engine, x.id, settings, Metrics()) for x in new]
    assert [d.status for d in done] == ["prepared", "prepared"], [d.status_reason for d in done]
    with rasterio.open(done[0].file_path) as a, rasterio.open(done[1].file_path) as b:
        assert a.transform == b.transform and a.shape == b.shape and a.crs == b.crs
        # the bands the area's (default) models read that the file has, named, in Sentinel-2 order
        assert a.descriptions == ("B02", "B03", "B04") and a.dtypes[0] == "uint16"
        assert a.res == (10.0, 10.0)
    assert {d.pixel_m for d in done} == {10.0}
