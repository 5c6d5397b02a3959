"""Evidence chips: nothing rendered while a pass runs; rendered on the first request and kept; true
colour from band names, parcel and dates printed, a scale bar, no-data hatched; served to a read token
or a signed link, never naming a server path."""

from __future__ import annotations

import datetime as dt
import io
import time
from urllib.parse import parse_qs, urlsplit

import numpy as np
import rasterio
import sqlalchemy as sa
from PIL import Image
from sqlalchemy.orm import Session

from monitor.alerts.evidence import CAPTION_LINE_PX, NODATA_COLOURS, Caption, render_chips
from monitor.api.evidence import _link
from monitor.auth import revoke_token
from monitor.db.engine import transaction
from monitor.db.tables import Alert
from tests.test_alerts import two_alerts  # noqa: F401  (a fixture)
from tests.test_api import make_api
from tests.test_change import (  # noqa: F401  (world is a fixture)
    D1,
    D2,
    EPSG,
    GRID,
    NEW,
    A,
    N,
    buildings,
    pid,
    world,
)

RED = (255, 0, 0)
CAPTION_PX = 6 + 3 * CAPTION_LINE_PX  # the parcel and two dates


def _rgb_scenes(world, engine, nodata_cols=(60, 76)) -> dict:
    """Replace the two dates' files by 4-band uint16 files with band names; the new building is bright
    red after; a strip of columns over parcel A has no data before."""
    paths = {}
    for name, built in (("before", False), ("after", True)):
        bands = np.full((4, N, N), 300, dtype="uint16")
        bands[3] = 2000  # B08, not drawn
        bands[:, :, ::7] = 900  # texture, so that the percentile stretch has something to stretch
        if built:
            bands[0][buildings().put(*A, *NEW).a.astype(bool)] = 3000
        else:
            bands[:, :, slice(*nodata_cols)] = 0
        path = world / f"{name}_rgb.tif"
        with rasterio.open(path, "w", driver="GTiff", width=N, height=N, count=4, dtype="uint16", nodata=0,
                           crs=f"EPSG:{EPSG}", transform=GRID) as dst:
            dst.write(bands)
            dst.descriptions = ("B04", "B03", "B02", "B08")
        paths[name] = path
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE scenes SET file_path = :p, provider = 'local' WHERE acquired_at::date = :d"),
                     [dict(p=str(paths["before"]), d=D1), dict(p=str(paths["after"]), d=D2)])
    return paths


def _png(content: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(content)).convert("RGB")).astype(int)


def _count(img: np.ndarray, colour) -> int:
    return int((img == np.array(colour)).all(axis=-1).sum())


def test_a_pass_renders_nothing(two_alerts, settings):
    assert not (settings.data_dir / "evidence").exists()


def test_chips_rendered_on_request_can_be_judged_and_are_kept(two_alerts, world, engine, settings, tmp_path):
    a, _c = two_alerts
    _rgb_scenes(world, engine)
    api = make_api(settings, engine)
    r = api.get(f"/alerts/{a}")
    assert r.status_code == 200 and str(tmp_path) not in r.text  # links, never server paths
    links = r.json()["properties"]["evidence"]
    assert set(links) == {"before", "after"}
    assert urlsplit(links["after"]).path == f"/alerts/{a}/evidence/after.png"
    assert api.get(f"/alerts/{a}/evidence").json() == links
    assert not (settings.data_dir / "evidence").exists()  # listing renders nothing

    # a signed link opens without a header
    got = {}
    for name in ("before", "after"):
        resp = api.client.get(links[name])
        assert resp.status_code == 200 and resp.headers["content-type"] == "image/png", resp.text
        assert "inline" in resp.headers["content-disposition"]
        got[name] = _png(resp.content)
        (tmp_path / f"{name}.png").write_bytes(resp.content)
    before, after = got["before"], got["after"]
    assert max(after.shape[0] - CAPTION_PX, after.shape[1]) >= 256

    # caption: a black strip with white text, different on the two chips (the date shown is in capitals)
    strip = after[:CAPTION_PX]
    assert _count(strip, (0, 0, 0)) > 0.7 * strip.shape[0] * strip.shape[1] and _count(strip, (255, 255, 255)) > 50
    assert (before[:CAPTION_PX] != after[:CAPTION_PX]).any()
    dates = {"after": dt.date.fromisoformat(D2), "before": dt.date.fromisoformat(D1)}
    assert Caption(pid(*A), "after", dates).lines() == [f"parcel {pid(*A)}", f"before {D1}", f"AFTER {D2}"]
    # true colour: the new roof is red after; red outline of the construction, yellow of the parcel
    picture = after[CAPTION_PX:]
    assert _count(picture, RED) > 100 and _count(picture, (255, 221, 0)) > 100
    redness = lambda img: (img[..., 0] - img[..., 1]).clip(0).sum()  # noqa: E731
    assert redness(picture) > 3 * redness(before[CAPTION_PX:])
    # no data hatched in two greys: the strip before, the edge of the file (below the parcel) on both
    for colour in NODATA_COLOURS:
        assert _count(before, colour) > _count(after, colour) + 500 and _count(after, colour) > 200
    # the scale bar: a white box with a black bar in the lower left corner
    corner = picture[-30:, :120]
    assert _count(corner, (255, 255, 255)) > 300 and _count(corner, (0, 0, 0)) > 100

    # kept on disk, served again without rendering
    folder = settings.data_dir / "evidence" / str(a)
    files = sorted(folder.glob("*.png"))
    assert [f.name.split("-")[0] for f in files] == ["after", "before"]
    stamps = [f.stat().st_mtime_ns for f in files]
    assert api.get(f"/alerts/{a}/evidence/after.png").status_code == 200  # the bearer header works too
    assert [f.stat().st_mtime_ns for f in sorted(folder.glob("*.png"))] == stamps

    # an alert that changes gets a new chip; the old one is removed
    with transaction(engine) as s:
        s.execute(sa.text("UPDATE alerts SET geom = ST_Multi(ST_Buffer(geom, 0.00001)) WHERE id = :a"), dict(a=a))
    assert api.client.get(links["after"]).status_code == 200
    after_files = sorted(folder.glob("after-*.png"))
    assert len(after_files) == 1 and after_files[0] != files[0]

    # the file gone: 404 naming no path
    (world / "after_rgb.tif").unlink()
    with transaction(engine) as s:
        s.execute(sa.text("UPDATE alerts SET geom = ST_Multi(ST_Buffer(geom, 0.00001)) WHERE id = :a"), dict(a=a))
    r = api.client.get(links["after"])
    assert r.status_code == 404 and "cannot be read" in r.text and str(tmp_path) not in r.text


def test_signed_links_open_one_chip_until_they_expire_or_the_token_is_revoked(two_alerts, world, engine, settings):
    a, c = two_alerts
    _rgb_scenes(world, engine)
    api = make_api(settings, engine)
    link = api.get(f"/alerts/{a}").json()["properties"]["evidence"]["after"]
    assert api.client.get(link).status_code == 200
    query = parse_qs(urlsplit(link).query)
    token, expires, sig = (query[k][0] for k in ("token", "expires", "sig"))
    assert 3600 <= int(expires) - time.time() <= 5400
    base = f"/alerts/{{}}/evidence/{{}}.png?token={token}&expires={{}}&sig={{}}"
    assert api.client.get(base.format(c, "after", expires, sig)).status_code == 403  # another alert
    assert api.client.get(base.format(a, "before", expires, sig)).status_code == 403  # another chip
    assert api.client.get(base.format(a, "after", int(expires) + 1, sig)).status_code == 403  # a longer life
    assert api.client.get(base.format(a, "after", expires, "0" * 64)).status_code == 403
    assert api.client.get(f"/alerts/{a}/evidence/after.png?token={token}").status_code == 403
    assert api.client.get(f"/alerts/{a}/evidence/after.png").status_code == 401
    assert api.client.get(f"/alerts/{a}/evidence/sideways.png", headers=api.read).status_code == 422
    with Session(engine) as s:
        token_hash = s.scalar(sa.text("SELECT token_hash FROM api_tokens WHERE id = :i"), dict(i=int(token)))
    app_request = type("R", (), {"url_for": lambda self, _n, **kw: f"/alerts/{kw['alert_id']}/evidence/"
                                                                   f"{kw['name']}.png"})()
    expired = _link(app_request, token_hash, a, "after", int(token), int(time.time()) - 5)
    r = api.client.get(expired)
    assert r.status_code == 403 and "expired" in r.json()["detail"]
    with transaction(engine) as s:
        revoke_token(s, "viewer")
    assert api.client.get(link).status_code == 403


def test_chips_of_imported_detections_say_so(two_alerts, engine, settings):
    a, _c = two_alerts
    with Session(engine) as s, s.begin():
        paths = render_chips(s, s.get(Alert, a), settings)
    assert set(paths) == {"before", "after"}
    assert Caption("P", "after", {"after": dt.date(2024, 1, 2)}, imagery=False).lines()[1] == \
        "AFTER 2024-01-02 (detections, no imagery)"
    after = np.asarray(Image.open(paths["after"]).convert("RGB")).astype(int)
    plain = after[CAPTION_PX:]
    plain = plain[~(plain == np.array(RED)).all(-1) & ~(plain == np.array((255, 221, 0))).all(-1)]
    assert (plain[:, 0] == plain[:, 1]).mean() > 0.95  # a probability raster: grey
