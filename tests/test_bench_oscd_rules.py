"""The threshold-rule study's building blocks on hand-made maps with known answers."""

from __future__ import annotations

import numpy as np

from bench import oscd_rules


def test_rules_and_region_filter_on_a_hand_made_map(capsys):
    p = np.zeros((10, 10), np.float32)
    p[1:3, 1:3] = 0.9  # a 4-pixel region
    p[7, 7] = 0.95  # a lone pixel
    valid = np.ones_like(p, bool)
    assert oscd_rules._threshold(p, valid, ("fixed", 0.5)) == 0.5
    assert oscd_rules._threshold(p, valid, ("top", 0.05)) == float(np.quantile(p, 0.95))
    # the floor wins where the scene's top share reaches down to unchanged pixels
    assert oscd_rules._threshold(p, valid, ("floor", 0.2, 0.5)) == 0.5
    both = oscd_rules._predict(p, valid, ("fixed", 0.5), None, 1)
    assert both.sum() == 5
    regions = oscd_rules._predict(p, valid, ("fixed", 0.5), None, 3)
    assert regions.sum() == 4 and not regions[7, 7]
    gate = np.zeros_like(valid)
    gate[7, 7] = True
    assert oscd_rules._predict(p, valid, ("fixed", 0.5), gate, 1).sum() == 1
    smooth = oscd_rules._smooth(p, valid, "mean3")
    assert abs(float(smooth[5, 5])) < 1e-6 and 0 < float(smooth[7, 7]) < 0.95
    oscd_rules.main([])
    assert "bench.oscd_loco --out DIR" in capsys.readouterr().out
