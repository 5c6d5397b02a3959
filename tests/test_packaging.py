"""The project as a wheel: every package and data file in it, and an installed wheel creates its schema."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest
from setuptools import find_namespace_packages

from monitor.db import migrate

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_is_listed_for_the_wheel():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    # the browser assets under monitor/api/static and the built-in models under monitor/ml/shipped are
    # package data of monitor.api and monitor.ml, not packages
    found = find_namespace_packages(ROOT, include=["monitor*"], exclude=["*__pycache__*", "monitor.api.static*",
                                                                         "monitor.ml.shipped*"])
    assert listed == {*found, "monitor._migrations", "monitor._migrations.versions"}


def run(cmd: list, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_and_migrates(tmp_path, empty_db_factory):
    # Build from a copy, so that the checkout gets no build/ folder.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "alembic.ini"):
        shutil.copy2(ROOT / name, src / name)
    for folder in ("monitor", "migrations"):
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist",
         src])
    (wheel,) = (tmp_path / "dist").glob("monitor-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"monitor/py.typed", "monitor/_migrations/env.py", "monitor/_migrations/script.py.mako",
            "monitor/db/sql/diff_step.sql", "monitor/imagery/service.py", "monitor/api/static/index.html",
            "monitor/api/static/vendor/leaflet/leaflet.js", "monitor/api/static/vendor/leaflet/images/layers.png",
            "monitor/api/static/vendor/swagger-ui-dist/LICENSE"} <= names
    assert {f"monitor/ml/shipped/{p.parent.name}/{f}" for p in (ROOT / "monitor" / "ml" / "shipped").glob("*/model.json")
            for f in ("model.json", "model.keras")} <= names
    assert {f"monitor/_migrations/versions/{p.name}" for p in (ROOT / "migrations" / "versions").glob("*.py")} <= names

    # A fresh venv, without network: the wheel alone, its dependencies seen through this venv's site-packages.
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv])
    py = venv / "bin" / "python"
    run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel])
    site = Path(run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (site / "project-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    where = run([py, "-c", "import monitor; print(monitor.__file__)"], cwd=tmp_path).stdout.strip()
    assert where.startswith(str(site)), f"monitor imported from {where}, not from the wheel"

    url = empty_db_factory("monitor_wheel").render_as_string(hide_password=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_")}
    env.update(DATABASE_URL=url, MONITOR_HOME=str(tmp_path / "home"))
    out = run([venv / "bin" / "monitor", "db", "upgrade"], cwd=tmp_path, env=env)
    assert f"database at revision {migrate.head()}" in out.stdout
    listed = run([venv / "bin" / "monitor", "models", "list", "--json"], cwd=tmp_path, env=env)
    assert '"builtin:cva"' in listed.stdout
