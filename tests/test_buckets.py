"""Aspect buckets (`download.fit: bucket`): photos keep their shape from download to training.

Photo-like scenes of 1:2 to 2:1 are fetched from a real server on 127.0.0.1 by img2dataset and
stored at their bucket (no white bar in any stored pixel), encoded to latents of several shapes
(bit-exact across workers), and streamed in batches that each hold one bucket."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
import torch
from support.local_site import LocalSite, Response
from support.photos import photo_set, white_bars

from sdlab.config import DownloadConfig, EncodeConfig, TextEncoderConfig, VaeConfig
from sdlab.data.download import download
from sdlab.data.images import aspect_buckets, bucket_size, fit_image, nearest_bucket
from sdlab.data.shards import load_image_list
from sdlab.encode import encode_dataset
from sdlab.latents import read_header, read_meta
from sdlab.models.vae import build_vae, to_tensor
from sdlab.stream import BucketStream, bucket_parts

PX, STEP = 64, 8


@pytest.mark.parametrize(("px", "step", "max_aspect"), [(32, 8, 2.0), (64, 8, 2.0), (256, 64, 4.0), (512, 64, 2.0)])
def test_buckets_keep_the_area_the_step_and_the_aspect_limit(px, step, max_aspect):
    buckets = aspect_buckets(px, step, max_aspect)
    assert buckets[0] == (px, px)
    for width, height in buckets:
        assert width % step == 0 and height % step == 0
        assert width * height <= px * px and max(width, height) / min(width, height) <= max_aspect
        assert (height, width) in buckets
    assert len(buckets) >= 3


def test_each_fit_gives_its_size_and_only_pad_letterboxes():
    from support.photos import scene

    wide = scene(400, 200, "noon", "grass", seed=1)
    buckets = aspect_buckets(64, 8, 2.0)
    padded, _ = fit_image(wide, 64, "pad")
    cropped, box = fit_image(wide, 64, "crop")
    bucketed, bucket_box = fit_image(wide, 64, "bucket", buckets)
    assert padded.size == cropped.size == (64, 64) and bucketed.size == nearest_bucket(400, 200, buckets) == (80, 48)
    assert (
        white_bars(np.asarray(padded)) == 2 and white_bars(np.asarray(cropped)) == white_bars(np.asarray(bucketed)) == 0
    )
    assert box == (100, 0, 300, 200)  # the square's middle
    left, top, right, bottom = bucket_box  # a few percent cut from the sides, none from the height
    assert (top, bottom) == (0, 200) and math.isclose((right - left) / 200, 80 / 48, rel_tol=0.01)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """40 scenes (1:2 .. 2:1) fetched over http by img2dataset with fit: bucket; 8-image shards."""
    root = tmp_path_factory.mktemp("buckets")
    scenes = photo_set(40)
    routes = {"/" + s["name"]: Response(s["jpeg"], content_type="image/jpeg") for s in scenes}
    rows = [
        {"key": f"k{i:03d}", "source": "test", "url": "", "path": "", "title": s["name"], "caption": s["caption"]}
        for i, s in enumerate(scenes)
    ]
    cfg = DownloadConfig(
        image_px=PX,
        fit="bucket",
        bucket_step=STEP,
        max_aspect_ratio=2.0,
        processes=1,
        threads=8,
        shard_size=8,
        allow_private_networks=True,
    )
    with LocalSite(routes) as site:
        for row, s in zip(rows, scenes, strict=True):
            row["url"] = site.url + "/" + s["name"]
        index, stats = download(pa.Table.from_pylist(rows), cfg, root / "shards", root / "cache")
    return root, scenes, index.to_pylist(), stats


def test_bucketed_photos_are_stored_at_their_bucket_with_no_white_bar(photos):
    root, scenes, index, stats = photos
    assert stats["ok"] == 40
    images = load_image_list(root / "shards", index)
    buckets = aspect_buckets(PX, STEP, 2.0)
    for row, image, original in zip(index, images, scenes, strict=True):
        assert white_bars(image) == 0, row["title"]  # the stored pixels, not the metadata
        assert (image.shape[1], image.shape[0]) == bucket_size(row["bucket"])
        assert bucket_size(row["bucket"]) == nearest_bucket(original["width"], original["height"], buckets)
        left, top, right, bottom = row["crop"]
        assert 0 <= left < right <= original["width"] and 0 <= top < bottom <= original["height"]
    assert len({r["bucket"] for r in index}) == 3  # 1:2 .. 2:1 land in 48x80, 64x64, 80x48 at 64 px
    # the same photos letterboxed (`pad`, today's emoji default) do have bars: the check can fail
    padded = fit_image(__import__("PIL.Image").Image.open(__import__("io").BytesIO(scenes[0]["jpeg"])), PX, "pad")[0]
    assert white_bars(np.asarray(padded)) == 2


@pytest.fixture(scope="module")
def encoded(photos, tmp_path_factory):
    """The bucketed photos encoded with a tiny VAE (every 5th val), at 1 worker."""
    root, _, index, _ = photos
    torch.manual_seed(0)
    vae = build_vae(VaeConfig(block_out_channels=[8, 16]), 16)
    vae.save_pretrained(root / "vae")
    rows = pa.Table.from_pylist(
        [
            {"key": r["key"], "shard": r["shard"], "split": "val" if i % 5 == 4 else "train", "caption": r["caption"]}
            for i, r in enumerate(index)
        ]
    )
    out = tmp_path_factory.mktemp("latents")
    meta = encode_dataset(
        rows,
        shards_dir=str(root / "shards"),
        vae_dir=str(root / "vae"),
        out_dir=str(out / "one"),
        image_px=PX,
        cfg=EncodeConfig(batch_size=3, workers=1),
        te=TextEncoderConfig(),
    )
    return root, rows, out, meta, vae


def test_latents_of_each_bucket_are_the_vae_posterior_of_its_images(encoded, photos):
    root, rows, out, meta, vae = encoded
    index = photos[2]
    assert set(meta["buckets"]) == {r["bucket"] for r in index}
    for name, shape in meta["buckets"].items():
        width, height = bucket_size(name)
        assert shape == [4, height // 2, width // 2]  # the tiny VAE halves each side
    counts = Counter((r["shard"], r["bucket"]) for r in index)
    for entry in meta["shards"]:
        assert {b: c["train"] + c["val"] for b, c in entry["buckets"].items()} == {
            b: n for (s, b), n in counts.items() if s == entry["name"] + ".tar"
        }
    header = read_header(out / "one/shards/00000.safetensors")
    images = load_image_list(root / "shards", index[:8])
    from safetensors.torch import load_file

    stored = load_file(str(out / "one/shards/00000.safetensors"))
    for bucket in header["buckets"]:
        places = stored[f"rows.{bucket}"].tolist()
        assert [index[p]["bucket"] for p in places] == [bucket] * len(places)
        with torch.no_grad():
            mean = (
                vae.encode(to_tensor(np.stack([images[p] for p in places]))).latent_dist.mean
                * vae.config.scaling_factor
            )
        assert torch.allclose(stored[f"mean.{bucket}"][:, 0].float(), mean, atol=2e-2)
    assert header["keys"] == [r["key"] for r in index[:8]]  # tar order kept


def test_bucketed_latents_are_bit_exact_across_worker_counts(encoded):
    root, rows, out, _, _ = encoded
    encode_dataset(
        rows,
        shards_dir=str(root / "shards"),
        vae_dir=str(root / "vae"),
        out_dir=str(out / "two"),
        image_px=PX,
        cfg=EncodeConfig(batch_size=3, workers=2),
        te=TextEncoderConfig(),
    )
    one = {p.relative_to(out / "one"): p.read_bytes() for p in sorted((out / "one").rglob("*")) if p.is_file()}
    two = {p.relative_to(out / "two"): p.read_bytes() for p in sorted((out / "two").rglob("*")) if p.is_file()}
    assert one == two


def key_of_hidden(latents) -> dict[bytes, str]:
    """A stored row's key, found by its caption's text states (unique per caption), from the
    text files (tar order) and the latent headers' keys."""
    from safetensors.numpy import load_file as load_numpy

    from sdlab.latents import latent_path, text_path

    out = {}
    for shard in read_meta(latents)["shards"]:
        hidden = load_numpy(str(text_path(latents, shard["name"])))["hidden"]
        keys = read_header(latent_path(latents, shard["name"]))["keys"]
        out |= {h.tobytes(): key for key, h in zip(keys, hidden, strict=True)}
    return out


def test_every_batch_is_one_bucket_and_every_image_is_seen_once_per_pass(encoded, photos):
    _, _, out, meta, _ = encoded
    latents = out / "one"
    bucket_of = {r["key"]: r["bucket"] for r in photos[2]}
    keys_of = key_of_hidden(latents)
    parts = bucket_parts(meta["shards"], 0, 1)
    counts = {b: sum(p.rows for p in ps) for b, ps in parts.items()}
    batch = 3
    stream = BucketStream(latents, parts, counts, batch, seed=7, shuffle_shards=2)
    assert stream.dropped == {b: n for b, n in counts.items() if n < batch}
    seen: Counter = Counter()
    steps = sum(n // batch for b, n in counts.items() if n >= batch)  # one epoch
    for step in range(steps):
        got = stream.batch(step)
        keys = [keys_of[h.numpy().tobytes()] for h in got["hidden"]]
        buckets = {bucket_of[k] for k in keys}
        assert len(buckets) == 1, (step, keys)  # one bucket per batch
        (bucket,) = buckets
        width, height = bucket_size(bucket)
        assert tuple(got["mean"].shape[-2:]) == (height // 2, width // 2)
        seen.update(keys)
    assert max(seen.values()) == 1  # nobody twice in the epoch ...
    assert len(seen) == sum(n // batch * batch for n in counts.values() if n >= batch)  # ... all full batches drawn
    stream.close()
    # a batch is a function of (seed, step): a new stream (a resumed run) draws the same ones
    again = BucketStream(latents, parts, counts, batch, seed=7, shuffle_shards=2)
    for step in (0, steps - 1, steps + 2):
        assert torch.equal(
            again.batch(step)["mean"], BucketStream(latents, parts, counts, batch, 7, 2).batch(step)["mean"]
        )
    again.close()


def test_two_ranks_step_on_the_same_bucket(encoded):
    _, _, out, meta, _ = encoded
    per_rank = [bucket_parts(meta["shards"], r, 2) for r in range(2)]
    rows = {b: min(sum(p.rows for p in parts.get(b, [])) for parts in per_rank) for b in meta["buckets"]}
    streams = [BucketStream(out / "one", per_rank[r], rows, 2, seed=3, shuffle_shards=1) for r in range(2)]
    for step in range(12):
        shapes = {tuple(s.batch(step)["mean"].shape) for s in streams}
        assert len(shapes) == 1
    for s in streams:
        s.close()
