"""The encode stage's worker pool: bit-exact across worker counts, resumable, self-checking."""

from __future__ import annotations

import os
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
from sdlab.config import EncodeConfig, TextEncoderConfig, VaeConfig
from sdlab.data.shards import load_images
from sdlab.encode import encode_dataset, load_latents, load_text
from sdlab.models.text_encoder import encode_prompts, load_text_encoder
from sdlab.models.vae import build_vae, load_pretrained_vae, to_tensor

TEXT = TextEncoderConfig()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """40 blob images in 5 shards, a tiny VAE folder, rows with captions."""
    root = tmp_path_factory.mktemp("encode")
    index = packed_blobs(root, seed=5, count=40, image_px=16, shard_size=8)
    torch.manual_seed(0)
    vae = build_vae(VaeConfig(block_out_channels=[8, 16]), 16)
    vae.register_to_config(scaling_factor=1.7)
    vae.save_pretrained(root / "vae")
    rows = [dict(r, split="train") for r in index]
    return root, rows


def encode(dataset, out: Path, **overrides) -> dict:
    root, rows = dataset
    cfg = EncodeConfig(batch_size=5, **overrides)
    return encode_dataset(rows, str(root / "shards"), str(root / "vae"), str(out), 16, cfg, TEXT)


def outputs(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.safetensors"))}


def test_two_workers_write_the_same_bytes_as_one(dataset, tmp_path):
    one = encode(dataset, tmp_path / "one", workers=1)
    two = encode(dataset, tmp_path / "two", workers=2)
    assert two["workers"] == 2 and one["workers"] == 1
    a, b = outputs(tmp_path / "one"), outputs(tmp_path / "two")
    assert len(a) == 6 and a == b  # 5 latent shards + 1 text chunk, byte for byte
    assert pq.read_table(tmp_path / "one/index.parquet").equals(pq.read_table(tmp_path / "two/index.parquet"))


def test_stored_latents_are_the_scaled_posterior_of_each_image(dataset, tmp_path):
    root, rows = dataset
    encode(dataset, tmp_path / "out", flip=True)
    index = pq.read_table(tmp_path / "out/index.parquet")
    stored = load_latents(tmp_path / "out", index)
    assert stored["mean"].shape == (40, 2, 4, 8, 8)  # 2 views: original and flipped
    vae = load_pretrained_vae(str(root / "vae")).eval()
    images = to_tensor(load_images(root / "shards", rows[:3]))
    with torch.no_grad():
        mean = vae.encode(images).latent_dist.mean * 1.7
        flipped = vae.encode(torch.flip(images, dims=[3])).latent_dist.mean * 1.7
    assert torch.allclose(stored["mean"][:3, 0], mean, atol=2e-2)
    assert torch.allclose(stored["mean"][:3, 1], flipped, atol=2e-2)


def test_sample_store_keeps_one_draw_and_text_is_once_per_distinct_caption(dataset, tmp_path):
    _, rows = dataset
    meta = encode(dataset, tmp_path / "out", store="sample")
    stored = load_latents(tmp_path / "out", pq.read_table(tmp_path / "out/index.parquet"))
    assert set(stored) == {"sample"} and stored["sample"].shape == (40, 1, 4, 8, 8)
    distinct = {r["caption"] for r in rows}
    hidden = load_text(tmp_path / "out")
    assert meta["captions"] == len(distinct) + 1 and hidden.shape == (len(distinct) + 1, 77, 384)
    tokenizer, model = load_text_encoder(None, 77)
    assert torch.allclose(hidden[0], encode_prompts(tokenizer, model, [""])[0], atol=1e-2)  # the empty prompt


def test_a_corrupt_or_truncated_shard_is_detected_and_encoded_again(dataset, tmp_path):
    out = tmp_path / "out"
    encode(dataset, out)
    good = outputs(out)
    corrupt, truncated, untouched = out / "shards/00001.safetensors", out / "shards/00002.safetensors", out / "shards/00003.safetensors"
    data = bytearray(corrupt.read_bytes())
    data[-20] ^= 0xFF  # one flipped bit pattern inside the tensor bytes
    corrupt.write_bytes(bytes(data))
    truncated.write_bytes(truncated.read_bytes()[:-100])
    inode = untouched.stat().st_ino
    encode(dataset, out)
    assert outputs(out) == good
    assert untouched.stat().st_ino == inode  # valid shards are not rewritten


def test_kill_during_encoding_then_rerun_is_bit_exact_and_skips_finished_shards(dataset, tmp_path):
    root, rows = dataset
    reference = tmp_path / "reference"
    encode(dataset, reference)
    work = tmp_path / "work"
    work.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), work / "index.parquet")
    pq.write_table(pa.table({"key": [r["key"] for r in rows], "caption": [r["caption"] for r in rows]}),
                   work / "captions.parquet")
    (work / "params.yaml").write_text("encode:\n  batch_size: 5\n")
    command = [sys.executable, str(REPO / "stages/encode.py"), "--index", "index.parquet", "--captions",
               "captions.parquet", "--shards", str(root / "shards"), "--vae", str(root / "vae"), "--out", "latents",
               "--report", "report"]
    process = subprocess.Popen(command, cwd=work, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Kill once the latent shards are done but the caption states are not (the worker is
    # loading the text encoder then): the stage and its workers, as a kill -9 of dvc repro.
    deadline = time.time() + 120
    while len(list((work / "latents/shards").glob("*.safetensors"))) < 5 and time.time() < deadline:
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    done_before = {p.name: p.stat().st_ino for p in (work / "latents/shards").glob("*.safetensors")}
    assert len(done_before) == 5 and not (work / "latents/text/00000.safetensors").exists()
    result = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert outputs(work / "latents") == outputs(reference)
    for name, inode in done_before.items():
        assert (work / "latents/shards" / name).stat().st_ino == inode, f"{name} was encoded twice"


def test_pretrained_clip_text_encoder_loads_from_a_local_folder(tmp_path):
    from transformers import CLIPConfig, CLIPModel, CLIPTextModel
    tokenizer, _ = load_text_encoder(None, 77)
    config = CLIPConfig(text_config=dict(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=77),
                        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                           num_attention_heads=2, image_size=32, patch_size=16))
    CLIPModel(config).save_pretrained(tmp_path / "repo" / "text_encoder")
    tokenizer.save_pretrained(tmp_path / "repo" / "tokenizer")
    loaded_tokenizer, model = load_text_encoder(str(tmp_path / "repo"), 77, subfolder="text_encoder",
                                                tokenizer_subfolder="tokenizer")
    assert isinstance(model, CLIPTextModel)
    assert encode_prompts(loaded_tokenizer, model, ["a blob", "another"]).shape == (2, 77, 32)
