"""Reviewers' verdicts as training data: `monitor dataset feedback` writes the change layout from the
reviewed alerts of the hand-made world, and `monitor train change --init` fine-tunes a model on it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import rasterio
from rasterio.windows import from_bounds

from monitor import builtins
from monitor.domain import ModelMeta
from tests.test_alerts import two_alerts  # noqa: F401  (a fixture)
from tests.test_change import NEW, PARCEL, X0, Y0, A, C, pid, world  # noqa: F401  (world is a fixture)
from tests.test_evidence import _rgb_scenes


@pytest.fixture
def feedback(two_alerts, world, cli, engine, tmp_path):
    """A confirmed alert on A (a bright new building after) and a dismissed one on C, as a dataset."""
    a, c = two_alerts
    assert "no confirmed or dismissed alert" in cli("dataset", "feedback", "--area", "ba", "--out",
                                                    tmp_path / "none", expect=2).stderr
    cli("alerts", "confirm", str(a), "--reviewer", "ana")
    cli("alerts", "dismiss", str(c), "--note", "a greenhouse", "--reviewer", "ana")
    # imported detections are probability rasters, not imagery: nothing to cut chips from
    err = cli("dataset", "feedback", "--area", "ba", "--out", tmp_path / "none", expect=2).stderr
    assert "none of the 2 reviewed alerts" in err and "no prepared image before the date it was first seen" in err
    assert not (tmp_path / "none").exists()
    scenes = _rgb_scenes(world, engine)
    out = tmp_path / "feedback"
    listing = cli("dataset", "feedback", "--area", "ba", "--out", out).stdout
    assert "1 positive and 1 negative sites, bands B04,B03,B02,B08" in listing
    return {"alerts": (a, c), "scenes": scenes, "out": out}


def test_feedback_chips_and_masks(feedback, cli, tmp_path):
    a, c = feedback["alerts"]
    out = feedback["out"]
    s = json.loads((out / "summary.json").read_text())
    assert s["kind"] == "change" and s["source"] == "feedback" and s["bands"] == ["B04", "B03", "B02", "B08"]
    assert s["counts"] == {"positive": 1, "negative": 1} and s["skipped"] == {}
    pos, neg = s["cities"][f"alert-{a}"], s["cities"][f"alert-{c}"]
    assert (pos["label"], pos["parcel"], neg["label"], neg["parcel"]) == ("positive", pid(*A), "negative", pid(*C))
    assert pos["dates"] == ["2024-01-10", "2024-02-10"] and pos["labelled"]
    # a 64 px chip (the parcel is 50 m at 1 m) on the scene's grid, cut from the same place in both dates
    for name, site in ((f"alert-{a}", A), (f"alert-{c}", C)):
        for date in ("before", "after"):
            with rasterio.open(out / name / f"{date}.tif") as chip, \
                    rasterio.open(feedback["scenes"][date]) as scene:
                assert chip.shape == (64, 64) and chip.descriptions == ("B04", "B03", "B02", "B08")
                assert chip.nodata == scene.nodata
                win = from_bounds(*chip.bounds, transform=scene.transform)
                assert np.array_equal(chip.read(), scene.read(window=win))
                x0, y0 = X0 + site[0] * PARCEL, Y0 + site[1] * PARCEL
                left, bottom, right, top = chip.bounds
                assert left < x0 and right > x0 + PARCEL and bottom < y0 and top > y0 + PARCEL
    # the mask is what the reviewer judged: the confirmed alert's new building 1 and the rest of A's parcel 0;
    # the dismissed alert's parcel all 0; around the parcels (nobody judged it) 255
    for name, site, change_px in ((f"alert-{a}", A, NEW[2] * NEW[3]), (f"alert-{c}", C, 0)):
        with rasterio.open(out / name / "change.tif") as m:
            mask = m.read(1)
            xs, ys = rasterio.transform.xy(m.transform, *np.nonzero(mask != 255))
            assert m.nodata == 255
        assert (mask == 1).sum() == s["cities"][name]["change_pixels"] == change_px
        assert (mask != 255).sum() == s["cities"][name]["judged_pixels"] == PARCEL * PARCEL
        x0, y0 = X0 + site[0] * PARCEL, Y0 + site[1] * PARCEL
        assert min(xs) > x0 and max(xs) < x0 + PARCEL and min(ys) > y0 and max(ys) < y0 + PARCEL
    with rasterio.open(out / f"alert-{a}" / "change.tif") as m:
        rows, cols = np.nonzero(m.read(1) == 1)
        xs, ys = rasterio.transform.xy(m.transform, rows, cols)
    x0, y0 = X0 + A[0] * PARCEL + NEW[0], Y0 + A[1] * PARCEL + NEW[1]
    assert min(xs) > x0 and max(xs) < x0 + NEW[2] and min(ys) > y0 and max(ys) < y0 + NEW[3]
    # --since after every review: nothing to write; an unknown area is named
    assert "reviewed since 2999-01-01" in cli("dataset", "feedback", "--area", "ba", "--out", tmp_path / "x",
                                              "--since", "2999-01-01", expect=2).stderr
    assert "nowhere" in cli("dataset", "feedback", "--area", "nowhere", "--out", tmp_path / "y", expect=2).stderr
    assert "since" in cli("dataset", "feedback", "--area", "ba", "--out", tmp_path / "z", "--since", "soon",
                          expect=2).stderr


@pytest.mark.slow
def test_fine_tune_from_feedback_records_its_parent(feedback, cli, tmp_path):
    model = tmp_path / "tuned"
    out = cli("train", "change", "--init", "builtin:oscd-change", "--data", feedback["out"], "--out", model,
              "--epochs", "2", "--steps", "2", "--batch", "4", "--patch", "32").stdout
    assert "fine-tuned from builtin:oscd-change" in out
    meta = ModelMeta.read(model).to_dict()
    assert meta["parent"]["model"] == "builtin:oscd-change" and meta["parent"]["version"] == "builtin-oscd-change-4"
    assert meta["bands"] == ["B02", "B03", "B04", "B08"] and meta["architecture"]["type"] == "features"
    t = meta["training"]
    assert t["recipe"] == "fine-tune" and t["init"] == "builtin:oscd-change" and t["epochs_run"] == 2
    assert t["counts"] == {"positive": 1, "negative": 1} and len(t["sites"]) == 2
    assert 0.0 <= meta["metrics"]["validation"]["positive_share"] <= 1.0
    assert 0.05 <= meta["threshold"] <= 0.95
    assert t["threshold_chosen_by"] == "pooled F1 on the validation rows"  # A's new building is in its validation rows
    # dismissals alone: no F1 to choose a rule by, so the parent's fixed threshold, not one that flags nothing
    negatives = tmp_path / "negatives"
    shutil.copytree(feedback["out"], negatives)
    s = json.loads((negatives / "summary.json").read_text())
    del s["cities"][f"alert-{feedback['alerts'][0]}"]
    (negatives / "summary.json").write_text(json.dumps(s))
    cli("train", "change", "--init", "builtin:oscd-change", "--data", negatives, "--out", tmp_path / "neg",
        "--epochs", "1", "--steps", "1", "--batch", "4")
    meta = ModelMeta.read(tmp_path / "neg").to_dict()
    shipped = ModelMeta.read(builtins.resolve("builtin:oscd-change")).to_dict()["threshold"]
    assert meta["threshold"] == meta["parent"]["threshold"] == shipped and meta.get("threshold_rule") is None
    assert meta["training"]["threshold_chosen_by"].startswith("the parent's fixed threshold")
    # what the fine-tuning keeps fixed is refused, and so is a model without weights
    assert "--init" in cli("train", "change", "--init", "builtin:oscd-change", "--data", feedback["out"],
                           "--arch", "unet", expect=2).stderr
    assert "no trainable weights" in cli("train", "change", "--init", "builtin:cva", "--data", feedback["out"],
                                         "--out", tmp_path / "cva", "--epochs", "1", "--steps", "1",
                                         expect=2).stderr
