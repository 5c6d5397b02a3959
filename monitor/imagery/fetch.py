"""Downloads that never leave a corrupt or partial file behind.

A download streams into ``<name>.part`` beside its destination, resumes with an HTTP Range
request after a dropped connection, retries transient failures (tenacity) with exponential backoff
up to a cap, verifies size and checksum (MD5 or SHA3-256 from the provider; a plain MD5 ETag or the
announced length where that is all there is) and only then renames the file into place.
Whatever fails, the ``.part`` file is removed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import requests
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt
from tqdm import tqdm

from monitor import __version__
from monitor.errors import ChecksumMismatch, DownloadError, ProductOffline, SizeMismatch
from monitor.settings import Settings
from monitor.urlpolicy import guard_session

log = logging.getLogger(__name__)

CHUNK = 1 << 16
USER_AGENT = f"monitor/{__version__}"
_MD5_ETAG = re.compile(r'^(?:W/)?"?([0-9a-fA-F]{32})"?$')
# HTTP statuses worth another try; every other error status fails at once.
_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class RetryPolicy:
    """How hard a download tries: attempts, first delay (doubling) and its cap, request timeout."""

    attempts: int = 5
    backoff_s: float = 2.0
    backoff_max_s: float = 60.0
    timeout_s: float = 60.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        """The download settings (MONITOR_DOWNLOAD_*, MONITOR_HTTP_TIMEOUT_S) as a policy."""
        return cls(attempts=max(1, settings.download_retries), backoff_s=settings.download_backoff_s,
                   backoff_max_s=settings.download_backoff_max_s, timeout_s=settings.http_timeout_s)

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        return min(self.backoff_s * 2 ** (attempt - 1), self.backoff_max_s)


@dataclass
class Downloaded:
    """A verified file: its path, size, the checksums computed, and what it was verified against."""

    path: Path
    size: int
    checksums: dict[str, str] = field(default_factory=dict)
    verified_by: str = "size"


def new_session(guard: bool = False) -> requests.Session:
    """A requests session with the project's User-Agent; ``guard``: connecting only to public addresses
    (``urlpolicy.GuardedAdapter``)."""
    s = requests.Session()
    s.headers["User-Agent"] = USER_AGENT
    return guard_session(s, guard=guard)


def file_hashes(path: Path, algorithms: set[str]) -> dict[str, str]:
    """Hex digests of a file for several algorithms in one pass (``md5``, ``sha256``, ``sha3-256``)."""
    hashers = {a: hashlib.new(a.replace("-", "_")) for a in algorithms}
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            for h in hashers.values():
                h.update(chunk)
    return {a: h.hexdigest() for a, h in hashers.items()}


def _verify(path: Path, size: int | None, checksum: tuple[str, str] | None, etag: str | None,
            announced: int | None, url: str) -> Downloaded:
    actual = path.stat().st_size
    expected_size = size if size is not None else announced
    if expected_size is not None and actual != expected_size:
        raise SizeMismatch(f"size mismatch for {url}: got {actual} bytes, expected {expected_size}"
                            + (" (truncated)" if actual < expected_size else ""), url=url)
    algos = {"sha256"}
    etag_md5 = None
    if checksum:
        algos.add(checksum[0])
    elif etag and (m := _MD5_ETAG.match(etag)):
        etag_md5 = m.group(1).lower()
        algos.add("md5")
    sums = file_hashes(path, algos)
    if checksum:
        algo, want = checksum
        if sums[algo] != want.lower():
            raise ChecksumMismatch(f"checksum mismatch for {url}: {algo.upper()} {sums[algo]}, "
                                f"expected {want.lower()}", url=url)
        return Downloaded(path, actual, sums, algo)
    if etag_md5:
        if sums["md5"] != etag_md5:
            raise ChecksumMismatch(f"checksum mismatch for {url}: MD5 {sums['md5']}, ETag says {etag_md5}", url=url)
        return Downloaded(path, actual, sums, "etag")
    return Downloaded(path, actual, sums, "size")


class _Retry(Exception):
    """An answer worth another try (a transient HTTP status, a refused range)."""


# What tenacity retries: the connection dropped or timed out, or a transient answer.
_TRANSIENT = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError, _Retry)


@dataclass
class _Transfer:
    """One download's state across attempts: where the ``.part`` file is and what the server said."""

    url: str
    part: Path
    session: requests.Session
    timeout_s: float
    progress: bool
    on_bytes: Callable[[int], None] | None
    etag: str | None = None
    announced: int | None = None

    def attempt(self) -> None:
        """One request, resuming the ``.part`` file with a Range request when it holds bytes already."""
        offset = self.part.stat().st_size if self.part.exists() else 0
        if offset and self.announced is not None and offset >= self.announced:
            return
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        if offset and self.etag:
            headers["If-Range"] = self.etag
        with self.session.get(self.url, headers=headers, stream=True, timeout=self.timeout_s) as r:
            if r.status_code == 202:
                raise ProductOffline("product is offline; retrieval from the archive was requested",
                                     status=202, retryable=True)
            if r.status_code in _RETRY_STATUS:
                raise _Retry(f"HTTP {r.status_code}")
            if r.status_code == 416 and offset:
                self.part.unlink()  # the server refuses our range: start over
                raise _Retry("HTTP 416 on resume")
            if r.status_code >= 400 or r.status_code not in (200, 206):
                raise DownloadError(f"HTTP {r.status_code} for {self.url}", url=self.url, status=r.status_code)
            self.etag = r.headers.get("ETag") or self.etag
            start = 0
            if r.status_code == 206:
                m = re.match(r"bytes (\d+)-\d+/(\d+|\*)", r.headers.get("Content-Range", ""))
                if not m:
                    raise DownloadError(f"unusable Content-Range from {self.url}", url=self.url)
                start = int(m.group(1))
                if m.group(2) != "*":
                    self.announced = int(m.group(2))
            elif "Content-Length" in r.headers:
                self.announced = int(r.headers["Content-Length"])
            if start != offset:
                offset = 0  # a full body (or an unexpected range): start over
                if r.status_code == 206:
                    raise _Retry("server answered another range than asked")
            with open(self.part, "ab" if offset else "wb") as f, tqdm(
                    total=self.announced, initial=offset, unit="B", unit_scale=True, leave=False,
                    desc=self.part.name[:40], disable=not self.progress) as bar:
                for chunk in r.iter_content(CHUNK):
                    f.write(chunk)
                    bar.update(len(chunk))
                    if self.on_bytes:
                        self.on_bytes(len(chunk))


def download(url: str, dest: Path, *, session: requests.Session | None = None, size: int | None = None,
             checksum: tuple[str, str] | None = None, policy: RetryPolicy = RetryPolicy(),
             progress: bool = False, on_bytes: Callable[[int], None] | None = None,
             sleep: Callable[[float], None] = time.sleep) -> Downloaded:
    """Download ``url`` to ``dest`` and verify it; ``checksum`` is ``(algorithm, hex)``.

    Transient failures are retried by tenacity, ``policy.attempts`` times in all, waiting
    ``policy.delay`` between attempts. Raises ``ProductOffline`` on HTTP 202 (the archive accepted a
    retrieval request) and ``DownloadError`` for everything else that goes wrong; no ``.part`` file
    survives either.
    """
    session = session or new_session()
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if checksum:
        checksum = (checksum[0].lower(), checksum[1].lower())
    if dest.exists():
        try:
            return _verify(dest, size, checksum, None, None, url)
        except DownloadError:
            dest.unlink()
    part.unlink(missing_ok=True)
    transfer = _Transfer(url, part, session, policy.timeout_s, progress, on_bytes)

    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        log.warning("download of %s interrupted (%s); retry %d in %.1fs", url, type(error).__name__,
                    state.attempt_number, policy.delay(state.attempt_number))

    retrying = Retrying(stop=stop_after_attempt(policy.attempts),
                        wait=lambda state: policy.delay(state.attempt_number),
                        retry=retry_if_exception_type(_TRANSIENT), sleep=sleep, before_sleep=before_sleep,
                        reraise=True)
    try:
        try:
            retrying(transfer.attempt)
        except _TRANSIENT as e:
            reason = "timed out" if isinstance(e, requests.Timeout) else str(e) or type(e).__name__
            raise DownloadError(f"download of {url} failed after {policy.attempts} attempts: {reason}",
                                url=url, retryable=True) from e
        result = _verify(part, size, checksum, transfer.etag, transfer.announced, url)
        os.replace(part, dest)
        result.path = dest
        return result
    finally:
        part.unlink(missing_ok=True)


def copy_verified(src: Path, dest: Path) -> Downloaded:
    """Copy a local file into place through a ``.part`` file, checking the copy's SHA-256."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        want = file_hashes(src, {"sha256"})["sha256"]
        shutil.copyfile(src, part)
        result = _verify(part, src.stat().st_size, ("sha256", want), None, None, str(src))
        os.replace(part, dest)
        result.path = dest
        return result
    except OSError as e:
        raise DownloadError(f"cannot copy {src}: {e}", url=str(src)) from e
    finally:
        part.unlink(missing_ok=True)
