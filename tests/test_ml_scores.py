"""Window geometry, blending weights and positive-class scores (no TensorFlow)."""

from __future__ import annotations

import numpy as np
import pytest

from monitor.ml import scores
from monitor.ml.tiling import blend_weights, starts


@pytest.mark.parametrize("length,tile,stride", [(100, 32, 24), (32, 32, 24), (20, 32, 24), (1000, 256, 192),
                                                (257, 256, 192)])
def test_windows_cover_every_pixel_and_stay_inside(length, tile, stride):
    s = starts(length, tile, stride)
    covered = np.zeros(max(length, tile), bool)
    for o in s:
        covered[o:o + tile] = True
        assert o >= 0 and (o + tile <= length or length <= tile)
    assert covered[:length].all()
    assert s == sorted(set(s))
    assert all(b - a <= stride for a, b in zip(s, s[1:]))


def test_blend_weights_fall_towards_the_sides_and_stay_positive():
    w = blend_weights(64, 16)
    assert w.shape == (64, 64) and w.dtype == np.float32
    assert w[32, 32] == 1.0 and w.min() > 0
    assert w[0, 32] < w[8, 32] < w[16, 32] <= 1.0
    np.testing.assert_allclose(w, w.T)
    np.testing.assert_allclose(w, w[::-1, ::-1])


def test_scores_match_a_hand_computed_confusion_matrix():
    truth = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], bool)
    pred = np.array([[1, 0, 1, 0], [1, 0, 0, 0], [0, 0, 1, 1]], bool)
    # by hand: tp = (0,0),(1,0),(2,3) = 3; fp = (0,2),(2,2) = 2; fn = (0,1) = 1; tn = 12 - 6 = 6
    cm = scores.confusion(pred, truth)
    assert cm == {"tp": 3, "fp": 2, "fn": 1, "tn": 6}
    s = scores.scores(cm)
    assert s == {"precision": 0.6, "recall": 0.75, "f1": round(6 / 9, 4), "iou": 0.5}
    valid = np.ones_like(truth)
    valid[0, 2] = False  # drops one false positive
    assert scores.confusion(pred, truth, valid) == {"tp": 3, "fp": 1, "fn": 1, "tn": 6}
    assert scores.add(cm, cm)["tp"] == 6
    assert scores.scores({"tp": 0, "fp": 0, "fn": 5, "tn": 5})["precision"] == 0.0


def test_best_threshold_finds_the_separating_value():
    rng = np.random.default_rng(0)
    truth = rng.random(5000) < 0.1
    prob = np.where(truth, rng.uniform(0.62, 1.0, truth.size), rng.uniform(0.0, 0.6, truth.size))
    t, s = scores.best_threshold(prob, truth)
    assert 0.6 <= t < 0.62 and s["f1"] == 1.0
    # the scores reported at the chosen threshold are those of a direct count
    noisy = np.clip(prob + rng.normal(0, 0.2, prob.size), 0, 1)
    t, s = scores.best_threshold(noisy, truth)
    assert s == scores.scores(scores.confusion(noisy > t, truth))
    assert all(scores.scores(scores.confusion(noisy > c, truth))["f1"] <= s["f1"] for c in (0.3, 0.5, 0.7))
