"""A forward proxy on 127.0.0.1 that lets the scraping browser reach public addresses only.

Chromium resolves names and follows redirects itself, and a page's scripts can ask for any
URL, so checking the start URL is not enough. The browser is started with
`--proxy-server` pointing here and `--proxy-bypass-list=<-loopback>` (loopback goes through
the proxy too), so every request it makes (documents, redirects, scripts, XHR) is one the
proxy resolves, checks with `public_http.resolve` and connects to at the checked address.
Plain http is forwarded request by request; https is a CONNECT tunnel to the checked address
(TLS stays end to end between the browser and the site). A refused request gets 403 and is
kept in `refused` (the page walk fails on a refused document and counts the rest).
"""

from __future__ import annotations

import select
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from sdlab.public_http import FetchPolicy, FetchRefused, connect_checked, resolve

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}


class GuardProxy:
    """`with GuardProxy(policy) as proxy:` serves at `proxy.address` ("127.0.0.1:port")."""

    def __init__(self, policy: FetchPolicy, refused: list[str] | None = None):
        self.policy = policy
        self.refused: list[str] = [] if refused is None else refused  # "<host>: <why>" of every refused request
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def address(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{host}:{port}"

    def browser_flags(self) -> list[str]:
        return [f"--proxy-server=http://{self.address}", "--proxy-bypass-list=<-loopback>"]

    def check(self, host: str, port: int) -> list[tuple] | None:
        try:
            return resolve(host, port, self.policy.allow_private_networks, self.policy.allowed_networks)
        except (FetchRefused, ConnectionError) as exc:
            with self._lock:
                self.refused.append(f"{host}: {exc}")
            return None

    def __enter__(self) -> GuardProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_CONNECT(self) -> None:  # noqa: N802
                host, _, port = self.path.rpartition(":")
                addresses = proxy.check(host.strip("[]"), int(port or 443))
                if addresses is None:
                    return self._refuse()
                try:
                    upstream = connect_checked(addresses, proxy.policy.timeout_s)
                except OSError:
                    return self.send_error(502)
                self.send_response(200, "Connection established")
                self.end_headers()
                self._tunnel(upstream)

            def _tunnel(self, upstream: socket.socket) -> None:
                sockets = [self.connection, upstream]
                try:
                    while True:
                        ready, _, broken = select.select(sockets, [], sockets, proxy.policy.deadline_s)
                        if broken or not ready:
                            return
                        for sock in ready:
                            data = sock.recv(65536)
                            if not data:
                                return
                            (upstream if sock is self.connection else self.connection).sendall(data)
                except OSError:
                    return
                finally:
                    upstream.close()
                    self.close_connection = True

            def _forward(self) -> None:
                parts = urlsplit(self.path)
                if parts.scheme != "http" or not parts.hostname:
                    return self.send_error(400, "absolute http URL expected")
                port = parts.port or 80
                addresses = proxy.check(parts.hostname, port)
                if addresses is None:
                    return self._refuse()
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
                try:
                    upstream = connect_checked(addresses, proxy.policy.timeout_s)
                except OSError:
                    return self.send_error(502)
                try:
                    headers = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP)
                    upstream.sendall(
                        f"{self.command} {target} HTTP/1.1\r\n{headers}Connection: close\r\n\r\n".encode("latin-1")
                        + body
                    )
                    self.close_connection = True
                    while True:  # relay the answer as it comes; the browser parses it
                        data = upstream.recv(65536)
                        if not data:
                            return
                        self.wfile.write(data)
                except OSError:
                    return
                finally:
                    upstream.close()

            do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = do_OPTIONS = do_PATCH = _forward  # noqa: N815

            def _refuse(self) -> None:
                try:
                    self.send_error(403, "blocked_address")
                except OSError:  # the browser gave up on it already
                    pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

        self._server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
