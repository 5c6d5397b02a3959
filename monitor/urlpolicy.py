"""Which URLs the monitor may connect to on a user's behalf (no server-side request forgery).

An area's imagery source and a webhook subscription's URL come from users of the API and the CLI.
They are checked when registered (``check_url``, ``check_source``) and again when connected to
(``GuardedAdapter``, mounted on the requests sessions that use them): the address a socket actually
connected to must be public, so a name that resolves to a public address at registration and to a
private one later (DNS rebinding) is refused as well. Refused: schemes other than http and https
(a ``file:`` URL only as the ``local`` provider's folder), and loopback, link-local, private,
unspecified, multicast and reserved addresses, unless the operator allows private addresses
(``MONITOR_ALLOW_PRIVATE_URLS``) for on-premises servers. The URLs the operator configures
(``MONITOR_STAC_URL``, ``MONITOR_DHUS_URL``) are trusted, and the DHuS credentials are only sent
to the configured server (``same_origin``).
"""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from urllib.parse import urlsplit

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from monitor.errors import BadInput, MonitorError

ALLOW_SETTING = "MONITOR_ALLOW_PRIVATE_URLS"
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class UnsafeURL(MonitorError):
    """A connection to a private or local address was refused (checked at connect time)."""

    exit_code = 2
    http_status = 422
    reason = "unsafe_url"


def is_public(address: str | Address) -> bool:
    """Whether an IP address is a public unicast one (an IPv4-mapped IPv6 address as its IPv4 one)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0] if isinstance(address, str) else address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def resolve(host: str) -> list[str]:
    """The addresses ``host`` resolves to (an IP literal is its own address); [] when it does not resolve."""
    try:
        return sorted({str(info[4][0]) for info in socket.getaddrinfo(host, None)})
    except (OSError, UnicodeError):
        return []


def _refusal(url: str, address: str) -> str:
    return (f"{_without_userinfo(url)} points to {address}, a private or local address; set "
            f"{ALLOW_SETTING}=true to allow on-premises servers")


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=host).geturl()


def check_url(url: str, *, allow_private: bool, field: str = "url") -> str:
    """An http(s) URL whose host is public (every address it resolves to); ``BadInput`` naming
    ``field`` otherwise. A name that does not resolve now passes: it is checked again at connect time."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as e:
        raise BadInput(f"{_without_userinfo(url)!r} is not a valid URL: {e}", field=field) from None
    if parts.scheme not in ("http", "https") or not host:
        raise BadInput(f"{_without_userinfo(url)!r} is not an http(s) URL", field=field)
    if not allow_private:
        for address in resolve(host):
            if not is_public(address):
                raise BadInput(_refusal(url, address), field=field)
    return url


def check_source(provider: str, value: str, *, allow_private: bool) -> str:
    """An area's source for ``provider``: the ``local`` provider's folder (a path or a ``file:`` URL,
    returned as a path; not a file), any other provider's http(s) URL (``check_url``)."""
    value = value.strip()
    if provider == "local":
        scheme = urlsplit(value).scheme if "://" in value else ""
        if scheme and scheme != "file":
            raise BadInput(f"{_without_userinfo(value)!r}: the local provider takes a folder, not a {scheme} URL",
                           field="source")
        folder = urlsplit(value).path if scheme else value
        if not folder or "\x00" in folder:
            raise BadInput(f"{value!r} is not a folder", field="source")
        if Path(folder).expanduser().exists() and not Path(folder).expanduser().is_dir():
            raise BadInput(f"{folder} is a file, not a folder", field="source")
        return folder
    return check_url(value, allow_private=allow_private, field="source")


def same_origin(a: str, b: str) -> bool:
    """Whether two URLs name the same scheme, host and port (where credentials may be sent)."""
    pa, pb = urlsplit(a), urlsplit(b)
    default = {"http": 80, "https": 443}
    try:
        return (pa.scheme, (pa.hostname or "").lower(), pa.port or default.get(pa.scheme)) == \
               (pb.scheme, (pb.hostname or "").lower(), pb.port or default.get(pb.scheme))
    except ValueError:
        return False


# --- connect time

def _check_peer(sock: socket.socket, host: str) -> None:
    address = sock.getpeername()[0]
    if not is_public(address):
        sock.close()
        raise UnsafeURL(f"refused to connect to {host} ({address}), a private or local address; set "
                        f"{ALLOW_SETTING}=true to allow on-premises servers", host=host, address=address)


class _GuardedHTTPConnection(HTTPConnection):
    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _check_peer(sock, self.host)
        return sock


class _GuardedHTTPSConnection(HTTPSConnection):
    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _check_peer(sock, self.host)
        return sock


class _GuardedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


class GuardedAdapter(HTTPAdapter):
    """A requests transport adapter that refuses (``UnsafeURL``) a connection whose peer address is
    not public, redirects included; with ``guard=False`` a plain adapter."""

    def __init__(self, *args, guard: bool = True, **kwargs) -> None:
        self.guard = guard
        super().__init__(*args, **kwargs)

    def init_poolmanager(self, *args, **kwargs) -> None:
        """The pool manager, its pools making guarded connections."""
        super().init_poolmanager(*args, **kwargs)
        if self.guard:
            self.poolmanager.pool_classes_by_scheme = {"http": _GuardedHTTPPool, "https": _GuardedHTTPSPool}

    def __setstate__(self, state) -> None:
        self.guard = state.pop("guard", True)
        super().__setstate__(state)


def guard_session(session, *, guard: bool = True):
    """Mount ``GuardedAdapter`` on a requests session for http and https, keeping the retries of the
    adapters it replaces (``guard=False``: the session unchanged)."""
    if guard:
        for prefix in ("http://", "https://"):
            session.mount(prefix, GuardedAdapter(max_retries=session.get_adapter(prefix).max_retries))
    return session
