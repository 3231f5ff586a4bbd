"""Real HTTP servers on 127.0.0.1 for tests and benchmarks: an image host and a discords.com
look-alike whose emoji list is inserted by JavaScript after load, like the real site.

Nothing is mocked: clients (img2dataset, requests, Chromium) talk HTTP to these servers.
Every request is counted per path, and a latency can be injected into every response.
"""

from __future__ import annotations

import html
import io
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, urlsplit

from PIL import Image


@dataclass
class Response:
    body: bytes = b""
    status: int = 200
    content_type: str = "image/png"
    delay_s: float = 0.0  # before the headers: beyond a client's timeout it times out
    fail_first: int = 0  # answer 500 this many times, then succeed
    headers: dict[str, str] = field(default_factory=dict)
    # hostile bodies: `body` repeated without end (chunked), or sent a chunk every drip_s seconds
    endless: bool = False
    drip_s: float = 0.0
    declared_length: int | None = None  # a Content-Length other than the body's


class LocalSite:
    """`with LocalSite(routes) as site:` serves `routes` (path with query -> Response) at `site.url`.
    `host` is any loopback address (127.0.0.2 for a second, separately allowed host)."""

    def __init__(
        self,
        routes: dict[str, Response] | None = None,
        latency_s: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,  # 0: any free port
    ):
        self.routes: dict[str, Response] = dict(routes or {})
        self.latency_s = latency_s
        self.host, self.port = host, port
        self.requests: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> LocalSite:
        site = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                with site._lock:
                    site.requests[self.path] += 1
                    seen = site.requests[self.path]
                response = site.routes.get(self.path) or site.routes.get(urlsplit(self.path).path)
                time.sleep(site.latency_s + (response.delay_s if response else 0))
                if response is None:
                    self._send(404, b"not found", "text/plain", {})
                elif seen <= response.fail_first:
                    self._send(500, b"internal error", "text/plain", {})
                elif response.endless or response.drip_s:
                    self._stream(response)
                else:
                    self._send(
                        response.status,
                        response.body,
                        response.content_type,
                        response.headers,
                        response.declared_length,
                    )

            def _stream(self, response: Response) -> None:
                """Chunked: `body` forever (endless) or once, a chunk every drip_s seconds."""
                try:
                    self.send_response(response.status)
                    self.send_header("Content-Type", response.content_type)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    deadline = time.monotonic() + 60  # a server thread never outlives a test by much
                    pieces = [response.body[i : i + 16] for i in range(0, len(response.body), 16)] or [b"x"]
                    sent = 0
                    while time.monotonic() < deadline and (response.endless or sent < len(pieces)):
                        piece = response.body if response.endless else pieces[sent]
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                        sent += 1
                        time.sleep(response.drip_s)
                    self.wfile.write(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _send(
                self, status: int, body: bytes, content_type: str, headers: dict, declared: int | None = None
            ) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(body) if declared is None else declared))
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout)
                    pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 1024  # the default backlog of 5 drops bursts of connections
            daemon_threads = True

        self._server = Server((self.host, self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def count(self, path: str) -> int:
        with self._lock:
            return self.requests[path]


# -- images -----------------------------------------------------------------------------


def image_bytes(color: tuple, size: tuple[int, int] = (48, 48), fmt: str = "PNG", mode: str = "RGBA") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format=fmt)
    return buffer.getvalue()


def animated_gif(colors: list[tuple], size: tuple[int, int] = (40, 40)) -> bytes:
    frames = [Image.new("RGB", size, c) for c in colors]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def bomb_png(side: int = 12_000) -> bytes:
    """A tiny file that decodes to side x side pixels (a decompression bomb)."""
    buffer = io.BytesIO()
    Image.new("1", (side, side), 1).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def distinct_color(i: int) -> tuple[int, int, int, int]:
    return (37 * i % 256, 91 * i % 256, 173 * i % 256, 255)


# -- a discords.com look-alike -----------------------------------------------------------

# The real page ships the list in JavaScript and renders it after load with build-hash
# class names; the same structure here, so selectors tuned on one work on the other.
PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{tag} emoji - Discords</title></head>
<body><div id="__next"><nav>Discords</nav><main id="main"></main></div>
<script>
const ITEMS = {items};
function fill(row) {{
  for (const item of ITEMS) {{
    const card = document.createElement("div");
    card.className = "aLnnpRah text-center";
    const frame = document.createElement("div");
    frame.className = "Mw1EAtrx";
    const img = document.createElement("img");
    img.src = item.src; img.alt = item.title; img.loading = "lazy";
    frame.appendChild(img); card.appendChild(frame);
    const name = document.createElement("p");
    name.textContent = item.title;
    card.appendChild(name); row.appendChild(card);
  }}
}}
function render() {{
  const container = document.createElement("div");
  container.className = "FS5UE28h container";
  const row = document.createElement("div");
  row.className = "LQY5mtmC";
  container.appendChild(row);
  document.getElementById("main").appendChild(container);
  if ({items_delay_ms} > 0) setTimeout(() => fill(row), {items_delay_ms}); else fill(row);
}}
window.addEventListener("load", () => setTimeout(render, {render_delay_ms}));
</script></body></html>
"""


@dataclass
class Emoji:
    name: str  # file name on the server (never the title)
    title: str
    body: bytes | None  # None: the image URL answers 404
    content_type: str = "image/png"


def proxied(path: str) -> str:
    """How Next.js serves an image: `/_next/image?url=<encoded original>&w=128&q=75`."""
    return f"/_next/image?url={quote(path, safe='')}&w=128&q=75"


# What a bot check or an error page looks like: a page without the list.
CHALLENGE = b"""<!DOCTYPE html><html><head><title>Just a moment...</title></head>
<body><h1>Checking your browser before accessing discords.com</h1></body></html>"""


def list_page(tag: str, emojis: list[Emoji], render_delay_ms: int = 0, items_delay_ms: int = 0) -> bytes:
    """The list page; the container appears `render_delay_ms` after load and its items
    `items_delay_ms` after the container."""
    items = [{"src": proxied(f"/emojis/{e.name}"), "title": e.title} for e in emojis]
    data = json.dumps(items).replace("<", "\\u003c")  # no `</script>` from a title
    return PAGE.format(
        tag=html.escape(tag), items=data, render_delay_ms=render_delay_ms, items_delay_ms=items_delay_ms
    ).encode()


def emoji_routes(
    tag: str,
    pages: list[list[Emoji]],
    flaky_pages: dict[int, int] | None = None,
    slow_pages: dict[int, int] | None = None,
    extra_empty_pages: int = 3,
    late_items: dict[int, int] | None = None,
    challenge_pages: set[int] = frozenset(),
) -> dict[str, Response]:
    """Routes of one tag: its list pages (1-based; then empty pages), each emoji's original
    and `_next/image` URL. flaky_pages: page -> 500s before success; slow_pages: page -> ms
    before the list renders; late_items: page -> ms between the container and its items;
    challenge_pages: pages that answer a bot check without the list."""
    routes: dict[str, Response] = {}
    flaky_pages, slow_pages, late_items = flaky_pages or {}, slow_pages or {}, late_items or {}
    for number, emojis in enumerate(pages + [[]] * extra_empty_pages, start=1):
        body = (
            CHALLENGE
            if number in challenge_pages
            else list_page(tag, emojis, slow_pages.get(number, 0), late_items.get(number, 0))
        )
        routes[f"/emoji-list/tag/{tag}?page={number}"] = Response(
            body, content_type="text/html; charset=utf-8", fail_first=flaky_pages.get(number, 0)
        )
        for emoji in (e for e in emojis if e.body is not None):
            image = Response(emoji.body, content_type=emoji.content_type)
            routes[f"/emojis/{emoji.name}"] = image
            routes[proxied(f"/emojis/{emoji.name}")] = image
    return routes
