"""The http(s) path of `download`: real img2dataset against a real server on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import yaml
from conftest import REPO
from support.local_site import LocalSite, Response, animated_gif, bomb_png, distinct_color, image_bytes

from sdlab.config import DownloadConfig
from sdlab.data.download import download
from sdlab.data.fetch import is_fetchable, reason_of
from sdlab.data.shards import load_images, read_shard
from sdlab.io import read_table, write_table

RED = image_bytes((255, 0, 0, 255))


def url_rows(base: str, paths: list[str]) -> list[dict]:
    return [
        {"key": f"r{i:03d}", "source": "test", "url": base + p, "path": "", "title": p, "caption": ""}
        for i, p in enumerate(paths)
    ]


def test_every_url_ends_ok_or_failed_with_its_reason(tmp_path):
    routes = {
        "/red.png": Response(RED),
        "/red-again.png": Response(RED),  # same bytes, other URL: dedupe's job, both ok here
        "/clear.webp": Response(image_bytes((0, 0, 255, 0), fmt="WEBP"), content_type="image/webp"),
        "/anim.gif": Response(animated_gif([(0, 255, 0), (0, 0, 255)]), content_type="image/gif"),
        "/always-500.png": Response(RED, fail_first=10**6),
        "/slow.png": Response(RED, delay_s=4),
        "/truncated.png": Response(RED[: len(RED) // 2]),
        "/page.png": Response(b"<html><body>not an image</body></html>", content_type="text/html"),
        "/bomb.png": Response(bomb_png(12_000)),
        "/noai.png": Response(RED, headers={"X-Robots-Tag": "noai"}),
        "/tiny.png": Response(image_bytes((1, 2, 3, 255), size=(3, 3))),
    }
    with LocalSite(routes) as site:
        rows = url_rows(site.url, [*routes, "/gone.png"])
        secret = tmp_path / "secret.png"
        secret.write_bytes(RED)
        rows += [
            {"key": "file", "source": "test", "url": secret.as_uri(), "path": "", "title": "f", "caption": ""},
            {"key": "ftp", "source": "test", "url": "ftp://127.0.0.1/red.png", "path": "", "title": "f", "caption": ""},
        ]
        cfg = DownloadConfig(
            image_px=16, timeout_s=1, retries=0, processes=1, threads=8, shard_size=4, allow_private_networks=True
        )
        index, stats = download(pa.Table.from_pylist(rows), cfg, tmp_path / "shards", tmp_path / "cache")

    assert index["key"].to_pylist() == [r["key"] for r in rows]  # records in = rows out, same order
    reasons = dict(zip(index["title"].to_pylist(), index["reason"].to_pylist(), strict=True))
    assert reasons == {
        "/red.png": "",
        "/red-again.png": "",
        "/clear.webp": "",
        "/anim.gif": "",
        "/always-500.png": "http_500",
        "/slow.png": "timeout",
        "/truncated.png": "decode_error",
        "/page.png": "decode_error",
        "/bomb.png": "too_large",
        "/noai.png": "robots_disallowed",
        "/tiny.png": "too_small",
        "/gone.png": "http_404",
        "f": "unsupported_scheme",
    }
    assert stats["ok"] + stats["failed"] == len(rows) and stats["ok"] == 4
    assert stats["failed_by_reason"]["unsupported_scheme"] == 2
    # only http was fetched, each URL once (retries 0)
    assert set(site.requests) == set(routes) | {"/gone.png"} and set(site.requests.values()) == {1}
    ok = [r for r in index.to_pylist() if r["status"] == "ok"]
    assert ok[0]["md5"] == ok[1]["md5"] == __import__("hashlib").md5(RED).hexdigest()
    assert (ok[0]["width"], ok[0]["height"]) == (48, 48)
    images = dict(zip([r["title"] for r in ok], load_images(tmp_path / "shards", ok), strict=True))
    assert images["/red.png"].shape == (16, 16, 3)
    assert tuple(images["/clear.webp"][8, 8]) == (255, 255, 255)  # transparent -> white
    assert tuple(images["/anim.gif"][8, 8]) == (0, 255, 0)  # first frame
    assert tuple(images["/red.png"][8, 8]) == (255, 0, 0)


def test_each_url_is_fetched_once_across_filter_changes_source_switches_and_image_px(tmp_path):
    routes = {f"/e{i}.png": Response(image_bytes(distinct_color(i))) for i in range(12)}
    cache = tmp_path / "cache"
    cfg = DownloadConfig(image_px=16, processes=1, threads=4, shard_size=4, retries=0, allow_private_networks=True)
    with LocalSite(routes) as site:
        rows = url_rows(site.url, [*routes, "/missing.png"])
        counts = lambda: {path: site.count(path) for path in [*routes, "/missing.png"]}  # noqa: E731
        download(pa.Table.from_pylist(rows[:8]), cfg, tmp_path / "a", cache)  # a strict filter admitted 8
        assert counts() == {path: int(i < 8) for i, path in enumerate([*routes, "/missing.png"])}
        index, _ = download(pa.Table.from_pylist(rows), cfg, tmp_path / "b", cache)  # a lowered threshold: +5
        assert set(counts().values()) == {1}  # only the newly admitted URLs were fetched, the 404 too
        assert index["reason"].to_pylist()[-1] == "http_404"
        download(pa.Table.from_pylist(rows[8:]), cfg, tmp_path / "c", cache)  # the source switched away ...
        bigger, _ = download(
            pa.Table.from_pylist(rows), cfg.model_copy(update={"image_px": 32}), tmp_path / "d", cache
        )  # ... and back, at a new image_px
        assert set(counts().values()) == {1}  # nothing fetched again: resized from the cached originals
    ok = [r for r in bigger.to_pylist() if r["status"] == "ok"]
    assert len(ok) == 12 and load_images(tmp_path / "d", ok[:1]).shape == (1, 32, 32, 3)
    assert bigger["md5"].to_pylist() == index["md5"].to_pylist()


def test_reasons_and_schemes():
    assert reason_of("HTTP Error 403: Forbidden") == "http_403"
    assert reason_of("<urlopen error [Errno 111] Connection refused>") == "connection_error"
    assert reason_of("something new") == "download_error"
    assert is_fetchable("https://a.b/c.png") and is_fetchable("HTTP://a.b/c")
    assert not any(
        map(is_fetchable, ["file:///etc/passwd", "ftp://h/x", "data:image/png;base64,xx", "http://", "/x.png"])
    )


def run_download(records: Path, out: Path, cache: Path, params: Path) -> subprocess.Popen:
    out.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [
            sys.executable,
            str(REPO / "stages" / "download.py"),
            "--params",
            str(params),
            "--records",
            str(records),
            "--out",
            str(out),
            "--cache",
            str(cache),
            "--report",
            str(out.parent / "report"),
        ],
        cwd=out.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def test_killed_download_resumes_without_fetching_finished_shards_again(tmp_path):
    routes = {f"/e{i}.png": Response(image_bytes(distinct_color(i))) for i in range(54)}
    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump(
            {
                "download": {
                    "image_px": 16,
                    "shard_size": 6,
                    "processes": 1,
                    "threads": 2,
                    "timeout_s": 5,
                    "retries": 0,
                    "allow_private_networks": True,
                }
            }
        )
    )
    with LocalSite(routes, latency_s=0.25) as site:
        write_table(tmp_path / "records.parquet", pa.Table.from_pylist(url_rows(site.url, list(routes)[:48])))
        cache = tmp_path / "cache"
        proc = run_download(tmp_path / "records.parquet", tmp_path / "images", cache, params)
        deadline = time.time() + 120
        while len(list(cache.glob("batches/*/shards/*_stats.json"))) < 2:
            assert proc.poll() is None, proc.stderr.read()
            assert time.time() < deadline, "img2dataset finished no shard in 120 s"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        finished = sorted(cache.glob("batches/*/shards/*_stats.json"))
        assert 2 <= len(finished) < 8, "kill came too late to test a resume"
        done_ids = {int(p.name.split("_")[0]) for p in finished}
        inodes = {p: p.stat().st_ino for p in cache.glob("batches/*/shards/*.tar") if int(p.stem) in done_ids}

        # the rerun also has 6 new records (a filter loosened after the kill): only they form a new batch
        write_table(tmp_path / "records.parquet", pa.Table.from_pylist(url_rows(site.url, list(routes))))
        resumed = run_download(tmp_path / "records.parquet", tmp_path / "images", cache, params)
        assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
        for path, inode in inodes.items():
            assert path.stat().st_ino == inode  # finished shards untouched
        for i in range(54):
            if i // 6 in done_ids or i >= 48:
                assert site.count(f"/e{i}.png") == 1, f"/e{i}.png fetched again after its shard finished"
            else:  # in the shard the kill interrupted
                assert site.count(f"/e{i}.png") in (1, 2)
        assert len(list(cache.glob("batches/*"))) == 2

        fresh = run_download(
            tmp_path / "records.parquet", tmp_path / "fresh" / "images", tmp_path / "fresh-cache", params
        )
        assert fresh.wait(timeout=300) == 0, fresh.stderr.read()

    resumed_index = read_table(tmp_path / "images" / "index.parquet")
    assert resumed_index.equals(read_table(tmp_path / "fresh" / "images" / "index.parquet"))
    assert resumed_index["status"].to_pylist() == ["ok"] * 54
    for shard in sorted((tmp_path / "images" / "shards").glob("*.tar")):
        ours, theirs = read_shard(shard), read_shard(tmp_path / "fresh" / "images" / "shards" / shard.name)
        assert ours == theirs
