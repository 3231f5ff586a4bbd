"""Pre-encode VAE latents and text hidden states once, so training never runs them.

Layout of the output folder:
  meta.json                  vae, scaling factor, latent shape, dtype, views, text encoder
  shards/<input shard>.safetensors   per image, (V, C, h, w) views of the *scaled* latent:
                             `mean` + `std` (store: distribution) or `sample` (store: sample);
                             V = 2 with flip (original, horizontally flipped), else 1
  text/<chunk>.safetensors   `hidden` (captions, max_length, dim) of distinct captions
  index.parquet              key, split, latent_shard, row, caption_id (+ record columns)
  captions.parquet           caption_id, caption (row 0 is "", the empty prompt for CFG)

Storage per image, fp16: store=sample costs C*h*w*2 bytes, store=distribution twice that,
and flip doubles either (8x8x4 latents: 512 B / 1 KiB; SD's 64x64x4: 32 / 64 KiB).

Every output file is one job: latent shard i depends only on input shard i, text chunk j
only on caption chunk j. A file is written to a temp name and renamed when complete, and
carries a fingerprint of its inputs and a sha256 of its tensors, so a rerun skips what
is done and valid and redoes what is missing, stale, truncated or corrupt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from sdlab.config import EncodeConfig, TextEncoderConfig
from sdlab.data.records import DataError
from sdlab.data.shards import load_images
from sdlab.io import read_json, write_json, write_table
from sdlab.models.text_encoder import PACKAGED_MINILM, encode_prompts, load_text_encoder
from sdlab.models.vae import load_pretrained_vae, to_tensor
from sdlab.workers import Slot, assign, device_and_dtype, node_split, plan_slots, run_pool

log = logging.getLogger(__name__)
STORAGE_DTYPE = torch.float16
TEXT_CHUNK = 2048


@dataclass(frozen=True)
class LatentJob:
    shard: str  # input tar name
    keys: tuple[str, ...]

    @property
    def output(self) -> str:
        return f"shards/{Path(self.shard).stem}.safetensors"


@dataclass(frozen=True)
class TextJob:
    chunk: int
    captions: tuple[str, ...]

    @property
    def output(self) -> str:
        return f"text/{self.chunk:05d}.safetensors"


@dataclass(frozen=True)
class EncodeSpec:
    """Everything a worker needs, picklable: it builds its own models from this."""
    shards_dir: str
    out_dir: str
    vae: str
    vae_fingerprint: str
    text_encoder: dict  # kwargs of sdlab.models.text_encoder.load_text_encoder
    batch_size: int
    store: str  # "distribution" | "sample"
    flip: bool
    seed: int
    precision: str  # fp32 | fp16 | bf16 (accelerators only)
    jobs: tuple = field(default_factory=tuple)  # this node's jobs

    def fingerprint(self, job: LatentJob | TextJob) -> str:
        if isinstance(job, TextJob):
            parts = {"text": self.text_encoder, "captions": list(job.captions)}
        else:
            parts = {"vae": self.vae_fingerprint, "shard": job.shard, "keys": list(job.keys), "store": self.store,
                     "flip": self.flip, "seed": self.seed, "batch": self.batch_size, "precision": self.precision}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def caption_vocabulary(captions: list[str]) -> list[str]:
    """Distinct captions in first-seen order, with the empty prompt first (for CFG)."""
    vocabulary = {"": 0}
    for caption in captions:
        vocabulary.setdefault(caption, len(vocabulary))
    return list(vocabulary)


def plan_jobs(rows: list[dict], vocabulary: list[str]) -> list[LatentJob | TextJob]:
    by_shard: dict[str, list[str]] = {}
    for row in rows:
        by_shard.setdefault(row["shard"], []).append(row["key"])
    jobs: list = [LatentJob(shard, tuple(keys)) for shard, keys in sorted(by_shard.items())]
    jobs += [TextJob(i // TEXT_CHUNK, tuple(vocabulary[i:i + TEXT_CHUNK])) for i in range(0, len(vocabulary), TEXT_CHUNK)]
    return jobs


def folder_fingerprint(path: str | Path) -> str:
    """sha256 over a model folder's files (config and weights)."""
    digest = hashlib.sha256()
    for file in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_checked(path: Path, tensors: dict[str, torch.Tensor], fingerprint: str) -> None:
    """Write tensors with their fingerprint and checksum, via a temp name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    temp = path.with_name(f".{path.name}.tmp")
    # One metadata key: safetensors orders several keys differently from run to run.
    check = json.dumps({"fingerprint": fingerprint, "sha256": tensors_sha256(tensors)}, sort_keys=True)
    save_file(tensors, str(temp), metadata={"sdlab": check})
    os.replace(temp, path)


def is_complete(path: Path, fingerprint: str, verify: bool = True) -> bool:
    """True if `path` holds the output of these inputs; with `verify`, also intact (its
    tensors are read and checked against their checksum, not only the header)."""
    if not path.is_file():
        return False
    try:
        with safe_open(str(path), "pt") as handle:
            metadata = json.loads((handle.metadata() or {}).get("sdlab", "{}"))
        if metadata.get("fingerprint") != fingerprint:
            return False
        return not verify or tensors_sha256(load_file(str(path))) == metadata.get("sha256")
    except Exception as exc:  # any unreadable file is redone, and said so
        log.warning("%s is unreadable (%s); encoding it again", path, exc)
        return False


def _latent_views(vae, images: torch.Tensor, spec: EncodeSpec, scaling: float, generator: torch.Generator,
                  device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Scaled latent views of one batch: (B, V, C, h, w) per stored tensor."""
    views = [images, torch.flip(images, dims=[3])] if spec.flip else [images]
    dists = [vae.encode(view.to(device, dtype)).latent_dist for view in views]
    means = [dist.mean.float().cpu() * scaling for dist in dists]
    stds = [dist.std.float().cpu() * scaling for dist in dists]
    if spec.store == "sample":
        draws = [mean + std * torch.randn(mean.shape, generator=generator) for mean, std in zip(means, stds)]
        return {"sample": torch.stack(draws, dim=1)}
    return {"mean": torch.stack(means, dim=1), "std": torch.stack(stds, dim=1)}


@torch.no_grad()
def encode_images(vae, images: torch.Tensor, spec: EncodeSpec, shard: str, device: torch.device,
                  dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """All stored tensors of one input shard, in row order, fp16."""
    scaling = float(vae.config.scaling_factor)
    seed = spec.seed * 1_000_003 + int(hashlib.sha256(shard.encode()).hexdigest()[:8], 16)
    generator = torch.Generator().manual_seed(seed)
    batches = [_latent_views(vae, images[start:start + spec.batch_size], spec, scaling, generator, device, dtype)
               for start in range(0, len(images), spec.batch_size)]
    return {name: torch.cat([batch[name] for batch in batches]).to(STORAGE_DTYPE) for name in batches[0]}


def _read_job_images(spec: EncodeSpec, job: LatentJob) -> torch.Tensor:
    return to_tensor(load_images(spec.shards_dir, [{"key": k, "shard": job.shard} for k in job.keys]))


def encode_worker(slot: Slot, spec: EncodeSpec) -> None:
    """Worker body: encode this slot's share of the node's jobs, skipping finished ones."""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s encode[{slot.rank}] %(levelname)s: %(message)s")
    out = Path(spec.out_dir)
    todo = [job for job in assign(spec.jobs, slot.rank, slot.world)
            if not is_complete(out / job.output, spec.fingerprint(job))]
    if not todo:
        return
    device, dtype = device_and_dtype(spec.precision)
    latent_jobs = [job for job in todo if isinstance(job, LatentJob)]
    text_jobs = [job for job in todo if isinstance(job, TextJob)]
    if latent_jobs:
        vae = load_pretrained_vae(spec.vae).to(device).eval()
        if dtype != torch.float32:
            vae = vae.to(dtype)
        with ThreadPoolExecutor(1) as reader:  # decode shard i+1 while shard i encodes
            pending = reader.submit(_read_job_images, spec, latent_jobs[0])
            for i, job in enumerate(tqdm(latent_jobs, desc=f"encode[{slot.rank}]", unit="shard",
                                         disable=slot.rank != 0)):
                images = pending.result()
                if i + 1 < len(latent_jobs):
                    pending = reader.submit(_read_job_images, spec, latent_jobs[i + 1])
                tensors = encode_images(vae, images, spec, job.shard, device, dtype)
                save_checked(out / job.output, tensors, spec.fingerprint(job))
    if text_jobs:
        tokenizer, model = load_text_encoder(**spec.text_encoder)
        model = model.to(device)
        for job in text_jobs:
            hidden = encode_prompts(tokenizer, model, list(job.captions), spec.batch_size, device)
            save_checked(out / job.output, {"hidden": hidden.to(STORAGE_DTYPE)}, spec.fingerprint(job))


def index_rows(rows: list[dict], vocabulary: list[str]) -> pa.Table:
    """The latents index: where each key's latents live and which caption row it uses."""
    caption_id = {caption: i for i, caption in enumerate(vocabulary)}
    position: dict[str, int] = {}
    out = []
    for row in rows:
        shard = row["shard"]
        row_in_shard = position.get(shard, 0)
        position[shard] = row_in_shard + 1
        out.append({**row, "latent_shard": f"{Path(shard).stem}.safetensors", "row": row_in_shard,
                    "caption_id": caption_id[row["caption"]]})
    return pa.Table.from_pylist(out)


def encode_dataset(rows: list[dict], shards_dir: str, vae_dir: str, out_dir: str, image_px: int,
                   cfg: EncodeConfig, te: TextEncoderConfig) -> dict:
    """Encode `rows` (kept index rows with a `caption`) into `out_dir`; return meta.

    This node's share of the jobs runs on a pool of workers; finished, valid outputs are
    skipped. Index, captions and meta are written once every job's output is present."""
    out = Path(out_dir)
    vocabulary = caption_vocabulary([r["caption"] for r in rows])
    jobs = plan_jobs(rows, vocabulary)
    node_rank, num_nodes = node_split(cfg.num_nodes, cfg.node_rank)
    text_encoder = te.model_dump()  # the kwargs of load_text_encoder, for the workers and for train
    spec = EncodeSpec(shards_dir=str(shards_dir), out_dir=str(out_dir), vae=str(vae_dir),
                      vae_fingerprint=folder_fingerprint(vae_dir), text_encoder=text_encoder,
                      batch_size=cfg.batch_size, store=cfg.store, flip=cfg.flip, seed=cfg.seed,
                      precision=cfg.precision, jobs=tuple(assign(jobs, node_rank, num_nodes)))
    expected = {job.output for job in jobs}
    for stale in [p for p in out.rglob("*.safetensors*") if str(p.relative_to(out)) not in expected]:
        stale.unlink()  # outputs of inputs that no longer exist, and temp files of a killed run
    slots = plan_slots(cfg.workers, cfg.threads_per_worker)
    log.info("node %d/%d: %d of %d jobs on %d worker(s)", node_rank, num_nodes, len(spec.jobs), len(jobs), len(slots))
    run_pool(encode_worker, spec, slots)
    # The workers verified or wrote every checksum just now: a header check finds what is missing.
    missing = [job.output for job in jobs if not is_complete(out / job.output, spec.fingerprint(job), verify=False)]
    if missing:
        raise DataError(f"{len(missing)} output(s) missing, e.g. {missing[0]}: other nodes have not finished "
                        "their share; run this stage again once they have")
    vae_config = read_json(Path(vae_dir) / "config.json")
    latent_px = image_px // 2 ** (len(vae_config["block_out_channels"]) - 1)
    meta = {"vae": str(vae_dir), "scaling_factor": vae_config["scaling_factor"],
            "latent_shape": [vae_config["latent_channels"], latent_px, latent_px], "dtype": "float16",
            "store": cfg.store, "views": 2 if cfg.flip else 1, "text_encoder": text_encoder,
            "text_encoder_name": te.pretrained or PACKAGED_MINILM, "images": len(rows),
            "captions": len(vocabulary), "workers": len(slots)}
    write_table(out / "captions.parquet", pa.table({"caption_id": list(range(len(vocabulary))), "caption": vocabulary}))
    write_table(out / "index.parquet", index_rows(rows, vocabulary))
    write_json(out / "meta.json", meta)
    return meta


def load_latents(latents_dir: Path, index: pa.Table) -> dict[str, torch.Tensor]:
    """fp32 stored tensors (`mean`+`std` or `sample`, each (N, V, C, h, w)) for the index rows."""
    shards = {name: load_file(str(latents_dir / "shards" / name))
              for name in sorted(set(index.column("latent_shard").to_pylist()))}
    pairs = list(zip(index.column("latent_shard").to_pylist(), index.column("row").to_pylist()))
    if not pairs:
        raise ValueError(f"{latents_dir}: no latents for the requested rows")
    names = next(iter(shards.values())).keys()
    return {name: torch.stack([shards[s][name][r] for s, r in pairs]).float() for name in names}


def load_text(latents_dir: Path) -> torch.Tensor:
    """(num captions, max_length, dim) fp32 hidden states, row = caption_id."""
    chunks = sorted((latents_dir / "text").glob("*.safetensors"))
    return torch.cat([load_file(str(path))["hidden"] for path in chunks]).float()
