"""The review page in a real browser: headless Chromium driven through WebDriver (selenium), against
the API served on 127.0.0.1 from a database holding the synthetic world after the whole pipeline
(four dates, sixteen alerts). Signing in, the filters and counts, an alert on the map with its
before/after swipe, a dismissal that reaches the database; the settlement layer of the after date
as a layer that can be turned off; a read token sees no review buttons; /docs and /redoc load; and
no request of the browser leaves 127.0.0.1.

Chromium and chromedriver come from Debian (`apt-get install chromium chromium-driver`, done by
scripts/system-deps.sh as root); these tests fail, rather than skip, where they are missing.
Screenshots are written to test-artifacts/review/ (ignored by git)."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa
import uvicorn
from geoalchemy2.shape import to_shape
from prometheus_client import CollectorRegistry
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from monitor.api import create_app
from monitor.auth import create_token
from monitor.change import store_settlements
from monitor.db.engine import transaction
from monitor.db.tables import Alert, Area, Indicator, Scene
from monitor.metrics import Metrics
from monitor.settings import Settings
from monitor.world import DATES
from tests.conftest import Cli, _exec
from tests.test_pipeline import _register, world  # noqa: F401  (a fixture)
from tests.test_webhooks import make_alert

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts" / "review"
WAIT_S = 60
LOCAL_HOSTS = {"127.0.0.1"}

pytestmark = pytest.mark.slow


# --- the scenario: the synthetic world through the pipeline, once per module


@pytest.fixture(scope="module")
def colour_roof_model(tmp_path_factory):
    """The pipeline tests' roof rule (a bright blue band is a building) as a model of the four bands,
    so that the prepared scenes keep red, green and blue for the map."""
    import numpy as np

    from monitor.ml.modelstore import save_model
    from monitor.ml.runtime import keras

    k = keras()
    inputs = k.Input((None, None, 4))
    model = k.Model(inputs, k.layers.Conv2D(1, 1, activation="sigmoid")(inputs))
    model.layers[-1].set_weights([np.array([4.0, 0, 0, 0], "float32").reshape(1, 1, 4, 1), np.zeros(1, "float32")])
    meta = {"kind": "segmenter", "version": "segmenter-roof-rule-rgb", "bands": ["B02", "B03", "B04", "B08"],
            "normalization": {"mean": [1900.0, 0.0, 0.0, 0.0], "std": [100.0, 1.0, 1.0, 1.0]}, "tile": 64,
            "threshold": 0.5, "resolution_m": 2.0, "architecture": {"depth": 0}}
    return save_model(model, tmp_path_factory.mktemp("models") / "roof-rgb", meta)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory, empty_db_factory, template_db, pg_admin_url, world, colour_roof_model):  # noqa: F811
    """(database name, MONITOR_HOME) after the pipeline processed the world's four dates; each test
    gets its own copy of the database."""
    url = empty_db_factory("monitor_review_scenario", template=template_db)
    home = tmp_path_factory.mktemp("review-home")
    cli = Cli(url.render_as_string(hide_password=False), home)
    drops = home / "drops"
    drops.mkdir()
    _register(cli, world, drops, colour_roof_model)
    for date in DATES:
        shutil.copy2(world.scenes[date], drops)
        cli("process", "--area", "demo", "--quiet")
    # a template database must have no connection left (the commands' engines keep theirs)
    _exec(pg_admin_url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        f"WHERE datname = '{url.database}' AND pid <> pg_backend_pid()")
    return url.database, home


class Served:
    """The API on 127.0.0.1 (a free port) over a copy of the scenario, with a write and a read token."""

    def __init__(self, url: str, home: Path) -> None:
        self.engine = sa.create_engine(url, pool_size=4)
        with transaction(self.engine) as s:
            _, self.write = create_token(s, "reviewer", "write")
            _, self.read = create_token(s, "looker", "read")
        app = create_app(Settings(database_url=url, home=home), engine=self.engine,
                         metrics=Metrics(CollectorRegistry()))
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.base = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the API did not start"
            time.sleep(0.05)

    def alert(self, alert_id: int) -> dict:
        with self.engine.connect() as conn:
            row = conn.execute(sa.text("SELECT a.status, a.note, a.reviewed_by, a.first_seen::text, a.last_seen::text, "
                                       "a.confidence, p.external_id FROM alerts a JOIN parcels p ON p.id = a.parcel_id "
                                       "WHERE a.id = :id"), {"id": alert_id}).one()
        return dict(row._mapping)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
        self.engine.dispose()


@pytest.fixture
def served(scenario, empty_db_factory):
    name, home = scenario
    url = empty_db_factory("monitor_review", template=name).render_as_string(hide_password=False)
    s = Served(url, home)
    yield s
    s.close()


# --- the browser


class Browser:
    """Headless Chromium with the requests it made kept from its performance log."""

    def __init__(self) -> None:
        chrome = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
        driver = shutil.which("chromedriver")
        if not chrome or not driver:
            pytest.fail("the browser tests need Chromium and its WebDriver: apt-get install chromium chromium-driver "
                        "(scripts/system-deps.sh installs them as root)")
        opts = webdriver.ChromeOptions()
        opts.binary_location = chrome
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1440,900",
                    "--no-first-run", "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--disable-default-apps", "--lang=en-GB",
                    # belt and braces: names other than this machine do not resolve
                    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"):
            opts.add_argument(arg)
        opts.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
        # an explicit driver path: selenium then never looks for one on the internet
        self.d = webdriver.Chrome(service=Service(executable_path=driver), options=opts)
        self.requests: dict[str, dict] = {}
        self.console: list[dict] = []
        ARTIFACTS.mkdir(parents=True, exist_ok=True)

    def wait(self, condition, what: str, timeout: float = WAIT_S):
        try:
            # the page re-renders its lists and messages: an element found in one poll may be gone by the next
            return WebDriverWait(self.d, timeout, poll_frequency=0.2,
                                 ignored_exceptions=(StaleElementReferenceException,)).until(lambda d: condition())
        except TimeoutException:
            self.shot(f"timeout-{what.replace(' ', '-')[:40]}")
            raise AssertionError(f"timed out waiting for {what}; console: {self.drain_console()[-5:]}") from None

    def shot(self, name: str) -> Path:
        path = ARTIFACTS / f"{name}.png"
        self.d.save_screenshot(str(path))
        return path

    def js(self, script: str, *args):
        return self.d.execute_script(script, *args)

    def css(self, selector: str):
        return self.d.find_elements(By.CSS_SELECTOR, selector)

    def one(self, selector: str):
        return self.d.find_element(By.CSS_SELECTOR, selector)

    def drain_network(self) -> dict[str, dict]:
        for entry in self.d.get_log("performance"):
            m = json.loads(entry["message"])["message"]
            p = m.get("params", {})
            if m["method"] == "Network.requestWillBeSent":
                self.requests[p["requestId"]] = {"url": p["request"]["url"], "blocked": None}
            elif m["method"] == "Network.loadingFailed" and p.get("requestId") in self.requests:
                self.requests[p["requestId"]]["blocked"] = p.get("blockedReason")
        return self.requests

    def drain_console(self) -> list[dict]:
        self.console += self.d.get_log("browser")
        return self.console

    def assert_nothing_left_the_machine(self) -> None:
        """Every request the browser made went to 127.0.0.1 (or was a data:/blob: URL); one the page's
        Content-Security-Policy refused never left the browser, and is allowed."""
        requests = self.drain_network().values()
        assert any(urlsplit(r["url"]).hostname in LOCAL_HOSTS for r in requests)
        away = [r for r in requests if urlsplit(r["url"]).scheme in ("http", "https", "ws", "wss")
                and urlsplit(r["url"]).hostname not in LOCAL_HOSTS and r["blocked"] != "csp"]
        assert not away, f"requests to other hosts: {away}"

    def sign_in(self, base: str, token: str) -> None:
        self.d.get(base + "/")
        self.wait(lambda: self.one("#token").is_displayed(), "the sign-in form")
        self.one("#token").clear()
        self.one("#token").send_keys(token)
        self.one("#signin-button").click()
        self.wait(lambda: self.one("#app").is_displayed(), "the review workspace")

    def listed(self, n: int | None = None, what: str = "the alert list") -> list[str]:
        """The rows' texts once the list has loaded (and holds ``n`` rows, when given)."""
        def ready():
            if self.one("#alerts").get_attribute("aria-busy") != "false":
                return False
            rows = self.js("return [...document.querySelectorAll('#alerts li.alert')].map((li) => li.innerText)")
            return (rows,) if n is None or len(rows) == n else False  # a tuple: an empty list is an answer
        return self.wait(ready, what)[0]

    def click_alert(self, alert_id: int) -> None:
        self.one(f'#alerts li.alert[data-id="{alert_id}"]').click()

    def tiles_loaded(self) -> bool:
        return self.js("""
            const done = (pane) => [...document.querySelectorAll(`.leaflet-${pane}-pane img.leaflet-tile-loaded`)]
                .filter((img) => img.src.startsWith('blob:') && img.naturalWidth === 256).length;
            return done('before') > 0 && done('after') > 0;""")

    def quit(self) -> None:
        self.d.quit()


@pytest.fixture
def browser():
    b = Browser()
    yield b
    b.quit()


def severe(console: list[dict]) -> list[str]:
    return [e["message"] for e in console if e["level"] == "SEVERE"]


# --- the tests


def test_review_an_alert_in_the_browser(served, browser):
    b = browser
    b.d.get(served.base + "/")
    b.wait(lambda: b.one("#token").is_displayed(), "the sign-in form")
    b.shot("01-sign-in")
    b.one("#token").send_keys("mon_not-a-token")
    b.one("#signin-button").click()
    b.wait(lambda: "not valid" in b.one("#signin-error").text, "the refusal of a bad token")
    assert not b.one("#app").is_displayed()

    b.sign_in(served.base, served.write)
    b.listed(16, "sixteen open alerts")
    assert b.one("#who-name").text == "reviewer" and b.one("#who-scope").text == "write"
    # the token lives in this tab's session only
    assert b.js("return sessionStorage.getItem('monitor.token')") == served.write
    assert b.js("return localStorage.length") == 0 and "mon_" not in b.js("return document.cookie")
    counts = b.one("#counts").text
    assert "16 open" in counts and "8 probable" in counts and "8 confirmed" in counts, counts
    assert Select(b.one("#f-area")).first_selected_option.text == "demo"
    assert Select(b.one("#f-status")).first_selected_option.text == "Open (16)"
    b.shot("02-alerts")

    # filters: confidence, then a date range
    Select(b.one("#f-confidence")).select_by_value("confirmed")
    b.listed(8, "the eight confirmed alerts")
    assert len(b.css("#alerts li.alert .badge.confidence-confirmed")) == 8
    assert b.one("#list-summary").text == "8 of 16 alerts"
    Select(b.one("#f-confidence")).select_by_value("")
    b.listed(16, "every alert again")

    def set_dates(since, until):
        b.js("for (const [id, v] of [['f-since', arguments[0]], ['f-until', arguments[1]]]) "
             "document.getElementById(id).value = v; "
             "document.getElementById('f-until').dispatchEvent(new Event('change'))", since, until)

    set_dates("", "2026-06-01")  # first seen by then
    assert all("2026-05-12 →" in r for r in b.listed(8, "the alerts first seen by June"))
    assert b.one("#list-summary").text == "8 alerts"
    set_dates("2026-07-12", "2026-06-01")
    b.wait(lambda: "“until” is before “since”" in b.one("#list-summary").text, "the dates refused")
    set_dates("2026-07-12", "")  # seen since the last date: none
    b.listed(0, "an empty list")
    assert "No alert matches" in b.one("#alerts").text
    set_dates("", "")
    b.listed(16, "every alert again")

    # open one first seen on the third date: before is the second date, after the fourth
    ids = b.js("return [...document.querySelectorAll('#alerts li.alert')]"
               ".filter((li) => li.innerText.includes('2026-05-12 → 2026-07-11')).map((li) => Number(li.dataset.id))")
    selected = b.js("return Number(document.querySelector('#alerts li.selected').dataset.id)")
    alert_id = ids[2]
    assert alert_id != selected  # the first alert is open at the start
    row = served.alert(alert_id)
    b.click_alert(alert_id)
    b.wait(lambda: b.one("#details h2").text == f"Alert #{alert_id}", "the alert's details")
    b.wait(b.tiles_loaded, "the imagery tiles of both dates")
    assert "Before · 2026-03-13" in b.one("#label-before").text and "B04 B03 B02" in b.one("#label-before").text
    assert "After · 2026-07-11" in b.one("#label-after").text
    assert b.js("return location.hash") == f"#alert={alert_id}"
    # the alert's parcel (yellow) and its new construction (red) are outlined on the map
    b.wait(lambda: b.css('.leaflet-overlay-pane path[stroke="#facc15"]') and
           b.css('.leaflet-overlay-pane path[stroke="#ef4444"]'), "the parcel and construction outlines")
    details = b.one("#details").text
    assert row["external_id"] in details and "2026-05-12" in details and "confirmed (seen again" in details
    b.wait(lambda: len(b.css("#parcel-history tbody tr")) == 4, "the parcel's four dates")
    assert "alert" in b.css("#parcel-history tbody tr")[2].text
    # built-up km2 per date (the scenario has no settlement classifier)
    b.wait(lambda: len(b.css("#area-chart svg polyline.built")) == 1, "the area's chart")
    assert len(b.css("#area-chart svg circle.built")) == 4 and not b.css("#area-chart svg polyline.settlement")
    # nor a settlement layer: the toggle is there, nothing is drawn and nothing was asked for
    assert b.one("#show-settlements").is_selected() and not b.css(f'path[stroke="{SETTLEMENT}"]')
    assert not [r for r in b.drain_network().values() if "/settlements" in r["url"]]
    assert "No permit" in b.one("#permits").text
    # the evidence chips load from their signed links (an <img> sends no header)
    b.wait(lambda: b.js("return [...document.querySelectorAll('#details img.chip')]"
                        ".filter((i) => i.complete && i.naturalWidth > 0).length") == 2, "both evidence chips")
    assert "/evidence/after.png?token=" in b.one("#details img.chip-after").get_attribute("src")
    b.shot("03-alert")

    # swipe: drag the handle to the left; the after image then covers more of the map
    swipe = b.one("#swipe")
    clip_before = b.js("return document.querySelector('.leaflet-after-pane').style.clip")
    assert float(swipe.get_attribute("value")) == 50
    width = b.one("#map").size["width"]
    ActionChains(b.d).move_to_element(swipe).click_and_hold().move_by_offset(-width // 3, 0).release().perform()
    b.wait(lambda: float(swipe.get_attribute("value")) < 25, "the swipe to move")
    assert b.js("return document.querySelector('.leaflet-after-pane').style.clip") != clip_before
    left = float(b.one("#divider").value_of_css_property("left").removesuffix("px"))
    assert abs(left - width * float(swipe.get_attribute("value")) / 100) < 2
    b.shot("04-swipe")

    # dismiss: a reason is required, then it reaches the database
    b.one("#review-dismiss").click()
    b.wait(lambda: "reason" in b.one("#review-message").text, "the request for a reason")
    assert served.alert(alert_id)["status"] == "new"
    reason = "a greenhouse, not a building (checked on the 2026-07-11 image)"
    b.one("#review-note").send_keys(reason)
    b.one("#review-dismiss").click()
    b.wait(lambda: f"Alert #{alert_id} dismissed" in b.one("#review-message").text, "the dismissal")
    assert served.alert(alert_id) == {**row, "status": "dismissed", "note": reason, "reviewed_by": "reviewer"}
    b.wait(lambda: b.one("#details .badge.status-dismissed").text == "dismissed", "the dismissed badge")
    b.wait(lambda: "stale" in b.one(f'#alerts li.alert[data-id="{alert_id}"]').get_attribute("class"),
           "the dismissed alert to be dimmed and kept in the list")
    assert b.one("#review-dismiss").is_enabled() and not b.one("#review-ack").is_enabled()
    b.wait(lambda: "15 open" in b.one("#counts").text and "1 dismissed" in b.one("#counts").text,
           "the counts to follow")
    b.shot("05-dismissed")

    b.assert_nothing_left_the_machine()
    errors = [m for m in severe(b.drain_console()) if "auth/token" not in m]  # the bad token's 401
    assert not errors, errors


SETTLEMENT = "#d97706"  # the settlement layer's outline on the map


def test_settlement_layer_on_the_map(served, browser):
    """A settlement layer of the last date (as the classifier's step stores it) around an alert is
    drawn on the map when that date is the after image, and the legend's box hides and shows it."""
    last = DATES[-1]
    with transaction(served.engine) as s:
        area = s.scalar(sa.select(Area).where(Area.name == "demo"))
        alert = s.scalars(sa.select(Alert).where(Alert.area_id == area.id, Alert.first_seen == DATES[2])
                          .order_by(Alert.id)).first()
        scene = s.scalar(sa.select(Scene).where(Scene.area_id == area.id, sa.func.date(Scene.acquired_at) == last))
        around = to_shape(alert.geom).centroid.buffer(0.0006, cap_style="square")
        layer = store_settlements(s, area, scene, [(around, 0.87)], "EPSG:4326", "classifier-test")
        s.execute(sa.update(Indicator).where(Indicator.area_id == area.id, Indicator.observed_on == last)
                  .values(settlement_km2=layer.km2))
        alert_id = alert.id
    assert layer.polygons == 1
    b = browser
    b.sign_in(served.base, served.read)
    b.listed(16, "the alerts")
    b.click_alert(alert_id)
    b.wait(lambda: b.one("#details h2").text == f"Alert #{alert_id}", "the alert's details")
    assert f"After · {last}" in b.one("#label-after").text
    drawn = lambda: b.css(f'.leaflet-overlay-pane path[stroke="{SETTLEMENT}"]')  # noqa: E731
    b.wait(lambda: len(drawn()) == 1, "the settlement polygon of the after date")
    assert {r["url"] for r in b.drain_network().values() if "/settlements" in r["url"]} == \
        {f"{served.base}/areas/demo/settlements?date={last}"}
    b.shot("06-settlements")
    box = b.one("#show-settlements")
    assert box.is_selected() and "settlements" in b.one(".legend").text
    box.click()
    b.wait(lambda: not drawn(), "the settlement layer to be hidden")
    box.click()
    b.wait(lambda: len(drawn()) == 1, "the settlement layer to be shown again")
    # the area's chart shows the settlement km2 of that date
    b.wait(lambda: b.css("#area-chart svg circle.settlement"), "the settlement figure in the chart")
    b.assert_nothing_left_the_machine()
    assert not severe(b.drain_console())


def test_read_token_sees_no_review_buttons(served, browser):
    b = browser
    b.sign_in(served.base, served.read)
    b.listed(16, "the alerts")
    assert b.one("#who-scope").text == "read only"
    b.click_alert(b.js("return Number(document.querySelectorAll('#alerts li.alert')[3].dataset.id)"))
    b.wait(lambda: b.css("#details .readonly"), "the alert's details")
    b.wait(b.tiles_loaded, "the imagery tiles of both dates")
    assert "reviewing needs a write token" in b.one("#details .readonly").text
    assert not b.css("#details button") and not b.css("#review-note")
    assert not b.css("[id^=review-]")
    b.shot("06-read-only")
    b.assert_nothing_left_the_machine()
    assert not severe(b.drain_console())


def test_data_is_shown_as_text(served, browser):
    """A parcel id holding markup is shown as it is, never run as HTML."""
    with served.engine.connect() as conn:
        area_id = conn.execute(sa.text("SELECT id FROM areas WHERE name = 'demo'")).scalar()
    evil = '<img src="x" onerror="document.title=\'injected\'"><b>bold'  # no "/": not a path segment
    alert_id = make_alert(served.engine, area_id, evil, x0=-58.975)
    b = browser
    b.sign_in(served.base, served.write)
    rows = b.listed(17, "the alerts with the odd one")
    assert any(evil in r for r in rows)
    b.click_alert(alert_id)
    b.wait(lambda: b.one("#details h2").text == f"Alert #{alert_id}", "its details")
    b.wait(lambda: b.css("#parcel-history p, #parcel-history table"), "its parcel's history")
    assert evil in b.one("#details").text
    assert b.d.title == "monitor · review"
    assert not b.css('img[src="x"]') and not b.css("#alerts b, #details b")
    b.assert_nothing_left_the_machine()
    assert not severe(b.drain_console())


def test_api_docs_load_offline(served, browser):
    b = browser
    b.d.get(served.base + "/docs")
    b.wait(lambda: len(b.css(".opblock")) > 20, "Swagger UI's operations")
    assert "monitor" in b.one(".information-container").text
    b.shot("07-docs")
    b.assert_nothing_left_the_machine()
    b.d.get(served.base + "/redoc")
    b.wait(lambda: "Alerts as a GeoJSON FeatureCollection" in b.one("body").text, "ReDoc's operations")
    b.shot("08-redoc")
    b.assert_nothing_left_the_machine()
    # ReDoc's menu logo from its CDN was refused by the page's policy, never fetched
    blocked = [r for r in b.drain_network().values() if r["blocked"] == "csp"]
    assert all(urlsplit(r["url"]).hostname != "127.0.0.1" for r in blocked)
