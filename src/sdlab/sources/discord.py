"""Discord emoji listed on discords.com tag pages (`scrape.source: discord`).

Walks `{base_url}/emoji-list/tag/{tag}?page={n}` from 1 until `max_pages` or a page with
nothing new. Each finished page is saved in the persisted state folder, so a rerun after a
kill resumes from the last finished page; the folder is cleared once the walk completes.
Titles are untrusted data: keys come from a hash of the image URL, never from a title.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import time
from pathlib import Path
from urllib.parse import parse_qs, quote, urljoin, urlsplit

from bs4 import BeautifulSoup

from sdlab.config import DiscordConfig, DiscordSelectors, ScrapeConfig
from sdlab.data.records import DataError
from sdlab.io import read_json, write_json
from sdlab.sources.pages import PAGE_FETCHERS, PageError, Pages

log = logging.getLogger(__name__)
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class ScrapeError(DataError):
    pass


def page_url(base_url: str, tag: str, page: int) -> str:
    return f"{base_url.rstrip('/')}/emoji-list/tag/{quote(tag, safe='')}?page={page}"


def image_urls(src: str, page: str) -> tuple[str, str]:
    """(original, proxied) URLs of an `<img src>`: Next.js serves images as
    `/_next/image?url=<encoded original>&w=128&q=75`; the original is full resolution."""
    absolute = urljoin(page, src)
    parts = urlsplit(absolute)
    if parts.path.endswith("/_next/image"):
        original = parse_qs(parts.query).get("url")
        if original:
            return urljoin(page, original[0]), absolute
    return absolute, ""


def clean_title(text: str) -> str:
    return " ".join(CONTROL_CHARS.sub(" ", text).split())


def parse_items(html: str, selectors: DiscordSelectors, page: str) -> list[dict] | None:
    """Items of one list page ({title, url, proxy_url}); None when the container is absent."""
    soup = BeautifulSoup(html, "html.parser")
    container = soup.select_one(selectors.container)
    if container is None:
        return None
    items = []
    for card in container.select(selectors.items):
        img = card.select_one(selectors.image)
        src = img.get("src") if img is not None else None
        if not src and img is not None and img.get("srcset"):
            src = img["srcset"].split(",")[0].split()[0]
        if not src:
            continue
        original, proxied = image_urls(src, page)
        title = clean_title(card.get_text(" ")) or clean_title(img.get("alt", ""))
        items.append({"title": title, "url": original, "proxy_url": proxied})
    return items


def record_key(url: str) -> str:
    return "discord-" + hashlib.sha1(url.encode()).hexdigest()[:16]


class PageProgress:
    """Finished pages of one walk in `state_dir/<fingerprint>/` (a persisted DVC out)."""

    def __init__(self, state_dir: Path, cfg: DiscordConfig):
        identity = json.dumps([cfg.base_url, cfg.driver, cfg.selectors.model_dump()], sort_keys=True)
        self.root = state_dir / hashlib.sha256(identity.encode()).hexdigest()[:16]

    def _path(self, tag: str, page: int) -> Path:
        return self.root / hashlib.sha1(tag.encode()).hexdigest()[:12] / f"{page:05d}.json"

    def load(self, tag: str, page: int) -> list[dict] | None:
        path = self._path(tag, page)
        return read_json(path) if path.exists() else None

    def save(self, tag: str, page: int, items: list[dict]) -> None:
        write_json(self._path(tag, page), items)

    def finish(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def fetch_items(pages: Pages, url: str, cfg: DiscordConfig) -> list[dict] | None:
    """One page's items, retried with exponential backoff on an HTTP error, a crash or a page
    without the list (a bot check, a slow render); None if the list never appeared."""
    problem = ""
    for attempt in range(cfg.retries + 1):
        if attempt:
            wait = cfg.backoff_s * 2 ** (attempt - 1)
            log.warning("%s: %s; retrying in %.1f s", url, problem, wait)
            time.sleep(wait)
        try:
            items = parse_items(pages.html(url), cfg.selectors, url)
        except PageError as exc:
            problem = str(exc)
            continue
        if items is not None:
            return items
        problem = f"no element matches scrape.discord.selectors.container {cfg.selectors.container!r}"
    if problem.startswith("no element matches"):
        return None
    raise ScrapeError(
        f"{url}: failed after {cfg.retries + 1} attempt(s): {problem} (finished pages are kept; rerun to resume)"
    )


def stale_selectors(url: str, cfg: DiscordConfig, items: list[dict] | None) -> ScrapeError:
    what = (
        f"no element matches scrape.discord.selectors.container {cfg.selectors.container!r}"
        if items is None
        else f"the container holds no item matching scrape.discord.selectors.items {cfg.selectors.items!r}"
    )
    hint = (
        " (driver http sees only the HTML as served: a page that renders its list with JavaScript "
        "needs driver: selenium)"
        if cfg.driver == "http"
        else ""
    )
    return ScrapeError(
        f"{url}: first page is empty: {what}. The site's class names probably changed "
        f"after a redeploy: update the selectors in params{hint}"
    )


def scrape(config: ScrapeConfig, out_dir: Path, state_dir: Path, stats: dict) -> list[list[dict]]:
    """Records of every emoji on the tag pages (first occurrence of each image URL)."""
    cfg = config.discord
    progress = PageProgress(state_dir, cfg)
    records: list[dict] = []
    seen: set[str] = set()
    fetched = resumed = duplicates = refused = 0
    pages: Pages | None = None
    try:
        for tag in cfg.tags:
            for number in range(1, cfg.max_pages + 1):
                url = page_url(cfg.base_url, tag, number)
                items = progress.load(tag, number)
                if items is None:
                    if pages is None:
                        pages = PAGE_FETCHERS[cfg.driver](cfg)
                    elif cfg.page_delay_s:
                        time.sleep(cfg.page_delay_s)
                    items = fetch_items(pages, url, cfg)
                    if number == 1 and not items:
                        raise stale_selectors(url, cfg, items)
                    if items is None:  # only a present list with nothing new ends a tag
                        raise ScrapeError(
                            f"{url}: page {number} of tag {tag!r} has no list: no element matches "
                            f"scrape.discord.selectors.container {cfg.selectors.container!r} after "
                            f"{cfg.retries + 1} attempt(s) (a bot check or a slow render?); the {number - 1} "
                            "finished page(s) are kept: rerun to resume"
                        )
                    progress.save(tag, number, items)
                    fetched += 1
                else:
                    resumed += 1
                new = [item for item in items if item["url"] not in seen]
                duplicates += len(items) - len(new)
                log.info("%s: %d items, %d new", url, len(items), len(new))
                if not new:
                    break
                for item in new:
                    seen.add(item["url"])
                    records.append(
                        {
                            "key": record_key(item["url"]),
                            "source": "discord",
                            "url": item["url"],
                            "proxy_url": item["proxy_url"],
                            "path": "",
                            "title": item["title"],
                            "caption": "",
                            "tag": tag,
                            "page": number,
                        }
                    )
    finally:
        if pages is not None:
            refused = len(pages.refused)
            for what in pages.refused[:10]:
                log.warning("refused a request of the page walk: %s", what)
            pages.close()
    progress.finish()
    stats.update(
        {
            "pages_fetched": fetched,
            "pages_resumed": resumed,
            "duplicates_across_pages": duplicates,
            "refused_requests": refused,
        }
    )
    return [records]
