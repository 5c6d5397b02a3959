"""Webhook deliveries against real HTTP receivers on 127.0.0.1: signatures, retries with backoff,
a receiver down for an hour, giving up, concurrent senders, and the subscriptions commands."""

from __future__ import annotations

import datetime as dt
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import sqlalchemy as sa
from geoalchemy2.shape import from_shape
from prometheus_client import CollectorRegistry
from shapely.geometry import MultiPolygon, box

from monitor.alerts.webhooks import add_subscription, backoff, deliver_pending, enqueue, verify_signature
from monitor.db.engine import transaction
from monitor.db.tables import Alert, Delivery, Parcel
from monitor.domain import AreaSpec
from monitor.inventory.areas import add_area
from monitor.metrics import Metrics
from tests.vectors import geojson

SECRET = "s3cret-shared-with-the-receiver"
# Simulated time a day ahead: every delivery queued during the test session is due at T0.
T0 = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) + dt.timedelta(days=1)


# --- seeding (shared with the API and scheduler tests)

def make_area(engine, tmp_path, name: str = "ba", cadence: str = "5d",
              bounds=(-58.50, -34.60, -58.45, -34.55)) -> int:
    f = geojson(tmp_path / f"{name}.geojson", [box(*bounds)])
    with transaction(engine) as s:
        return add_area(s, AreaSpec.parse(name, cadence=cadence, providers="local", max_cloud=20), f).id


def make_alert(engine, area_id: int, external_id: str = "p1", confidence: str = "probable",
               evidence: dict | None = None, first_seen=dt.date(2024, 4, 1), x0: float = -58.49) -> int:
    lot = box(x0, -34.59, x0 + 0.001, -34.589)
    with transaction(engine) as s:
        parcel = Parcel(area_id=area_id, external_id=external_id, geom=from_shape(MultiPolygon([lot]), 4326),
                        area_m2=10000.0)
        s.add(parcel)
        s.flush()
        alert = Alert(area_id=area_id, parcel_id=parcel.id, geom=from_shape(MultiPolygon([lot]), 4326),
                      first_seen=first_seen, last_seen=first_seen, new_area_m2=420.0, fraction=0.42,
                      confidence=confidence, evidence=evidence or {})
        s.add(alert)
        s.flush()
        return alert.id


def announce(engine, alert_id: int, event: str = "alert.created") -> int:
    with transaction(engine) as s:
        return enqueue(s, s.get(Alert, alert_id), event)


# --- a real receiver

class Receiver:
    """An HTTP server on 127.0.0.1 answering each POST with the next status of ``script``
    (then 200), checking every signature with the shared secret."""

    def __init__(self, script=(), port: int = 0, delay: float = 0.0) -> None:
        self.script = list(script)
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(delay)
                with outer.lock:
                    status = outer.script.pop(0) if outer.script else 200
                    outer.requests.append({
                        "body": body, "headers": dict(self.headers), "status": status,
                        "signature_ok": verify_signature(SECRET, body, self.headers.get("X-Monitor-Signature"))})
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def settings(settings):
    """The receivers here listen on 127.0.0.1: private addresses allowed (refusing them is tested in
    test_hardening.py)."""
    return settings.model_copy(update={"allow_private_urls": True})


@pytest.fixture
def receiver():
    made = []

    def make(*args, **kwargs) -> Receiver:
        r = Receiver(*args, **kwargs)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deliveries(engine) -> list[Delivery]:
    with transaction(engine) as s:
        return list(s.scalars(sa.select(Delivery).order_by(Delivery.id)))


def sample(metrics: Metrics, name: str, **labels) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


# --- tests

def test_fails_twice_then_accepts(engine, settings, tmp_path, receiver):
    rx = receiver(script=[500, 503])
    area_id = make_area(engine, tmp_path)
    with transaction(engine) as s:
        add_subscription(s, rx.url, SECRET, min_confidence="probable", allow_private_urls=True)
    alert_id = make_alert(engine, area_id)
    assert announce(engine, alert_id) == 1
    metrics = Metrics(CollectorRegistry())

    assert deliver_pending(engine, settings, metrics, now=T0) == 1
    assert deliver_pending(engine, settings, metrics, now=T0) == 0, "a failed delivery waits for its backoff"
    (d,) = deliveries(engine)
    assert d.status == "pending" and d.next_attempt_at == T0 + backoff(1, settings)
    t = d.next_attempt_at
    assert deliver_pending(engine, settings, metrics, now=t) == 1
    (d,) = deliveries(engine)
    assert d.next_attempt_at == t + backoff(2, settings) and backoff(2, settings) == 2 * backoff(1, settings)
    assert deliver_pending(engine, settings, metrics, now=d.next_attempt_at) == 1
    assert deliver_pending(engine, settings, metrics, now=d.next_attempt_at + dt.timedelta(days=1)) == 0

    (d,) = deliveries(engine)
    assert d.status == "succeeded" and d.attempt_count == 3
    assert [a["status"] for a in d.attempts] == [500, 503, 200]
    assert [a["error"] is None for a in d.attempts] == [False, False, True]
    assert all(a["duration_s"] >= 0 for a in d.attempts)
    assert "HTTP 500" in d.attempts[0]["error"]
    # The receiver saw three POSTs of the same delivery, each correctly signed.
    assert len(rx.requests) == 3 and all(r["signature_ok"] for r in rx.requests)
    assert {r["headers"]["X-Monitor-Delivery"] for r in rx.requests} == {str(d.delivery_id)}
    assert {r["headers"]["X-Monitor-Event"] for r in rx.requests} == {"alert.created"}
    payload = json.loads(rx.requests[-1]["body"])
    assert payload["event"] == "alert.created" and payload["alert"]["id"] == alert_id
    assert payload["alert"]["area"] == "ba" and payload["alert"]["parcel"] == "p1"
    assert not verify_signature("another secret", rx.requests[-1]["body"], rx.requests[-1]["headers"]["X-Monitor-Signature"])
    assert sample(metrics, "monitor_webhook_deliveries_total", result="failed") == 2
    assert sample(metrics, "monitor_webhook_deliveries_total", result="succeeded") == 1
    assert sample(metrics, "monitor_webhook_failures_total") == 0


def test_a_receiver_down_for_an_hour_misses_nothing(engine, settings, tmp_path, receiver):
    port = free_port()
    area_id = make_area(engine, tmp_path)
    with transaction(engine) as s:
        add_subscription(s, f"http://127.0.0.1:{port}/hook", SECRET, min_confidence="probable", allow_private_urls=True)
    alert_id = make_alert(engine, area_id)
    announce(engine, alert_id)
    announce(engine, alert_id, "alert.escalated")
    rx = None
    # The daemon's beat, every two minutes over two simulated hours; the receiver is up after one.
    for minute in range(0, 121, 2):
        now = T0 + dt.timedelta(minutes=minute)
        if minute == 60:
            rx = receiver(port=port)
        deliver_pending(engine, settings, now=now)
        assert all(d.status != "failed" for d in deliveries(engine))
    rows = deliveries(engine)
    assert [d.status for d in rows] == ["succeeded", "succeeded"]
    for d in rows:
        times = [dt.datetime.fromisoformat(a["at"]) for a in d.attempts]
        assert times == sorted(times) and times[-1] >= T0 + dt.timedelta(minutes=60)
        assert all("ConnectionError" in a["error"] for a in d.attempts[:-1]) and len(d.attempts) >= 5
        # Retries back off: every gap at least doubles until the cap.
        gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:-1])]
        assert all(g2 >= 2 * g1 - 120 for g1, g2 in zip(gaps, gaps[1:]))
    assert sorted(r["headers"]["X-Monitor-Event"] for r in rx.requests) == ["alert.created", "alert.escalated"]
    assert all(r["signature_ok"] for r in rx.requests)


def test_gives_up_after_max_attempts(engine, settings, tmp_path, receiver):
    rx = receiver(script=[500] * 10)
    settings = settings.model_copy(update={"webhook_max_attempts": 3, "webhook_backoff_s": 1.0})
    area_id = make_area(engine, tmp_path)
    with transaction(engine) as s:
        add_subscription(s, rx.url, SECRET, min_confidence="probable", allow_private_urls=True)
    announce(engine, make_alert(engine, area_id))
    metrics = Metrics(CollectorRegistry())
    for minute in range(10):
        deliver_pending(engine, settings, metrics, now=T0 + dt.timedelta(minutes=minute))
    (d,) = deliveries(engine)
    assert d.status == "failed" and d.attempt_count == 3 and len(rx.requests) == 3
    assert sample(metrics, "monitor_webhook_failures_total") == 1
    assert sample(metrics, "monitor_webhook_deliveries_total", result="failed") == 3


def test_concurrent_senders_post_each_delivery_once(engine, settings, tmp_path, receiver):
    rx = receiver(delay=0.1)
    area_id = make_area(engine, tmp_path)
    with transaction(engine) as s:
        add_subscription(s, rx.url, SECRET, min_confidence="probable", allow_private_urls=True)
    for i in range(6):
        announce(engine, make_alert(engine, area_id, external_id=f"p{i}", x0=-58.49 + i * 0.002))
    counts = []
    threads = [threading.Thread(target=lambda: counts.append(deliver_pending(engine, settings))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(counts) == 6 and max(counts) < 6, "the senders shared the work"
    ids = [r["headers"]["X-Monitor-Delivery"] for r in rx.requests]
    assert len(ids) == 6 and len(set(ids)) == 6
    assert {d.status for d in deliveries(engine)} == {"succeeded"}


def test_subscription_filters_by_area_and_confidence(engine, settings, tmp_path, receiver):
    rx = receiver()
    a = make_area(engine, tmp_path, "a", bounds=(-58.50, -34.60, -58.45, -34.55))
    b = make_area(engine, tmp_path, "b", bounds=(-58.40, -34.60, -58.35, -34.55))
    with transaction(engine) as s:
        add_subscription(s, rx.url, SECRET, area="a", min_confidence="confirmed", allow_private_urls=True)
        add_subscription(s, rx.url, SECRET, min_confidence="probable", allow_private_urls=True)
    assert announce(engine, make_alert(engine, a, "pa1")) == 1  # probable: only the catch-all
    assert announce(engine, make_alert(engine, a, "pa2", confidence="confirmed", x0=-58.47)) == 2
    assert announce(engine, make_alert(engine, b, "pb1", confidence="confirmed", x0=-58.39)) == 1
    assert deliver_pending(engine, settings) == 4 and len(rx.requests) == 4


def test_subscriptions_commands(cli, engine, tmp_path):
    make_area(engine, tmp_path)
    out = cli("subscriptions", "add", "https://hooks.example.org/monitor", "--secret", "x", "--area", "ba").stdout
    assert "subscription 1" in out and "confirmed and up" in out  # by default, only alerts that persisted
    assert "not an http(s) URL" in cli("subscriptions", "add", "ftp://x/y", "--secret", "x", expect=2).stderr
    assert "no area named 'nope'" in cli("subscriptions", "add", "http://h/", "--secret", "x", "--area", "nope",
                                         expect=2).stderr
    assert "min-confidence" in cli("subscriptions", "add", "http://h/", "--secret", "x", "--min-confidence", "maybe",
                                   expect=2).stderr
    listed = json.loads(cli("subscriptions", "list", "--json").stdout)
    assert listed == [{"id": 1, "url": "https://hooks.example.org/monitor", "area": "ba",
                       "min_confidence": "confirmed", "active": True,
                       "deliveries": {"pending": 0, "succeeded": 0, "failed": 0}}]
    assert "x" not in cli("subscriptions", "list").stdout.split()
    cli("subscriptions", "remove", "1")
    assert "no subscription with id 1" in cli("subscriptions", "remove", "1", expect=2).stderr
    assert json.loads(cli("subscriptions", "list", "--json").stdout) == []
