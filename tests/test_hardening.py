"""Hardening against hostile input: URLs that point inside the network (SSRF) and credentials
sent to them, secrets shown, API errors, bad files, concurrent passes. Everything runs on real
PostGIS and real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import rasterio
import shapely
import sqlalchemy as sa
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from pydantic import SecretStr
from pyproj import Transformer
from shapely.geometry import box, mapping

from monitor import pipeline
from monitor.alerts.webhooks import add_subscription, alert_payload, deliver_pending
from monitor.api.app import create_app
from monitor.db import queries
from monitor.db.embedded import Cluster
from monitor.db.engine import transaction
from monitor.db.tables import Alert, Area, Delivery, Run, Scene
from monitor.domain import AreaSpec
from monitor.errors import BadInput, DatabaseError, ProviderError, SceneTooLarge
from monitor.geo import reproject
from monitor.imagery.base import AreaInfo, Band, Product, get_provider
from monitor.imagery.fetch import new_session
from monitor.imagery.grid import area_grid
from monitor.imagery.prepare import check_size
from monitor.metrics import Metrics
from monitor.redact import RedactingFilter
from monitor.settings import Settings
from monitor.urlpolicy import UnsafeURL, check_source, check_url, same_origin
from tests.conftest import ROOT
from tests.test_api import make_api, new_area
from tests.test_change import D1, buildings, world  # noqa: F401 (world is a fixture)
from tests.test_webhooks import SECRET, announce, make_alert
from tests.test_webhooks import make_area as make_webhook_area
from tests.vectors import geojson, write

UTC = dt.timezone.utc
ALLOW = {"MONITOR_ALLOW_PRIVATE_URLS": "true"}
AREA = box(-58.5, -34.6, -58.45, -34.55)


class Recorder:
    """An HTTP server on 127.0.0.1 that answers every request 500 and records its path and headers."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        rec = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                rec.requests.append({"path": self.path, "headers": dict(self.headers)})
                self.send_response(500)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = _answer  # noqa: N815

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder():
    r = Recorder()
    yield r
    r.close()


# --- 1. URLs that point inside the network

PRIVATE = ["http://127.0.0.1:18800/x/", "http://169.254.169.254/", "http://[::1]/", "http://0/",
           "http://localhost:5432/", "http://10.1.2.3/hub/", "http://192.168.0.1/", "http://[::ffff:127.0.0.1]/",
           "http://224.0.0.1/"]


@pytest.mark.parametrize("url", PRIVATE)
def test_private_and_local_urls_are_refused_unless_allowed(url):
    with pytest.raises(BadInput, match="private or local address.*MONITOR_ALLOW_PRIVATE_URLS") as e:
        check_url(url, allow_private=False)
    assert e.value.field == "url"
    assert check_url(url, allow_private=True) == url


def test_url_policy_schemes_and_the_local_folder(tmp_path):
    for url in ("ftp://example.org/x", "file:///etc/passwd", "gopher://example.org/", "http:///nohost"):
        with pytest.raises(BadInput, match="not an http\\(s\\) URL"):
            check_url(url, allow_private=True)
    assert check_url("https://93.184.216.34/v1", allow_private=False) == "https://93.184.216.34/v1"
    with pytest.raises(BadInput, match="is a file, not a folder"):
        check_source("local", "file:///etc/passwd", allow_private=True)
    with pytest.raises(BadInput, match="takes a folder, not a http URL"):
        check_source("local", "http://example.org/drops", allow_private=True)
    assert check_source("local", f"file://{tmp_path}", allow_private=False) == str(tmp_path)
    with pytest.raises(BadInput, match="private or local"):
        check_source("stac", "http://127.0.0.1:9/v1", allow_private=False)
    assert same_origin("https://hub.example/apihub/", "https://HUB.example:443/other")
    assert not same_origin("https://hub.example/apihub/", "https://hub.example:8443/apihub/")
    assert not same_origin("https://hub.example/", "http://hub.example/")


def test_cli_refuses_private_sources_and_webhooks(cli, engine, tmp_path):
    f = geojson(tmp_path / "a.geojson", [AREA])
    err = cli("areas", "add", "ba", "--geometry", f, "--provider", "sentinelsat",
              "--source", "sentinelsat=http://127.0.0.1:18800/x/", expect=2).stderr
    assert "field 'source'" in err and "127.0.0.1" in err and "MONITOR_ALLOW_PRIVATE_URLS" in err
    assert "file, not a folder" in cli("areas", "add", "ba", "--geometry", f, "--provider", "local",
                                      "--source", "local=file:///etc/passwd", expect=2).stderr
    cli("areas", "add", "ba", "--geometry", f, "--provider", "local", "--source", f"local=file://{tmp_path}")
    assert json.loads(cli("areas", "show", "ba").stdout)["sources"] == {"local": str(tmp_path)}
    assert "169.254.169.254" in cli("areas", "configure", "ba", "--source", "stac=http://169.254.169.254/",
                                    expect=2).stderr
    for url in ("http://127.0.0.1:9/hook", "http://[::1]/", "http://169.254.169.254/", "http://0/",
                "http://localhost:5432/"):
        assert "private or local" in cli("subscriptions", "add", url, "--secret", "x", expect=2).stderr
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM subscriptions")).scalar() == 0
        assert conn.execute(sa.text("SELECT sources FROM areas")).scalar() == {"local": str(tmp_path)}
    # an operator who runs an on-premises hub allows private addresses
    cli("areas", "configure", "ba", "--source", "stac=http://10.0.0.5/v1", env=ALLOW)
    cli("subscriptions", "add", "http://127.0.0.1:9/hook", "--secret", "x", env=ALLOW)


def test_api_refuses_private_sources(settings, engine):
    api = make_api(settings, engine)
    body = {"name": "ba", "geometry": mapping(AREA), "providers": ["sentinelsat"],
            "sources": {"sentinelsat": "http://127.0.0.1:18800/x/"}}
    r = api.post("/areas", json=body)
    assert r.status_code == 422 and "127.0.0.1" in r.text and "source" in r.text
    assert api.post("/areas", json={**body, "sources": {}}).status_code == 201
    r = api.patch("/areas/ba", json={"sources": {"stac": "http://169.254.169.254/"}})
    assert r.status_code == 422 and "169.254.169.254" in r.text
    assert api.get("/areas/ba").json()["sources"] == {}
    api.client.app.state.settings = settings.model_copy(update={"allow_private_urls": True})
    assert api.patch("/areas/ba", json={"sources": {"stac": "http://10.0.0.5/v1"}}).status_code == 200


def test_connect_time_check_refuses_private_peers(recorder):
    """A name may resolve to a public address when registered and to a private one later (DNS
    rebinding): the address a connection actually reaches is checked."""
    with pytest.raises(UnsafeURL, match="127.0.0.1"):
        new_session(guard=True).get(f"{recorder.url}/x", timeout=5)
    with pytest.raises(UnsafeURL):
        new_session(guard=True).get(f"http://localhost:{recorder.server.server_port}/x", timeout=5)
    assert recorder.requests == []
    assert new_session(guard=False).get(f"{recorder.url}/x", timeout=5).status_code == 500
    assert len(recorder.requests) == 1


def test_hub_credentials_go_only_to_the_configured_hub(settings, recorder):
    hub = settings.model_copy(update={"dhus_url": f"{recorder.url}/apihub/", "dhus_user": "monitor",
                                      "dhus_password": SecretStr("hub-secret"), "http_timeout_s": 5})
    since, until = dt.datetime(2024, 1, 1, tzinfo=UTC), dt.datetime(2024, 1, 2, tzinfo=UTC)

    def search(s, source):
        area = AreaInfo(1, "x", AREA, 100, source)
        with pytest.raises(ProviderError) as e:
            get_provider("sentinelsat", s, area).search(area, since, until)
        return str(e.value)

    search(hub, None)
    assert recorder.requests[-1]["headers"]["Authorization"].startswith("Basic ")
    # an area's own source on another host: refused at connect time, nothing sent at all
    other = f"http://localhost:{recorder.server.server_port}/x/"
    assert "private or local" in search(hub, other)
    assert len(recorder.requests) == 1
    # allowed (an on-premises hub), it is asked without the configured user and password
    search(hub.model_copy(update={"allow_private_urls": True}), other)
    assert len(recorder.requests) == 2 and "Authorization" not in recorder.requests[-1]["headers"]


def test_stac_source_of_an_area_is_checked_at_connect_time(settings, recorder):
    area = AreaInfo(1, "x", AREA, 100, f"{recorder.url}/v1")
    with pytest.raises(ProviderError, match="private or local"):
        get_provider("stac", settings, area).search(area, dt.datetime(2024, 1, 1, tzinfo=UTC),
                                                    dt.datetime(2024, 1, 2, tzinfo=UTC))
    assert recorder.requests == []


def test_webhooks_to_private_addresses_are_refused_when_sent(engine, settings, tmp_path, recorder):
    """A subscription stored before the check (or whose name now resolves privately) is refused at send time."""
    area_id = make_webhook_area(engine, tmp_path)
    with transaction(engine) as s:
        add_subscription(s, f"{recorder.url}/hook", SECRET, min_confidence="probable", allow_private_urls=True)
    announce(engine, make_alert(engine, area_id))
    assert deliver_pending(engine, settings) == 1
    assert recorder.requests == []
    with transaction(engine) as s:
        d = s.scalars(sa.select(Delivery)).one()
        assert d.status == "pending" and "private or local" in d.attempts[0]["error"]
        assert s.scalar(sa.select(sa.func.count()).select_from(Area)) == 1


# --- 2. secrets never shown

def test_settings_and_db_url_mask_every_password_form(cli, db_url):
    env = {"DATABASE_URL": "postgresql://postgres@127.0.0.1:1/x?password=hunter2",
           "MONITOR_DHUS_URL": "https://hubuser:dhus-pw@hub.example.org/apihub/",
           "MONITOR_STAC_URL": "https://stacuser:stac-pw@stac.example.org/v1",
           "MONITOR_DHUS_PASSWORD": "dhus-secret"}
    shown = cli("settings", env=env).stdout
    for secret in ("hunter2", "dhus-pw", "stac-pw", "dhus-secret"):
        assert secret not in shown
    settings = json.loads(shown)
    assert settings["database_url"] == "postgresql://postgres@127.0.0.1:1/x?password=***"
    assert settings["dhus_url"] == "https://hubuser:***@hub.example.org/apihub/"
    failed = cli("db", "url", env=env, expect=1)
    assert "cannot connect" in failed.stderr and "hunter2" not in failed.stderr + failed.stdout
    # a reachable database with a password in its URL: masked, unless asked for psql
    with_pw = {"DATABASE_URL": f"{db_url}?password=s3cr3t-pw"}
    assert "s3cr3t-pw" not in cli("db", "url", env=with_pw).stdout
    assert "password=***" in cli("db", "url", env=with_pw).stdout
    assert "s3cr3t-pw" in cli("db", "url", "--show-password", env=with_pw).stdout


def monitor_cmd(*args: str, env: dict, stdin: str = "") -> subprocess.CompletedProcess:
    """``monitor ARGS`` run as its own process (``python -m monitor``), as a user runs it."""
    return subprocess.run([sys.executable, "-m", "monitor", *args], cwd=ROOT, capture_output=True, text=True,
                          input=stdin, timeout=120, env={**os.environ, "MONITOR_LOG_LEVEL": "WARNING", **env})


@pytest.mark.parametrize("form", ["user", "query"])
def test_db_psql_passes_the_password_by_environment_only(db_url, tmp_path, form):
    url = sa.make_url(db_url)
    pw = "s3cr3t-pw"
    env = {"DATABASE_URL": (url.set(password=pw).render_as_string(hide_password=False) if form == "user"
                            else f"{db_url}?password={pw}"), "MONITOR_HOME": str(tmp_path / "home")}
    # psql's own argv (what `ps` shows) is read by a shell psql starts: the password is not in it
    script = "SELECT current_database();\n\\getenv pw PGPASSWORD\nSELECT md5(:'pw');\n\\! tr '\\0' ' ' < /proc/$PPID/cmdline\n"
    run = monitor_cmd("db", "psql", "--", "-At", "-v", "ON_ERROR_STOP=1", env=env, stdin=script)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert url.database in lines and hashlib.md5(pw.encode()).hexdigest() in lines
    argv = next(line for line in lines if "--dbname=" in line)
    assert f"psql --dbname=postgresql://monitor@127.0.0.1:{url.port}/{url.database} -At -v ON_ERROR_STOP=1" in argv
    assert pw not in run.stdout + run.stderr


def test_db_psql_exits_as_psql_does_and_says_when_it_is_missing(db_url, tmp_path):
    env = {"DATABASE_URL": db_url, "MONITOR_HOME": str(tmp_path / "home")}
    run = monitor_cmd("db", "psql", "--", "-c", "SELECT 1/0", env=env)
    assert run.returncode == 1 and "division by zero" in run.stderr
    # no psql on PATH: said so, exit 2
    (tmp_path / "empty").mkdir()
    run = monitor_cmd("db", "psql", env={**env, "PATH": str(tmp_path / "empty")})
    assert run.returncode == 2 and "psql was not found on PATH" in run.stderr


def test_subscriptions_list_masks_url_passwords(cli):
    out = cli("subscriptions", "add", "https://hookuser:hook-pw@hooks.example.org/m", "--secret", "sig").stdout
    assert "hook-pw" not in out
    for args in (("subscriptions", "list"), ("subscriptions", "list", "--json")):
        listed = cli(*args).stdout
        assert "hook-pw" not in listed and "hookuser:***@hooks.example.org" in listed


def test_logs_mask_secrets():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    log = logging.getLogger("monitor.test.redact")
    log.addHandler(handler)
    try:
        log.warning("connecting to %s", "postgresql://monitor:db-pw@db/monitor")
        try:
            raise RuntimeError("host=db password=libpq-pw")
        except RuntimeError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
    text = stream.getvalue()
    assert "db-pw" not in text and "libpq-pw" not in text
    assert "monitor:***@db" in text and "password=***" in text


def test_readyz_and_runs_show_no_internals(settings, engine):
    gone = sa.create_engine("postgresql+psycopg2://monitor@127.0.0.1:9/none", poolclass=sa.pool.NullPool)
    with TestClient(create_app(settings, engine=gone, metrics=Metrics(CollectorRegistry()))) as client:
        r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["status"] == "not ready" and r.json()["database"] == "unreachable"
    assert "127.0.0.1" not in r.text and ":9" not in r.text
    api = make_api(settings, engine)
    area = new_area(api)
    trace = ('ValueError: bad\n  File "/srv/monitor/pipeline.py", line 10, in run_area\n'
             '    raise ValueError("bad")')
    with transaction(engine) as s:
        s.add(Run(area_id=area["id"], status="failed", error=trace))
    runs = api.get("/runs").json()
    assert runs[0]["error"] == "ValueError: bad"
    assert "File " not in api.get(f"/runs/{runs[0]['id']}").text
    try:
        raise ValueError("postgresql://u:pw-in-error@h/x")
    except ValueError as e:
        assert pipeline._reason(e) == "ValueError: postgresql://u:***@h/x"


# --- 3. API answers instead of 500s

def test_api_names_the_field_of_a_nul_or_a_null_id(settings, engine):
    api = make_api(settings, engine)
    r = api.post("/areas", json={"name": "a\x00b", "geometry": mapping(AREA)})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "name"]
    with pytest.raises(BadInput, match="NUL"):
        AreaSpec.parse("a\x00b", cadence="5d", providers="local", max_cloud=20)
    new_area(api)
    lot = mapping(box(-58.47, -34.59, -58.46, -34.58))
    features = [{"type": "Feature", "properties": {"id": 5, "use": 1.5}, "geometry": lot},
                {"type": "Feature", "properties": {"id": None, "use": None}, "geometry": lot}]
    upload = json.dumps({"type": "FeatureCollection", "features": features}).encode()
    r = api.post("/areas/ba/parcels/upload", files={"file": ("lots.geojson", upload)})
    assert r.status_code == 422 and r.json()["field"] == "id" and r.json()["row"] == 2
    # a missing attribute number is stored as null, not as NaN that PostgreSQL refuses
    features[1]["properties"]["id"] = 6
    upload = json.dumps({"type": "FeatureCollection", "features": features}).encode()
    assert api.post("/areas/ba/parcels/upload", files={"file": ("lots.geojson", upload)}).status_code == 200
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT attributes->'use' FROM parcels WHERE external_id = '6'")).scalar() is None
    assert api.get("/areas").status_code == 200


def test_api_body_limit(settings, engine):
    api = make_api(settings.model_copy(update={"max_body_mb": 0.01}), engine)  # 10 kB
    new_area(api)
    big = b"x" * 20_000
    r = api.post("/areas/ba/parcels/upload", files={"file": ("lots.geojson", big)})
    assert r.status_code == 413 and "MONITOR_MAX_BODY_MB" in r.json()["detail"]

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(20):
            yield b"y" * 1000

    r = api.post("/areas", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert api.get("/areas").status_code == 200
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM parcels")).scalar() == 0


# --- 6, 7. bad files: exit 2 naming the file and the field or feature, nothing written

@pytest.mark.parametrize("coords,needle", [
    ([(-58.5, 200), (-58.4, 200), (-58.4, 201), (-58.5, 200)], "outside lon -180..180, lat -90..90"),
    ([(500, -34.6), (501, -34.6), (501, -34.5), (500, -34.6)], "outside lon -180..180"),
    ([(314000, 6183400), (317000, 6183400), (317000, 6185400), (314000, 6183400)], "in the CRS the file claims"),
    ([(float("nan"), -34.6), (-58.4, -34.6), (-58.4, -34.5), (float("nan"), -34.6)], "feature"),
])
def test_area_files_with_impossible_coordinates(cli, engine, tmp_path, coords, needle):
    f = tmp_path / "area.geojson"
    f.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [coords]}}]}))
    err = cli("areas", "add", "ba", "--geometry", f, "--provider", "local", expect=2).stderr
    assert needle in err and str(f) in err and "row 1 (feature)" in err and "Traceback" not in err
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM areas")).scalar() == 0


def test_parcels_with_a_null_id(cli, engine, tmp_path):
    cli("areas", "add", "ba", "--geometry", geojson(tmp_path / "a.geojson", [AREA]), "--provider", "local")
    lots = [box(-58.49, -34.59, -58.48, -34.58), box(-58.47, -34.59, -58.46, -34.58)]
    f = write(tmp_path / "lots.gpkg", lots, [{"id": 1}, {"id": None}], "EPSG:4326", driver="GPKG")
    err = cli("parcels", "import", f, "--area", "ba", expect=2).stderr
    assert "row 2" in err and "field 'id'" in err and "empty id" in err
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM parcels")).scalar() == 0


@pytest.mark.parametrize("content,needle", [
    ("parcel_id,permit_id,valid_from,valid_to\np1,Peñ-1,2024-01-01,\n".encode("latin-1"), "is not UTF-8 text"),
    (b"parcel_id,permit_id,valid_from,valid_to\np1,B\x001,2024-01-01,\n", "row 2, field 'permit_id': holds a NUL"),
    (bytes(range(256)) * 400, "is not UTF-8 text"),
    (b"parcel_id,permit_id,valid_from\np1,B-1,2024-01-01\n", "field 'valid_to': has no valid_to column"),
])
def test_permit_files_that_are_not_text_or_lack_valid_to(cli, engine, tmp_path, content, needle):
    f = tmp_path / "permits.csv"
    f.write_bytes(content)
    err = cli("permits", "import", f, expect=2).stderr
    assert needle in err and str(f) in err
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM permits")).scalar() == 0



def test_permit_dates_are_iso_unless_a_format_is_given(cli, engine, tmp_path):
    cli("areas", "add", "ba", "--geometry", geojson(tmp_path / "a.geojson", [AREA]), "--provider", "local")
    cli("parcels", "import", write(tmp_path / "p.gpkg", LOTS[:1], [{"id": "P0"}], "EPSG:4326", driver="GPKG"),
        "--area", "ba")
    f = tmp_path / "permits.csv"
    f.write_text("parcel_id,permit_id,valid_from,valid_to\nP0,B-1,01/02/2024,\n")
    err = cli("permits", "import", f, expect=2).stderr
    assert "row 2, field 'valid_from': '01/02/2024' is not a date (use YYYY-MM-DD)" in err
    cli("permits", "import", f, "--date-format", "%d/%m/%Y")
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT valid_from::text FROM permits")).scalar() == "2024-02-01"
    cli("permits", "import", f, "--date-format", "%m/%d/%Y")  # month first, as the file's maker said
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT valid_from::text FROM permits")).scalar() == "2024-01-02"
    assert "is not a date in the format %d.%m.%Y" in cli("permits", "import", f, "--date-format", "%d.%m.%Y",
                                                         expect=2).stderr


@pytest.mark.parametrize("problem", ["truncated", "complex", "future"])
def test_detection_rasters_that_cannot_be_read_and_future_dates(world, cli, engine, problem):
    good = buildings().write(world / "good.tif")
    raster, day = good, D1
    if problem == "truncated":
        raster = world / "truncated.tif"
        raster.write_bytes(good.read_bytes()[: good.stat().st_size * 2 // 3])
    elif problem == "complex":
        raster = world / "complex.tif"
        with rasterio.open(good) as src, rasterio.open(raster, "w", **{**src.profile, "dtype": "complex64",
                                                                       "nodata": None}) as dst:
            dst.write(src.read().astype("complex64"))
    else:
        day = "9999-12-31"
    result = cli("detections", "import", "--area", "ba", "--date", day, raster, expect=2)
    needle = {"truncated": "truncated or corrupt", "complex": "complex64 pixels", "future": "in the future"}[problem]
    assert needle in result.stderr
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM detections")).scalar() == 0



# --- 5. one footprint and resolution rule for the CLI and the API

@pytest.mark.parametrize("geom,needle", [
    (box(-70, -40, -50, -20), "at most 100,000 km2"),
    (box(-180, -90, 180, 90), "spans 360.0 degrees"),
    (shapely.Polygon([(179.9, 0), (-179.9, 0), (-179.9, 1), (179.9, 1)]), "across the antimeridian"),
])
def test_areas_too_large_or_across_the_antimeridian_are_refused(cli, settings, engine, tmp_path, geom, needle):
    assert needle in cli("areas", "add", "x", "--geometry", geojson(tmp_path / "x.geojson", [geom]), expect=2).stderr
    r = make_api(settings, engine).post("/areas", json={"name": "x", "geometry": mapping(geom)})
    assert r.status_code == 422 and needle in r.json()["detail"] and r.json()["field"] == "geometry"
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM areas")).scalar() == 0


def test_resolution_in_a_sane_range(cli, tmp_path):
    f = geojson(tmp_path / "a.geojson", [AREA])
    for value in ("1e-9", "1e9", "nan"):
        assert "field 'resolution'" in cli("areas", "add", "ba", "--geometry", f, "--resolution", value,
                                           expect=2).stderr
    cli("areas", "add", "ba", "--geometry", f, "--resolution", "2.5", "--provider", "local")


# --- 9. one pass per area at a time

def test_a_second_pass_over_a_busy_area_does_nothing(cli, engine, tmp_path):
    drops = tmp_path / "drops"
    drops.mkdir()
    cli("areas", "add", "ba", "--geometry", geojson(tmp_path / "a.geojson", [AREA]), "--provider", "local",
        "--source", f"local={drops}")
    with engine.connect() as conn:
        area_id = conn.execute(sa.text("SELECT id FROM areas")).scalar()
    # another pass holds the area (its lock is on its own connection, as in another process)
    with queries.area_lock(engine, area_id) as held:
        assert held
        with queries.area_lock(engine, area_id) as second:
            assert not second
        result = cli("process", "--area", "ba", "--quiet")
        assert "area 'ba' is busy" in result.stderr
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM runs")).scalar() == 0
    # released: the next pass runs
    summary = json.loads(cli("process", "--area", "ba", "--quiet").stdout)
    assert summary["area"] == "ba" and "busy" not in summary
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM runs")).scalar() == 1
        held_now = conn.execute(sa.text(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = :c AND objid = :a AND database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database())"),
            {"c": queries.AREA_LOCK_CLASS, "a": area_id}).scalar()
    assert held_now == 0


# --- 13. the test cluster: stopped after the tests, a taken port said so

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_taken_port_is_reported_as_such(tmp_path):
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        cluster = Cluster(Settings(home=tmp_path / "home", pg_port=port))
        with pytest.raises(DatabaseError, match=f"port {port} on 127.0.0.1 is taken by another program"):
            cluster.ensure()
    assert not (tmp_path / "home" / "pg" / "data" / "PG_VERSION").exists()


def test_the_suite_stops_the_cluster_it_started():
    """A test session on a private cluster of its own (another port) leaves it stopped and the port free."""
    port = free_port()
    home = ROOT / ".monitor" / f"test-{port}"
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"} | {"MONITOR_TEST_PG_PORT": str(port)}
    try:
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                              "tests/test_db.py::test_models_and_migrations_agree"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
        assert (home / "pg" / "data" / "PG_VERSION").exists()
        assert not Cluster(Settings(home=home, pg_port=port)).running()
        with socket.socket() as s:
            # the port is free again (closed connections may linger in TIME_WAIT, which a server may reuse)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
    finally:
        Cluster(Settings(home=home, pg_port=port)).stop()
        shutil.rmtree(home, ignore_errors=True)


# --- 4. a wrong CRS or a parcel elsewhere never overwrites good parcels

LOTS = [box(-58.49, -34.59, -58.48, -34.58), box(-58.47, -34.59, -58.46, -34.58), box(-58.47, -34.57, -58.46, -34.56)]


def parcel_rows(engine) -> dict:
    with engine.connect() as conn:
        return {r[0]: r[1:] for r in conn.execute(sa.text(
            "SELECT external_id, ST_AsText(geom), area_m2, attributes::text FROM parcels"))}


def test_parcels_in_a_wrong_crs_or_outside_the_area_are_refused(cli, engine, tmp_path):
    cli("areas", "add", "ba", "--geometry", geojson(tmp_path / "a.geojson", [AREA]), "--provider", "local")
    good = write(tmp_path / "lots.gpkg", LOTS, [{"id": f"L{i}"} for i in range(3)], "EPSG:4326", driver="GPKG")
    cli("parcels", "import", good, "--area", "ba")
    before = parcel_rows(engine)
    utm = [shapely.transform(g, lambda xy: np.column_stack(Transformer.from_crs(4326, 32721, always_xy=True)
                                                              .transform(xy[:, 0], xy[:, 1]))) for g in LOTS]
    # UTM numbers in a file that claims WGS84
    claims_wgs84 = write(tmp_path / "utm_as_wgs84.gpkg", utm, [{"id": f"L{i}"} for i in range(3)], "EPSG:4326",
                         driver="GPKG")
    err = cli("parcels", "import", claims_wgs84, "--area", "ba", expect=2).stderr
    assert "row 1 (feature)" in err and "in the CRS the file claims, EPSG:4326" in err
    # degrees in a file that claims UTM 21S
    claims_utm = write(tmp_path / "wgs84_as_utm.gpkg", LOTS, [{"id": f"L{i}"} for i in range(3)], "EPSG:32721",
                       driver="GPKG")
    err = cli("parcels", "import", claims_utm, "--area", "ba", expect=2).stderr
    assert "row 1 (feature)" in err and "outside the area of use of EPSG:32721" in err
    assert "area of use" in cli("areas", "add", "x", "--geometry", claims_utm, expect=2).stderr
    # a parcel elsewhere
    far = write(tmp_path / "far.gpkg", [*LOTS[:2], box(-60.0, -35.0, -59.99, -34.99)],
                [{"id": f"L{i}"} for i in range(3)], "EPSG:4326", driver="GPKG")
    err = cli("parcels", "import", far, "--area", "ba", expect=2).stderr
    assert "row 3 (feature)" in err and "lies outside area 'ba' (1 of 3 features do)" in err
    assert parcel_rows(engine) == before
    # let through on purpose, with a warning naming the feature
    result = cli("parcels", "import", far, "--area", "ba", "--allow-outside")
    assert "feature 3 lies outside area 'ba'" in result.stderr and len(parcel_rows(engine)) == 3


def test_parcels_import_dry_run_counts_and_writes_nothing(cli, engine, tmp_path):
    cli("areas", "add", "ba", "--geometry", geojson(tmp_path / "a.geojson", [AREA]), "--provider", "local")
    first = write(tmp_path / "lots.gpkg", LOTS[:2], [{"id": "L0", "use": "res"}, {"id": "L1", "use": "res"}],
                  "EPSG:4326", driver="GPKG")
    out = cli("parcels", "import", first, "--area", "ba", "--dry-run").stdout
    assert "2 new, 0 updated (0 changed, 0 unchanged)" in out and "nothing written" in out
    assert parcel_rows(engine) == {}
    cli("parcels", "import", first, "--area", "ba")
    before = parcel_rows(engine)
    second = write(tmp_path / "lots2.gpkg", LOTS, [{"id": "L0", "use": "res"}, {"id": "L1", "use": "shop"},
                                                  {"id": "L2", "use": "res"}], "EPSG:4326", driver="GPKG")
    out = cli("parcels", "import", second, "--area", "ba", "--dry-run").stdout
    assert "1 new, 2 updated (1 changed, 1 unchanged)" in out
    assert parcel_rows(engine) == before
    out = cli("parcels", "import", second, "--area", "ba").stdout
    assert "1 new, 2 updated (1 changed, 1 unchanged)" in out and len(parcel_rows(engine)) == 3


def test_parcel_imports_keep_earlier_versions_and_can_be_undone(cli, engine, tmp_path):
    cli("areas", "add", "ba", "--geometry", geojson(tmp_path / "a.geojson", [AREA]), "--provider", "local")
    first = write(tmp_path / "lots.gpkg", LOTS[:2], [{"id": "L0", "use": "res"}, {"id": "L1", "use": "res"}],
                  "EPSG:4326", driver="GPKG")
    assert "(import #1)" in cli("parcels", "import", first, "--area", "ba").stdout
    before = parcel_rows(engine)
    # L1 changes its use and its shape, L2 is new, L0 is as it was
    second = write(tmp_path / "lots2.gpkg", [LOTS[0], LOTS[1].buffer(0.001, join_style="mitre"), LOTS[2]],
                   [{"id": "L0", "use": "res"}, {"id": "L1", "use": "shop"}, {"id": "L2", "use": "res"}],
                   "EPSG:4326", driver="GPKG")
    out = cli("parcels", "import", second, "--area", "ba").stdout
    assert "(import #2): 1 new, 2 updated (1 changed, 1 unchanged)" in out
    after = parcel_rows(engine)
    with engine.connect() as conn:
        kept = conn.execute(sa.text("SELECT external_id, ST_AsText(geom), area_m2, attributes::text, import_id, "
                                    "written_by, valid_from < valid_to FROM parcel_versions")).all()
        imports = conn.execute(sa.text("SELECT id, file, new, changed, unchanged FROM parcel_imports ORDER BY id")).all()
    assert kept == [("L1", *before["L1"], 2, 1, True)]  # the version the import replaced, whole
    assert imports == [(1, str(first), 2, 0, 0), (2, str(second), 1, 1, 1)]
    history = json.loads(cli("parcels", "history", "--area", "ba", "--parcel", "L1", "--json").stdout)
    assert [(h["attributes"]["use"], h["import_id"], h["replaced_by"], h["valid_to"] is None) for h in history] == [
        ("res", 1, 2, False), ("shop", 2, None, True)]
    assert history[0]["valid_to"] == history[1]["valid_from"]
    table = cli("parcels", "history", "--area", "ba").stdout
    assert table.count("current") == 3 and table.count("\nL1 ") == 2
    assert "no parcel 'L9'" in cli("parcels", "history", "--area", "ba", "--parcel", "L9", expect=2).stderr
    with engine.connect() as conn:  # the reader role sees every version, as QGIS does, and not the tables
        for table in ("parcel_versions", "parcel_imports"):
            assert not conn.execute(sa.text(f"SELECT has_table_privilege('monitor_reader', '{table}', 'SELECT')")).scalar()
        conn.execute(sa.text("SET ROLE monitor_reader"))
        assert conn.execute(sa.text("SELECT count(*) FROM area_parcel_versions WHERE area = 'ba'")).scalar() == 4
    # a permit on the new parcel: the import cannot be undone without losing it, so nothing is done
    permits = tmp_path / "permits.csv"
    permits.write_text("parcel_id,permit_id,valid_from,valid_to\nL2,P-1,2024-01-01,\n")
    cli("permits", "import", permits, "--area", "ba")
    err = cli("parcels", "undo", "--area", "ba", expect=2).stderr
    assert "import #2 cannot be undone: parcels it added are referred to by permits: L2; nothing was changed" in err
    assert parcel_rows(engine) == after
    with engine.connect() as conn:
        conn.execute(sa.text("DELETE FROM permits"))
        conn.commit()
    out = cli("parcels", "undo", "--area", "ba").stdout
    assert f"import #2 ({second}) undone in 'ba': 1 parcels restored to their earlier version, 1 new parcels removed" in out
    assert parcel_rows(engine) == before
    assert len(json.loads(cli("parcels", "history", "--area", "ba", "--json").stdout)) == 2
    imports = json.loads(cli("parcels", "imports", "--area", "ba", "--json").stdout)
    assert [(i["import"], i["undone_at"] is not None) for i in imports] == [(1, False), (2, True)]
    assert "was undone already" in cli("parcels", "undo", "--area", "ba", "--import", "2", expect=2).stderr
    assert "no parcel import #7" in cli("parcels", "undo", "--area", "ba", "--import", "7", expect=2).stderr
    # a later import changed what an earlier one wrote: the later one is undone first
    cli("parcels", "import", second, "--area", "ba")
    err = cli("parcels", "undo", "--area", "ba", "--import", "1", expect=2).stderr
    assert "import #1 cannot be undone: parcels it wrote were changed since by import #3; undo that first" in err
    cli("parcels", "undo", "--area", "ba")
    assert "2 new parcels removed" in cli("parcels", "undo", "--area", "ba", "--import", "1").stdout
    assert parcel_rows(engine) == {}
    assert "has no parcel import to undo" in cli("parcels", "undo", "--area", "ba", expect=2).stderr


# --- 12. runs left running by an ended process

def test_runs_of_an_ended_process_are_marked_interrupted(cli, engine, tmp_path):
    drops = tmp_path / "drops"
    drops.mkdir()
    cli("areas", "add", "ba", "--geometry", geojson(tmp_path / "a.geojson", [AREA]), "--provider", "local",
        "--source", f"local={drops}")
    with transaction(engine) as s:
        area_id = s.scalar(sa.select(Area.id))
        s.add(Run(area_id=area_id, status="running", steps={"fetch": {"status": "running"}}))  # killed mid-pass
    with queries.area_lock(engine, area_id):  # a live pass: its running run is left alone
        assert "busy" in cli("process", "--area", "ba", "--quiet").stderr
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT status FROM runs")).scalars().all() == ["running"]
    cli("process", "--area", "ba", "--quiet")
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT status, error, finished_at IS NOT NULL FROM runs ORDER BY id")).all()
    assert rows[0][0] == "interrupted" and "interrupted: the process ended" in rows[0][1] and rows[0][2]
    assert rows[1][0] == "succeeded" and len(rows) == 2


# --- importers under fuzz: exit 0 or 2, never a traceback, nothing written on 2

FUZZ = hsettings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
cell = st.one_of(st.text(max_size=12), st.sampled_from(["2024-01-01", "01/02/2024", "9999-12-31", "", "P0", "\x00"]))


def rows_of(engine, table: str) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar()


@FUZZ
@given(header=st.lists(st.sampled_from(["parcel_id", "permit_id", "valid_from", "valid_to", "kind", "x", ""]),
                       min_size=1, max_size=5),
       rows=st.lists(st.lists(cell, min_size=1, max_size=5), max_size=4), encoding=st.sampled_from(["utf-8", "latin-1"]),
       junk=st.binary(max_size=8))
def test_permit_import_fuzz(cli, engine, tmp_path, header, rows, encoding, junk):
    if not rows_of(engine, "areas"):
        cli("areas", "add", "ba", "--geometry", geojson(tmp_path / "a.geojson", [AREA]), "--provider", "local")
        cli("parcels", "import", write(tmp_path / "p.gpkg", LOTS[:1], [{"id": "P0"}], "EPSG:4326", driver="GPKG"),
            "--area", "ba")
    text = "\n".join(",".join(r) for r in [header, *rows]) + "\n"
    f = tmp_path / "permits.csv"
    f.write_bytes(text.encode(encoding, errors="replace") + junk)
    before = rows_of(engine, "permits")
    result = cli("permits", "import", f, expect=None)
    assert result.exit_code in (0, 2), result.stderr
    if result.exit_code == 2:
        assert str(f) in result.stderr and rows_of(engine, "permits") == before


coordinate = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(-58.5, -58.45))


@FUZZ
@given(features=st.lists(st.tuples(st.one_of(st.none(), st.integers(-3, 3), st.text(max_size=4)),
                                   st.lists(st.tuples(coordinate, st.floats(-34.6, -34.55)), min_size=3, max_size=5)),
                         min_size=1, max_size=3))
def test_parcel_import_fuzz(cli, engine, tmp_path, features):
    if not rows_of(engine, "areas"):
        cli("areas", "add", "ba", "--geometry", geojson(tmp_path / "a.geojson", [AREA]), "--provider", "local")
    doc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"id": pid},
         "geometry": {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}} for pid, ring in features]}
    f = tmp_path / "lots.geojson"
    f.write_text(json.dumps(doc))
    before = parcel_rows(engine)
    result = cli("parcels", "import", f, "--area", "ba", expect=None)
    assert result.exit_code in (0, 2), result.stderr
    if result.exit_code == 2:
        assert str(f) in result.stderr and parcel_rows(engine) == before


# --- 2. no server paths in responses and webhook bodies

def test_evidence_by_url_and_scenes_without_server_folders(settings, engine, tmp_path):
    api = make_api(settings, engine)
    area_id = make_webhook_area(engine, tmp_path)
    chip = tmp_path / "secret-folder" / "after.png"
    alert_id = make_alert(engine, area_id, evidence={"after": str(chip)})
    with transaction(engine) as s:
        s.add(Scene(area_id=area_id, provider="local", product_id="x", acquired_at=dt.datetime(2024, 4, 1, tzinfo=UTC),
                    status="prepared", file_path=str(tmp_path / "secret-folder" / "x.tif")))
    for body in (api.get("/alerts").text, api.get(f"/alerts/{alert_id}").text, api.get("/areas/ba/scenes").text):
        assert "secret-folder" not in body
    evidence = api.get(f"/alerts/{alert_id}").json()["properties"]["evidence"]
    # chips are addressed by signed links to the API, never by a path (tests/test_evidence.py opens them)
    assert all(f"/alerts/{alert_id}/evidence/" in link and "sig=" in link for link in evidence.values())
    assert api.get("/areas/ba/scenes").json()[0]["file_path"] == "x.tif"
    with transaction(engine) as s:
        payload = alert_payload(s, s.get(Alert, alert_id), "alert.created")
    assert payload["alert"]["evidence"] == {}  # webhooks carry no links: chips need a token


def test_a_pass_asked_to_stop_records_its_run_interrupted(cli, engine, tmp_path):
    drops = tmp_path / "drops"
    drops.mkdir()
    cli("areas", "add", "ba", "--geometry", geojson(tmp_path / "a.geojson", [AREA]), "--provider", "local",
        "--source", f"local={drops}")
    with transaction(engine) as s:
        area_id = s.scalar(sa.select(Area.id))
        s.add(Scene(area_id=area_id, provider="local", product_id="waiting.tif", status="found",
                    acquired_at=dt.datetime(2024, 4, 1, tzinfo=UTC)))
    stop = threading.Event()
    stop.set()  # SIGTERM arrived: the pass stops before it fetches the waiting scene
    with pytest.raises(pipeline.Stopped):
        pipeline.run_area(engine, area_id, Settings(home=tmp_path / "home"), Metrics(CollectorRegistry()), stop=stop)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT status, error FROM runs")).one() == ("interrupted", "Stopped: stop requested")


# --- 8. imagery that is not imagery: refused from its header, never read

def sparse_tiff(path, size: int, bounds: tuple[float, float, float, float], overviews: bool = False):
    """A ``size`` x ``size`` 4-band GeoTIFF (EPSG:4326) over ``bounds`` of which only one block is written: GDAL
    leaves the other blocks out (SPARSE_OK), so the file is tiny for what it declares."""
    left, bottom, right, top = bounds
    transform = rasterio.transform.from_bounds(left, bottom, right, top, size, size)
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=4, dtype="uint16",
                       crs="EPSG:4326", transform=transform, tiled=True, blockxsize=1024, blockysize=1024,
                       compress="deflate", sparse_ok=True, bigtiff="yes") as ds:
        ds.write(np.broadcast_to(np.arange(1024, dtype="uint16") + 100, (4, 1024, 1024)),
                 window=rasterio.windows.Window(size // 2, size // 2, 1024, 1024))
        for i, name in enumerate(["B04", "B03", "B02", "B08"], 1):
            ds.set_band_description(i, name)
    return path


def test_huge_sparse_rasters_fail_from_their_header(cli, engine, tmp_path):
    drops = tmp_path / "drops"
    drops.mkdir()
    # 200,000 x 200,000 pixels (4e10, about 3 cm each) over the area, and 40,000 x 40,000 (14 cm) that
    # declares few enough pixels but would be read at thousands of source pixels per 10 m grid pixel
    huge = sparse_tiff(drops / "huge_20240101.tif", 200_000, AREA.bounds)
    fine = sparse_tiff(drops / "fine_20240102.tif", 40_000, AREA.bounds)
    assert huge.stat().st_size < 2_000_000 and fine.stat().st_size < 200_000  # 320 GB and 12.8 GB declared
    cli("areas", "add", "ba", "--geometry", geojson(tmp_path / "a.geojson", [AREA]), "--provider", "local",
        "--source", f"local={drops}")
    cli("parcels", "import", write(tmp_path / "lots.gpkg", LOTS, [{"id": f"L{i}"} for i in range(3)], "EPSG:4326",
                                   driver="GPKG"), "--area", "ba")
    result = cli("process", "--area", "ba", "--quiet", expect=None)
    assert result.exit_code in (0, 1), result.stderr
    with engine.connect() as conn:
        scenes = dict(conn.execute(sa.text("SELECT product_id, status || ': ' || status_reason FROM scenes")).all())
        assert conn.execute(sa.text("SELECT count(*) FROM alerts")).scalar() == 0
        assert conn.execute(sa.text("SELECT count(*) FROM detections")).scalar() == 0
    assert scenes["huge_20240101.tif"] == (
        "failed: huge_20240101.tif declares 200000 x 200000 = 4e+10 pixels, more than MONITOR_MAX_SCENE_PIXELS "
        "(1e+10); it was not read")
    reason = scenes["fine_20240102.tif"]
    assert reason.startswith("failed: fine_20240102.tif: its part over the area is ") and "pixels of 0.139 m" in reason
    assert "more than MONITOR_MAX_SCENE_PIXEL_RATIO (1024); it was not read" in reason
    assert not any((tmp_path / "home").rglob("scenes/*/*.tif"))


def test_scene_size_check_counts_overviews(tmp_path):
    """0.5 m pixels on a 10 m grid are 400 source pixels per grid pixel; read from a 1/8 overview, 6.25."""
    area = box(-58.5, -34.6, -58.49, -34.59)
    grid = area_grid(area, 32721, 10, 0)
    left, bottom, right, top = reproject(area, 4326, 32721).bounds
    path = tmp_path / "vhr.tif"
    size = (int((right - left) / 0.5), int((top - bottom) / 0.5))
    with rasterio.open(path, "w", driver="GTiff", width=size[0], height=size[1], count=1, dtype="uint8",
                       crs="EPSG:32721", transform=rasterio.transform.from_origin(left, top, 0.5, 0.5),
                       tiled=True, sparse_ok=True) as ds:
        ds.write(np.ones((1, 16, 16), dtype="uint8"), window=rasterio.windows.Window(0, 0, 16, 16))
    product = Product([Band("B04", [str(path)])], zero_is_nodata=False)
    check_size(product, grid, max_pixels=1e10, max_ratio=1024)
    with pytest.raises(SceneTooLarge, match=r"[34]\d\d times the .* grid, more than MONITOR_MAX_SCENE_PIXEL_RATIO \(100\)"):
        check_size(product, grid, max_pixels=1e10, max_ratio=100)
    with pytest.raises(SceneTooLarge, match="more than MONITOR_MAX_SCENE_PIXELS"):
        check_size(product, grid, max_pixels=size[0] * size[1] - 1, max_ratio=1024)
    with rasterio.open(path, "r+") as ds:
        ds.build_overviews([2, 4, 8, 16])
    check_size(product, grid, max_pixels=1e10, max_ratio=100)


@pytest.mark.parametrize("env, variable", [
    ({"MONITOR_FAINT_MEMORY_SHARE": "abc"}, "MONITOR_FAINT_MEMORY_SHARE"),
    ({"MONITOR_CHANGE_NEEDS_BUILDING": "maybe"}, "MONITOR_CHANGE_NEEDS_BUILDING"),
    ({"DATABASE_URL": "mysql://user:s3cr3tpw@127.0.0.1/db"}, "DATABASE_URL"),
    ({"DATABASE_URL": "postgresql://user:s3cr3tpw@127.0.0.1:notaport/db"}, "DATABASE_URL"),
])
def test_a_setting_that_does_not_parse_is_bad_input_naming_its_variable_not_its_value(env, variable):
    from typer.testing import CliRunner

    from monitor.cli import app

    r = CliRunner().invoke(app, ["areas", "list"], env=env)
    assert r.exit_code == 2, r.output
    assert variable in r.output and "s3cr3tpw" not in r.output and "Traceback" not in r.output
