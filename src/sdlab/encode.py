"""Pre-encode VAE latents and text hidden states once, so training never runs them.

Layout of the output folder:
  meta.json                  vae, scaling factor, latent shape, dtype, text encoder
  shards/<input shard>.safetensors   `mean`, `std` of the *scaled* latent posterior (fp16)
  index.parquet              key, split, shard, row, caption_id (+ record attributes)
  text.safetensors           `hidden` (num captions, max_length, dim) fp16; row 0 = ""
  captions.parquet           caption_id, caption
Output shard i depends only on input shard i, and is written to a temp name then renamed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from sdlab.data.shards import load_images
from sdlab.models.text_encoder import encode_prompts
from sdlab.models.vae import encode_moments, to_tensor

STORAGE_DTYPE = torch.float16


def caption_vocabulary(captions: list[str]) -> list[str]:
    """Distinct captions in first-seen order, with the empty prompt first (for CFG)."""
    vocabulary = {"": 0}
    for caption in captions:
        vocabulary.setdefault(caption, len(vocabulary))
    return list(vocabulary)


def save_safetensors_atomic(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(temp))
    os.replace(temp, path)


def encode_shard(vae: AutoencoderKL, scaling_factor: float, shards_dir: Path, rows: list[dict],
                 batch_size: int) -> dict[str, torch.Tensor]:
    """Scaled latent mean/std of `rows` (all from one input shard), in row order."""
    images = to_tensor(load_images(shards_dir, rows))
    mean, std = encode_moments(vae, images, batch_size)
    return {"mean": (mean * scaling_factor).to(STORAGE_DTYPE), "std": (std * scaling_factor).to(STORAGE_DTYPE)}


def encode_latents(vae: AutoencoderKL, scaling_factor: float, shards_dir: Path, rows: list[dict],
                   out_dir: Path, batch_size: int) -> list[dict]:
    """Encode every row, one output shard per input shard; return index rows."""
    by_shard: dict[str, list[dict]] = {}
    for row in rows:
        by_shard.setdefault(row["shard"], []).append(row)
    index = []
    for shard, shard_rows in tqdm(sorted(by_shard.items()), desc="encode", unit="shard"):
        name = Path(shard).stem + ".safetensors"
        save_safetensors_atomic(out_dir / "shards" / name,
                                encode_shard(vae, scaling_factor, shards_dir, shard_rows, batch_size))
        index += [{**r, "latent_shard": name, "row": i} for i, r in enumerate(shard_rows)]
    return index


def encode_texts(tokenizer, model, captions: list[str], batch_size: int) -> torch.Tensor:
    return encode_prompts(tokenizer, model, captions, batch_size).to(STORAGE_DTYPE)


def load_latents(latents_dir: Path, index: pa.Table) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 (mean, std) for the index rows, in row order."""
    shards = {name: load_file(str(latents_dir / "shards" / name))
              for name in sorted(set(index.column("latent_shard").to_pylist()))}
    pairs = zip(index.column("latent_shard").to_pylist(), index.column("row").to_pylist())
    rows = [(shards[name]["mean"][row], shards[name]["std"][row]) for name, row in pairs]
    if not rows:
        raise ValueError(f"{latents_dir}: no latents for the requested rows")
    return torch.stack([m for m, _ in rows]).float(), torch.stack([s for _, s in rows]).float()


def load_text(latents_dir: Path) -> torch.Tensor:
    return load_file(str(latents_dir / "text.safetensors"))["hidden"].float()
