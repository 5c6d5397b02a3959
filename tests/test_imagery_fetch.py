"""The downloader against a real HTTP server on 127.0.0.1: resume, retry, verify, never a partial file."""

from __future__ import annotations

import hashlib
import os

import pytest

from monitor.errors import DownloadError, ProductOffline
from monitor.imagery.fetch import RetryPolicy, copy_verified, download
from tests.replay import Replay

FAST = RetryPolicy(attempts=3, backoff_s=0.01, backoff_max_s=0.02, timeout_s=2)
SIZE = 700_000


@pytest.fixture
def payload(tmp_path):
    d = tmp_path / "srv"
    d.mkdir()
    data = os.urandom(SIZE)
    (d / "product.zip").write_bytes(data)
    return d, data


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_download_verifies_md5_and_etag(tmp_path, payload):
    srv, data = payload
    md5 = hashlib.md5(data).hexdigest()
    with Replay(files={"/files/": srv}) as r:
        got = download(f"{r.url}/files/product.zip", tmp_path / "out" / "p.zip", size=SIZE, checksum=("MD5", md5),
                       policy=FAST)
        assert got.verified_by == "md5" and got.checksums["md5"] == md5 and got.size == SIZE
        assert (tmp_path / "out" / "p.zip").read_bytes() == data
        # without a checksum from the provider, the server's MD5 ETag is what is checked
        got = download(f"{r.url}/files/product.zip", tmp_path / "out" / "q.zip", policy=FAST)
        assert got.verified_by == "etag"
        # a file already in place that verifies is not fetched again
        n = len(r.log)
        download(f"{r.url}/files/product.zip", tmp_path / "out" / "p.zip", size=SIZE, checksum=("md5", md5),
                 policy=FAST)
        assert len(r.log) == n
    assert leftovers(tmp_path / "out") == ["p.zip", "q.zip"]


def test_dropped_connection_resumes_with_range(tmp_path, payload):
    srv, data = payload
    sha3 = hashlib.sha3_256(data).hexdigest()
    counted = []
    with Replay(files={"/files/": srv}) as r:
        r.drop("/files/product.zip", after=300_000)
        got = download(f"{r.url}/files/product.zip", tmp_path / "p.zip", size=SIZE, checksum=("sha3-256", sha3),
                       policy=FAST, on_bytes=counted.append)
        ranges = [x.headers.get("Range") for x in r.log]
    assert got.verified_by == "sha3-256" and (tmp_path / "p.zip").read_bytes() == data
    assert ranges[0] is None and ranges[1].startswith("bytes=") and 0 < int(ranges[1][6:-1]) <= 300_000
    # bytes are counted once each: the resumed request asks only for the rest
    assert sum(counted) == SIZE


@pytest.mark.parametrize("fault", ["always_dropped", "wrong_checksum", "short_file", "not_found", "slow",
                                   "server_error", "offline"])
def test_failures_leave_nothing(tmp_path, payload, fault):
    srv, data = payload
    md5 = hashlib.md5(data).hexdigest()
    url_path, size, checksum = "/files/product.zip", SIZE, ("md5", md5)
    with Replay(files={"/files/": srv}) as r:
        if fault == "always_dropped":
            r.drop(url_path, after=100_000, times=None)
        elif fault == "wrong_checksum":
            checksum = ("md5", "0" * 32)
        elif fault == "short_file":
            size = SIZE + 1000  # the provider announced more than the server holds
        elif fault == "not_found":
            url_path = "/files/nothing.zip"
        elif fault == "slow":
            r.delay("/files/", 0.6)
        elif fault == "server_error":
            r.inject("GET", "/files/", (503, {}, b"busy"), times=None)
        elif fault == "offline":
            r.inject("GET", "/files/", (202, {}, b""), times=None)
        error = ProductOffline if fault == "offline" else DownloadError
        with pytest.raises(error) as e:
            download(r.url + url_path, tmp_path / "out" / "p.zip", size=size, checksum=checksum,
                     policy=RetryPolicy(3, 0.01, 0.02, timeout_s=0.3))
        attempts = len(r.log)
    message = str(e.value)
    expected = {"always_dropped": "failed after 3 attempts", "wrong_checksum": "checksum mismatch",
                "short_file": "(truncated)", "not_found": "HTTP 404", "slow": "timed out",
                "server_error": "HTTP 503", "offline": "offline"}[fault]
    assert expected in message
    assert attempts == (3 if fault in ("always_dropped", "slow", "server_error") else 1)
    assert leftovers(tmp_path / "out") == []


def test_backoff_doubles_up_to_the_cap():
    p = RetryPolicy(attempts=6, backoff_s=2, backoff_max_s=10)
    assert [p.delay(i) for i in range(1, 6)] == [2, 4, 8, 10, 10]


def test_retries_wait_with_backoff(tmp_path, payload):
    srv, _ = payload
    waits = []
    with Replay(files={"/files/": srv}) as r:
        r.inject("GET", "/files/", (500, {}, b"oops"), times=2)
        download(f"{r.url}/files/product.zip", tmp_path / "p.zip", policy=RetryPolicy(4, 0.5, 0.75, 2),
                 sleep=waits.append)
    assert waits == [0.5, 0.75]


def test_copy_verified(tmp_path, payload):
    srv, data = payload
    got = copy_verified(srv / "product.zip", tmp_path / "copy" / "product.zip")
    assert got.checksums["sha256"] == hashlib.sha256(data).hexdigest() and got.verified_by == "sha256"
    assert leftovers(tmp_path / "copy") == ["product.zip"]
    with pytest.raises(DownloadError, match="cannot copy"):
        copy_verified(srv / "missing.zip", tmp_path / "copy" / "missing.zip")
    assert leftovers(tmp_path / "copy") == ["product.zip"]
