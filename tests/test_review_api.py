"""What the review page asks of the API: the token's identity, alert counts, changes as GeoJSON,
map tiles of prepared scenes (true colour from band names, stretched per scene), and the page and
the API documentation served from the package without a network."""

from __future__ import annotations

import datetime as dt
import io
import re
import tomllib
from pathlib import Path

import morecantile
import numpy as np
import rasterio
from geoalchemy2.shape import from_shape
from PIL import Image
from pyproj import Transformer
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin
from shapely.geometry import MultiPolygon, box

from monitor import tiles
from monitor.api.web import STATIC
from monitor.db.engine import transaction
from monitor.db.tables import Change, Scene
from tests.test_api import api, make_api, new_area, pooled  # noqa: F401  (fixtures)
from tests.test_webhooks import make_alert

ROOT = Path(__file__).resolve().parents[1]
MERCATOR = morecantile.tms.get("WebMercatorQuad")
UTM = 32721
CENTRE = (-58.48, -34.58)  # inside test_api's area "ba"


def write_scene(path: Path, bands=("B02", "B03", "B04", "B08"), size: int = 200, res: float = 10.0,
                dtype: str = "uint16") -> Path:
    """A 2 km square around CENTRE in UTM 21S: its west half red-ish roofs (B04 high), its east half
    fields; the southern quarter without data (nodata 0)."""
    x, y = Transformer.from_crs(4326, UTM, always_xy=True).transform(*CENTRE)
    data = np.zeros((len(bands), size, size), dtype=dtype)
    value = {"B02": (600, 450), "B03": (700, 800), "B04": (2600, 600), "B08": (2700, 3600),
             "red": (2600, 600), "green": (700, 800), "blue": (600, 450)}
    for i, name in enumerate(bands):
        west, east = value.get(name, (1000 + 100 * i, 2000 - 100 * i))
        if dtype == "uint8":
            west, east = west // 12, east // 12
        data[i, :, : size // 2] = west
        data[i, :, size // 2:] = east
    rng = np.random.default_rng(0)
    data = (data + rng.integers(0, 40, data.shape)).astype(dtype)
    data[:, 3 * size // 4:, :] = 0
    profile = dict(driver="GTiff", width=size, height=size, count=len(bands), dtype=dtype, crs=f"EPSG:{UTM}",
                   transform=from_origin(x - size * res / 2, y + size * res / 2, res, res), nodata=0, tiled=True,
                   blockxsize=64, blockysize=64)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        for i, name in enumerate(bands):
            dst.set_band_description(i + 1, name)
    return path


def add_scene(engine, area_id: int, path: Path | None, day: int = 1, status: str = "processed") -> int:
    with transaction(engine) as s:
        scene = Scene(area_id=area_id, provider="local", product_id=f"S_{day}", status=status,
                      acquired_at=dt.datetime(2024, 4, day, 13, 40, tzinfo=dt.timezone.utc), cloud_cover=2.5,
                      file_path=str(path) if path else None)
        s.add(scene)
        s.flush()
        return scene.id


def tile_of(lon: float, lat: float, z: int) -> str:
    t = MERCATOR.tile(lon, lat, z)
    return f"{t.z}/{t.x}/{t.y}"


# --- who am I


def test_token_identity(api):
    assert api.get("/auth/token").json() == {"name": "viewer", "scopes": ["read"]}
    assert api.get("/auth/token", headers=api.write).json() == {"name": "editor", "scopes": ["read", "write"]}
    assert api.client.get("/auth/token").status_code == 401
    assert api.client.get("/auth/token", headers={"Authorization": "Bearer mon_nope"}).status_code == 401


# --- alert counts


def test_alert_counts(api, engine):
    area_id = new_area(api)["id"]
    other = new_area(api, "other", box(-58.40, -34.60, -58.35, -34.55))["id"]
    ids = [make_alert(engine, area_id, f"p{i}", confidence=conf, x0=-58.49 + i * 0.002, first_seen=dt.date(2024, 4, day))
           for i, (conf, day) in enumerate([("probable", 1), ("confirmed", 2), ("confirmed", 3), ("probable", 20)])]
    make_alert(engine, other, "q1", x0=-58.39)
    api.post(f"/alerts/{ids[0]}/review", json={"action": "dismiss", "note": "a shed"})
    api.post(f"/alerts/{ids[1]}/review", json={"action": "ack"})

    everything = api.get("/alerts/counts").json()
    assert everything["total"] == 5 and everything["open"] == 4
    counts = api.get("/alerts/counts", params={"area": "ba"}).json()
    assert counts == {"total": 4, "open": 3, "by_status": {"dismissed": 1, "acknowledged": 1, "new": 2},
                      "by_confidence": {"probable": 2, "confirmed": 2},
                      "by_status_confidence": {"dismissed": {"probable": 1}, "acknowledged": {"confirmed": 1},
                                               "new": {"confirmed": 1, "probable": 1}}}
    # the same alerts as GET /alerts with the same filters
    for params in ({"area": "ba", "until": "2024-04-02"}, {"area": "ba", "since": "2024-04-03"}, {}):
        listed = api.get("/alerts", params=params).json()["features"]
        assert api.get("/alerts/counts", params=params).json()["total"] == len(listed), params
    # /alerts/counts is not taken for an alert id, and alert ids still work
    assert api.get(f"/alerts/{ids[2]}").json()["id"] == ids[2]
    assert api.get("/alerts/counts", params={"area": "nope"}).status_code == 404
    assert api.get("/alerts/counts", params={"since": "2024-05-01", "until": "2024-04-01"}).status_code == 422
    assert api.client.get("/alerts/counts").status_code == 401


# --- changes


def test_changes_as_geojson(api, engine):
    area_id = new_area(api)["id"]
    with transaction(engine) as s:
        for i, (day, prev) in enumerate([(dt.date(2024, 4, 1), dt.date(2024, 3, 1)), (dt.date(2024, 5, 1), None),
                                         (dt.date(2024, 6, 1), dt.date(2024, 5, 1))]):
            x0 = -58.49 + i * 0.01
            s.add(Change(area_id=area_id, observed_on=day, previous_on=prev, area_m2=120.5 + i,
                         geom=from_shape(MultiPolygon([box(x0, -34.59, x0 + 0.0005, -34.5895)]), 4326)))
    fc = api.get("/areas/ba/changes").json()
    assert fc["type"] == "FeatureCollection" and len(fc["features"]) == 3
    first = fc["features"][0]
    assert first["geometry"]["type"] == "MultiPolygon"
    assert first["properties"] == {"id": first["id"], "observed_on": "2024-04-01", "previous_on": "2024-03-01",
                                   "area_m2": 120.5, "source": "diff"}
    assert fc["features"][1]["properties"]["previous_on"] is None

    def days(**params):
        return [f["properties"]["observed_on"] for f in api.get("/areas/ba/changes", params=params).json()["features"]]

    assert days(since="2024-04-02") == ["2024-05-01", "2024-06-01"]
    assert days(since="2024-04-02", until="2024-05-31") == ["2024-05-01"]
    assert days(bbox="-58.4805,-34.6,-58.4795,-34.58") == ["2024-05-01"]
    assert days(limit=1, offset=2) == ["2024-06-01"]
    assert api.get("/areas/nope/changes").status_code == 404
    assert api.get("/areas/ba/changes", params={"bbox": "1,2,3"}).status_code == 422
    assert api.get("/areas/ba/changes", params={"since": "2024-05-01", "until": "2024-04-01"}).status_code == 422
    assert api.client.get("/areas/ba/changes").status_code == 401


# --- tiles


def test_band_choice():
    rgbi = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
    gray = [ColorInterp.gray] * 4
    assert tiles.choose_bands(["B02", "B03", "B04", "B08"], gray, 4) == ((3, 2, 1), "true colour")
    assert tiles.choose_bands(["nir", "Red", "green", "BLUE"], gray, 4) == ((2, 3, 4), "true colour")
    assert tiles.choose_bands(["B", "G", "R"], gray[:3], 3) == ((3, 2, 1), "true colour")
    assert tiles.choose_bands([None, None, None], rgbi, 3) == ((1, 2, 3), "true colour")
    assert tiles.choose_bands(["B08", "B11", "B12"], gray[:3], 3) == ((1, 2, 3), "first three bands")
    assert tiles.choose_bands(["probability"], gray[:1], 1) == ((1,), "grey")
    assert tiles.stretch_of(np.ma.masked_array(np.linspace(0, 1, 100, dtype="float32"))) == (0.0, 1.0)
    lo, hi = tiles.stretch_of(np.ma.masked_array(np.arange(1000, dtype="uint16"), mask=np.arange(1000) < 500))
    assert 505 <= lo <= 515 and 985 <= hi <= 995  # percentiles of the unmasked values only
    assert tiles.stretch_of(np.ma.masked_array(np.full(10, 7, "uint16"))) == (7.0, 8.0)


def test_scene_tiles(api, engine, tmp_path):
    area_id = new_area(api)["id"]
    path = write_scene(tmp_path / "20240401_local_S_1.tif")
    scene_id = add_scene(engine, area_id, path)
    tj = api.get(f"/scenes/{scene_id}/tiles.json").json()
    assert tj["tilejson"] == "3.0.0" and tj["scheme"] == "xyz" and tj["area"] == "ba"
    assert tj["bands"] == ["B04", "B03", "B02"] and tj["rendering"] == "true colour"
    assert tj["tiles"] == [f"http://testserver/scenes/{scene_id}/tiles/{{z}}/{{x}}/{{y}}.png"]
    w, s, e, n = tj["bounds"]
    assert w < CENTRE[0] < e and s < CENTRE[1] < n and e - w < 0.03
    assert 10 <= tj["minzoom"] <= tj["maxzoom"] <= 17 and tj["acquired_at"].startswith("2024-04-01")
    # the three bands share one stretch, which keeps the balance of true colour
    assert len({tuple(x) for x in tj["stretch"]}) == 1

    def tile(lon, lat, z=None, **kw):
        return api.get(f"/scenes/{scene_id}/tiles/{tile_of(lon, lat, z or tj['maxzoom'] + 2)}.png", **kw)

    # zoomed in beyond the scene's own resolution (as the page does): west half red roofs, east half fields
    west = tile(CENTRE[0] - 0.007, CENTRE[1] + 0.002)
    assert west.status_code == 200 and west.headers["content-type"] == "image/png"
    assert "private" in west.headers["cache-control"]
    img = np.asarray(Image.open(io.BytesIO(west.content)).convert("RGBA")).reshape(-1, 4)
    assert img.shape == (256 * 256, 4)
    seen = img[img[:, 3] == 255].astype(int)
    assert len(seen) > 1000 and seen[:, 0].mean() > seen[:, 1].mean() + 60 and seen[:, 0].mean() > seen[:, 2].mean() + 60
    east = np.asarray(Image.open(io.BytesIO(tile(CENTRE[0] + 0.007, CENTRE[1] + 0.002).content)).convert("RGBA"))
    east = east.reshape(-1, 4)[east.reshape(-1, 4)[:, 3] == 255].astype(int)
    assert east[:, 1].mean() > east[:, 0].mean() and east[:, 1].mean() > east[:, 2].mean()
    # the southern quarter has no data: transparent, and a tile with nothing else is not drawn
    edge = tile(CENTRE[0] - 0.007, s + 500 / 111_000)
    alpha = np.asarray(Image.open(io.BytesIO(edge.content)).convert("RGBA"))[:, :, 3]
    assert (alpha == 0).sum() > 1000 and (alpha == 255).sum() > 1000
    assert tile(CENTRE[0] - 0.007, s + 0.0005).status_code == 204
    # zoomed out, the whole scene in one tile, both halves seen
    whole = np.asarray(Image.open(io.BytesIO(tile(*CENTRE, z=tj["minzoom"]).content)).convert("RGBA"))
    assert (whole[:, :, 3] == 255).sum() > 100
    # outside the scene: no content
    assert tile(-58.46, -34.56).status_code == 204
    assert tile(10.0, 10.0, z=12).status_code == 204
    # bad tiles, unknown scenes, scenes without a file
    assert api.get(f"/scenes/{scene_id}/tiles/3/8/0.png").status_code == 422
    assert api.get(f"/scenes/{scene_id}/tiles/25/0/0.png").status_code == 422
    assert api.get("/scenes/987654/tiles/1/0/0.png").status_code == 404
    assert api.get("/scenes/987654/tiles.json").status_code == 404
    pending = add_scene(engine, area_id, None, day=2, status="found")
    r = api.get(f"/scenes/{pending}/tiles.json")
    assert r.status_code == 404 and "no prepared file" in r.json()["detail"]
    # the token is needed for tiles too
    assert tile(*CENTRE, headers={}).status_code == 401
    # a file gone from the disk
    path.unlink()
    r = tile(*CENTRE)
    assert r.status_code == 404 and "missing" in r.json()["detail"]


def test_tiles_of_other_band_layouts(api, engine, tmp_path):
    area_id = new_area(api)["id"]
    rgb = add_scene(engine, area_id, write_scene(tmp_path / "rgb.tif", bands=("red", "green", "blue"), dtype="uint8"))
    swir = add_scene(engine, area_id, write_scene(tmp_path / "swir.tif", bands=("B08", "B11", "B12")), day=2)
    prob = tmp_path / "prob.tif"
    with rasterio.open(write_scene(tmp_path / "p.tif", bands=("B04",))) as src:
        profile = {**src.profile, "dtype": "float32", "nodata": -1}
        data = np.where(src.read(1) > 0, 0.8, -1).astype("float32")
    with rasterio.open(prob, "w", **profile) as dst:
        dst.write(data, 1)
    grey = add_scene(engine, area_id, prob, day=3)
    expected = {rgb: (["red", "green", "blue"], "true colour"), swir: (["B08", "B11", "B12"], "first three bands"),
                grey: (["band 1"], "grey")}
    for scene_id, (bands, rendering) in expected.items():
        tj = api.get(f"/scenes/{scene_id}/tiles.json").json()
        assert (tj["bands"], tj["rendering"]) == (bands, rendering)
        r = api.get(f"/scenes/{scene_id}/tiles/{tile_of(*CENTRE, tj['maxzoom'])}.png")
        assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (256, 256)
    assert api.get(f"/scenes/{grey}/tiles.json").json()["stretch"] == [[0.0, 1.0]]


# --- the page and the documentation, from the package


def test_page_and_docs_are_served_from_the_package(api):
    page = api.client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self';" in csp and "connect-src 'self'" in csp
    urls = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert urls and all(not u.startswith(("http:", "https:", "//")) for u in urls), urls
    for url in urls:
        r = api.client.get("/" + url)
        assert r.status_code == 200, url
    assert api.client.get("/static/review.js").headers["content-type"].startswith(("text/javascript",
                                                                                   "application/javascript"))
    assert api.client.get("/static/nope.js").status_code == 404
    assert api.client.get("/static/../app.py").status_code == 404
    for path, wanted in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
        r = api.client.get(path)
        assert r.status_code == 200 and wanted in r.text, path
        assert "img-src 'self' data: blob:" in r.headers["content-security-policy"]
        loaded = re.findall(r'(?:src|href)=["\']([^"\']+)["\']', r.text)
        assert loaded and all(not u.startswith(("http:", "https:", "//")) for u in loaded), (path, loaded)
        for url in loaded:
            assert api.client.get(url if url.startswith("/") else "/" + url).status_code == 200, (path, url)
    # the page is not in the API's schema; the new routes are
    paths = api.client.get("/openapi.json").json()["paths"]
    assert "/" not in paths and "/docs" not in paths
    assert {"/auth/token", "/alerts/counts", "/areas/{area}/changes", "/scenes/{scene_id}/tiles.json",
            "/scenes/{scene_id}/tiles/{z}/{x}/{y}.png"} <= set(paths)


def test_vendored_libraries_carry_their_licences_and_pins():
    vendor = STATIC / "vendor"
    pins = {line.split()[0]: line.split()[1] for line in (vendor / "VERSIONS").read_text().splitlines()
            if line and not line.startswith("#")}
    assert set(pins) == {"leaflet", "swagger-ui-dist", "redoc"}
    script = (ROOT / "scripts" / "vendor-assets.sh").read_text()
    for name, version in pins.items():
        assert (vendor / name / "LICENSE").stat().st_size > 500, name
        assert f'"{name} {version} sha512-' in script, name
    assert (vendor / "leaflet" / "leaflet.js").read_text().startswith("/* @preserve\n * Leaflet 1.9.4")
    # the package data holds them, so that an installed daemon serves them too (test_packaging builds the wheel)
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["monitor.api"]
    assert {"static/*", "static/vendor/*/*", "static/vendor/*/*/*"} <= set(data)
