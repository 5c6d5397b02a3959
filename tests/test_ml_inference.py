"""Tiled inference: blending, grids, nodata, band lookup, change pairs, tile grids, saved models."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from affine import Affine

from monitor.domain import ModelMeta
from monitor.errors import BadInput, ModelError
from monitor.ml.inference import NODATA, classify_tiles, predict_array, predict_raster, run_tiled
from monitor.ml.modelstore import load_model, save_model
from tests.ml_synthetic import BANDS, saved_model, write_scene


@pytest.fixture(scope="module")
def pointwise(tmp_path_factory):
    return load_model(saved_model(tmp_path_factory.mktemp("m") / "pointwise", pointwise=True), precision="float32")


@pytest.fixture(scope="module")
def unet(tmp_path_factory):
    return load_model(saved_model(tmp_path_factory.mktemp("m") / "unet", tile=32, depth=2), precision="float32")


def _direct(model, a):
    return model(model.normalize(a)[None])[0]


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
def test_tile_invariant_model_is_blended_without_seams(pointwise, overlap):
    a = np.random.default_rng(1).normal(1000, 150, (150, 170, 4)).astype(np.float32)
    got = predict_array(pointwise, a, window=32, overlap=overlap, batch=5)
    assert got.shape == a.shape[:2] and got.dtype == np.float32
    np.testing.assert_allclose(got, _direct(pointwise, a), atol=1e-5)


def test_engine_reads_bounded_strips_and_writes_every_row_once(unet):
    h, w, asked, written = 300, 90, [], []
    data = np.random.default_rng(2).normal(0, 1, (h, w, 4)).astype(np.float32)

    def read(r0, n):
        asked.append(n)
        return data[r0:r0 + n].copy(), np.ones((n, w), bool)

    def write(r0, p):
        written.append((r0, p.shape[0]))
        assert p.shape[1] == w

    run_tiled(unet, h, w, read, write, window=32, overlap=0.25, batch=8)
    assert max(asked) <= 32 + 24 * 2  # one group of window rows, never the whole scene
    rows = [r for r0, n in written for r in range(r0, r0 + n)]
    assert rows == list(range(h))


def test_small_inputs_are_padded_and_cropped_back(unet):
    a = np.random.default_rng(3).normal(1000, 100, (20, 45, 4)).astype(np.float32)
    got = predict_array(unet, a)
    assert got.shape == (20, 45) and np.all((got >= 0) & (got <= 1))


def test_predict_raster_keeps_the_grid_and_respects_nodata(tmp_path, pointwise):
    rng = np.random.default_rng(4)
    a = rng.normal(1000, 150, (70, 90, 4)).clip(1, None).astype(np.uint16)
    a[:5, :7] = 0  # nodata corner
    a[40, 50, 2] = 0  # one band missing at one pixel
    order = [3, 1, 0, 2]  # the file stores B08, B03, B04, B02: bands must be found by name
    t = Affine(10.0, 0, 500000.0, 0, -10.0, 4000000.0)
    scene = write_scene(tmp_path / "s.tif", a[..., order], transform=t, bands=[BANDS[i] for i in order], nodata=0)
    out = predict_raster(pointwise, scene, tmp_path / "p.tif", overlap=0.25)
    with rasterio.open(scene) as s, rasterio.open(out) as p:
        assert (p.crs, p.transform, p.width, p.height) == (s.crs, s.transform, s.width, s.height)
        assert p.dtypes[0] == "float32" and p.nodata == NODATA
        prob = p.read(1)
    assert np.all(prob[:5, :7] == NODATA) and prob[40, 50] == NODATA
    valid = prob != NODATA
    assert valid.sum() == 70 * 90 - 35 - 1
    np.testing.assert_allclose(prob[valid], _direct(pointwise, a.astype(np.float32))[valid], atol=1e-5)


def test_bands_by_position_without_descriptions_and_missing_bands(tmp_path, pointwise):
    a = np.random.default_rng(5).normal(1000, 100, (40, 40, 4)).astype(np.uint16)
    plain = write_scene(tmp_path / "plain.tif", a, describe=False)
    out = predict_raster(pointwise, plain, tmp_path / "p.tif")
    with rasterio.open(out) as p:
        np.testing.assert_allclose(p.read(1), _direct(pointwise, a.astype(np.float32)), atol=1e-5)
    three = write_scene(tmp_path / "three.tif", a[..., :3], bands=BANDS[:3])
    with pytest.raises(BadInput, match="three.tif.*lacks band.*B08"):
        predict_raster(pointwise, three, tmp_path / "q.tif")
    assert not (tmp_path / "q.tif").exists()


def test_change_model_takes_two_scenes_on_one_grid(tmp_path):
    model = load_model(saved_model(tmp_path / "change", kind="change", pointwise=True), precision="float32")
    rng = np.random.default_rng(6)
    before, after = (rng.normal(1000, 100, (50, 60, 4)).astype(np.uint16) for _ in range(2))
    b = write_scene(tmp_path / "b.tif", before)
    a = write_scene(tmp_path / "a.tif", after)
    out = predict_raster(model, a, tmp_path / "p.tif", before=b)
    with rasterio.open(out) as p:
        want = _direct(model, np.concatenate([before, after], axis=-1).astype(np.float32))
        np.testing.assert_allclose(p.read(1), want, atol=1e-5)
    with pytest.raises(BadInput, match="--before"):
        predict_raster(model, a, tmp_path / "q.tif")
    shifted = write_scene(tmp_path / "shifted.tif", before, transform=Affine(1.0, 0, 733010.0, 0, -1.0, 3725000.0))
    with pytest.raises(BadInput, match="shifted.tif.*grid"):
        predict_raster(model, a, tmp_path / "q.tif", before=shifted)


def test_per_image_models_ignore_a_global_radiometric_shift(tmp_path):
    model = load_model(saved_model(tmp_path / "m", kind="change", pointwise=True, per_image=True), precision="float32")
    rng = np.random.default_rng(9)
    before, after = (rng.normal(1000, 100, (60, 50, 4)) for _ in range(2))
    got = predict_array(model, np.concatenate([before, after], axis=-1))
    shifted = predict_array(model, np.concatenate([before, after * 1.3 + 200], axis=-1))
    np.testing.assert_allclose(got, shifted, atol=1e-4)
    b = write_scene(tmp_path / "b.tif", before.astype(np.uint16))
    a = write_scene(tmp_path / "a.tif", after.astype(np.uint16))
    with rasterio.open(predict_raster(model, a, tmp_path / "p.tif", before=b)) as p:
        want = predict_array(model, np.concatenate([before, after], axis=-1).astype(np.uint16))
        np.testing.assert_allclose(p.read(1), want, atol=1e-5)


def test_classify_tiles_gives_one_cell_per_tile(tmp_path):
    from monitor.ml.classifier import build_classifier

    net = build_classifier(4, 32, backbone="small", dense=8)
    meta = {"kind": "classifier", "bands": BANDS, "tile": 32, "threshold": 0.5, "resolution_m": 1.0,
            "normalization": {"mean": [1000.0] * 4, "std": [100.0] * 4}, "training": {}, "metrics": {}}
    model = load_model(save_model(net, tmp_path / "clf", meta), precision="float32")
    a = np.random.default_rng(7).normal(1000, 100, (100, 70, 4)).clip(1, None).astype(np.uint16)
    a[:32, 32:64] = 0  # one whole tile without data
    scene = write_scene(tmp_path / "s.tif", a, nodata=0)
    grid, transform = classify_tiles(model, scene, batch=3)
    assert grid.shape == (4, 3)  # ceil(100 / 32) x ceil(70 / 32)
    with rasterio.open(scene) as s:
        assert transform == s.transform @ Affine.scale(32)
    assert np.isnan(grid[0, 1])
    assert np.isnan(grid[3, :]).all()  # the last row holds 4 of 32 rows: below min_valid
    first = model(model.normalize(a[None, :32, :32].astype(np.float32)))[0]
    assert grid[0, 0] == pytest.approx(first, abs=1e-5)
    with pytest.raises(ModelError):
        predict_array(model, a.astype(np.float32))
    # a scene at half the model's resolution: a cell covers the same 32 m, i.e. 16 scene pixels
    coarse = write_scene(tmp_path / "c.tif", a, transform=Affine(2.0, 0, 733000.0, 0, -2.0, 3725000.0), nodata=0)
    grid2, t2 = classify_tiles(model, coarse)
    assert grid2.shape == (7, 5) and t2.a == 32.0
    # overlapping tiles: one every half tile, each the same 32 x 32 pixels a side-by-side grid reads
    half, t3 = classify_tiles(model, scene, span=2)
    assert half.shape == (7, 5) and t3 == transform @ Affine.scale(0.5)
    assert half[0, 0] == pytest.approx(grid[0, 0], abs=1e-5) and half[2, 0] == pytest.approx(grid[1, 0], abs=1e-5)
    second = model(model.normalize(a[None, 48:80, 16:48].astype(np.float32)))[0]
    assert half[3, 1] == pytest.approx(second, abs=1e-5)


def test_saved_and_loaded_model_predicts_the_same(tmp_path):
    from monitor.ml.runtime import keras
    from monitor.ml.unet import build_unet

    net = build_unet(4, depth=2, base_filters=4)
    x = np.random.default_rng(8).normal(0, 1, (2, 32, 32, 4)).astype(np.float32)
    meta = {"kind": "segmenter", "bands": BANDS, "tile": 32, "threshold": 0.4,
            "normalization": {"mean": [0.0] * 4, "std": [1.0] * 4}, "architecture": {"depth": 2}}
    d = save_model(net, tmp_path / "m", meta)
    assert sorted(p.name for p in d.iterdir()) == ["model.json", "model.keras"]
    m = ModelMeta.read(d).to_dict()
    assert m["version"].startswith("segmenter-") and m["created_at"]
    loaded = load_model(d, precision="float32")
    assert load_model(d, precision="float32") is loaded  # loaded once per path
    np.testing.assert_allclose(loaded(x), np.asarray(net(x, training=False))[..., 0], atol=1e-5)
    assert loaded.threshold == 0.4 and loaded.bands == BANDS and loaded.kind == "segmenter"
    for precision, policy in (("mixed", "mixed_float16"), ("bfloat16", "mixed_bfloat16")):
        low = load_model(d, precision=precision)
        assert low is not loaded and low.policy == policy
        assert any(layer.dtype_policy.name == policy for layer in low.net.layers)
        assert all(layer.dtype_policy.name == "float32" for layer in low.keras_model.layers)  # the saved model
        np.testing.assert_allclose(low(x), loaded(x), atol=3e-2)
    assert isinstance(loaded.keras_model, keras().Model)
    with pytest.raises(ValueError, match="precision"):
        load_model(d, precision="float8")


def _with_trained_statistics(net, seed=0):
    """Random batch-normalization statistics and scales, as training leaves them."""
    rng = np.random.default_rng(seed)
    for layer in net.layers:
        if type(layer).__name__ == "BatchNormalization":
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 2, gamma.shape), rng.normal(0, 0.5, beta.shape),
                               rng.normal(0, 0.5, mean.shape), rng.uniform(0.5, 2, var.shape)])
    return net


def test_batch_normalization_is_folded_into_the_convolutions():
    from monitor.ml.modelstore import fold_batchnorm
    from monitor.ml.unet import build_unet

    net = _with_trained_statistics(build_unet(6, depth=3, base_filters=4))
    folded = fold_batchnorm(net)
    names = [type(layer).__name__ for layer in folded.layers]
    assert "BatchNormalization" not in names
    assert names.count("Conv2D") == [type(layer).__name__ for layer in net.layers].count("Conv2D")
    x = np.random.default_rng(9).normal(0, 1, (2, 48, 40, 6)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(folded(x)), np.asarray(net(x, training=False)), atol=1e-4)
    # nothing to fold: the model itself comes back
    k = __import__("monitor.ml.runtime", fromlist=["keras"]).keras()
    inp = k.Input((None, None, 3))
    plain = k.Model(inp, k.layers.Conv2D(1, 1, activation="sigmoid")(inp))
    assert fold_batchnorm(plain) is plain


def test_inference_runs_the_folded_network(tmp_path):
    from monitor.ml.unet import build_unet

    net = _with_trained_statistics(build_unet(4, depth=2, base_filters=4), seed=3)
    meta = {"kind": "segmenter", "bands": BANDS, "tile": 32, "threshold": 0.5,
            "normalization": {"mean": [0.0] * 4, "std": [1.0] * 4}, "architecture": {"type": "unet", "depth": 2}}
    m = load_model(save_model(net, tmp_path / "m", meta), precision="float32")
    assert not any(type(layer).__name__ == "BatchNormalization" for layer in m.net.layers)
    a = np.random.default_rng(4).normal(0, 1, (100, 70, 4)).astype(np.float32)
    x = np.pad(a, ((0, 0), (0, 30), (0, 0)), mode="symmetric")[None]  # one window of the scene's 100 rows
    want = np.asarray(net(x, training=False))[0, :, :70, 0]
    np.testing.assert_allclose(predict_array(m, a, window=128), want, atol=1e-4)


def test_window_plan_fits_the_model_and_the_scene(unet):
    from monitor.ml.inference import count_windows, window_plan

    assert window_plan(unet, 1000, 900, 512, 0.25) == (504, 8)  # two windows of 504 cover 1000 with an 8-px margin
    assert window_plan(unet, 90, 150, 512, 0.25) == (152, 8)  # no larger than the scene, a multiple of 4
    assert window_plan(unet, 600, 400, 512, 0.25) == (304, 8)  # two 512-px windows would overlap by 424 px
    assert window_plan(unet, 10, 10, 512, 0.0) == (32, 0)  # never smaller than the model's tile
    assert window_plan(unet, 1000, 900, None, 0.5) == (32, 16)
    assert count_windows(unet, 1000, 900, 512, 0.25) == 2 * 2  # rows and columns start at 0 and at the far edge
    with pytest.raises(BadInput, match="overlap"):
        window_plan(unet, 100, 100, 64, 1.0)


def test_model_directories_are_checked(tmp_path):
    with pytest.raises(BadInput, match="not a model directory"):
        load_model(tmp_path)
    d = saved_model(tmp_path / "m", pointwise=True)
    (d / "model.json").write_text('{"kind": "segmenter"}')
    with pytest.raises(BadInput, match="version"):
        load_model(d)


def test_test_time_augmentation_makes_maps_turn_with_the_scene(tmp_path):
    d = saved_model(tmp_path / "m", tile=32, depth=2)
    a = np.random.default_rng(5).normal(1000, 100, (64, 64, 4)).astype(np.float32)
    plain = load_model(d, precision="float32")
    assert not plain.tta
    p = predict_array(plain, a)
    assert np.abs(predict_array(plain, np.rot90(a)) - np.rot90(p)).max() > 1e-3  # a U-Net alone is not symmetric
    meta = ModelMeta.read(d).to_dict()
    meta["inference"] = {"tta": True}
    (d / "model.json").write_text(__import__("json").dumps(meta))
    tta = type(plain)(plain.path, meta, plain.keras_model, plain.net)
    assert tta.tta
    q = predict_array(tta, a)
    for k in (1, 2, 3):
        np.testing.assert_allclose(predict_array(tta, np.rot90(a, k)), np.rot90(q, k), atol=1e-5)
    np.testing.assert_allclose(predict_array(tta, a[:, ::-1]), q[:, ::-1], atol=1e-5)
    assert np.abs(q - p).max() > 1e-3


def test_fixed_blur_stays_float32_and_model_json_names_its_precision(tmp_path):
    """The Gaussian blur of the change networks runs in float32 under any policy (oneDNN's bfloat16 large
    depthwise convolutions are very slow), and ``auto`` follows a model's ``inference.precision``."""
    from monitor.ml.changenet import save_cva

    d = save_cva(tmp_path / "cva", bands=["B02", "B03"])
    assert ModelMeta.read(d).to_dict()["inference"]["precision"] == "float32"
    assert load_model(d).policy == "float32"  # auto, as model.json says
    low = load_model(d, precision="bfloat16")
    assert any(layer.dtype_policy.name == "mixed_bfloat16" for layer in low.net.layers)
    blurs = [layer for layer in low.net.layers if type(layer).__name__ == "GaussianBlur"]
    assert blurs and all(layer.dtype_policy.name == "float32" for layer in blurs)
    x = np.random.default_rng(3).normal(0, 1, (1, 48, 48, 4)).astype(np.float32)
    np.testing.assert_allclose(low(x), load_model(d)(x), atol=3e-2)


@pytest.mark.parametrize("sigma", [1.0, 1.5, 4.0])
def test_the_fixed_blur_is_the_zero_padded_2d_gaussian_of_each_channel(sigma):
    """``GaussianBlur`` runs as two 1-D passes; it must equal the 2-D Gaussian filter (zero outside the
    image, cut at 3 sigma) that the change features are defined by, near the edges too."""
    from scipy import ndimage

    from monitor.ml.layers import custom_objects

    x = np.random.default_rng(1).normal(0, 1, (2, 30, 41, 3)).astype(np.float32)
    radius = int(np.ceil(3 * sigma))
    want = np.stack([[ndimage.gaussian_filter(x[b, :, :, ch].astype(np.float64), sigma, mode="constant",
                                              truncate=radius / sigma) for ch in range(3)] for b in range(2)])
    got = np.asarray(custom_objects()["GaussianBlur"](sigma)(x))
    np.testing.assert_allclose(got, want.transpose(0, 2, 3, 1), atol=1e-5)


def test_texture_layers_measure_local_spread_and_the_feature_net_with_them_round_trips(tmp_path):
    """``LocalStd`` is the spread of each channel in a Gaussian window (0 on a flat image, 1 on a +-1
    checkerboard), ``DateSplitNorm`` the norm of each date's bands; a feature network with texture
    features saves and loads through the registered layers."""
    from monitor.ml.layers import build_feature_net, custom_objects
    from monitor.ml.runtime import keras

    c = custom_objects()
    checker = (np.indices((32, 32)).sum(0) % 2 * 2 - 1).astype(np.float32)
    x = np.stack([np.full((32, 32), 3.0, np.float32), checker], -1)[None]
    s = np.asarray(c["LocalStd"](1.5)(x))
    assert s.shape == x.shape and s[0, 16, 16, 0] < 0.01 and abs(s[0, 16, 16, 1] - 1.0) < 0.02
    d = np.asarray(c["DateSplitNorm"]()(np.array([[[[3.0, 4.0, 0.0, 0.0]]]], np.float32)))
    np.testing.assert_allclose(d[0, 0, 0], [5.0, 0.0], atol=1e-5)
    net = build_feature_net(4, texture=(1.5,))
    assert 2500 < net.count_params() < 4000
    net.save(tmp_path / "m.keras")
    again = keras().saving.load_model(tmp_path / "m.keras", compile=False)
    a = np.random.default_rng(0).normal(0, 1, (1, 40, 40, 8)).astype(np.float32)
    np.testing.assert_allclose(again(a), net(a), atol=1e-6)
