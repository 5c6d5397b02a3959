"""The scale-out bench end to end, small: one area of two dates in this process and on a
LocalCluster of one worker process, the same scenes and alerts in both, JSON on the last line."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_scaleout_bench_does_the_same_work_in_every_mode(pg_admin_url, monkeypatch, capsys):
    from bench import scaleout

    monkeypatch.setenv("DATABASE_URL", pg_admin_url.render_as_string(hide_password=False))
    scaleout.main(["--areas", "1", "--dates", "2", "--workers", "1", "--timeout", "300"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    modes = result["modes"]
    assert [m["mode"] for m in modes] == ["in-process", "LocalCluster 1"]
    assert all(m["complete"] and m["scenes"] == 2 and m["errors"] == [] for m in modes)
    assert modes[0]["alerts"] == modes[1]["alerts"]
    assert modes[0]["speedup"] == 1.0 and modes[1]["scenes_per_s"] > 0
    assert result["db"]["detections"]["rows"] > 0
