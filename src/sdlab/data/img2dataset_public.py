"""img2dataset, fetching through `public_http` (public addresses only, bounded bodies).

img2dataset's own `download_image` calls `urllib.request.urlopen`: any address, redirects
followed blindly, the body read whole. It has no fetch hook, so `PublicDownloader` (what
`download()` builds while `public_fetches` is open) swaps in `download_image_public` inside
each worker before a shard is fetched. Workers unpickle the downloader whatever the
distributor (spawned processes, pyspark, ray), so this module is imported there too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import os
import sys

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations calls out at import otherwise

import img2dataset.downloader as downloader_module  # noqa: E402
from img2dataset import download  # noqa: E402,F401 (re-exported for run_img2dataset)

from sdlab.public_http import FetchPolicy, FetchRefused  # noqa: E402
from sdlab.public_http import fetch as fetch_public  # noqa: E402


def download_image_public(row, timeout, user_agent_token, disallowed_header_directives, policy: FetchPolicy):
    """img2dataset's `download_image` (same arguments and result) over `public_http.fetch`."""
    key, url = row
    agent = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:72.0) Gecko/20100101 Firefox/72.0"
    if user_agent_token:
        agent += f" (compatible; {user_agent_token}; +https://github.com/rom1504/img2dataset)"
    try:
        response = fetch_public(url, dataclasses.replace(policy, timeout_s=timeout, user_agent=agent))
    except FetchRefused as exc:
        return key, None, str(exc)
    except TimeoutError as exc:
        return key, None, f"timeout: {exc}"
    except OSError as exc:  # refused, reset, unresolvable: the network said no
        return key, None, f"connection_error: {type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001 (img2dataset's contract: the message, per row)
        return key, None, f"{type(exc).__name__}: {exc}"
    if response.status >= 300:
        return key, None, f"HTTP Error {response.status}: {response.reason}"
    if disallowed_header_directives and downloader_module.is_disallowed(
        response.headers, user_agent_token, disallowed_header_directives
    ):
        return key, None, "Use of image disallowed by X-Robots-Tag directive"
    return key, io.BytesIO(response.body), None


class PublicDownloader(downloader_module.Downloader):
    """img2dataset's Downloader whose workers fetch through `download_image_public`."""

    policy: FetchPolicy

    def __call__(self, row):
        downloader_module.download_image = functools.partial(download_image_public, policy=self.policy)
        return super().__call__(row)


@contextlib.contextmanager
def public_fetches(policy: FetchPolicy):
    """While open, img2dataset.download() builds a Downloader that fetches under `policy`."""

    def build(*args, **kwargs):
        downloader = PublicDownloader(*args, **kwargs)
        downloader.policy = policy
        return downloader

    main_module = sys.modules["img2dataset.main"]  # the package's `main` attribute is the function
    original = main_module.Downloader
    main_module.Downloader = build
    try:
        yield
    finally:
        main_module.Downloader = original
