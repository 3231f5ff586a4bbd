"""The encode stage's worker pool: bit-exact across worker and node counts, resumable,
self-checking, fingerprinted by content."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import REPO, packed_blobs
from safetensors.torch import load_file

from sdlab.config import EncodeConfig, TextEncoderConfig, VaeConfig
from sdlab.data.shards import load_images
from sdlab.encode import encode_dataset
from sdlab.latents import (
    NOT_KEPT,
    SPLIT_CODES,
    is_complete,
    read_header,
    read_rows,
    save_checked,
    save_checked_streamed,
    tensors_sha256,
)
from sdlab.models.text_encoder import encode_prompts, load_text_encoder
from sdlab.models.vae import build_vae, load_pretrained_vae, to_tensor

TEXT = TextEncoderConfig()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """40 blob images in 5 shards, a tiny VAE folder, kept rows with captions (2 dropped as duplicates)."""
    root = tmp_path_factory.mktemp("encode")
    index = packed_blobs(root, seed=5, count=40, image_px=16, shard_size=8)
    torch.manual_seed(0)
    vae = build_vae(VaeConfig(block_out_channels=[8, 16]), 16)
    vae.register_to_config(scaling_factor=1.7)
    vae.save_pretrained(root / "vae")
    rows = [dict(r, split="val" if i % 5 == 4 else "train") for i, r in enumerate(index) if i not in (3, 17)]
    return root, pa.Table.from_pylist(rows)


def encode(dataset, out: Path, image_px: int = 16, rows: pa.Table | None = None, **overrides) -> dict:
    """Encode the dataset's rows (or `rows`: the same images, other captions) into `out`."""
    root, kept = dataset
    rows = kept if rows is None else rows
    cfg = EncodeConfig(**{"batch_size": 5, "workers": 1, **overrides})  # one worker: in this process
    return encode_dataset(
        rows,
        shards_dir=str(root / "shards"),
        vae_dir=str(root / "vae"),
        out_dir=str(out),
        image_px=image_px,
        cfg=cfg,
        te=TEXT,
    )


@pytest.fixture(scope="module")
def encoded(dataset, tmp_path_factory) -> Path:
    """The dataset encoded once with the defaults (states, one view): read by several tests,
    copied by those that change it (an encode is a worker process and ~10 s here)."""
    out = tmp_path_factory.mktemp("encoded") / "out"
    encode(dataset, out)
    return out


def copy_of(encoded: Path, out: Path) -> Path:
    shutil.copytree(encoded, out)
    return out


def outputs(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }


def test_worker_count_never_reaches_the_bytes_even_with_random_draws_and_flips(dataset, tmp_path):
    one = encode(dataset, tmp_path / "one", workers=1, store="sample", flip=True)
    two = encode(dataset, tmp_path / "two", workers=2, store="sample", flip=True)
    a, b = outputs(tmp_path / "one"), outputs(tmp_path / "two")
    assert len([n for n in a if n.endswith(".safetensors")]) == 11  # 5 latent + 5 text shards + uncond
    assert a == b  # every file byte for byte, meta.json and index.parquet included
    assert one == two and "workers" not in json.dumps(one)
    sample = load_file(str(tmp_path / "one/shards/00000.safetensors"))["sample"]
    assert sample.shape == (8, 2, 4, 8, 8) and not torch.equal(sample[:, 0], sample[:, 1])


def test_stored_latents_are_the_scaled_posterior_of_each_image_in_tar_order(dataset, tmp_path):
    root, rows = dataset
    encode(dataset, tmp_path / "out", flip=True)
    header = read_header(tmp_path / "out/shards/00000.safetensors")
    first = rows.to_pylist()[:3]
    assert header["keys"][:3] == [r["key"] for r in first]
    stored = load_file(str(tmp_path / "out/shards/00000.safetensors"))
    assert stored["mean"].shape == (8, 2, 4, 8, 8) and stored["mean"].dtype == torch.float16
    vae = load_pretrained_vae(str(root / "vae")).eval()
    images = to_tensor(load_images(root / "shards", first))
    with torch.no_grad():
        mean = vae.encode(images).latent_dist.mean * 1.7
        flipped = vae.encode(torch.flip(images, dims=[3])).latent_dist.mean * 1.7
    assert torch.allclose(stored["mean"][:3, 0].float(), mean, atol=2e-2)
    assert torch.allclose(stored["mean"][:3, 1].float(), flipped, atol=2e-2)


def test_text_files_hold_splits_and_the_states_of_each_row_and_the_index_points_at_them(dataset, encoded):
    _, rows = dataset
    meta = json.loads((encoded / "meta.json").read_text())
    text = load_file(str(encoded / "text/00000.safetensors"))
    keys = read_header(encoded / "shards/00000.safetensors")["keys"]
    by_key = {r["key"]: r for r in rows.to_pylist()}
    assert text["split"].tolist() == [SPLIT_CODES[by_key[k]["split"]] if k in by_key else NOT_KEPT for k in keys]
    assert text["split"][3] == NOT_KEPT  # row 3 was dropped upstream (a duplicate)
    tokenizer, model = load_text_encoder(None, 77)
    expected = encode_prompts(tokenizer, model, [by_key[keys[0]]["caption"], ""])
    assert torch.allclose(text["hidden"][0].float(), expected[0], atol=1e-2)
    assert torch.allclose(load_file(str(encoded / "uncond.safetensors"))["hidden"][0].float(), expected[1], atol=1e-2)
    index = pq.read_table(encoded / "index.parquet").to_pylist()
    assert [r["key"] for r in index] == rows["key"].to_pylist()
    assert all(keys[r["row"]] == r["key"] for r in index if r["latent_shard"] == "00000.safetensors")
    assert sum(s["train"] for s in meta["shards"]) == rows["split"].to_pylist().count("train")
    assert meta["text"] == "states" and meta["text_dim"] == 384


def test_tokens_store_ids_and_masks_only_at_a_fraction_of_the_bytes(dataset, encoded, tmp_path):
    states = encoded
    meta = encode(dataset, tmp_path / "tokens", text="tokens")
    text = load_file(str(tmp_path / "tokens/text/00000.safetensors"))
    assert set(text) == {"split", "input_ids", "attention_mask"} and text["input_ids"].shape == (8, 77)
    tokenizer, _ = load_text_encoder(None, 77)
    key = read_header(tmp_path / "tokens/shards/00000.safetensors")["keys"][0]
    caption = next(r for r in dataset[1].to_pylist() if r["key"] == key)["caption"]
    assert text["input_ids"][0].tolist() == tokenizer(caption, padding="max_length", max_length=77).input_ids
    size = lambda folder: (folder / "text/00000.safetensors").stat().st_size  # noqa: E731
    assert size(tmp_path / "tokens") * 50 < size(states)
    assert meta["text"] == "tokens"
    # the latents do not depend on the text mode: same bytes
    assert (tmp_path / "tokens/shards/00001.safetensors").read_bytes() == (
        states / "shards/00001.safetensors"
    ).read_bytes()


def test_a_caption_change_rewrites_only_that_shards_text_never_a_latent(dataset, encoded, tmp_path):
    _, rows = dataset
    out = copy_of(encoded, tmp_path / "out")
    inodes = {p.relative_to(out): p.stat().st_ino for p in out.rglob("*.safetensors")}
    table = rows.to_pylist()
    table[0]["caption"] = "a brand new caption"
    encode(dataset, out, rows=pa.Table.from_pylist(table))
    changed = {str(p) for p, inode in inodes.items() if (out / p).stat().st_ino != inode}
    assert changed == {"text/00000.safetensors"}


def test_kept_original_captions_are_stored_beside_the_backends_without_touching_a_latent(dataset, encoded, tmp_path):
    _, rows = dataset
    out = copy_of(encoded, tmp_path / "out")
    inodes = {p.name: p.stat().st_ino for p in (out / "shards").glob("*.safetensors")}
    originals = [f"alt text number {i}" if i % 3 else "" for i in range(rows.num_rows)]  # a third have none
    meta = encode(dataset, out, rows=rows.append_column("original_caption", pa.array(originals)))
    assert {p.name: p.stat().st_ino for p in (out / "shards").glob("*.safetensors")} == inodes
    assert meta["original_captions"] == sum(1 for o in originals if o)
    text = load_file(str(out / "text/00001.safetensors"))
    keys = read_header(out / "shards/00001.safetensors")["keys"]
    by_key = {r["key"]: (r["caption"], o) for r, o in zip(rows.to_pylist(), originals, strict=True)}
    tokenizer, model = load_text_encoder(None, 77)
    for row, key in enumerate(keys):
        if key not in by_key:
            assert text["has_original"][row] == 0
            continue
        caption, original = by_key[key]
        assert text["has_original"][row] == bool(original)
        expected = encode_prompts(tokenizer, model, [original or caption])[0]
        assert torch.allclose(text["original_hidden"][row].float(), expected, atol=1e-2), key
        assert torch.allclose(text["hidden"][row].float(), encode_prompts(tokenizer, model, [caption])[0], atol=1e-2)
    assert text["has_original"].sum() > 0 and (text["has_original"] == 0).sum() > 0


def test_a_corrupt_or_truncated_shard_is_detected_and_encoded_again(dataset, encoded, tmp_path):
    out = copy_of(encoded, tmp_path / "out")
    good = outputs(out)
    corrupt, truncated, untouched = (
        out / "shards/00001.safetensors",
        out / "shards/00002.safetensors",
        out / "shards/00003.safetensors",
    )
    data = bytearray(corrupt.read_bytes())
    data[-20] ^= 0xFF  # one flipped bit pattern inside the tensor bytes
    corrupt.write_bytes(bytes(data))
    truncated.write_bytes(truncated.read_bytes()[:-100])
    inode = untouched.stat().st_ino
    encode(dataset, out)
    assert outputs(out) == good
    assert untouched.stat().st_ino == inode  # valid shards are not rewritten


def test_new_image_px_under_the_same_vae_re_encodes_every_shard_with_the_new_shape(dataset, encoded, tmp_path):
    """The VAE folder is byte-identical (a pinned VAE); only the images changed size."""
    root, rows = dataset
    out = copy_of(encoded, tmp_path / "out")
    index32 = packed_blobs(tmp_path, seed=5, count=40, image_px=32, shard_size=8)  # the same blobs at 32 px
    by_key = {r["key"]: r for r in rows.to_pylist()}
    assert set(by_key) <= {r["key"] for r in index32}
    rows32 = pa.Table.from_pylist([dict(by_key[r["key"]], shard=r["shard"]) for r in index32 if r["key"] in by_key])
    meta = encode_dataset(
        rows32,
        shards_dir=str(tmp_path / "shards"),
        vae_dir=str(root / "vae"),
        out_dir=str(out),
        image_px=32,
        cfg=EncodeConfig(batch_size=5),
        te=TEXT,
    )
    assert meta["latent_shape"] == [4, 16, 16]
    for path in (out / "shards").glob("*.safetensors"):
        assert load_file(str(path))["mean"].shape[2:] == (4, 16, 16), path.name


def test_two_nodes_started_at_different_times_on_one_folder_write_what_one_node_writes(dataset, encoded, tmp_path):
    shared = tmp_path / "shared"
    with pytest.raises(Exception, match="not encoded yet"):
        encode(dataset, shared, num_nodes=2, node_rank=1)  # node 1 first: its share only
    encode(dataset, shared, num_nodes=2, node_rank=0)  # node 0 later: finds node 1's work, finishes
    assert outputs(shared) == outputs(encoded)


def test_another_nodes_temp_file_is_never_deleted(dataset, tmp_path):
    out = tmp_path / "out"
    (out / "shards").mkdir(parents=True)
    foreign = out / "shards" / ".00000.safetensors.tmp-othernode-123-abcdef01"
    foreign.write_bytes(b"in progress")
    encode(dataset, out)
    assert foreign.read_bytes() == b"in progress"


def test_kill_mid_shard_then_rerun_is_bit_exact_and_skips_finished_shards(dataset, tmp_path):
    root, rows = dataset
    reference = tmp_path / "reference"
    encode(dataset, reference, batch_size=1)
    work = tmp_path / "work"
    work.mkdir()
    pq.write_table(rows, work / "index.parquet")
    pq.write_table(rows.select(["key", "caption"]), work / "captions.parquet")
    (work / "params.yaml").write_text("download:\n  image_px: 16\nencode:\n  batch_size: 1\n  workers: 1\n")
    command = [
        sys.executable,
        str(REPO / "stages/encode.py"),
        "--index",
        "index.parquet",
        "--captions",
        "captions.parquet",
        "--shards",
        str(root / "shards"),
        "--vae",
        str(root / "vae"),
        "--out",
        "latents",
        "--report",
        "report",
    ]
    env = dict(os.environ, SDLAB_ENCODE_BATCH_DELAY_S="0.05")  # 50 ms per batch: a kill lands inside a shard
    process = subprocess.Popen(
        command, cwd=work, start_new_session=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while len(list((work / "latents/shards").glob("*.safetensors"))) < 2 and time.time() < deadline:
        time.sleep(0.005)
    time.sleep(0.15)  # into the third shard's batches
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    done_before = {p.name: p.stat().st_ino for p in (work / "latents/shards").glob("*.safetensors")}
    assert 2 <= len(done_before) < 5 and not (work / "latents/meta.json").exists()
    result = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    tensors = lambda folder: {k: v for k, v in outputs(folder).items() if k != "index.parquet"}  # noqa: E731
    assert tensors(work / "latents") == tensors(reference)
    columns = sorted(pq.read_schema(reference / "index.parquet").names)
    assert pq.read_table(work / "latents/index.parquet", columns=columns).equals(
        pq.read_table(reference / "index.parquet", columns=columns)
    )
    for name, inode in done_before.items():
        assert (work / "latents/shards" / name).stat().st_ino == inode, f"{name} was encoded twice"


def test_read_rows_returns_the_rows_of_one_split(encoded):
    val = read_rows(encoded, "00000", SPLIT_CODES["val"])
    train = read_rows(encoded, "00000", SPLIT_CODES["train"])
    assert len(val["mean"]) + len(train["mean"]) == 7  # 8 images, one not kept
    assert val["hidden"].shape[0] == len(val["mean"])


def test_pretrained_clip_text_encoder_loads_from_a_local_folder(tmp_path):
    from support.tiny_clip import tiny_clip_config
    from transformers import CLIPModel, CLIPTextModel

    tokenizer, _ = load_text_encoder(None, 77)
    config = tiny_clip_config(tokenizer)
    CLIPModel(config).save_pretrained(tmp_path / "repo" / "text_encoder")
    tokenizer.save_pretrained(tmp_path / "repo" / "tokenizer")
    loaded_tokenizer, model = load_text_encoder(
        str(tmp_path / "repo"), 77, subfolder="text_encoder", tokenizer_subfolder="tokenizer"
    )
    assert isinstance(model, CLIPTextModel)
    assert encode_prompts(loaded_tokenizer, model, ["a blob", "another"]).shape == (2, 77, 32)
    from sdlab.config import ConfigError

    with pytest.raises(ConfigError, match="text_encoder.max_length: 100 is above the encoder's limit of 77"):
        load_text_encoder(str(tmp_path / "repo"), 100, subfolder="text_encoder", tokenizer_subfolder="tokenizer")


def test_a_file_written_block_by_block_matches_save_checked(tmp_path):
    """The text file's writer (states a block of rows at a time): the same tensors, header
    fields and checksum as the one-piece writer, so either file passes the other's checks."""
    torch.manual_seed(0)
    tensors = {
        "split": torch.tensor([0, 1, 2, 0, 0], dtype=torch.uint8),
        "hidden": torch.randn(5, 7, 3).half(),
        "attention_mask": torch.randint(0, 2, (5, 7), dtype=torch.uint8),
    }
    whole, streamed = tmp_path / "whole.safetensors", tmp_path / "streamed.safetensors"
    save_checked(whole, tensors, "fp", latents="abc")
    layout = {name: (t.dtype, tuple(t.shape)) for name, t in tensors.items()}
    save_checked_streamed(streamed, layout, lambda name: iter(tensors[name].split(2)), "fp", latents="abc")
    assert {k: v.tolist() for k, v in load_file(str(streamed)).items()} == {k: v.tolist() for k, v in tensors.items()}
    assert read_header(streamed) == read_header(whole)  # fingerprint, sha256, extras, shapes
    assert read_header(streamed)["sha256"] == tensors_sha256(tensors)
    assert is_complete(streamed, "fp", verify=True)
    with pytest.raises(ValueError, match="short.safetensors: attention_mask got 4 rows, 5 expected"):
        save_checked_streamed(
            tmp_path / "short.safetensors", layout, lambda name: iter(tensors[name][:4].split(2)), "fp"
        )
    assert not list(tmp_path.glob(".*tmp*")) and not (tmp_path / "short.safetensors").exists()  # nothing half-written
