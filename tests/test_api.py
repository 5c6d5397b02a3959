"""The HTTP API against a real PostGIS: auth scopes, every resource, uploads of real and broken
files, error statuses, health, metrics, and the OpenAPI schema fuzzed with good and bad input."""

from __future__ import annotations

import datetime as dt
import io
import json
import zipfile

import pytest
import schemathesis
import sqlalchemy as sa
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis.errors import Unsatisfiable
from prometheus_client import CollectorRegistry
from shapely.geometry import box, mapping

from monitor.api import create_app
from monitor.auth import create_token, revoke_token
from monitor.db.engine import transaction
from monitor.db.tables import Indicator, Run, Scene
from monitor.metrics import Metrics
from tests.test_webhooks import make_alert
from tests.vectors import geojson, squares

AREA = box(-58.50, -34.60, -58.45, -34.55)


def count(engine, table: str) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar()


class Api:
    """A TestClient on the app with a read and a write token."""

    def __init__(self, client: TestClient, read: str, write: str, metrics: Metrics) -> None:
        self.client, self.metrics = client, metrics
        self.read = {"Authorization": f"Bearer {read}"}
        self.write = {"Authorization": f"Bearer {write}"}

    def get(self, url, **kw):
        return self.client.get(url, headers=kw.pop("headers", self.read), **kw)

    def post(self, url, **kw):
        return self.client.post(url, headers=kw.pop("headers", self.write), **kw)

    def patch(self, url, **kw):
        return self.client.patch(url, headers=kw.pop("headers", self.write), **kw)

    def delete(self, url, **kw):
        return self.client.delete(url, headers=kw.pop("headers", self.write), **kw)


def make_api(settings, engine, scheduler_state=lambda: "leader") -> Api:
    with transaction(engine) as s:
        _, read = create_token(s, "viewer", "read")
        _, write = create_token(s, "editor", "write")
    metrics = Metrics(CollectorRegistry())
    app = create_app(settings, engine=engine, metrics=metrics, scheduler_state=scheduler_state)
    return Api(TestClient(app, raise_server_exceptions=False), read, write, metrics)


@pytest.fixture
def pooled(db_url):
    """A pooled engine, as the daemon has (the shared fixture's engine opens a connection per use)."""
    engine = sa.create_engine(db_url, pool_size=2)
    yield engine
    engine.dispose()


@pytest.fixture
def api(settings, pooled) -> Api:
    return make_api(settings, pooled)


def new_area(api: Api, name: str = "ba", geom=AREA, **extra) -> dict:
    r = api.post("/areas", json={"name": name, "geometry": mapping(geom), "providers": ["local"], **extra})
    assert r.status_code == 201, r.text
    return r.json()


# --- auth

def test_auth_scopes(api, engine):
    assert api.client.get("/areas").status_code == 401
    r = api.client.get("/areas", headers={"Authorization": "Bearer mon_not-a-token"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert api.client.get("/areas", headers={"Authorization": "Basic dXNlcjpwYXNz"}).status_code == 401
    assert api.get("/areas").status_code == 200
    body = {"name": "ba", "geometry": mapping(AREA)}
    r = api.post("/areas", json=body, headers=api.read)
    assert r.status_code == 403 and "lacks the 'write' scope" in r.json()["detail"]
    assert api.delete("/areas/ba", headers=api.read).status_code == 403
    assert count(engine, "areas") == 0
    assert api.post("/areas", json=body).status_code == 201
    assert api.get("/areas/ba", headers=api.write).status_code == 200, "write includes read"
    with transaction(engine) as s:
        revoke_token(s, "viewer")
    assert api.get("/areas").status_code == 401
    # Tokens are stored hashed: the token itself is nowhere in the database.
    with engine.connect() as conn:
        hashes = conn.execute(sa.text("SELECT token_hash FROM api_tokens")).scalars().all()
    token = api.write["Authorization"].split()[1]
    assert token not in hashes and all(len(h) == 64 for h in hashes)
    # Probes and metrics need no token.
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"):
        assert api.client.get(path).status_code == 200, path


def test_tokens_commands(cli):
    token = cli("tokens", "create", "ci", "--scope", "write").stdout.strip()
    assert token.startswith("mon_") and len(token) > 40
    assert "exists already" in cli("tokens", "create", "ci", expect=2).stderr
    assert "unknown scope" in cli("tokens", "create", "x", "--scope", "admin", expect=2).stderr
    listed = json.loads(cli("tokens", "list", "--json").stdout)
    assert [(t["name"], t["scopes"], t["revoked_at"]) for t in listed] == [("ci", ["read", "write"], None)]
    assert token not in cli("tokens", "list").stdout
    cli("tokens", "revoke", "ci")
    assert "no active token" in cli("tokens", "revoke", "ci", expect=2).stderr
    assert json.loads(cli("tokens", "list", "--json").stdout)[0]["revoked_at"]


# --- areas

def test_areas(api, engine):
    info = new_area(api, cadence="2w", max_cloud=35, sources={"local": "/data/drops/ba"})
    assert info["name"] == "ba" and info["utm_epsg"] == 32721 and info["cadence"] == "2w"
    assert info["providers"] == ["local"] and info["sources"] == {"local": "/data/drops/ba"}
    assert info["area_km2"] == pytest.approx(4.6 * 5.6, rel=0.1)
    r = api.post("/areas", json={"name": "ba", "geometry": mapping(AREA)})
    assert r.status_code == 409 and r.json()["field"] == "name"
    assert [a["name"] for a in api.get("/areas").json()] == ["ba"]
    feature = api.get("/areas/ba/geometry").json()
    assert feature["geometry"]["type"] == "MultiPolygon"
    r = api.patch("/areas/ba", json={"cadence": "3d", "active": False})
    assert r.status_code == 200 and r.json()["cadence"] == "3d" and r.json()["active"] is False
    assert api.delete("/areas/ba").status_code == 204
    r = api.get("/areas/ba")
    assert r.status_code == 404 and "no area named 'ba'" in r.json()["detail"]
    assert count(engine, "areas") == 0


@pytest.mark.parametrize("body, field, words", [
    ({"name": "x", "geometry": {"type": "Point", "coordinates": [0, 0]}}, "geometry", "Polygon or MultiPolygon"),
    ({"name": "x", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1]]]}}, "geometry", "not a valid"),
    ({"name": "x", "geometry": mapping(box(500000, 6000000, 501000, 6001000))}, "geometry", "outside lon"),
    ({"name": "x", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 1], [0, 0]]]}},
     "geometry", "cannot be repaired"),
    ({"name": "x", "geometry": mapping(AREA), "cadence": "fortnightly"}, "cadence", "not a duration"),
    ({"name": "x", "geometry": mapping(AREA), "cadence": "999999999w"}, "cadence", "not a duration"),
    ({"name": "x", "geometry": mapping(AREA), "cadence": "10s"}, "cadence", "not a duration"),
    ({"name": "x", "geometry": mapping(AREA), "max_cloud": 120}, "max_cloud", "less than or equal"),
    ({"name": "x", "geometry": mapping(AREA), "providers": ["ftp"]}, "providers", "Input should be"),
    ({"name": "   ", "geometry": mapping(AREA)}, "name", "should match pattern"),
    ({"name": "x", "geometry": mapping(AREA), "colour": "red"}, "colour", "Extra inputs"),
])
def test_area_bad_input(api, engine, body, field, words):
    r = api.post("/areas", json=body)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    text = json.dumps(detail)
    assert words in text
    assert field in (r.json().get("field") or "") or any(field in map(str, d.get("loc", [])) for d in detail
                                                         if isinstance(d, dict))
    assert count(engine, "areas") == 0


@pytest.mark.realdata
def test_upload_real_shapefile_area_and_parcels(api, engine, shared_data, tmp_path):
    src = shared_data / "buenos_aires_lots"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for part in src.glob("lots.*"):
            z.write(part, part.name)
    data = buf.getvalue()
    r = api.post("/areas/upload", files={"file": ("lots.zip", data)}, data={"name": "ba", "cadence": "5d",
                                                                          "providers": "local,stac"})
    assert r.status_code == 201, r.text
    assert r.json()["utm_epsg"] == 32721 and r.json()["providers"] == ["local", "stac"]
    r = api.post("/areas/ba/parcels/upload", files={"file": ("lots.zip", data)}, data={"id_field": "gid"})
    assert r.status_code == 200, r.text
    assert r.json()["inserted"] == 159 and r.json()["updated"] == 0
    again = api.post("/areas/ba/parcels/upload", files={"file": ("lots.zip", data)}, data={"id_field": "gid"}).json()
    assert again["inserted"] == 0 and again["updated"] == 159 and again["import_id"] == r.json()["import_id"] + 1
    with engine.connect() as conn:  # recorded under the upload's name, not the server's temporary path
        assert conn.execute(sa.text("SELECT DISTINCT file FROM parcel_imports")).scalars().all() == ["lots.zip"]
    listing = api.get("/areas/ba/parcels", params={"limit": 5}).json()
    assert len(listing["features"]) == 5 and all(f["properties"]["area_m2"] > 0 for f in listing["features"])
    r = api.post("/areas/ba/parcels/upload", files={"file": ("lots.zip", data)}, data={"id_field": "nope"})
    assert r.status_code == 422 and r.json()["file"] == "lots.zip" and r.json()["field"] == "nope"
    assert "/tmp" not in r.json()["detail"]


def test_uploads_refuse_broken_files_and_write_nothing(api, engine, tmp_path):
    new_area(api)
    r = api.post("/areas/ba/parcels/upload", files={"file": ("parcels.geojson", b"\x89PNG\r\n\x1a\n garbage")})
    assert r.status_code == 422 and r.json()["file"] == "parcels.geojson"
    f = geojson(tmp_path / "p.geojson", squares(-58.49, -34.59, 2, 0.001),
                [{"parcel_id": "a"}, {"parcel_id": "b"}, {"parcel_id": "a"}, {"parcel_id": "c"}])
    r = api.post("/areas/ba/parcels/upload", files={"file": ("lots.geojson", f.read_bytes())})
    assert r.status_code == 422 and "'a' appears more than once" in r.json()["detail"]
    assert r.json()["detail"].startswith("lots.geojson")
    assert count(engine, "parcels") == 0
    r = api.post("/areas/upload", files={"file": ("area.csv", b"a,b\n1,2\n")}, data={"name": "x"})
    assert r.status_code == 422 and count(engine, "areas") == 1
    r = api.post("/areas/upload", files={"file": ("area.geojson", f.read_bytes())}, data={"name": "x",
                                                                                         "cadence": "soon"})
    assert r.status_code == 422 and r.json()["field"] == "cadence"
    # Permits: one bad row stops the whole file.
    f = geojson(tmp_path / "ok.geojson", squares(-58.49, -34.59, 2, 0.001),
                [{"parcel_id": p} for p in "abcd"])
    assert api.post("/areas/ba/parcels/upload", files={"file": ("ok.geojson", f.read_bytes())}).json()["inserted"] == 4
    csv = b"parcel_id,permit_id,valid_from,valid_to\na,P1,2024-01-01,2024-12-31\nb,P2,2024-13-45,\n"
    r = api.post("/areas/ba/permits/upload", files={"file": ("permits.csv", csv)})
    assert r.status_code == 422 and r.json() == {"detail": "permits.csv, row 3, field 'valid_from': '2024-13-45' is "
                                                           "not a date (use YYYY-MM-DD)",
                                                 "file": "permits.csv", "row": 3, "field": "valid_from"}
    r = api.post("/areas/ba/permits/upload", files={"file": ("permits.csv", b"\xff\xfe\x00bin\x00ary")})
    assert r.status_code == 422
    assert count(engine, "permits") == 0
    csv = b"parcel_id,permit_id,valid_from,valid_to\na,P1,2024-01-01,2024-12-31\nb,P2,2024-02-01,\n"
    assert api.post("/areas/ba/permits/upload", files={"file": ("permits.csv", csv)}).json() == {"imported": 2}


def test_parcels_and_permits(api, engine):
    new_area(api)
    lot = box(-58.49, -34.59, -58.489, -34.589)
    r = api.post("/areas/ba/parcels", json={"external_id": "L-1", "geometry": mapping(lot),
                                            "attributes": {"owner": "municipal"}})
    assert r.status_code == 201, r.text
    assert r.json()["properties"]["area_m2"] == pytest.approx(92 * 111, rel=0.05)
    assert api.post("/areas/ba/parcels", json={"external_id": "L-1", "geometry": mapping(lot)}).status_code == 409
    assert api.post("/areas/nope/parcels", json={"external_id": "L-2", "geometry": mapping(lot)}).status_code == 404
    far = box(-58.46, -34.56, -58.459, -34.559)
    api.post("/areas/ba/parcels", json={"external_id": "L-2", "geometry": mapping(far)})
    inside = api.get("/areas/ba/parcels", params={"bbox": "-58.495,-34.595,-58.485,-34.585"}).json()
    assert [f["id"] for f in inside["features"]] == ["L-1"]
    assert api.get("/areas/ba/parcels", params={"bbox": "1,2,3"}).status_code == 422
    assert api.get("/areas/ba/parcels", params={"bbox": "10,0,5,1"}).status_code == 422

    permit = {"parcel_id": "L-1", "permit_id": "P-7", "valid_from": "2024-01-01", "valid_to": "2024-06-30",
              "kind": "house"}
    r = api.post("/areas/ba/permits", json=permit)
    assert r.status_code == 201 and r.json()["permit_id"] == "P-7"
    permit_id = r.json()["id"]
    assert api.post("/areas/ba/permits", json=permit).status_code == 409
    r = api.post("/areas/ba/permits", json={**permit, "permit_id": "P-8", "valid_to": "2023-01-01"})
    assert r.status_code == 422 and r.json()["field"] == "valid_to"
    r = api.post("/areas/ba/permits", json={**permit, "parcel_id": "L-9"})
    assert r.status_code == 404 and r.json()["field"] == "external_id"
    got = api.get("/areas/ba/parcels/L-1").json()
    assert got["properties"]["attributes"] == {"owner": "municipal"}
    assert [p["permit_id"] for p in got["properties"]["permits"]] == ["P-7"]
    assert [p["id"] for p in api.get("/areas/ba/permits", params={"parcel": "L-1"}).json()] == [permit_id]
    assert api.get(f"/areas/ba/permits/{permit_id}").json()["valid_to"] == "2024-06-30"
    assert api.delete(f"/areas/ba/permits/{permit_id}").status_code == 204
    assert api.get(f"/areas/ba/permits/{permit_id}").status_code == 404
    assert api.delete("/areas/ba/parcels/L-1").status_code == 204
    assert api.get("/areas/ba/parcels/L-1").status_code == 404
    assert count(engine, "parcels") == 1


# --- what the monitor found

def test_alerts_review_and_evidence(api, engine, tmp_path):
    area_id = new_area(api)["id"]
    first = make_alert(engine, area_id, "p1", first_seen=dt.date(2024, 3, 1))
    second = make_alert(engine, area_id, "p2", confidence="confirmed", x0=-58.46, first_seen=dt.date(2024, 5, 1))

    fc = api.get("/alerts").json()
    assert fc["type"] == "FeatureCollection" and [f["id"] for f in fc["features"]] == [first, second]
    assert fc["features"][0]["properties"]["parcel"] == "p1"
    assert [f["id"] for f in api.get("/alerts", params={"until": "2024-04-01"}).json()["features"]] == [first]
    assert [f["id"] for f in api.get("/alerts", params={"bbox": "-58.465,-34.6,-58.45,-34.58"}).json()["features"]] \
        == [second]
    assert api.get("/alerts", params={"area": "nope"}).status_code == 404
    assert api.get("/alerts", params={"since": "2024-05-01", "until": "2024-04-01"}).status_code == 422
    assert api.get("/alerts", params={"status": "maybe"}).status_code == 422

    r = api.post(f"/alerts/{first}/review", json={"action": "dismiss", "note": "a greenhouse"})
    assert r.status_code == 200
    props = r.json()["properties"]
    assert props["status"] == "dismissed" and props["note"] == "a greenhouse" and props["reviewed_by"] == "editor"
    assert api.post(f"/alerts/{first}/review", json={"action": "ack"}).status_code == 409
    assert api.post(f"/alerts/{first}/review", json={"action": "ack"}, headers=api.read).status_code == 403
    assert api.post("/alerts/999999/review", json={"action": "ack"}).status_code == 404
    assert api.post(f"/alerts/{second}/review", json={"action": "explode"}).status_code == 422
    assert [f["id"] for f in api.get("/alerts", params={"status": "open"}).json()["features"]] == [second]
    assert api.get(f"/alerts/{second}").json()["properties"]["confidence"] == "confirmed"

    assert api.get(f"/alerts/{first}").json()["properties"]["evidence"] == {}  # no scene to draw from
    assert api.get(f"/alerts/{first}/evidence").json() == {}
    assert api.get(f"/alerts/{first}/evidence/after.png").status_code == 404


def test_history_scenes_and_runs(api, engine):
    area_id = new_area(api)["id"]
    make_alert(engine, area_id, "p1")
    with transaction(engine) as s:
        for day, status in ((1, "processed"), (6, "failed"), (11, "found")):
            s.add(Scene(area_id=area_id, provider="local", product_id=f"S2_{day}", status=status,
                        acquired_at=dt.datetime(2024, 4, day, 13, 40, tzinfo=dt.timezone.utc), cloud_cover=3.0))
        s.add(Run(area_id=area_id, status="failed", error="provider down", steps={"search": {"status": "failed"}}))
        s.add(Run(area_id=area_id, status="succeeded"))
    scenes = api.get("/areas/ba/scenes").json()
    assert [sc["product_id"] for sc in scenes] == ["S2_11", "S2_6", "S2_1"]
    assert [sc["product_id"] for sc in api.get("/areas/ba/scenes", params={"status": "failed"}).json()] == ["S2_6"]
    assert [sc["product_id"] for sc in api.get("/areas/ba/scenes", params={"since": "2024-04-02",
                                                                          "until": "2024-04-06"}).json()] == ["S2_6"]
    assert api.get(f"/scenes/{scenes[0]['id']}").json()["status"] == "found"
    assert api.get("/scenes/987654321").status_code == 404
    runs = api.get("/runs", params={"area": "ba"}).json()
    assert [r["status"] for r in runs] == ["succeeded", "failed"] and runs[1]["error"] == "provider down"
    assert api.get("/runs", params={"status": "failed"}).json()[0]["steps"] == {"search": {"status": "failed"}}
    assert api.get(f"/runs/{runs[1]['id']}").json()["area"] == "ba"
    assert api.get("/runs", params={"area": "nope"}).status_code == 404
    with transaction(engine) as s:
        s.add(Indicator(area_id=area_id, observed_on=dt.date(2024, 3, 1), built_km2=1.25, settlement_km2=0.5))
        s.add(Indicator(area_id=area_id, observed_on=dt.date(2024, 4, 1), built_km2=1.5, settlement_km2=0.75))
    history = api.get("/areas/ba/history").json()
    assert [(h["observed_on"], h["built_km2"], h["built_km2_change"], h["alerts_raised"]) for h in history] == [
        ("2024-03-01", 1.25, None, 0), ("2024-04-01", 1.5, 0.25, 1)]
    parcel = api.get("/areas/ba/parcels/p1/history").json()
    processed = next(sc for sc in scenes if sc["status"] == "processed")
    assert [(h["observed_on"], h["scene_id"]) for h in parcel] == [("2024-04-01", processed["id"])]
    assert api.get("/areas/ba/parcels/nope/history").status_code == 404


# --- service endpoints

def test_readyz_and_metrics(api, engine, empty_db_factory, settings):
    assert api.client.get("/healthz").json() == {"status": "ok"}
    ready = api.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["scheduler"] == "leader" and ready.json()["schema"]["current"] == ready.json()["schema"]["head"]
    area_id = new_area(api)["id"]
    make_alert(engine, area_id, "p1")
    text = api.client.get("/metrics").text
    assert 'monitor_open_alerts{area="ba"} 1.0' in text
    # An empty database: the process is healthy but not ready.
    bare = sa.create_engine(empty_db_factory("monitor_bare"), poolclass=sa.pool.NullPool)
    app = create_app(settings, engine=bare, metrics=Metrics(CollectorRegistry()))
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json()["scheduler"] == "off" and "not at head" in r.json()["schema"]["problem"]
    bare.dispose()
    # A database that went away: not ready, and the API answers 503 rather than crashing.
    gone = sa.create_engine("postgresql+psycopg2://monitor@127.0.0.1:9/none", poolclass=sa.pool.NullPool)
    with TestClient(create_app(settings, engine=gone, metrics=Metrics(CollectorRegistry()))) as client:
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json()["database"].startswith("unreachable")
        assert client.get("/areas", headers=api.read).status_code == 503


# --- the whole schema, fuzzed


def test_openapi_schema_fuzzed_without_server_errors(settings, engine, api):
    area_id = new_area(api)["id"]
    make_alert(engine, area_id, "p1")
    api.post("/areas/ba/parcels", json={"external_id": "L-1", "geometry": mapping(box(-58.47, -34.59, -58.469, -34.589))})
    schema = schemathesis.openapi.from_asgi("/openapi.json", api.client.app)
    operations = [op.ok() for op in schema.get_all_operations()]
    assert len(operations) >= 25
    seen: set[int] = set()
    unsatisfiable: list[str] = []
    for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
        for op in operations:
            if mode == schemathesis.GenerationMode.NEGATIVE and not (len(op.query) or len(op.body)):
                # Invalid path values mostly cannot be put in a URL; the explicit tests cover 404/422 there.
                continue
            strategy = op.as_strategy(generation_mode=mode, headers=api.write)

            @hsettings(max_examples=10, deadline=None, database=None, derandomize=True,
                       suppress_health_check=list(HealthCheck))
            @given(case=strategy)
            def exercise(case):
                response = case.call()
                seen.add(response.status_code)
                assert response.status_code < 500, (
                    f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:500]}\n"
                    f"{case.as_curl_command()}")

            try:
                exercise()
            except Unsatisfiable:
                # An input whose every invalid value is unsendable (say, only a boolean header).
                assert mode == schemathesis.GenerationMode.NEGATIVE, op.label
                unsatisfiable.append(op.label)
    assert any(400 <= s < 500 for s in seen) and any(s < 300 for s in seen)
    assert len(unsatisfiable) < len(operations) / 2, unsatisfiable
