"""Page fetchers for scrapers, one registry: `selenium` (headless Chromium, for pages that
render their content with JavaScript) and `http` (pages whose HTML already holds it).

A fetcher returns a page's HTML or raises `PageError` (HTTP status >= 400, timeout, crashed
browser); the caller retries with backoff. The browser is Debian's Chromium driven through
its own chromedriver: selenium-manager is never asked to download anything.

Both reach public addresses only (unless `allow_private_networks`): `http` through
`public_http.fetch`, the browser through a `GuardProxy` that every request it makes passes.
A page whose address is refused raises `PageRefused` (not retried); other refused requests
of a page (a script asking for 169.254.169.254) are refused and counted in `refused`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Protocol

from sdlab.config import DiscordConfig
from sdlab.data.records import DataError
from sdlab.public_http import FetchPolicy, FetchRefused, check_url, fetch, network_policy

log = logging.getLogger(__name__)
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) sdlab-scraper (+https://github.com/sdlab)"
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--window-size=1280,2000",
    "--blink-settings=imagesEnabled=false",  # only the src is needed
    # no traffic of the browser's own (updates, sync, safe browsing, search preconnects)
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--no-pings",
    "--disable-client-side-phishing-detection",
    "--disable-domain-reliability",
    "--no-default-browser-check",
    "--metrics-recording-only",
    "--disable-breakpad",
    "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication,"
    "CertificateTransparencyComponentUpdater,InterestFeedContentSuggestions",
)


class PageError(RuntimeError):
    """One attempt at one page failed; worth retrying."""


class BrowserMissing(DataError):
    pass


class PageRefused(DataError):
    """A page's address may not be fetched (blocked_address, ...): retrying will not help."""


class Pages(Protocol):
    refused: list[str]

    def html(self, url: str) -> str: ...
    def close(self) -> None: ...


def page_policy(cfg: DiscordConfig) -> FetchPolicy:
    allow_all, allowed = network_policy(cfg.allow_private_networks)
    return FetchPolicy(
        allow_private_networks=allow_all,
        allowed_networks=allowed,
        timeout_s=cfg.page_timeout_s,
        deadline_s=cfg.page_timeout_s * 2,
        max_bytes=cfg.max_page_bytes,
        user_agent=USER_AGENT,
    )


def refuse_page(url: str, policy: FetchPolicy) -> None:
    """PageRefused naming `url` if its host may not be fetched under `policy`."""
    try:
        check_url(url, policy)
    except FetchRefused as exc:
        raise PageRefused(f"{url}: {exc} (scrape.discord.allow_private_networks is false)") from None
    except ConnectionError:
        pass  # unresolvable: the fetch itself fails and is retried


def document_status(performance_log: list[dict]) -> int | None:
    """HTTP status of the last top-level document in Chromium's performance log."""
    status = None
    for entry in performance_log:
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.responseReceived" and message["params"].get("type") == "Document":
            status = message["params"]["response"]["status"]
    return status


class ListSettled:
    """Wait condition: the list container is present and either shows the empty-state element
    (`selectors.empty`) or holds an item count unchanged for `settle_s` (items a script adds
    after the container are waited for; a list that stays empty that long is empty)."""

    def __init__(self, cfg: DiscordConfig, by: str):
        self.cfg, self.by = cfg, by
        self.count, self.since = -1, 0.0

    def __call__(self, driver) -> bool:
        selectors = self.cfg.selectors
        containers = driver.find_elements(self.by, selectors.container)
        if not containers:
            return False
        if selectors.empty and driver.find_elements(self.by, selectors.empty):
            return True
        count, now = len(containers[0].find_elements(self.by, selectors.items)), time.monotonic()
        if count != self.count:
            self.count, self.since = count, now
        return now - self.since >= self.cfg.settle_s


class BrowserPages:
    """Headless Chromium; waits explicitly for the list to settle, restarts after a crash."""

    def __init__(self, cfg: DiscordConfig):
        self.cfg = cfg
        self.driver = None
        self.profile: str | None = None
        self.proxy = None
        self.policy = page_policy(cfg)
        self.refused: list[str] = []  # requests the proxy refused, across browser restarts

    def _start(self) -> None:
        for path, what in (
            (self.cfg.chromium, "scrape.discord.chromium"),
            (self.cfg.chromedriver, "scrape.discord.chromedriver"),
        ):
            if not Path(path).exists():
                raise BrowserMissing(
                    f"{what}: {path} not found; install Chromium and its driver with "
                    "`apt-get install chromium chromium-driver` (`make install` does it)"
                )
        os.environ["SE_OFFLINE"] = "true"  # selenium-manager must never download a driver
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        from sdlab.sources.guard_proxy import GuardProxy

        self.proxy = GuardProxy(self.policy, self.refused).__enter__()

        self.profile = tempfile.mkdtemp(prefix="sdlab-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = self.cfg.chromium
        flags = (
            *CHROMIUM_FLAGS,
            *self.proxy.browser_flags(),
            f"--user-data-dir={self.profile}",
            *self.cfg.browser_args,
        )
        for flag in flags:
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # to read HTTP status
        self.driver = webdriver.Chrome(service=Service(self.cfg.chromedriver), options=options)
        self.driver.set_page_load_timeout(self.cfg.page_timeout_s)

    def html(self, url: str) -> str:
        from selenium.common.exceptions import TimeoutException, WebDriverException
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait
        from urllib3.exceptions import HTTPError

        refuse_page(url, self.policy)
        if self.driver is None:
            self._start()
        try:
            self.driver.get_log("performance")  # drop the previous page's events
            refused_before = len(self.refused)
            self.driver.get(url)
            status = document_status(self.driver.get_log("performance"))
            if status == 403 and len(self.refused) > refused_before:  # a redirect into a refused address
                raise PageRefused(f"{url}: redirected to a refused address: {self.refused[-1]}")
            if status is not None and status >= 400:
                raise PageError(f"HTTP {status}")
            try:
                WebDriverWait(self.driver, self.cfg.page_timeout_s, poll_frequency=0.1).until(
                    ListSettled(self.cfg, By.CSS_SELECTOR)
                )
            except TimeoutException:
                log.warning(
                    "%s: the list (%r) did not settle within %.0f s",
                    url,
                    self.cfg.selectors.container,
                    self.cfg.page_timeout_s,
                )
            return self.driver.page_source
        except TimeoutException as exc:
            raise PageError(f"page load timed out after {self.cfg.page_timeout_s} s") from exc
        except (WebDriverException, HTTPError, OSError) as exc:
            self.close()  # a crashed or hung browser (or its driver): the next attempt starts a fresh one
            detail = getattr(exc, "msg", None) or type(exc).__name__
            raise PageError(f"browser failed: {detail}") from exc

    def close(self) -> None:
        if self.driver is not None:
            try:
                self.driver.quit()
            except Exception:  # noqa: BLE001 (already dead)
                pass
            self.driver = None
        if self.profile:
            kill_browsers_using(self.profile)  # a browser orphaned by a crashed driver
            shutil.rmtree(self.profile, ignore_errors=True)
            self.profile = None
        if self.proxy is not None:
            self.proxy.__exit__(None, None, None)
            self.proxy = None


def kill_browsers_using(profile: str) -> None:
    import psutil

    for process in psutil.process_iter(["cmdline"]):
        if f"--user-data-dir={profile}" in (process.info["cmdline"] or []):
            try:
                process.kill()
            except psutil.Error:
                pass


class HttpPages:
    """Plain HTTP GET: enough for pages whose HTML already holds the items."""

    def __init__(self, cfg: DiscordConfig):
        self.cfg = cfg
        self.policy = page_policy(cfg)
        self.refused: list[str] = []

    def html(self, url: str) -> str:
        try:
            response = fetch(url, self.policy)
        except FetchRefused as exc:
            if exc.reason in ("blocked_address", "unsupported_scheme", "bad_url"):
                raise PageRefused(f"{url}: {exc}") from None
            raise PageError(str(exc)) from exc
        except OSError as exc:
            raise PageError(f"{type(exc).__name__}: {exc}") from exc
        if response.status >= 400:
            raise PageError(f"HTTP {response.status}")
        charset = response.headers.get_content_charset() or "utf-8"
        return response.body.decode(charset, errors="replace")

    def close(self) -> None:
        pass


PAGE_FETCHERS: dict[str, type] = {"selenium": BrowserPages, "http": HttpPages}
