"""The Discord emoji source: real selenium + headless Chromium against a discords.com look-alike
served on 127.0.0.1 (list rendered by JavaScript after load), then real img2dataset."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import dvc, dvc_env, profile, project_copy
from support.local_site import Emoji, LocalSite, animated_gif, emoji_routes, image_bytes

from sdlab.config import DiscordConfig, DiscordSelectors, ScrapeConfig, parse_params
from sdlab.data.records import DataError
from sdlab.sources import discord
from sdlab.sources.discord import image_urls, parse_items

LOOPBACK_ONLY = "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"
LONG_TITLE = "🫠 blob " + "ü" * 292  # 300 characters
GOOD = {  # file name -> title, for the emoji that download ok
    "happy.png": "Blob Happy",
    "clear.webp": "blob clear",
    "passwd.png": "../../etc/passwd",
    "long.png": LONG_TITLE,
    "anim.gif": "blob anim",
    "wave.png": "blob wave",
}


def blob_pages() -> list[list[Emoji]]:
    happy = Emoji("happy.png", "Blob Happy", image_bytes((255, 200, 0, 255)))
    return [
        [
            happy,
            Emoji("clear.webp", "blob clear", image_bytes((0, 0, 255, 0), fmt="WEBP"), "image/webp"),
            Emoji("passwd.png", "../../etc/passwd", image_bytes((0, 200, 0, 255))),
            Emoji("long.png", LONG_TITLE, image_bytes((200, 0, 200, 255))),
        ],
        [
            happy,  # listed again on page 2
            Emoji("broken.png", "blob broken", None),  # its image URL answers 404
            Emoji("notimage.png", "blob html", b"<html>nope</html>", "text/html"),
        ],
        [
            Emoji("anim.gif", "blob anim", animated_gif([(255, 0, 0), (0, 0, 255)]), "image/gif"),
            Emoji("wave.png", "blob wave", image_bytes((0, 120, 255, 255))),
        ],
    ]


def blob_site(latency_s: float = 0.0) -> LocalSite:
    """3 pages (page 2 answers 500 once, page 3 renders its list 1.5 s after load), then empty pages."""
    return LocalSite(emoji_routes("Blobs", blob_pages(), flaky_pages={2: 1}, slow_pages={3: 1500}), latency_s=latency_s)


def discord_config(base_url: str, **overrides) -> ScrapeConfig:
    settings = dict(
        base_url=base_url,
        page_delay_s=0,
        page_timeout_s=6,
        backoff_s=0.2,
        browser_args=[LOOPBACK_ONLY],
        allow_private_networks=True,
    )
    return ScrapeConfig(source="discord", discord=DiscordConfig(**{**settings, **overrides}))


def test_next_image_urls_give_the_original_and_keep_the_proxy():
    page = "https://discords.com/emoji-list/tag/Blobs?page=2"
    assert image_urls(
        "/_next/image?url=https%3A%2F%2Fcdn.discordapp.com%2Femojis%2F1.png%3Fv%3D1&w=128&q=75", page
    ) == (
        "https://cdn.discordapp.com/emojis/1.png?v=1",
        "https://discords.com/_next/image?url=https%3A%2F%2Fcdn.discordapp.com%2Femojis%2F1.png%3Fv%3D1&w=128&q=75",
    )
    assert image_urls("/_next/image?url=%2Femojis%2Fa.png&w=64", page)[0] == "https://discords.com/emojis/a.png"
    assert image_urls("https://x.org/a.png", page) == ("https://x.org/a.png", "")


def test_static_html_is_parsed_with_the_selectors():
    html = """<div class="FS5UE28h container"><div class="LQY5mtmC">
      <div class="aLnnpRah text-center"><div class="Mw1EAtrx"><img src="/e/1.png" alt="one"></div><p>One\n</p></div>
      <div class="aLnnpRah text-center"><img srcset="/e/2.png 1x, /e/2@2x.png 2x" alt="two"></div>
      <div class="aLnnpRah text-center"><p>no image</p></div></div></div>"""
    items = parse_items(html, DiscordSelectors(), "https://d.com/emoji-list/tag/X?page=1")
    assert items == [
        {"title": "One", "url": "https://d.com/e/1.png", "proxy_url": ""},
        {"title": "two", "url": "https://d.com/e/2.png", "proxy_url": ""},
    ]
    assert parse_items("<html><body>redeployed</body></html>", DiscordSelectors(), "https://d.com/") is None


def test_browser_scrapes_every_page_rendered_by_javascript(tmp_path):
    stats: dict = {}
    with blob_site() as site:
        [records] = discord.scrape(discord_config(site.url), tmp_path / "raw", tmp_path / "state", stats)
        requests = dict(site.requests)
    titles = [r["title"] for r in records]
    assert titles == [
        "Blob Happy",
        "blob clear",
        "../../etc/passwd",
        LONG_TITLE,
        "blob broken",
        "blob html",
        "blob anim",
        "blob wave",
    ]  # stored verbatim, each once
    assert [r["page"] for r in records] == [1, 1, 1, 1, 2, 2, 3, 3]
    assert all(re.fullmatch(r"discord-[0-9a-f]{16}", r["key"]) for r in records)
    assert records[0]["url"] == f"{site.url}/emojis/happy.png"
    assert records[0]["proxy_url"] == f"{site.url}/_next/image?url=%2Femojis%2Fhappy.png&w=128&q=75"
    assert {k: stats[k] for k in ("pages_fetched", "pages_resumed", "duplicates_across_pages")} == {
        "pages_fetched": 4,
        "pages_resumed": 0,
        "duplicates_across_pages": 1,
    }
    assert requests["/emoji-list/tag/Blobs?page=2"] == 2  # the 500, then the retry
    assert requests["/emoji-list/tag/Blobs?page=4"] == 1  # the empty page ends the walk
    assert "/emoji-list/tag/Blobs?page=5" not in requests
    assert not (tmp_path / "state").exists() or not any((tmp_path / "state").iterdir())  # cleared when done


def test_http_driver_sees_no_items_on_a_javascript_page_and_says_why(tmp_path):
    with blob_site() as site:
        with pytest.raises(DataError, match=r"first page is empty.*selectors.*driver: selenium"):
            discord.scrape(discord_config(site.url, driver="http"), tmp_path, tmp_path / "state", {})


def test_static_pages_work_with_the_http_driver(tmp_path):
    # a page whose HTML already holds the list: what the browser would render, served as is
    html = """<div class="FS5UE28h container"><div class="LQY5mtmC"><div class="aLnnpRah text-center">
      <div class="Mw1EAtrx"><img src="/_next/image?url=%2Femojis%2Fa.png&amp;w=128&amp;q=75"></div>
      <p>a</p></div></div></div>"""
    from support.local_site import Response

    empty = '<div class="FS5UE28h container"><div class="LQY5mtmC"></div></div>'  # a present list, no items
    routes = {
        "/emoji-list/tag/Blobs?page=1": Response(html.encode(), content_type="text/html"),
        "/emoji-list/tag/Blobs?page=2": Response(empty.encode(), content_type="text/html"),
    }
    with LocalSite(routes) as site:
        [records] = discord.scrape(discord_config(site.url, driver="http"), tmp_path, tmp_path / "state", {})
    assert [(r["title"], r["url"]) for r in records] == [("a", f"{site.url}/emojis/a.png")]


def test_items_a_script_adds_after_the_container_are_read_whole(tmp_path):
    """The container appears at load, its items 400 ms later (page 1) and 800 ms later (page 3),
    both within the default settle_s of 1 s."""
    routes = emoji_routes("Blobs", blob_pages(), late_items={1: 400, 3: 800})
    with LocalSite(routes) as site:
        [records] = discord.scrape(discord_config(site.url), tmp_path / "raw", tmp_path / "state", {})
    assert [r["page"] for r in records] == [1, 1, 1, 1, 2, 2, 3, 3]


def test_a_page_after_the_first_without_its_list_fails_the_scrape_naming_page_and_selector(tmp_path):
    routes = emoji_routes("Blobs", blob_pages(), challenge_pages={2})
    with LocalSite(routes) as site:
        with pytest.raises(DataError) as error:
            discord.scrape(
                discord_config(site.url, retries=2, page_timeout_s=2), tmp_path / "raw", tmp_path / "state", {}
            )
        requests = dict(site.requests)
    message = str(error.value)
    assert "page 2 of tag 'Blobs' has no list" in message and "FS5UE28h" in message and "\n" not in message
    assert requests["/emoji-list/tag/Blobs?page=2"] == 3  # tried, then retried twice
    assert "/emoji-list/tag/Blobs?page=3" not in requests  # never taken as the end of the list
    assert len(list((tmp_path / "state").rglob("*.json"))) == 1  # page 1 kept for the rerun


def test_a_named_empty_state_ends_a_tag_without_waiting_to_settle(tmp_path):
    empty = '<div class="FS5UE28h container"><div class="LQY5mtmC"></div><p class="no-results">No emoji found</p></div>'
    from support.local_site import Response

    routes = emoji_routes("Blobs", blob_pages()[:1], extra_empty_pages=0)
    routes["/emoji-list/tag/Blobs?page=2"] = Response(empty.encode(), content_type="text/html")
    selectors = DiscordSelectors(empty="p.no-results")
    with LocalSite(routes) as site:
        started = time.perf_counter()
        [records] = discord.scrape(
            discord_config(site.url, selectors=selectors, settle_s=5), tmp_path / "raw", tmp_path / "state", {}
        )
    assert len(records) == 4 and time.perf_counter() - started < 9  # page 1 settles 5 s; page 2 does not wait


def test_stale_selectors_fail_loudly_instead_of_returning_nothing(tmp_path):
    stale = DiscordSelectors(container="div.OLDHASH.container")
    with blob_site() as site:
        with pytest.raises(DataError, match=r"OLDHASH.*class names probably changed"):
            discord.scrape(
                discord_config(site.url, selectors=stale, page_timeout_s=2), tmp_path, tmp_path / "state", {}
            )


def test_a_missing_browser_is_an_error_that_says_how_to_install_it(tmp_path):
    with pytest.raises(DataError, match=r"/nowhere/chromedriver not found.*apt-get install chromium chromium-driver"):
        discord.scrape(
            discord_config("http://127.0.0.1:9", chromedriver="/nowhere/chromedriver"), tmp_path, tmp_path / "state", {}
        )


def test_a_crashed_browser_is_restarted(tmp_path):
    from sdlab.sources.pages import BrowserPages, PageError

    with blob_site() as site:
        pages = BrowserPages(discord_config(site.url).discord)
        try:
            url = f"{site.url}/emoji-list/tag/Blobs?page=1"
            assert "aLnnpRah" in pages.html(url)
            os.kill(pages.driver.service.process.pid, signal.SIGKILL)  # chromedriver dies under us
            with pytest.raises(PageError, match="browser failed"):
                pages.html(url)
            assert "aLnnpRah" in pages.html(url)  # a fresh browser
        finally:
            pages.close()


def discord_params(base_url: str, page_delay_s: float = 0.0) -> str:
    params = profile("tiny")
    params["scrape"] = {
        "source": "discord",
        "discord": {
            "base_url": base_url,
            "tags": ["Blobs"],
            "page_delay_s": page_delay_s,
            "page_timeout_s": 6,
            "backoff_s": 0.2,
            "browser_args": [LOOPBACK_ONLY],
            "allow_private_networks": True,
        },
    }
    params["download"].update(
        {"image_px": 16, "processes": 1, "threads": 8, "timeout_s": 5, "retries": 0, "allow_private_networks": True}
    )
    params["caption"]["backend"] = "template"
    params["evaluate"]["judge"] = None  # discord images carry no blob attributes
    return yaml.safe_dump(params, allow_unicode=True)


@pytest.mark.e2e
def test_killed_scrape_resumes_and_repro_downloads_exactly_the_expected_images(tmp_path):
    with blob_site() as site:
        work = project_copy(tmp_path / "sdlab", discord_params(site.url, page_delay_s=1.5))
        proc = subprocess.Popen(
            [sys.executable, "-m", "dvc", "repro", "download"],
            cwd=work,
            env=dvc_env(work),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.time() + 120
        while len(list((work / "data" / "scrape_state").rglob("*.json"))) < 2:
            assert proc.poll() is None and time.time() < deadline, "scrape ended before it could be killed"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert not (work / "data" / "raw" / "records.parquet").exists()
        (work / ".dvc" / "tmp" / "rwlock").unlink(missing_ok=True)  # a killed dvc leaves its lock behind
        before = dict(site.requests)

        dvc(work, "repro", "download")
        after = dict(site.requests)
    pages = [f"/emoji-list/tag/Blobs?page={n}" for n in range(1, 5)]
    # pages finished before the kill are not fetched again
    assert after[pages[0]] == before[pages[0]] == 1
    assert after[pages[1]] == before[pages[1]] == 2  # a 500 then the page
    assert after[pages[3]] == 1
    stats = load_stats(work, "scrape")
    assert stats["records"] == 8 and stats["pages_resumed"] == 2 and stats["pages_fetched"] == 2

    index = pq.read_table(work / "data" / "images" / "index.parquet").to_pylist()
    ok = {r["url"].rsplit("/", 1)[1]: r["title"] for r in index if r["status"] == "ok"}
    assert ok == GOOD
    failed = {r["url"].rsplit("/", 1)[1]: r["reason"] for r in index if r["status"] == "failed"}
    assert failed == {"broken.png": "http_404", "notimage.png": "decode_error"}
    assert all(len(r["md5"]) == 32 for r in index if r["status"] == "ok")
    assert len({r["shard"] for r in index if r["status"] == "ok"}) >= 1


def load_stats(work: Path, stage: str) -> dict:
    return json.loads((work / "reports" / stage / "stats.json").read_text())


def test_the_discord_profile_validates():
    params = parse_params(profile("discord-blobs"))
    assert params.scrape.source == "discord" and params.scrape.discord.tags == ["Blobs"]
    assert params.caption.backend == "qwen2.5-vl" and params.caption.model == "Qwen/Qwen2.5-VL-3B-Instruct"
    assert params.vae.pretrained == "stabilityai/sd-vae-ft-mse"
    assert params.text_encoder.pretrained == "openai/clip-vit-base-patch32"
    assert params.download.image_px == 64
