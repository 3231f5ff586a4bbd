"""A process-wide guard: no socket leaves 127.0.0.0/8 or ::1, whatever the code under test does.

Installed in the pytest process by conftest and in every Python subprocess the tests start
(stage runs, img2dataset's spawned workers, DVC) through `sitecustomize.py` in this folder,
which conftest puts on PYTHONPATH. It wraps the `socket` module's resolve and connect calls:

- a name resolves only if it is numeric, `localhost`, or in `FAKE_HOSTS` (answered here, no
  DNS query is sent); any other name is refused and recorded;
- a connect (or sendto) to an address outside loopback is refused and recorded.

A regression in the pipeline's address checks therefore shows up as a recorded attempt in
`$SDLAB_NETGUARD_LOG` (one JSON line per attempt, every process), never as traffic.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import socket

# Names the tests use, with the address each answers (lists answer several; a tuple of
# lists answers them in turn, once each, then the last: a name that rebinds).
FAKE_HOSTS: dict[str, object] = {
    "localhost": ["127.0.0.1"],
    "loopback.test": ["127.0.0.1"],
    "first-hop.test": ["127.0.0.2"],
    "private.test": ["10.20.30.40"],
    "metadata.test": ["169.254.169.254"],
    "cgnat.test": ["100.64.0.7"],
    "mapped.test": ["::ffff:127.0.0.1"],
    "public.test": ["93.184.216.34"],
    "mixed.test": ["93.184.216.34", "10.0.0.1"],
    "rebind.test": (["93.184.216.34"], ["127.0.0.1"]),
}
_real_getaddrinfo = socket.getaddrinfo
_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_sendto = socket.socket.sendto
_answers: dict[str, int] = {}


def record(what: str, target: str) -> None:
    path = os.environ.get("SDLAB_NETGUARD_LOG")
    if path:
        with open(path, "a") as log:
            log.write(json.dumps({"pid": os.getpid(), "what": what, "target": target}) + "\n")


def attempts() -> list[dict]:
    path = os.environ.get("SDLAB_NETGUARD_LOG")
    if not path or not os.path.exists(path):
        return []
    with open(path) as log:
        return [json.loads(line) for line in log if line.strip()]


def _fake_answer(host: str) -> list[str] | None:
    answer = FAKE_HOSTS.get(host.lower().rstrip("."))
    if isinstance(answer, tuple):
        turn = _answers.get(host, 0)
        _answers[host] = turn + 1
        return answer[min(turn, len(answer) - 1)]
    return answer


def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):  # noqa: A002 (socket's names)
    if host is None:
        return _real_getaddrinfo(host, port, family, type, proto, flags)
    name = host.decode() if isinstance(host, bytes) else str(host)
    try:
        return _real_getaddrinfo(name, port, family, type, proto, flags | socket.AI_NUMERICHOST)
    except socket.gaierror:
        pass
    answer = _fake_answer(name)
    if answer is None:
        record("resolve", name)
        raise socket.gaierror(socket.EAI_NONAME, f"loopback guard: {name!r} is not resolved in tests")
    results = []
    for address in answer:
        results += _real_getaddrinfo(address, port, family, type, proto, flags | socket.AI_NUMERICHOST)
    return results


def gethostbyname(name):
    return getaddrinfo(name, None, socket.AF_INET)[0][4][0]


def _is_loopback_ip(text: str) -> bool:
    ip = ipaddress.ip_address(text.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _is_loopback(address) -> bool:
    """A connect target (IP or name: socket.connect resolves names itself) that is loopback;
    a name goes through the guarded resolver above (unknown names are refused there)."""
    host = str(address[0])
    try:
        return _is_loopback_ip(host)
    except ValueError:
        pass
    try:
        answers = getaddrinfo(host, address[1], type=socket.SOCK_STREAM)
    except socket.gaierror:
        return False
    return all(_is_loopback_ip(sockaddr[0]) for *_, sockaddr in answers)


def _check(sock, address) -> bool:
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or _is_loopback(address):
        return True
    record("connect", f"{address[0]}:{address[1]}")
    return False


def connect(self, address):
    if not _check(self, address):
        raise ConnectionRefusedError(errno.ECONNREFUSED, f"loopback guard: connect to {address[0]} refused")
    return _real_connect(self, address)


def connect_ex(self, address):
    if not _check(self, address):
        return errno.ECONNREFUSED
    return _real_connect_ex(self, address)


def sendto(self, data, *args):
    address = args[-1]
    if not _check(self, address):
        raise ConnectionRefusedError(errno.ECONNREFUSED, f"loopback guard: sendto {address[0]} refused")
    return _real_sendto(self, data, *args)


def install() -> None:
    socket.getaddrinfo = getaddrinfo
    socket.gethostbyname = gethostbyname
    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex
    socket.socket.sendto = sendto
