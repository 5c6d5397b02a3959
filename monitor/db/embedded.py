"""The private PostGIS cluster used when no DATABASE_URL is set.

It lives under ``MONITOR_HOME/pg`` and listens on 127.0.0.1 at ``MONITOR_PG_PORT``
with a socket of its own. ``initdb`` refuses to run as root, so as root the
cluster belongs to the ``postgres`` system user and is driven through ``runuser``.
"""

from __future__ import annotations

import fcntl
import glob
import os
import shutil
import socket
import subprocess
from contextlib import contextmanager
from pathlib import Path

import psycopg2
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

from monitor.errors import ConfigError, DatabaseError
from monitor.settings import Settings

SUPERUSER = "monitor"
DBNAME = "monitor"


def find_bindir(settings: Settings) -> Path:
    """The folder holding initdb and pg_ctl (newest installed PostgreSQL)."""
    if settings.pg_bin:
        return Path(settings.pg_bin)
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0)
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    raise ConfigError("PostgreSQL server binaries (initdb, pg_ctl) were not found: install "
                      "`postgresql-15-postgis-3` (Debian/Ubuntu), set MONITOR_PG_BIN, or point "
                      "DATABASE_URL at an existing PostGIS database")


def _check_postgis(bindir: Path) -> None:
    major = bindir.parent.name
    pg_config = shutil.which("pg_config")
    share = None
    if pg_config:
        out = subprocess.run([pg_config, "--sharedir"], capture_output=True, text=True)
        share = out.stdout.strip() or None
    paths = [Path(share) / "extension"] if share else []
    paths.append(Path(f"/usr/share/postgresql/{major}/extension"))
    if not any((p / "postgis.control").exists() for p in paths):
        raise ConfigError(f"PostGIS is not installed for PostgreSQL {major}: run "
                          f"`apt-get install postgresql-{major}-postgis-3` as root "
                          "(`make test` and `make demo` do it when run as root), "
                          "or set DATABASE_URL to an existing PostGIS database")


class Cluster:
    """Create, start and stop the private cluster; everything idempotent and locked."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = settings.pg_dir.resolve()
        self.data = self.root / "data"
        self.run_dir = self.root / "run"
        self.log = self.root / "postgres.log"
        self.port = settings.pg_port
        self.as_root = os.geteuid() == 0

    @property
    def url(self) -> str:
        """The URL of the ``monitor`` database of the cluster."""
        return f"postgresql+psycopg2://{SUPERUSER}@127.0.0.1:{self.port}/{DBNAME}"

    def admin_url(self, dbname: str = "postgres") -> str:
        """The URL of another database of the cluster (``postgres`` by default), for administration."""
        return f"postgresql+psycopg2://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def _cmd(self, args: list[str], check: bool = True) -> subprocess.CompletedProcess:
        if self.as_root:
            args = ["runuser", "-u", "postgres", "--", *args]
        proc = subprocess.run(args, capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise DatabaseError(f"`{' '.join(args)}` failed ({proc.returncode}): "
                                f"{(proc.stderr or proc.stdout).strip()[-2000:]}")
        return proc

    @contextmanager
    def _lock(self):
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _prepare_dirs(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")
            shutil.chown(self.run_dir, "postgres", "postgres")
            # postgres must be able to reach the folder through every parent
            for parent in self.root.parents:
                if not os.stat(parent).st_mode & 0o001:
                    raise ConfigError(f"the private database folder {self.root} is inside {parent}, "
                                      "which the postgres system user cannot enter: set MONITOR_HOME "
                                      "to a folder outside it, or set DATABASE_URL")

    def running(self) -> bool:
        """Whether the cluster's server runs."""
        if not (self.data / "PG_VERSION").exists():
            return False
        bindir = find_bindir(self.settings)
        return self._cmd([str(bindir / "pg_ctl"), "-D", str(self.data), "status"], check=False).returncode == 0

    def port_taken(self) -> bool:
        """Whether another program listens on the cluster's port on 127.0.0.1."""
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closing connection does not count
            try:
                s.bind(("127.0.0.1", self.port))
            except OSError:
                return True
        return False

    def _port_conflict(self) -> DatabaseError:
        return DatabaseError(f"cannot start the private PostGIS cluster of {self.root}: port {self.port} on 127.0.0.1 "
                             "is taken by another program (another checkout's cluster?); stop it or set "
                             "MONITOR_PG_PORT (MONITOR_TEST_PG_PORT for the tests) to a free port")

    def ensure(self) -> str:
        """Make sure the cluster exists, runs and has the ``monitor`` database; return its URL."""
        with self._lock():
            bindir = find_bindir(self.settings)
            _check_postgis(bindir)
            if not self.running() and self.port_taken():
                raise self._port_conflict()
            self._prepare_dirs()
            if not (self.data / "PG_VERSION").exists():
                if self.data.exists():
                    shutil.rmtree(self.data)
                self._cmd([str(bindir / "initdb"), "-D", str(self.data), "-U", SUPERUSER,
                           "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8"])
            if not self.running():
                if self.log.exists() and self.as_root:
                    shutil.chown(self.log, "postgres", "postgres")
                opts = (f"-p {self.port} -k {self.run_dir} -c listen_addresses=127.0.0.1 "
                        "-c fsync=off -c max_connections=200")
                try:
                    self._cmd([str(bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                               "-o", opts, "-w", "-t", "60", "start"])
                except DatabaseError:
                    if self.port_taken():  # taken between the check and the start
                        raise self._port_conflict() from None
                    raise
            self._create_database(DBNAME)
        return self.url

    def _create_database(self, name: str) -> None:
        # A server just started may refuse connections for a moment: try for 30 s.
        connect = Retrying(stop=stop_after_delay(30), wait=wait_fixed(0.3),
                           retry=retry_if_exception_type(psycopg2.OperationalError), reraise=True)
        try:
            conn = connect(psycopg2.connect, host="127.0.0.1", port=self.port, user=SUPERUSER, dbname="postgres")
        except psycopg2.OperationalError as e:
            raise DatabaseError(f"the private PostGIS cluster does not answer on port {self.port}: {e}") from e
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()

    def stop(self) -> bool:
        """Stop the cluster's server; False when it was not running."""
        if not self.running():
            return False
        bindir = find_bindir(self.settings)
        self._cmd([str(bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"])
        return True
