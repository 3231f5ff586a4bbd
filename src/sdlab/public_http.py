"""HTTP(S) fetches that reach public addresses only, with bounded size and time.

Every URL the pipeline fetches comes from scraped pages or third-party metadata, so a row
can name `http://169.254.169.254/latest/meta-data/`, `http://0x7f000001:6379/` or a name
that resolves into the private network. `fetch` resolves the host once, refuses loopback,
private, link-local, CGNAT, multicast, reserved and unspecified addresses (IPv4, IPv6 and
IPv4 embedded in IPv6; decimal/hex/octal spellings resolve to the same address first),
connects to the address it checked (no second lookup, so no DNS-rebinding window), follows
at most `max_redirects` redirects checking each hop again, and reads the body in chunks up
to `max_bytes` within a total `deadline_s`. A refusal raises `FetchRefused` with a short,
countable `reason`: blocked_address, unsupported_scheme, too_many_redirects, too_large,
timeout, bad_url.

`allow_private_networks` turns the address check off; `allowed_networks` lets named ranges
through while refusing the rest (an intranet mirror at 10.2.0.0/16; tests' first-hop server
on 127.0.0.2/32). The size, time and redirect limits hold either way.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
from dataclasses import dataclass, field
from email.message import Message
from urllib.parse import urljoin, urlsplit

SCHEMES = ("http", "https")
REDIRECTS = (301, 302, 303, 307, 308)
CGNAT = ipaddress.ip_network("100.64.0.0/10")
NAT64 = ipaddress.ip_network("64:ff9b::/96")
CHUNK = 64 * 1024
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) sdlab (+https://github.com/sdlab)"


class FetchRefused(Exception):
    """The fetch was refused or cut off; `reason` is the short name counted per row."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class FetchPolicy:
    allow_private_networks: bool = False
    allowed_networks: tuple[Network, ...] = ()  # non-public ranges let through anyway
    max_bytes: int = 20_000_000
    timeout_s: float = 10.0  # connect, and each read
    deadline_s: float = 30.0  # the whole fetch, redirects included
    max_redirects: int = 5
    user_agent: str = USER_AGENT


@dataclass
class Response:
    url: str  # after redirects
    status: int
    reason: str
    headers: Message
    body: bytes
    redirects: list[str] = field(default_factory=list)


def address_refusal(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why `ip` is not a public address (None when it is)."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = [
            ip.ipv4_mapped,
            ip.sixtofour,
            ip.teredo[1] if ip.teredo else None,
            ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in NAT64 else None,
        ]
        for inner in filter(None, embedded):
            why = address_refusal(inner)
            if why:
                return f"{why} (IPv4 {inner} inside {ip})"
        if ip.is_site_local:
            return "site-local"
    checks = (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
        ("shared/CGNAT", isinstance(ip, ipaddress.IPv4Address) and ip in CGNAT),
    )
    for name, hit in checks:
        if hit:
            return name
    return None if ip.is_global else "not globally routable"


def network_policy(setting: bool | list[str]) -> tuple[bool, tuple[Network, ...]]:
    """(allow all, allowed ranges) of an `allow_private_networks` setting: a bool or CIDRs."""
    if isinstance(setting, bool):
        return setting, ()
    return False, tuple(ipaddress.ip_network(cidr, strict=False) for cidr in setting)


def resolve(host: str, port: int, allow_private: bool, allowed: tuple[Network, ...] = ()) -> list[tuple]:
    """(family, sockaddr) of `host`, every one checked; refuses the host if any address is
    not public (a name that answers with one public and one private address is refused)
    unless it lies in `allowed`."""
    name = host[:-1] if host.endswith(".") else host  # `localhost.` is `localhost`, fully qualified
    try:
        infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ConnectionError(f"cannot resolve {host!r}: {exc}") from None
    addresses = []
    for family, _, _, _, sockaddr in infos:
        if not allow_private:
            ip = ipaddress.ip_address(sockaddr[0].split("%")[0])
            why = address_refusal(ip)
            if why and not any(ip.version == net.version and ip in net for net in allowed):
                raise FetchRefused("blocked_address", f"{host} resolves to {ip} ({why})")
        addresses.append((family, sockaddr))
    if not addresses:
        raise ConnectionError(f"cannot resolve {host!r}: no address")
    return addresses


def connect_checked(addresses: list[tuple], timeout: float) -> socket.socket:
    error: OSError | None = None
    for family, sockaddr in addresses:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error or OSError("no address to connect to")


class _PinnedHTTP(http.client.HTTPConnection):
    """An HTTP connection to an address checked beforehand; Host stays the URL's name."""

    def __init__(self, host: str, port: int, addresses: list[tuple], timeout: float):
        super().__init__(host, port, timeout=timeout)
        self.addresses = addresses

    def connect(self) -> None:
        self.sock = connect_checked(self.addresses, self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, addresses: list[tuple], timeout: float):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self.addresses = addresses

    def connect(self) -> None:
        self.sock = self._context.wrap_socket(connect_checked(self.addresses, self.timeout), server_hostname=self.host)


def split_url(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path+query) of an http(s) URL, or FetchRefused."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise FetchRefused("bad_url", f"{url!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise FetchRefused("unsupported_scheme", f"{url!r}: only http and https are fetched")
    if not parts.hostname:
        raise FetchRefused("bad_url", f"{url!r}: no host")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return scheme, parts.hostname, port or (443 if scheme == "https" else 80), target


def check_url(url: str, policy: FetchPolicy) -> list[tuple]:
    """The checked addresses of `url`'s host (FetchRefused when it may not be fetched)."""
    _, host, port, _ = split_url(url)
    return resolve(host, port, policy.allow_private_networks, policy.allowed_networks)


def _read_body(
    response: http.client.HTTPResponse, sock: socket.socket | None, policy: FetchPolicy, deadline: float, url: str
) -> bytes:
    length = response.getheader("Content-Length")
    if length and length.strip().isdigit() and int(length) > policy.max_bytes:
        raise FetchRefused("too_large", f"{url}: Content-Length {int(length)} > max_bytes {policy.max_bytes}")
    chunks, size = [], 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise FetchRefused("timeout", f"{url}: body not complete within {policy.deadline_s} s")
        if sock is not None:
            sock.settimeout(min(policy.timeout_s, left))
        try:
            # read1: what one receive gives (at most one chunk of a chunked body), so the deadline
            # is checked between receives; read(CHUNK) would wait for CHUNK bytes, and a body
            # dripped a few bytes at a time would hold the fetch far past deadline_s
            chunk = response.read1(CHUNK)
        except TimeoutError:
            raise FetchRefused("timeout", f"{url}: read timed out") from None
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > policy.max_bytes:
            raise FetchRefused("too_large", f"{url}: body over max_bytes {policy.max_bytes}")
        chunks.append(chunk)


def fetch(url: str, policy: FetchPolicy, headers: dict[str, str] | None = None) -> Response:
    """GET `url` under `policy`. Returns the final response whatever its status (the caller
    decides what a 404 means); raises FetchRefused, or OSError for network failures."""
    deadline = time.monotonic() + policy.deadline_s
    redirects: list[str] = []
    while True:
        scheme, host, port, target = split_url(url)
        addresses = resolve(host, port, policy.allow_private_networks, policy.allowed_networks)
        timeout = min(policy.timeout_s, max(deadline - time.monotonic(), 0.001))
        kind = _PinnedHTTPS if scheme == "https" else _PinnedHTTP
        connection = kind(host, port, addresses, timeout)
        try:
            try:
                connection.request("GET", target, headers={"User-Agent": policy.user_agent, **(headers or {})})
                response = connection.getresponse()
            except TimeoutError:
                raise FetchRefused("timeout", f"{url}: no response within {timeout:.1f} s") from None
            location = response.getheader("Location")
            if response.status in REDIRECTS and location:
                if len(redirects) >= policy.max_redirects:
                    raise FetchRefused("too_many_redirects", f"{url}: more than {policy.max_redirects} redirects")
                redirects.append(url)
                url = urljoin(url, location)
                continue
            body = _read_body(response, connection.sock, policy, deadline, url)
            return Response(url, response.status, response.reason, response.headers, body, redirects)
        finally:
            connection.close()
