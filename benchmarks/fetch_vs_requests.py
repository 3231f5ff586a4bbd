"""Images/s fetched from a local server with injected latency: our path vs a sequential loop.

    .venv/bin/python benchmarks/fetch_vs_requests.py urls    [--images 3000] [--latency-ms 50]
    .venv/bin/python benchmarks/fetch_vs_requests.py discord [--images 3000] [--latency-ms 50]

`urls` (the LAION issue): `sdlab.data.download.download` over N image URLs (img2dataset,
processes x threads from the default params, resize, md5, shards) against the plain loop
of `requests.get` + MD5 per image.
`discord` (the Discord issue): the whole source — headless Chromium walks the emoji list
pages of a discords.com look-alike (100 emoji per page), then img2dataset downloads them —
against the same sequential loop, which is handed the URL list for free.
The server (tests/support/local_site.py) adds `--latency-ms` to every response, as a remote
host would. Both sides run in this one process tree on this machine, one after the other.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO / "tests")]  # tests/support: local servers, tiny models

import pyarrow as pa  # noqa: E402
import requests  # noqa: E402
from support.local_site import Emoji, LocalSite, Response, distinct_color, emoji_routes, image_bytes  # noqa: E402

from sdlab.config import DiscordConfig, DownloadConfig, ScrapeConfig, load_params  # noqa: E402
from sdlab.data.download import download  # noqa: E402
from sdlab.sources import discord  # noqa: E402

PER_PAGE = 100


def sequential_requests(urls: list[str]) -> tuple[float, int]:
    """The baseline: one `requests.get` after another, MD5 of each body."""
    started, ok = time.perf_counter(), 0
    for url in urls:
        response = requests.get(url, timeout=10)
        if response.status_code == 200:
            hashlib.md5(response.content).hexdigest()
            ok += 1
    return time.perf_counter() - started, ok


def ours(rows: list[dict], cfg: DownloadConfig, work: Path) -> tuple[float, int]:
    started = time.perf_counter()
    _, stats = download(pa.Table.from_pylist(rows), cfg, work / "shards", work / "cache")
    return time.perf_counter() - started, stats["ok"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["urls", "discord"])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--latency-ms", type=float, default=50)
    args = parser.parse_args()
    cfg = load_params(REPO / "params.yaml").download
    work = Path(tempfile.mkdtemp(prefix="sdlab-fetch-bench-"))
    emojis = [
        Emoji(f"e{i}.png", f"emoji {i}", image_bytes(distinct_color(i), size=(64, 64))) for i in range(args.images)
    ]
    pages = [emojis[i : i + PER_PAGE] for i in range(0, len(emojis), PER_PAGE)]
    routes: dict[str, Response] = emoji_routes("Bench", pages)
    try:
        with LocalSite(routes, latency_s=args.latency_ms / 1000) as site:
            urls = [f"{site.url}/emojis/{e.name}" for e in emojis]
            scrape_s = 0.0
            if args.mode == "discord":
                config = ScrapeConfig(
                    source="discord",
                    discord=DiscordConfig(
                        base_url=site.url,
                        tags=["Bench"],
                        page_delay_s=0,
                        max_pages=10_000,
                        browser_args=["--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"],
                    ),
                )
                started = time.perf_counter()
                [rows] = discord.scrape(config, work / "raw", work / "state", {})
                scrape_s = time.perf_counter() - started
                assert [r["url"] for r in rows] == urls, "the scrape did not find every emoji"
            else:
                rows = [
                    {"key": f"k{i:07d}", "source": "bench", "url": u, "path": "", "title": "", "caption": ""}
                    for i, u in enumerate(urls)
                ]
            fetch_s, fetched = ours(rows, cfg, work)
            baseline_s, baseline_ok = sequential_requests(urls)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert fetched == baseline_ok == args.images, (fetched, baseline_ok)
    total = scrape_s + fetch_s
    print(
        f"{args.mode}: {args.images} images, {args.latency_ms:g} ms latency per request, "
        f"download.processes={cfg.processes} threads={cfg.threads}"
    )
    if scrape_s:
        print(f"  scrape (Chromium, {len(pages) + 1} pages): {scrape_s:.1f} s")
    print(f"  ours: {total:.1f} s = {args.images / total:.1f} images/s (img2dataset {fetch_s:.1f} s)")
    print(f"  sequential requests.get + md5: {baseline_s:.1f} s = {args.images / baseline_s:.1f} images/s")
    print(f"  ratio: {baseline_s / total:.1f}x")


if __name__ == "__main__":  # img2dataset spawns workers that re-import this module
    main()
