"""Built-in models (``builtin:cva``), the per-scene threshold rule, and the default change recipe."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from scipy import ndimage
from shapely.geometry import box

from monitor import builtins
from monitor.errors import BadInput
from monitor.ml import scores
from monitor.ml.changenet import train_change_features
from monitor.ml.modelstore import load_model, open_model
from monitor.ml.oscd import convert_oscd, load_city, write_city, write_summary
from tests.vectors import write

RGB = ["B02", "B03", "B04"]


def test_robust_z_threshold_of_a_hand_made_map():
    # median 3, absolute deviations 2 1 0 1 2 -> MAD 1; the 100 lies outside the valid mask
    prob = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 100.0]], np.float32)
    valid = np.array([[True, True, True], [True, True, False]])
    t = scores.scene_threshold(prob, valid, {"rule": "robust_z", "k": 2.0}, fixed=0.5)
    assert t == pytest.approx(3 + 2 * 1.4826)
    assert scores.scene_threshold(prob, None, {"rule": "robust_z", "k": 2.0}) == pytest.approx(3.5 + 2 * 1.4826 * 1.5)
    assert scores.scene_threshold(prob, valid, None, fixed=0.7) == 0.7
    assert scores.scene_threshold(prob, valid, {"rule": "fixed"}, fixed=0.7) == 0.7
    q = scores.scene_threshold(np.arange(100, dtype=np.float32), None, {"rule": "top_quantile", "q": 0.1})
    assert int((np.arange(100) > q).sum()) == 10
    assert scores.scene_threshold(prob, np.zeros_like(valid), {"rule": "robust_z", "k": 2.0}, fixed=0.4) == 0.4
    with pytest.raises(ValueError, match="not one of"):
        scores.scene_threshold(prob, valid, {"rule": "otsu"})
    # on the odds: the same pixels as robust_z on the magnitudes m themselves, from m / (1 + m)
    m = np.random.default_rng(0).gamma(2.0, 1.0, (50, 50)).astype(np.float32)
    on_m = scores.scene_threshold(m, None, {"rule": "robust_z", "k": 3.0})
    on_odds = scores.scene_threshold(m / (1 + m), None, {"rule": "robust_z", "k": 3.0, "on": "odds"})
    assert on_odds == pytest.approx(on_m / (1 + on_m), rel=1e-5)
    np.testing.assert_array_equal(m > on_m, m / (1 + m) > on_odds)


def test_cva_share_takes_the_top_share_the_change_vector_outliers_give():
    # the reference (odds m of a change-vector map) has median 1 and MAD 0: its 10 pixels of 5 are the outliers
    m = np.concatenate([np.ones(90), np.full(10, 5.0)]).astype(np.float32)
    reference = (m / (1 + m)).reshape(10, 10)
    prob = np.arange(100, dtype=np.float32).reshape(10, 10)
    rule = {"rule": "cva_share", "a": 0.5, "k": 4.0}
    assert scores.reference_share(rule, reference) == pytest.approx(0.1 * 0.5)
    t = scores.scene_threshold(prob, None, rule, reference=reference)
    assert int((prob > t).sum()) == 5  # the model's own top 5 %, wherever the outliers are
    assert scores.reference_share({**rule, "a": 10.0}, reference) == scores.SHARE_BOUNDS[1]
    assert scores.reference_share(rule, np.full((10, 10), 0.5, np.float32)) == scores.SHARE_BOUNDS[0]
    valid = np.ones((10, 10), bool)
    valid[9] = False  # the last row holds all the outliers: none left
    assert scores.reference_share(rule, reference, valid) == scores.SHARE_BOUNDS[0]
    with pytest.raises(ValueError, match="change-vector map"):
        scores.scene_threshold(prob, None, rule)


def test_builtins_resolve_to_shipped_model_directories():
    assert "cva" in builtins.names()
    assert builtins.resolve("builtin:cva") == builtins.SHIPPED / "cva"
    assert builtins.reference(builtins.SHIPPED / "cva") == "builtin:cva"
    with pytest.raises(BadInput, match="no built-in model 'nope'.*builtin:cva"):
        builtins.resolve("builtin:nope")
    m = open_model("builtin:cva")
    assert m.kind == "change" and m.bands == RGB and m.threshold_rule["k"] == builtins.CVA_K


@pytest.fixture(scope="module")
def mumbai(shared_data, tmp_path_factory):
    """A 160 x 160 crop of Mumbai (RGB bands named blue, green, red) as a change dataset of its own."""
    full = tmp_path_factory.mktemp("oscd") / "data"
    convert_oscd(shared_data / "oscd", full, cities=["mumbai"])
    d = load_city(full, "mumbai", RGB)
    with rasterio.open(full / "mumbai" / "before.tif") as s:
        t = s.window_transform(rasterio.windows.Window(124, 57, 160, 160))
        crs = s.crs
    out = tmp_path_factory.mktemp("crop")
    x = d["x"][57:217, 124:284].astype(np.uint16)
    names = ["blue", "green", "red"]
    entry = write_city(out, "mumbai", x[..., :3], x[..., 3:], d["change"][57:217, 124:284], crs=crs, transform=t,
                       bands=names)
    write_summary(out, names, {"mumbai": entry})
    return out


def _cva_by_hand(city):
    """The smoothed change-vector magnitude and the robust_z change mask, in NumPy and SciPy."""
    dates = []
    for f in ("before.tif", "after.tif"):
        with rasterio.open(city / f) as s:
            a = s.read().astype(np.float64)
        m, sd = a.mean(axis=(1, 2), keepdims=True), a.std(axis=(1, 2), keepdims=True)
        dates.append((a - m) / sd)
    mag = np.sqrt(((dates[1] - dates[0]) ** 2).sum(axis=0))
    mag = ndimage.gaussian_filter(mag, builtins.CVA_SIGMA, mode="constant", truncate=5 / builtins.CVA_SIGMA)
    med = np.median(mag)
    t = med + builtins.CVA_K * 1.4826 * np.median(np.abs(mag - med))
    return mag, mag > t


@pytest.mark.realdata
def test_builtin_cva_predict_and_evaluate_on_a_real_city(cli, mumbai, tmp_path):
    city = mumbai / "mumbai"
    r = cli("predict", "--model", "builtin:cva", "--scene", city / "after.tif", "--before", city / "before.tif",
            "--out", tmp_path / "cva.tif")
    assert "rule robust_z" in r.stdout
    mag, pred = _cva_by_hand(city)
    with rasterio.open(tmp_path / "cva.tif") as p, rasterio.open(city / "change.tif") as c:
        np.testing.assert_allclose(p.read(1), mag / (1 + mag), rtol=1e-3, atol=1e-4)
        truth = c.read(1) == 1
    out = json.loads(cli("evaluate", "--model", "builtin:cva", "--data", mumbai).stdout)
    assert out["threshold_rule"] == {"rule": "robust_z", "k": builtins.CVA_K, "on": "odds"}
    assert out["cities"]["mumbai"]["confusion"] == scores.confusion(pred, truth)
    # what it flags is far more often change than a pixel picked at random (16 % of this crop)
    assert out["pooled"]["precision"] > 2 * truth.mean() and out["pooled"]["recall"] > 0.1, out["pooled"]
    bad = cli("evaluate", "--model", "builtin:nope", "--data", mumbai, expect=2)
    assert "builtin:cva" in bad.stderr


@pytest.mark.realdata
def test_a_cva_share_model_thresholds_a_raster_as_it_does_an_array(cli, mumbai, tmp_path):
    """``predict_raster`` records the share the pair's change-vector outliers give, and the raster's
    threshold takes that share of its map, as ``monitor evaluate`` does from the same pair in memory."""
    from monitor.errors import ModelError
    from monitor.ml.changenet import save_cva
    from monitor.ml.inference import raster_threshold

    d = save_cva(tmp_path / "m", bands=["blue", "green", "red"])
    meta = json.loads((d / "model.json").read_text())
    meta["threshold_rule"] = {"rule": "cva_share", "a": 1.0, "k": 4.0}
    (d / "model.json").write_text(json.dumps(meta))
    city = mumbai / "mumbai"
    r = cli("predict", "--model", d, "--scene", city / "after.tif", "--before", city / "before.tif",
            "--out", tmp_path / "p.tif")
    assert "rule cva_share" in r.stdout
    mag, _ = _cva_by_hand(city)
    med = np.median(mag)
    by_hand = float((mag > med + 4.0 * 1.4826 * np.median(np.abs(mag - med))).mean())
    with rasterio.open(tmp_path / "p.tif") as p:
        share = float(p.tags()["positive_share"])
        prob = p.read(1)
    assert share == pytest.approx(by_hand, abs=2e-3) and 0.01 < share < 0.5
    t = raster_threshold(load_model(d), tmp_path / "p.tif")
    assert float((prob > t).mean()) == pytest.approx(share, abs=2e-3)
    out = json.loads(cli("evaluate", "--model", d, "--data", mumbai).stdout)
    assert out["cities"]["mumbai"]["threshold"] == pytest.approx(t, abs=1e-3)
    with rasterio.open(tmp_path / "p.tif") as p, rasterio.open(tmp_path / "untagged.tif", "w", **p.profile) as q:
        q.write(p.read())  # the same map without the tag, as a raster written before the rule would be
    with pytest.raises(ModelError, match="positive_share"):
        raster_threshold(load_model(d), tmp_path / "untagged.tif")


def test_models_list_shows_builtins_and_areas_take_them(cli, tmp_path):
    rows = json.loads(cli("models", "list", "--json").stdout)
    cva = next(r for r in rows if r["path"] == "builtin:cva")
    assert cva["kind"] == "change" and cva["threshold_rule"]["rule"] == "robust_z"
    assert "builtin:cva" in cli("models", "list").stdout
    area = write(tmp_path / "area.gpkg", [box(314000, 6183400, 317000, 6185400)], [{"name": "ba"}], "EPSG:32721",
                 driver="GPKG")
    cli("areas", "add", "ba", "--geometry", area, "--provider", "local")
    shown = json.loads(cli("areas", "configure", "ba", "--change-model", "builtin:cva").stdout)
    assert shown["models"]["change"] is not None
    rows = json.loads(cli("models", "list", "--json").stdout)
    assert [r["registered"] for r in rows if r["path"] == "builtin:cva"] == [True]
    assert "no built-in model" in cli("areas", "configure", "ba", "--change-model", "builtin:x", expect=2).stderr


@pytest.mark.realdata
def test_a_few_steps_of_the_default_recipe_make_a_loadable_model(mumbai, tmp_path):
    d = train_change_features(mumbai, tmp_path / "m", bands=["blue", "green", "red"], epochs=2, steps_per_epoch=3,
                              batch=4, patch=32, seed=0, val_fraction=0.25)
    m = load_model(d)
    meta = json.loads((d / "model.json").read_text())
    assert meta["architecture"]["type"] == "features" and meta["training"]["epochs_run"] == 2
    assert meta["architecture"]["texture"] == [1.5]
    assert m.meta["normalization"]["per_image"] and m.channels == 6
    assert meta["threshold_rule"] is None or meta["threshold_rule"]["rule"] in scores.THRESHOLD_RULES
    x = load_city(mumbai, "mumbai", ["blue", "green", "red"])["x"]
    p = m(m.normalize(x)[None])
    assert p.shape == (1, 160, 160) and np.all((p >= 0) & (p <= 1))


@pytest.mark.realdata
def test_members_make_a_model_that_is_the_mean_of_its_networks(mumbai, tmp_path):
    d = train_change_features(mumbai, tmp_path / "m", bands=["blue", "green", "red"], epochs=1, steps_per_epoch=2,
                              batch=4, patch=32, seed=3, val_fraction=0.25, members=2)
    meta = json.loads((d / "model.json").read_text())
    assert meta["architecture"]["members"] == 2
    assert [m["seed"] for m in meta["training"]["members"]] == [3, 4]
    m = load_model(d)
    x = m.normalize(load_city(mumbai, "mumbai", ["blue", "green", "red"])["x"])[None, :64, :64]
    nets = [m.keras_model.get_layer(f"member_{i}") for i in range(2)]
    outs = [np.asarray(net(x, training=False))[..., 0] for net in nets]
    assert not np.allclose(outs[0], outs[1], atol=1e-3)  # two seeds, two networks
    np.testing.assert_allclose(m(x), (outs[0] + outs[1]) / 2, atol=1e-4)
    with pytest.raises(BadInput, match="at least 1"):
        train_change_features(mumbai, tmp_path / "n", members=0)


def _scene(path, pixel_m: float):
    with rasterio.open(path, "w", driver="GTiff", width=32, height=32, count=3, dtype="uint16", crs="EPSG:32721",
                       transform=rasterio.transform.from_origin(314000, 6185400, pixel_m, pixel_m)) as dst:
        dst.write(np.ones((3, 32, 32), np.uint16))
    return path


def test_the_default_change_model_serves_scenes_near_its_resolution(tmp_path):
    from monitor.ml.changenet import save_cva
    from monitor.ml.inference import default_change_model
    from monitor.settings import Settings

    d = save_cva(tmp_path / "m")
    meta = json.loads((d / "model.json").read_text())
    (d / "model.json").write_text(json.dumps({**meta, "resolution_m": 10.0}))
    assert default_change_model(d, _scene(tmp_path / "s10.tif", 10.0)).version == meta["version"]
    assert default_change_model(d, _scene(tmp_path / "s14.tif", 14.0)) is not None
    assert default_change_model(d, _scene(tmp_path / "s2.tif", 2.0)) is None  # the demo's 2 m world
    assert default_change_model(d, _scene(tmp_path / "s20.tif", 20.0)) is None
    assert default_change_model("", tmp_path / "s10.tif") is None
    assert default_change_model(None, tmp_path / "s10.tif") is None
    assert default_change_model(d, tmp_path / "absent.tif") is None
    (tmp_path / "broken.tif").write_bytes(b"not a tiff")  # fails later, where inference reads it
    assert default_change_model(d, tmp_path / "broken.tif") is None
    default = Settings().default_change_model
    assert default == "builtin:oscd-change" and builtins.resolve(default).is_dir()


@pytest.mark.realdata
def test_a_new_area_on_real_10m_imagery_uses_the_shipped_change_model(cli, engine, shared_data, tmp_path):
    import shutil

    import sqlalchemy as sa

    ba = shared_data / "buenos_aires_lots"
    drops = tmp_path / "drops"
    drops.mkdir()
    shutil.copy(ba / "before.tif", drops / "ba_20170101.tif")
    shutil.copy(ba / "after.tif", drops / "ba_20180101.tif")
    cli("areas", "add", "ba", "--geometry", ba / "lots.shp", "--provider", "local", "--source", f"local={drops}",
        "--band-order", "B04,B03,B02,B08")
    cli("parcels", "import", ba / "lots.shp", "--area", "ba", "--id-field", "gid")
    out = json.loads(cli("process", "--area", "ba", "--quiet").stdout)
    assert not out["errors"] and out["processed"] == 2, out
    with engine.connect() as conn:
        versions = conn.execute(sa.text("SELECT model_versions FROM runs WHERE scene_id IS NOT NULL "
                                        "AND status = 'succeeded'")).scalars().all()
        sources = conn.execute(sa.text("SELECT DISTINCT source FROM changes")).scalars().all()
    assert versions and all(v == {"change": "builtin-oscd-change-4"} for v in versions), versions
    assert sources in ([], ["change_model"])
    cli("areas", "add", "ba2", "--geometry", ba / "lots.shp", "--provider", "local", "--source", f"local={drops}",
        "--band-order", "B04,B03,B02,B08")
    none = cli("process", "--area", "ba2", "--quiet", env={"MONITOR_DEFAULT_CHANGE_MODEL": ""}, expect=1)
    assert "has no segmenter or change model" in none.stdout

