"""deploy/: the compose file, the images, Prometheus' config and rules, Grafana's dashboards, the
Kubernetes manifests and the systemd unit, checked with the real tools (docker-compose, promtool,
prometheus) and against a real daemon's /metrics."""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml
from prometheus_client import generate_latest
from typer.testing import CliRunner

from monitor import __version__
from monitor.metrics import Metrics
from monitor.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
RULES = sorted((DEPLOY / "prometheus" / "rules").glob("*.yml"))
RULE_TESTS = sorted((DEPLOY / "prometheus" / "tests").glob("*.yml"))
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
K8S = DEPLOY / "k8s"
METRIC = re.compile(r"\bmonitor_[a-z0-9_]+")
# Settings of the private cluster of `make demo`; meaningless where PostGIS runs apart.
PRIVATE_CLUSTER = {"MONITOR_PG_PORT", "MONITOR_PG_BIN"}
# The Dask scheduler's ports (workers and clients; dashboard and /metrics), in the project's image.
DASK_PORTS = {8786, 8787}


def run(cmd: list[str], timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    assert result.returncode == 0, f"{shlex.join(cmd)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def setting_env_names() -> set[str]:
    names = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        names.add(alias.choices[0] if alias is not None else f"MONITOR_{name.upper()}")
    return names


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without the caller's settings, so that results do not depend on the shell."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MONITOR_", "POSTGRES_", "GRAFANA_", "COMPOSE_")) and k != "DATABASE_URL"}
    return {**env, **extra}


# ---------------------------------------------------------------------------- compose

@pytest.fixture(scope="module")
def compose() -> dict:
    out = run(["docker-compose", "-f", str(DEPLOY / "docker-compose.yml"), "config"], env=clean_env()).stdout
    return yaml.safe_load(out)


def volumes(svc: dict) -> dict[str, dict]:
    """Target -> {source, type} of a service's mounts, from short or long syntax."""
    out = {}
    for v in svc.get("volumes", []):
        if isinstance(v, str):
            source, target = v.split(":")[:2]
            v = {"source": source, "target": target, "type": "bind" if source.startswith("/") else "volume"}
        out[v["target"]] = v
    return out


def port_targets(svc: dict) -> set[int]:
    """Container ports a service publishes, from short or long syntax."""
    out = set()
    for p in svc.get("ports", []):
        out.add(int(p["target"]) if isinstance(p, dict) else int(p.split("/")[0].rsplit(":", 1)[1]))
    return out


def daemon_services(compose: dict) -> dict[str, dict]:
    return {n: s for n, s in compose["services"].items() if n in ("monitor", "monitor-cpu")}


def test_compose_stack(compose):
    services = compose["services"]
    assert {"postgis", "monitor", "monitor-cpu", "prometheus", "grafana"} <= set(services)
    assert services["postgis"]["image"].startswith("postgis/postgis:")
    assert volumes(services["postgis"])["/var/lib/postgresql/data"]["type"] == "volume"

    for name, svc in daemon_services(compose).items():
        dockerfile = Path(svc["build"]["context"]) / svc["build"]["dockerfile"]
        assert dockerfile.is_file(), name
        assert svc["image"].startswith("construction-monitor:") and __version__ in svc["image"], (
            f"{name}: the image tag follows the project's version {__version__}")
        command = " ".join(svc["command"])
        assert command.index("monitor db upgrade") < command.index("monitor run"), "migrations run first"
        assert svc["depends_on"]["postgis"]["condition"] == "service_healthy"
        assert "/readyz" in " ".join(svc["healthcheck"]["test"])
        targets = volumes(svc)
        assert targets["/var/lib/monitor"]["type"] == "volume"
        assert targets["/var/lib/monitor/models"]["type"] == "volume"
        assert svc["environment"]["MONITOR_HOME"] == "/var/lib/monitor"
        assert svc["environment"]["MONITOR_API_HOST"] == "0.0.0.0"
        assert svc["environment"]["DATABASE_URL"].split("@")[1].startswith("postgis:5432/")
        assert port_targets(svc) == {int(svc["environment"]["MONITOR_API_PORT"])}

    gpu = services["monitor"]["deploy"]["resources"]["reservations"]["devices"]
    assert gpu == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "deploy" not in services["monitor-cpu"]
    assert services["monitor"]["profiles"] == ["gpu"] and services["monitor-cpu"]["profiles"] == ["cpu"]
    assert "monitor" in services["monitor-cpu"]["networks"]["default"]["aliases"]

    prom = volumes(services["prometheus"])
    assert Path(prom["/etc/prometheus"]["source"]) == DEPLOY / "prometheus"
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]

    graf = volumes(services["grafana"])
    assert Path(graf["/etc/grafana/provisioning"]["source"]) == DEPLOY / "grafana" / "provisioning"
    dashboards_dir = next(t for t, v in graf.items() if Path(v.get("source", "")) == DEPLOY / "grafana" / "dashboards")
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/monitor.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == dashboards_dir
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (DEPLOY / "grafana" / "dashboards" / Path(home).relative_to(dashboards_dir)).is_file()


def test_compose_passes_every_setting_and_env_example_lists_them(compose):
    wanted = setting_env_names() - PRIVATE_CLUSTER
    for name, svc in daemon_services(compose).items():
        env = set(svc["environment"])
        assert not wanted - env, f"{name} does not pass {sorted(wanted - env)}"
        assert not env - wanted, f"{name} sets unknown settings {sorted(env - wanted)}"

    example = (DEPLOY / ".env.example").read_text()
    mentioned = set(re.findall(r"\b(?:MONITOR_[A-Z0-9_]+|DATABASE_URL)\b", example))
    known = setting_env_names()
    assert not known - mentioned, f".env.example misses {sorted(known - mentioned)}"
    assert not mentioned - known, f".env.example names unknown settings {sorted(mentioned - known)}"
    # Every variable the compose file interpolates is documented there too.
    interpolated = set(re.findall(r"\$\{([A-Z0-9_]+)", (DEPLOY / "docker-compose.yml").read_text()))
    assert not {v for v in interpolated if not re.search(rf"^#? ?{v}=", example, re.M)}

    # And compose accepts the example as its .env file.
    out = run(["docker-compose", "--env-file", str(DEPLOY / ".env.example"), "-f", str(DEPLOY / "docker-compose.yml"),
               "config"], env=clean_env()).stdout
    assert "postgresql://monitor:change-me@postgis:5432/monitor" in out


# ---------------------------------------------------------------------------- images

def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cpu"])
def test_dockerfile(name):
    path = DEPLOY / name
    ins = dockerfile_instructions(path)
    froms = [r for i, r in ins if i == "FROM"]
    if name == "Dockerfile":
        assert re.match(r"tensorflow/tensorflow:\$\{TF_VERSION\}-gpu$", froms[-1])
    allowed = {line[1:] for line in (DEPLOY / f"{name}.dockerignore").read_text().splitlines() if line.startswith("!")}
    for i, rest in ins:
        if i == "COPY" and not rest.startswith("--from"):
            *sources, _dest = rest.split()
            for src in sources:
                assert (ROOT / src).exists(), f"{name} copies {src}, which is not in the repository"
                assert src in allowed, f"{name}.dockerignore leaves {src} out of the build context"
    users = [r for i, r in ins if i == "USER"]
    assert users and users[-1] not in ("root", "0"), "the daemon runs as a non-root user"
    assert [r for i, r in ins if i == "EXPOSE"] == ["8000"]
    assert "/readyz" in next(r for i, r in ins if i == "HEALTHCHECK")
    assert json.loads(next(r for i, r in ins if i == "CMD")) == ["monitor", "run"]
    env = " ".join(r for i, r in ins if i == "ENV")
    assert "MONITOR_API_HOST=0.0.0.0" in env and "MONITOR_API_PORT=8000" in env


# ---------------------------------------------------------------------------- Prometheus

REQUIRED_ALERTS = {"MonitorDown", "MonitorSchedulerNoLeader", "MonitorRunsFailing", "MonitorNoSuccessfulRun",
                   "MonitorNoNewScene", "MonitorAlertBurst", "MonitorWebhookDeliveriesFailing",
                   "MonitorWebhooksGivenUp"}


def alert_rules() -> list[dict]:
    return [r for f in RULES for g in yaml.safe_load(f.read_text())["groups"] for r in g["rules"]]


def test_promtool_check_config():
    run(["promtool", "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")])


def test_promtool_check_rules():
    assert RULES
    run(["promtool", "check", "rules", *map(str, RULES)])
    assert {r["alert"] for r in alert_rules()} == REQUIRED_ALERTS


def test_promtool_test_rules():
    out = run(["promtool", "test", "rules", *map(str, RULE_TESTS)]).stdout
    assert "SUCCESS" in out
    # Every rule has a test case in which it fires.
    fired = set()
    for f in RULE_TESTS:
        for case in yaml.safe_load(f.read_text())["tests"]:
            fired |= {t["alertname"] for t in case.get("alert_rule_test", []) if t.get("exp_alerts")}
    assert fired == REQUIRED_ALERTS


# ---------------------------------------------------------------------------- Grafana

def walk_panels(panels: list[dict]):
    for p in panels:
        yield p
        yield from walk_panels(p.get("panels", []))


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL or Grafana query) of every panel target and template variable."""
    out = []
    for f in DASHBOARDS:
        d = json.loads(f.read_text())
        for p in walk_panels(d["panels"]):
            out += [(f"{f.name}: {p['title']}", t["expr"]) for t in p.get("targets", [])]
        for v in d["templating"]["list"]:
            if v["type"] == "query":
                q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
                out.append((f"{f.name}: variable {v['name']}", q))
    return out


def test_grafana_provisioning_and_dashboards(compose):
    ds = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"]
    assert len(ds) == 1 and ds[0]["type"] == "prometheus"
    host, port = re.match(r"http://([a-z-]+):(\d+)$", ds[0]["url"]).groups()
    assert host in compose["services"]
    assert int(port) in port_targets(compose["services"]["prometheus"])

    assert {f.stem for f in DASHBOARDS} >= {"pipeline", "imagery", "areas", "inference"}
    uids = [json.loads(f.read_text())["uid"] for f in DASHBOARDS]
    assert len(set(uids)) == len(uids)
    for f in DASHBOARDS:
        d = json.loads(f.read_text())
        assert d["title"] and d["schemaVersion"] >= 36
        assert [v["name"] for v in d["templating"]["list"]][0] == "datasource"
        ids = []
        for p in walk_panels(d["panels"]):
            ids.append(p["id"])
            g = p["gridPos"]
            assert g["x"] + g["w"] <= 24, f"{f.name}: {p['title']} is wider than the dashboard"
            if p["type"] == "row":
                continue
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            assert p["targets"] and all(t["expr"].strip() for t in p["targets"]), p["title"]
        assert len(set(ids)) == len(ids), f"{f.name}: panel ids repeat"


# ---------------------------------------------------------------------------- metric names

def used_metrics() -> dict[str, set[str]]:
    """Metric name -> where it is used, from every dashboard query and alert rule."""
    used: dict[str, set[str]] = {}
    sources = dashboard_queries() + [(f"rule {r['alert']}", r["expr"]) for r in alert_rules()]
    for where, expr in sources:
        for name in METRIC.findall(expr):
            used.setdefault(name, set()).add(where)
    return used


def declared_metrics(exposition: str) -> set[str]:
    """Names a Prometheus exposition makes queryable, from its # TYPE lines."""
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", exposition, re.M):
        names.add(name)
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


def unknown_metrics(exposition: str) -> dict[str, set[str]]:
    declared = declared_metrics(exposition)
    return {n: w for n, w in used_metrics().items() if n not in declared}


def test_dashboards_and_rules_use_only_metrics_of_the_metrics_module():
    used = used_metrics()
    # All of the daemon's metric families are shown somewhere.
    assert len(used) >= 20
    exposition = generate_latest(Metrics().registry).decode()
    assert not unknown_metrics(exposition)


def grafana_to_promql(expr: str) -> str:
    """A dashboard query with Grafana's variables replaced, as Grafana sends it."""
    for var, value in {"$__rate_interval": "2m", "$__interval": "1h", "$__range": "1d", "$area": ".*"}.items():
        expr = expr.replace(var, value)
    return expr


def wait_for(what: str, check, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what}: the process exited {proc.returncode}\n{log.read_text() if log else ''}")
        try:
            value = check()
            if value:
                return value
        except (requests.RequestException, KeyError, IndexError, ValueError) as e:
            last = e
        time.sleep(0.3)
    pytest.fail(f"{what}: not within {timeout:.0f} s (last error: {last})\n{log.read_text()[-3000:] if log else ''}")


def start(cmd: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    with open(log, "w") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=log.parent)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def daemon(db_url, tmp_path):
    """`monitor run` on a free port against the test's database; yields its base URL."""
    port = free_port()
    log = tmp_path / "daemon.log"
    env = clean_env(DATABASE_URL=db_url, MONITOR_HOME=str(tmp_path / "home"), MONITOR_API_HOST="127.0.0.1",
                    MONITOR_API_PORT=str(port), MONITOR_LOG_LEVEL="INFO")
    proc = start([str(Path(sys.executable).with_name("monitor")), "run"], log, env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for("daemon /readyz", lambda: requests.get(f"{base}/readyz", timeout=2).status_code == 200,
                 90, proc, log)
        yield base
    finally:
        stop(proc)


def test_daemon_exports_every_metric_and_prometheus_scrapes_it(daemon, tmp_path):
    exposition = requests.get(f"{daemon}/metrics", timeout=10).text
    assert not unknown_metrics(exposition), "dashboards or rules use metrics the daemon does not export"

    # The shipped Prometheus config, pointed at this daemon and these rules, scraping fast.
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    prom_port = free_port()
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(DEPLOY / "prometheus" / f) for f in config["rule_files"]]
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    jobs["monitor"]["static_configs"] = [{"targets": [daemon.removeprefix("http://")]}]
    jobs["prometheus"]["static_configs"] = [{"targets": [f"127.0.0.1:{prom_port}"]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = tmp_path / "prometheus.log"
    proc = start(["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
                  f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}"], log)
    api = f"http://127.0.0.1:{prom_port}/api/v1"
    try:
        def query(expr: str) -> dict:
            body = requests.get(f"{api}/query", params={"query": expr}, timeout=5).json()
            assert body["status"] == "success", f"{expr}: {body}"
            return body["data"]

        up = wait_for("up == 1", lambda: [r for r in query('up{job="monitor"} == 1')["result"]], 30, proc, log)
        assert up[0]["metric"]["instance"] == daemon.removeprefix("http://")

        def rule_states() -> list[dict]:
            return [r for g in requests.get(f"{api}/rules", timeout=5).json()["data"]["groups"] for r in g["rules"]]

        # Every rule loaded and evaluated (a never-evaluated rule reports year 1) without error.
        rules = wait_for("rules evaluated",
                         lambda: (rs := rule_states()) and all(r["lastEvaluation"] > "2000" for r in rs) and rs,
                         20, proc, log)
        assert {r["name"] for r in rules} == REQUIRED_ALERTS
        assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
        # Once scraped, a healthy daemon that leads the scheduler trips neither of these, not even
        # as pending (both are pending at the first evaluation, before the first scrape).
        def healthy() -> bool:
            states = {r["name"]: r["state"] for r in rule_states()}
            return states["MonitorDown"] == states["MonitorSchedulerNoLeader"] == "inactive"

        wait_for("MonitorDown and MonitorSchedulerNoLeader inactive", healthy, 20, proc, log)

        # Every dashboard query is valid PromQL that Prometheus evaluates.
        for where, expr in dashboard_queries():
            if not expr.startswith("label_values("):
                query(grafana_to_promql(expr))
        series = query('count by (__name__) ({__name__=~"monitor_.+"})')["result"]
        assert {s["metric"]["__name__"] for s in series} >= {"monitor_scheduler_leader", "monitor_scheduled_areas"}
    finally:
        stop(proc)


# ---------------------------------------------------------------------------- Kubernetes

def k8s_docs() -> list[dict]:
    docs = []
    for f in sorted(K8S.glob("*.yaml")):
        for d in yaml.safe_load_all(f.read_text()):
            if d:
                d["__file__"] = f.name
                docs.append(d)
    return docs


def pod_specs(docs: list[dict]) -> list[tuple[str, dict]]:
    return [(f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"])
            for d in docs if d["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet")]


def test_k8s_manifests_match_compose_and_images(compose):
    docs = k8s_docs()
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Job", "Service", "Secret", "ConfigMap", "PersistentVolumeClaim", "ServiceMonitor"} <= kinds

    kustomization = next(d for d in docs if d["kind"] == "Kustomization")
    assert all((K8S / r).is_file() for r in kustomization["resources"])

    compose_images = {s["image"] for s in compose["services"].values()}
    exposed = {int(r) for name in ("Dockerfile", "Dockerfile.cpu")
               for i, r in dockerfile_instructions(DEPLOY / name) if i == "EXPOSE"}
    daemon_env = set().union(*(s["environment"] for s in daemon_services(compose).values()))
    daemon_mounts = {t for s in daemon_services(compose).values() for t in volumes(s)}
    secrets = {d["metadata"]["name"]: set(d.get("stringData", {})) | set(d.get("data", {}))
               for d in docs if d["kind"] == "Secret"}
    configmaps = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
    claims = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}

    for key in set().union(*secrets.values()) | set().union(*map(set, configmaps.values())):
        assert key in daemon_env, f"k8s sets {key}, which the compose daemon does not know"
    for name, spec in pod_specs(docs):
        pod_volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec.get("initContainers", []) + spec["containers"]:
            where = f"{name} {c['name']}"
            assert c["image"] in compose_images, f"{where}: image {c['image']} is not built by the compose file"
            ports = exposed | DASK_PORTS if name.startswith("Deployment/dask-") else exposed
            assert {p["containerPort"] for p in c.get("ports", [])} <= ports, where
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secrets.get(ref["name"], set()), f"{where}: secret {ref}"
                    assert e["name"] in daemon_env, where
            for src in c.get("envFrom", []):
                if "secretRef" in src:
                    assert src["secretRef"]["name"] in secrets, where
                if "configMapRef" in src:
                    assert src["configMapRef"]["name"] in configmaps, where
            for m in c.get("volumeMounts", []):
                claim = pod_volumes[m["name"]].get("persistentVolumeClaim")
                if claim:
                    assert claim["claimName"] in claims, where
                    assert m["mountPath"] in daemon_mounts, f"{where}: {m['mountPath']} is not a compose volume"
            assert spec["securityContext"]["runAsNonRoot"] is True

    deployment = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "monitor")
    pod = deployment["spec"]["template"]
    daemon_c = pod["spec"]["containers"][0]
    assert daemon_c["command"] == ["monitor", "run"]
    assert daemon_c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["spec"]["nodeSelector"]
    assert daemon_c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert daemon_c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    port = daemon_c["ports"][0]
    assert int(pod["metadata"]["annotations"]["prometheus.io/port"]) == port["containerPort"]
    assert configmaps["monitor-config"]["MONITOR_API_PORT"] == str(port["containerPort"])
    job = next(d for d in docs if d["kind"] == "Job")
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == ["monitor", "db", "upgrade"]

    service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "monitor")
    assert service["metadata"]["name"] == "monitor", "the scrape job (and up{job=\"monitor\"}) is named after it"
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    monitor_ = next(d for d in docs if d["kind"] == "ServiceMonitor")
    assert monitor_["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert monitor_["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()


def wait_for_schema_script() -> list[str]:
    deployment = next(d for d in k8s_docs() if d["kind"] == "Deployment" and d["metadata"]["name"] == "monitor")
    init = next(c for c in deployment["spec"]["template"]["spec"]["initContainers"] if c["name"] == "wait-for-schema")
    assert init["command"][:2] == ["python3", "-c"]
    return [sys.executable, "-c", init["command"][2]]


def test_k8s_wait_for_schema_init_container(db_url, empty_db_factory, tmp_path):
    # A migrated database: done at once.
    run(wait_for_schema_script(), timeout=60, env=clean_env(DATABASE_URL=db_url), cwd=tmp_path)
    # An empty one: it keeps waiting and says why.
    empty = empty_db_factory("monitor_empty").render_as_string(hide_password=False)
    log = tmp_path / "wait.log"
    proc = start(wait_for_schema_script(), log, clean_env(DATABASE_URL=empty))
    try:
        wait_for("the init container says it waits", lambda: "waiting for" in log.read_text(), 60)
        assert proc.poll() is None
    finally:
        stop(proc)


# ---------------------------------------------------------------------------- systemd

def test_systemd_unit():
    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.optionxform = str
    unit.read(DEPLOY / "systemd" / "monitor.service")
    svc = unit["Service"]
    assert svc["User"] not in ("root", "0")
    pre, start_ = shlex.split(svc["ExecStartPre"]), shlex.split(svc["ExecStart"])
    assert pre[0] == start_[0] and Path(pre[0]).name == "monitor"
    assert pre[1:] == ["db", "upgrade"] and start_[1:] == ["run"]
    runner = CliRunner()
    from monitor.cli import app

    for args in (pre[1:], start_[1:]):
        assert runner.invoke(app, [*args, "--help"]).exit_code == 0, args
    home = svc["Environment"].removeprefix("MONITOR_HOME=")
    assert home == svc["WorkingDirectory"] and home in svc["ReadWritePaths"].split()
    assert svc["Restart"] == "on-failure"
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    assert svc["EnvironmentFile"] in (ROOT / "docs" / "operations.md").read_text()


# ---------------------------------------------------------------------------- Dask cluster

def test_dask_cluster_in_compose_k8s_and_prometheus(compose):
    services = compose["services"]
    scheduler = services["dask-scheduler"]
    assert scheduler["command"][:2] == ["dask", "scheduler"] and "8786" in scheduler["command"]
    workers = {"dask-worker": "gpu", "dask-worker-cpu": "cpu"}
    for name, variant in workers.items():
        svc = services[name]
        assert svc["image"] == services["monitor" if variant == "gpu" else "monitor-cpu"]["image"]
        assert svc["command"][:3] == ["dask", "worker", "tcp://dask-scheduler:8786"]
        assert ("--resources" in svc["command"]) == (variant == "gpu")
        assert svc["depends_on"]["dask-scheduler"]["condition"] == "service_healthy"
        # the daemon's data and models at the daemon's paths
        daemon_mounts = volumes(services["monitor"])
        for target in ("/var/lib/monitor", "/var/lib/monitor/models"):
            assert volumes(svc)[target]["source"] == daemon_mounts[target]["source"]
    gpu = services["dask-worker"]
    assert gpu["command"][gpu["command"].index("--resources") + 1] == "GPU=1"
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert set(scheduler["profiles"]) == {"dask-gpu", "dask-cpu"}
    assert services["dask-worker"]["profiles"] == ["dask-gpu"] and services["dask-worker-cpu"]["profiles"] == ["dask-cpu"]
    for svc in daemon_services(compose).values():
        assert "MONITOR_DASK_SCHEDULER" in svc["environment"]

    jobs = {j["job_name"]: j for j in yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
            ["scrape_configs"]}
    assert jobs["dask-scheduler"]["static_configs"][0]["targets"] == ["dask-scheduler:8787"]
    assert 8787 in port_targets(scheduler)

    docs = k8s_docs()
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in docs if d["kind"] != "Kustomization"}
    sched = by_name[("Deployment", "dask-scheduler")]["spec"]["template"]
    service = by_name[("Service", "dask-scheduler")]
    assert service["spec"]["selector"].items() <= sched["metadata"]["labels"].items()
    assert {p["port"] for p in service["spec"]["ports"]} == DASK_PORTS
    assert sched["metadata"]["annotations"]["prometheus.io/port"] == "8787"
    worker = by_name[("Deployment", "dask-worker")]["spec"]["template"]["spec"]
    c = worker["containers"][0]
    assert c["command"][:3] == ["dask", "worker", "tcp://dask-scheduler:8786"]
    assert c["command"][c["command"].index("--resources") + 1] == "GPU=1"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    kustomization = next(d for d in docs if d["kind"] == "Kustomization")
    assert "dask.yaml" in kustomization["resources"]
    configmap = (K8S / "configmap.yaml").read_text()
    assert "MONITOR_DASK_SCHEDULER: tcp://dask-scheduler:8786" in configmap


def test_the_daemon_runs_areas_at_once_only_with_a_cluster(db_url):
    import sqlalchemy as sa

    from monitor.scheduler import Scheduler

    engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
    try:
        for scheduler_address, threads in ((None, 1), ("tcp://127.0.0.1:8786", 3)):
            settings = Settings(database_url=db_url, dask_scheduler=scheduler_address, dask_areas=3)
            sched = Scheduler(engine, settings, Metrics(), sync_s=0.1)
            sched.tick()
            try:
                assert sched.is_leader
                assert sched._aps._executors["default"]._pool._max_workers == threads
            finally:
                sched.stop(wait=False)
    finally:
        engine.dispose()
