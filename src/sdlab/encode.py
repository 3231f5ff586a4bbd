"""Pre-encode VAE latents (and text conditioning) once, so training never runs the VAE.

The output layout is `sdlab.latents`'. One job per image shard `<stem>.tar`, run by a pool
of workers (one per GPU; see `sdlab.workers`) and split across nodes with no coordinator:

1. latents: every image of the tar, read and decoded `encode.batch_size` at a time (a
   reader thread decodes batch i+1 while batch i encodes, so a worker's memory is bounded
   by the batch, not the shard), scaled posterior mean+std (or one draw), fp16. Its
   fingerprint covers the tar's bytes (sha256), the VAE weights and the latent recipe.
2. text: split codes and conditioning for the same rows (`encode.text`: `states` =
   text-encoder hidden states, `tokens` = token ids only; for `train.denoiser: transformer`
   the states are encoded with the attention mask, stored beside them, as PixArt's pipeline
   does). Its fingerprint covers the
   latents' fingerprint, the keys, captions and splits of that shard, and the encoder.

Storage per image, fp16: store=sample costs C*h*w*2 bytes, store=distribution twice that,
flip doubles either (8x8x4: 512 B / 1 KiB; SD's 32x32x4 at 256 px: 8 / 16 KiB). Text:
states L*D*2 bytes (77x384 MiniLM: 58 KiB; 77x768 CLIP-L: 115 KiB), tokens L*5 bytes (385 B).

A rerun skips outputs that are complete, valid and of the same inputs, and redoes missing,
stale, truncated, corrupt or wrongly shaped ones. Worker, thread and node counts never
reach an output's bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import shutil
import socket
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from safetensors import safe_open
from tqdm import tqdm

from sdlab.config import EncodeConfig, TextEncoderConfig
from sdlab.data.images import bucket_name, bucket_size
from sdlab.data.records import DataError
from sdlab.data.shard_plan import ShardJob, image_members, write_shard_plan
from sdlab.data.shards import png_to_array
from sdlab.io import atomic_path, file_sha256, folder_fingerprint, read_json, write_json, write_table
from sdlab.latents import (
    NOT_KEPT,
    ORIGINAL,
    ROWS,
    SPLIT_CODES,
    STORAGE_DTYPE,
    bucketed_name,
    is_complete,
    latent_path,
    read_header,
    save_checked,
    save_checked_streamed,
    tensor_bucket,
    text_path,
)
from sdlab.models.text_encoder import PACKAGED_MINILM, encode_prompts, load_text_encoder, tokenize
from sdlab.models.vae import load_pretrained_vae, to_tensor
from sdlab.workers import Slot, assign, device_and_dtype, node_split, plan_slots, run_pool

log = logging.getLogger(__name__)
CAPTION_COLUMNS = ("caption", "original_caption")  # what encode reads of the caption stage's table
BATCH_DELAY_ENV = "SDLAB_ENCODE_BATCH_DELAY_S"  # seconds per batch: lets a test's kill land inside a shard


@dataclass(frozen=True)
class EncodeSpec:
    """Everything a worker needs, picklable: it builds its own models from this."""

    shards_dir: str
    out_dir: str
    plan: str  # parquet of kept rows (key, caption, split), one row group per job
    vae: str
    vae_fingerprint: str
    text_encoder: dict  # kwargs of sdlab.models.text_encoder.load_text_encoder
    text: str  # "states" | "tokens"
    batch_size: int
    store: str  # "distribution" | "sample"
    flip: bool
    seed: int
    precision: str  # fp32 | fp16 | bf16 (accelerators only)
    latent_shape: tuple[int, int, int]  # (C, h, w) every latent row must have
    jobs: tuple = field(default_factory=tuple)  # this node's jobs
    text_mask: bool = False  # states encoded with the attention mask, which is stored too (PixArt)
    image_px: int = 0  # the square side the latent shape is of (bucket sizes scale from it)

    def bucket_latent_shape(self, bucket: str | None) -> tuple[int, int, int]:
        """(C, h, w) of a bucket's latents (`<W>x<H>` pixels); the square's for None."""
        if bucket is None:
            return tuple(self.latent_shape)
        channels, height, _ = self.latent_shape
        factor = self.image_px // height
        width_px, height_px = bucket_size(bucket)
        return channels, height_px // factor, width_px // factor

    def latent_fingerprint(self, tar_sha256: str) -> str:
        parts = {
            "vae": self.vae_fingerprint,
            "tar": tar_sha256,
            "store": self.store,
            "flip": self.flip,
            "seed": self.seed,
            "batch": self.batch_size,
            "precision": self.precision,
        }
        return _digest(parts)

    def text_fingerprint(self, latents_fingerprint: str, job: ShardJob) -> str:
        parts = {
            "text": self.text,
            "encoder": self.text_encoder,
            "latents": latents_fingerprint,
            "plan": job.digest,
            **({"mask": True} if self.text_mask else {}),
        }
        return _digest(parts)


def _digest(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


# ---- the worker side ----------------------------------------------------------------------


def iter_tar_images(path: Path, batch_size: int) -> Iterator[tuple[list[str], list[int], np.ndarray]]:
    """(keys, places in tar order, uint8 (B, H, W, 3)) batches of a shard's images, streamed;
    images of one size per batch (a batch leaves when its size has `batch_size` images, the
    rest at the end in order of first sight). A one-size shard: batches in tar order."""
    pending: dict[tuple[int, ...], tuple[list[str], list[int], list[np.ndarray]]] = {}
    place = 0
    for key, data in image_members(path):
        image = png_to_array(data)
        keys, places, images = pending.setdefault(image.shape, ([], [], []))
        keys.append(key)
        places.append(place)
        images.append(image)
        place += 1
        if len(keys) == batch_size:
            yield keys, places, np.stack(images)
            del pending[image.shape]
    for keys, places, images in pending.values():
        yield keys, places, np.stack(images)


def prefetched(iterator: Iterator, depth: int = 2) -> Iterator:
    """Run `iterator` in a thread, `depth` items ahead of the consumer."""
    items: queue.Queue = queue.Queue(depth)
    done = object()

    def produce() -> None:
        try:
            for item in iterator:
                items.put(item)
        except BaseException as exc:  # handed to the consumer, raised there
            items.put(exc)
        items.put(done)

    threading.Thread(target=produce, daemon=True).start()
    while (item := items.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item


def _latent_views(
    vae,
    images: torch.Tensor,
    spec: EncodeSpec,
    scaling: float,
    generator: torch.Generator,
    device: torch.device,
    dtype: torch.dtype,
) -> dict[str, torch.Tensor]:
    """Scaled latent views of one batch: (B, V, C, h, w) per stored tensor, fp16."""
    views = [images, torch.flip(images, dims=[3])] if spec.flip else [images]
    dists = [vae.encode(view.to(device, dtype)).latent_dist for view in views]
    means = [dist.mean.float().cpu() * scaling for dist in dists]
    stds = [dist.std.float().cpu() * scaling for dist in dists]
    if spec.store == "sample":
        draws = [
            mean + std * torch.randn(mean.shape, generator=generator) for mean, std in zip(means, stds, strict=True)
        ]
        return {"sample": torch.stack(draws, dim=1).to(STORAGE_DTYPE)}
    return {"mean": torch.stack(means, dim=1).to(STORAGE_DTYPE), "std": torch.stack(stds, dim=1).to(STORAGE_DTYPE)}


@torch.no_grad()
def encode_shard(
    vae, tar: Path, spec: EncodeSpec, device: torch.device, dtype: torch.dtype
) -> tuple[list[str], dict[str, torch.Tensor], dict[str, int]]:
    """Keys in tar order, the stored tensors of every image of one shard, and its buckets
    (image size -> count). One size of the expected latent shape: `mean`/`std`/`sample` in
    tar order; several (aspect buckets): those per bucket plus `rows.<bucket>` (`sdlab.latents`)."""
    scaling = float(vae.config.scaling_factor)
    seed = spec.seed * 1_000_003 + int(hashlib.sha256(tar.name.encode()).hexdigest()[:8], 16)
    generator = torch.Generator().manual_seed(seed)
    by_bucket: dict[str, tuple[list[str], list[int], list[dict[str, torch.Tensor]]]] = {}
    delay = float(os.environ.get(BATCH_DELAY_ENV, "0"))
    for batch_keys, places, images in prefetched(iter_tar_images(tar, spec.batch_size)):
        time.sleep(delay)
        keys, rows, batches = by_bucket.setdefault(bucket_name(images.shape[2], images.shape[1]), ([], [], []))
        keys += batch_keys
        rows += places
        batches.append(_latent_views(vae, to_tensor(images), spec, scaling, generator, device, dtype))
    if not by_bucket:
        raise DataError(f"{tar}: no images in this shard")
    joined = {
        b: {n: torch.cat([batch[n] for batch in batches]) for n in batches[0]}
        for b, (_, _, batches) in by_bucket.items()
    }
    keys_in_order = [""] * sum(len(k) for k, _, _ in by_bucket.values())
    for keys, rows, _ in by_bucket.values():
        for key, row in zip(keys, rows, strict=True):
            keys_in_order[row] = key
    counts = {bucket: len(keys) for bucket, (keys, _, _) in sorted(by_bucket.items())}
    (_, tensors), *others = joined.items()
    if not others and tuple(next(iter(tensors.values())).shape[2:]) == tuple(spec.latent_shape):
        return keys_in_order, tensors, counts
    stored = {}
    for bucket in sorted(joined):
        stored[bucketed_name(ROWS, bucket)] = torch.tensor(by_bucket[bucket][1], dtype=torch.int64)
        stored |= {bucketed_name(name, bucket): t for name, t in joined[bucket].items()}
    return keys_in_order, stored, counts


@dataclass(frozen=True)
class TextField:
    """One tensor of a text file: its dtype and shape, and its rows block by block."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    blocks: Callable[[], Iterator[torch.Tensor]]


def whole(tensor: torch.Tensor) -> TextField:
    return TextField(tensor.dtype, tuple(tensor.shape), lambda: iter([tensor]))


class TextConditioner:
    """Writes a shard's text file: split codes plus states or token ids, in row order."""

    def __init__(self, spec: EncodeSpec, device: torch.device):
        self.spec, self.device = spec, device
        self.tokenizer, self.model = load_text_encoder(**spec.text_encoder, load_model=spec.text == "states")
        if self.model is not None:
            self.model = self.model.to(device)

    def write(self, path: Path, keys: list[str], rows: pa.Table, fingerprint: str, **extra) -> None:
        """The text file of `keys` (tar order): split codes and text fields; with an
        `original_caption` column, the source caption's fields too (`original_*`, the backend
        caption's where a row has none) and `has_original`. States are encoded and written a
        block of rows at a time, so memory holds one block, not the shard's states."""
        splits = dict(zip(rows["key"].to_pylist(), rows["split"].to_pylist(), strict=True))
        split = torch.tensor([SPLIT_CODES[splits[k]] if k in splits else NOT_KEPT for k in keys], dtype=torch.uint8)
        positions = [i for i, k in enumerate(keys) if k in splits]
        captions = dict(zip(rows["key"].to_pylist(), rows["caption"].to_pylist(), strict=True))
        fields = {"split": whole(split), **self.fields(len(keys), positions, [captions[keys[i]] for i in positions])}
        if "original_caption" in rows.column_names:
            originals = dict(zip(rows["key"].to_pylist(), rows["original_caption"].to_pylist(), strict=True))
            texts = [originals[keys[i]] or captions[keys[i]] for i in positions]
            has_original = torch.zeros(len(keys), dtype=torch.uint8)
            has_original[positions] = torch.tensor([bool(originals[keys[i]]) for i in positions], dtype=torch.uint8)
            fields |= {ORIGINAL + name: f for name, f in self.fields(len(keys), positions, texts).items()}
            fields["has_original"] = whole(has_original)
        layout = {name: (f.dtype, f.shape) for name, f in fields.items()}
        save_checked_streamed(path, layout, lambda name: fields[name].blocks(), fingerprint, **extra)

    def fields(self, count: int, positions: list[int], captions: list[str]) -> dict[str, TextField]:
        """Text fields of `count` rows, `captions` at rows `positions`, zeros elsewhere. Token
        ids and masks (a few hundred bytes a row) are built whole, each distinct caption
        tokenized once; states (tens of KiB a row) block by block."""
        distinct = list(dict.fromkeys(captions))
        where = {caption: i for i, caption in enumerate(distinct)}
        rows_of = torch.tensor([where[c] for c in captions], dtype=torch.long)
        index = torch.tensor(positions, dtype=torch.long)
        ids, mask = tokenize(self.tokenizer, distinct)
        small = {"attention_mask": mask.to(torch.uint8)}
        if self.spec.text == "tokens":
            small["input_ids"] = ids.to(torch.int32)
        elif not self.spec.text_mask:
            del small["attention_mask"]
        fields = {name: whole(_scatter_rows(field[rows_of], count, index)) for name, field in small.items()}
        if self.spec.text == "states":
            shape = (count, ids.shape[1], self.model.config.hidden_size)
            fields["hidden"] = TextField(STORAGE_DTYPE, shape, lambda: self.state_blocks(shape, positions, captions))
        return fields

    def state_blocks(self, shape: tuple[int, ...], positions: list[int], captions: list[str]) -> Iterator[torch.Tensor]:
        """The states of rows [start, start + batch_size) in turn, zeros on rows not kept. A
        caption is encoded once while it is among the shard's last `batch_size` distinct
        captions seen (a repeated caption costs one forward; memory stays one block's worth);
        the cache lives for one shard, so which worker did which shard before never reaches a byte."""
        caption_at = dict(zip(positions, captions, strict=True))
        step, seen = self.spec.batch_size, OrderedDict()
        for start in range(0, shape[0], step):
            block = torch.zeros(min(step, shape[0] - start), *shape[1:], dtype=STORAGE_DTYPE)
            here = [i for i in range(start, start + len(block)) if i in caption_at]
            texts = [caption_at[i] for i in here]
            new = [c for c in dict.fromkeys(texts) if c not in seen]
            if new:
                states = encode_prompts(self.tokenizer, self.model, new, step, self.device, masked=self.spec.text_mask)
                seen.update(zip(new, states.to(STORAGE_DTYPE), strict=True))
            for row, text in zip(here, texts, strict=True):
                block[row - start] = seen[text]
                seen.move_to_end(text)
            while len(seen) > step:
                seen.popitem(last=False)
            yield block


def _scatter_rows(values: torch.Tensor, count: int, index: torch.Tensor) -> torch.Tensor:
    """`values` placed at rows `index` of `count` rows, zeros elsewhere (no copy when every
    row is one of them, in order: a shard whose images were all kept)."""
    if len(index) == count and torch.equal(index, torch.arange(count)):
        return values
    full = values.new_zeros(count, *values.shape[1:])
    full[index] = values
    return full


class ShardFinisher:
    """Writes a shard's latent file and builds and writes its text file in a thread of its own,
    one shard at a time, while the worker's main thread encodes the next shard: on a GPU the
    device never waits on hashing, the text job or the disk; memory holds at most two shards'
    outputs (the one being finished, the one being encoded)."""

    def __init__(self, spec: EncodeSpec, device: torch.device):
        self.spec, self.device, self.out = spec, device, Path(spec.out_dir)
        self.plan = pq.ParquetFile(spec.plan)
        self.conditioner: TextConditioner | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="encode-finisher")
        self._pending: Future | None = None

    def submit(self, job: ShardJob, fingerprint: str, encoded: tuple | None) -> None:
        """Finish `job` (`encoded`: keys, tensors, buckets to write, or None when its latent file
        is complete); first waits for the previous shard, raising its error if it failed."""
        self.wait()
        self._pending = self._thread.submit(self._finish, job, fingerprint, encoded)

    def wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def close(self) -> None:
        self.wait()
        self._thread.shutdown()

    def _finish(self, job: ShardJob, fingerprint: str, encoded: tuple | None) -> None:
        if encoded is not None:
            keys, tensors, buckets = encoded
            extra = {"buckets": buckets} if len(buckets) > 1 or ROWS in {n.partition(".")[0] for n in tensors} else {}
            save_checked(latent_path(self.out, job.stem), tensors, fingerprint, keys=keys, **extra)
        text_fingerprint = self.spec.text_fingerprint(fingerprint, job)
        if not is_complete(text_path(self.out, job.stem), text_fingerprint):
            self.conditioner = self.conditioner or TextConditioner(self.spec, self.device)
            keys = read_header(latent_path(self.out, job.stem))["keys"]
            rows = self.plan.read_row_group(job.group)
            self.conditioner.write(text_path(self.out, job.stem), keys, rows, text_fingerprint, latents=fingerprint)


def encode_worker(slot: Slot, spec: EncodeSpec) -> None:
    """Worker body: this slot's share of the node's jobs, skipping finished outputs; each shard's
    files are written by the `ShardFinisher` while the next shard encodes."""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s encode[{slot.rank}] %(levelname)s: %(message)s")
    out, device_dtype = Path(spec.out_dir), device_and_dtype(spec.precision)
    finisher, vae = ShardFinisher(spec, device_dtype[0]), None
    try:
        for job in tqdm(
            assign(spec.jobs, slot.rank, slot.world), desc=f"encode[{slot.rank}]", unit="shard", disable=slot.rank != 0
        ):
            tar = Path(spec.shards_dir) / job.shard
            if not tar.is_file():
                raise DataError(f"{tar}: image shard listed in the index is missing")
            fingerprint = spec.latent_fingerprint(file_sha256(tar))
            encoded = None
            if not is_complete(latent_path(out, job.stem), fingerprint, shape=spec.bucket_latent_shape):
                if vae is None:
                    vae = load_pretrained_vae(spec.vae).to(device_dtype[0]).eval()
                    vae = vae if device_dtype[1] == torch.float32 else vae.to(device_dtype[1])
                encoded = encode_shard(vae, tar, spec, *device_dtype)
                for name, tensor in encoded[1].items():
                    expected = spec.bucket_latent_shape(tensor_bucket(name))
                    if name.partition(".")[0] != ROWS and tuple(tensor.shape[2:]) != expected:
                        raise DataError(
                            f"{tar}: images give {tuple(tensor.shape[2:])} latents, {expected} expected "
                            "(are the shards of download.image_px?)"
                        )
            finisher.submit(job, fingerprint, encoded)
    finally:
        finisher.close()


# ---- the node side -------------------------------------------------------------------------


def kept_rows(index: pa.Table, captions: pa.Table) -> pa.Table:
    """The dedupe index (or some of its columns) with the caption stage's `caption` column
    (and `original_caption`, where the stage kept it) (same keys, any order), in index order."""
    columns = [c for c in CAPTION_COLUMNS if c in captions.column_names]
    index = index.drop_columns([c for c in CAPTION_COLUMNS if c in index.column_names])
    if index["key"].equals(captions["key"]):
        for column in columns:
            index = index.append_column(column, captions[column])
        return index
    position = pa.array(np.arange(index.num_rows))
    joined = index.append_column("__position", position).join(captions.select(["key", *columns]), "key")
    if joined.num_rows != index.num_rows:
        raise DataError(f"captions: {index.num_rows - joined.num_rows} kept image(s) have no caption")
    return joined.sort_by("__position").drop_columns(["__position"])


def write_plan(rows: pa.Table, path: Path) -> list[ShardJob]:
    """The kept rows' (key, caption, split[, original_caption]), one row group per shard; a job per shard."""
    planned = ["key", "caption", "split", *(["original_caption"] if "original_caption" in rows.column_names else [])]
    return write_shard_plan(rows, planned, path)


def latent_shape(vae_dir: str | Path, image_px: int) -> tuple[int, int, int]:
    vae_config = read_json(Path(vae_dir) / "config.json")
    px = image_px // 2 ** (len(vae_config["block_out_channels"]) - 1)
    return vae_config["latent_channels"], px, px


def row_buckets(path: Path, header: dict) -> list[str | None]:
    """Each row's aspect bucket in tar order (None throughout for a one-size shard)."""
    buckets: list[str | None] = [None] * len(header["keys"])
    if "buckets" in header:
        with safe_open(str(path), "np") as handle:
            for bucket in header["buckets"]:
                for place in handle.get_tensor(bucketed_name(ROWS, bucket)).tolist():
                    buckets[place] = bucket
    return buckets


def latents_index(
    rows: pa.Table, out: Path, jobs: list[ShardJob], square: str = ""
) -> tuple[pa.Table, list[dict], bool]:
    """Where each kept row lives (`latent_shard`, `row`, aligned with `rows`), meta's per-shard
    entries, read from the files' headers (the keys in tar order), and whether any shard holds
    aspect buckets (then each entry counts its rows per bucket, one-size shards as `square`)."""
    located, shards = [], []
    for job in jobs:
        path = latent_path(out, job.stem)
        latent_header, text_header = read_header(path), read_header(text_path(out, job.stem))
        keys = latent_header["keys"]
        located.append(
            pa.table(
                {
                    "key": keys,
                    "latent_shard": pa.repeat(f"{job.stem}.safetensors", len(keys)),
                    "row": np.arange(len(keys), dtype=np.int64),
                    "bucket": [b or square for b in row_buckets(path, latent_header)],
                }
            )
        )
        shards.append(
            {
                "name": job.stem,
                "rows": len(keys),
                "latents": latent_header["fingerprint"],
                "text": text_header["fingerprint"],
            }
        )
    keyed = pa.table({"key": rows["key"], "split": rows["split"], "__position": np.arange(rows.num_rows)})
    where = keyed.join(pa.concat_tables(located), "key").sort_by("__position")
    counts = where.group_by(["latent_shard", "bucket", "split"]).aggregate([("key", "count")]).to_pydict()
    per_shard: dict[str, dict[str, dict[str, int]]] = {}
    for shard, bucket, split, n in zip(
        *(counts[c] for c in ("latent_shard", "bucket", "split", "key_count")), strict=True
    ):
        per_shard.setdefault(shard, {}).setdefault(bucket, {}).setdefault(split, n)
    bucketed = any("buckets" in read_header(latent_path(out, job.stem)) for job in jobs)
    for entry in shards:
        found = per_shard.get(f"{entry['name']}.safetensors", {})
        for split in SPLIT_CODES:
            entry[split] = sum(by_split.get(split, 0) for by_split in found.values())
        if bucketed:
            entry["buckets"] = {b: {s: found[b].get(s, 0) for s in SPLIT_CODES} for b in sorted(found)}
    return where.select(["latent_shard", "row"]), shards, bucketed


def write_index(
    path: Path, rows: pa.Table, where: pa.Table, records: Path | None = None, batch_rows: int = 262_144
) -> None:
    """index.parquet: every kept row's record columns, its caption and where its latents live.
    With `records` (the dedupe index, same rows in the same order) the wide record columns are
    streamed from that file in batches instead of held in memory."""
    extra = pa.table({"caption": rows["caption"], "latent_shard": where["latent_shard"], "row": where["row"]})
    if records is None:
        base = rows.drop_columns([c for c in extra.column_names if c in rows.column_names])
        write_table(path, _join_columns(base, extra))
        return
    parquet, start = pq.ParquetFile(records), 0
    schema = None
    with atomic_path(path) as temp:
        writer = None
        for batch in parquet.iter_batches(batch_size=batch_rows):
            base = pa.Table.from_batches([batch])
            base = base.drop_columns([c for c in extra.column_names if c in base.column_names])
            part = _join_columns(base, extra.slice(start, base.num_rows))
            if writer is None:
                schema = part.schema
                writer = pq.ParquetWriter(temp, schema)
            writer.write_table(part.cast(schema))
            start += base.num_rows
        if writer is not None:
            writer.close()
    if start != rows.num_rows:
        raise DataError(f"{records}: {start} rows, the captions table has {rows.num_rows}")


def _join_columns(base: pa.Table, extra: pa.Table) -> pa.Table:
    for name in extra.column_names:
        base = base.append_column(name, extra[name])
    return base


def write_uncond(out: Path, te: TextEncoderConfig, text: str, text_mask: bool = False) -> int:
    """uncond.safetensors (the empty prompt); returns the text encoder's hidden width."""
    fingerprint = _digest({"text": text, "encoder": te.model_dump(), **({"mask": True} if text_mask else {})})
    path = out / "uncond.safetensors"
    if is_complete(path, fingerprint):  # a rerun does not load the encoder
        return int(read_header(path)["width"])
    tokenizer, model = load_text_encoder(**te.model_dump())
    ids, mask = tokenize(tokenizer, [""])
    tensors = {"input_ids": ids.to(torch.int32), "attention_mask": mask.to(torch.uint8)}
    hidden = encode_prompts(tokenizer, model, [""], masked=text_mask)
    if text == "states":
        tensors["hidden"] = hidden.to(STORAGE_DTYPE)
    save_checked(path, tensors, fingerprint, width=int(hidden.shape[-1]))
    return int(hidden.shape[-1])


def encode_dataset(
    rows: pa.Table,
    *,
    shards_dir: str,
    vae_dir: str,
    out_dir: str,
    image_px: int,
    cfg: EncodeConfig,
    te: TextEncoderConfig,
    records: Path | None = None,
    text_mask: bool = False,
) -> dict:
    """Encode the kept `rows` (key, shard, split, caption [+ record columns]) into `out_dir`; return meta.

    This node's share of the jobs runs on a pool of workers; finished, valid outputs are
    skipped. Index and meta are written by the run that finds every job's output present;
    the index takes its record columns from `records` (streamed) when given, else from `rows`."""
    out = Path(out_dir)
    if rows.num_rows == 0:
        raise DataError("encode: no kept images to encode")
    node_rank, num_nodes = node_split(cfg.num_nodes, cfg.node_rank)
    plan_dir = Path(tempfile.mkdtemp(prefix="sdlab-encode-plan-"))  # node-local: nodes never share it
    try:
        jobs = write_plan(rows, plan_dir / "plan.parquet")
        spec = EncodeSpec(
            shards_dir=str(shards_dir),
            out_dir=str(out),
            plan=str(plan_dir / "plan.parquet"),
            vae=str(vae_dir),
            vae_fingerprint=folder_fingerprint(vae_dir),
            text_encoder=te.model_dump(),
            text=cfg.text,
            batch_size=cfg.batch_size,
            store=cfg.store,
            flip=cfg.flip,
            seed=cfg.seed,
            precision=cfg.precision,
            latent_shape=latent_shape(vae_dir, image_px),
            image_px=image_px,
            jobs=tuple(assign(jobs, node_rank, num_nodes)),
            text_mask=text_mask,
        )
        remove_stale(out, {job.stem for job in jobs})
        slots = plan_slots(cfg.workers, cfg.threads_per_worker, jobs=len(spec.jobs))
        log.info(
            "node %d/%d: %d of %d shards on %d worker(s)", node_rank, num_nodes, len(spec.jobs), len(jobs), len(slots)
        )
        run_pool(encode_worker, spec, slots)
    finally:
        shutil.rmtree(plan_dir, ignore_errors=True)
    missing = [job.stem for job in jobs if not (latent_path(out, job.stem).is_file() and _text_matches(out, job, spec))]
    if missing:
        raise DataError(
            f"{len(missing)} shard(s) not encoded yet, e.g. {missing[0]}: other nodes have not "
            "finished their share; run this stage again once they have"
        )
    square = bucket_name(image_px, image_px)
    where, shards, bucketed = latents_index(rows, out, jobs, square)
    text_dim = write_uncond(out, te, cfg.text, text_mask)
    channels, height, width = spec.latent_shape
    meta = {
        "vae": str(vae_dir),
        "scaling_factor": read_json(Path(vae_dir) / "config.json")["scaling_factor"],
        "latent_shape": [channels, height, width],
        "dtype": "float16",
        "store": cfg.store,
        "views": 2 if cfg.flip else 1,
        "text": cfg.text,
        "text_encoder": te.model_dump(),
        "text_encoder_name": te.pretrained or PACKAGED_MINILM,
        "text_dim": text_dim,
        "text_mask": text_mask,
        "images": rows.num_rows,
        "shards": shards,
    }
    if "original_caption" in rows.column_names:  # caption.keep_original: for train.caption_mix
        meta["original_captions"] = int(pc.sum(pc.not_equal(rows["original_caption"], "")).as_py() or 0)
    if bucketed:  # aspect buckets: each one's latent shape (the square's is `latent_shape`)
        names = sorted({b for s in shards for b in s["buckets"]}, key=lambda b: bucket_size(b)[0] / bucket_size(b)[1])
        meta["buckets"] = {b: list(spec.bucket_latent_shape(None if b == square else b)) for b in names}
    write_index(out / "index.parquet", rows, where, records)
    write_json(out / "meta.json", meta)
    return meta


def _text_matches(out: Path, job: ShardJob, spec: EncodeSpec) -> bool:
    """Header-only check that a shard's text file was made from its latents and this plan."""
    latent_header = read_header(latent_path(out, job.stem))
    if latent_header is None:
        return False
    return is_complete(text_path(out, job.stem), spec.text_fingerprint(latent_header["fingerprint"], job), verify=False)


def remove_stale(out: Path, stems: set[str]) -> None:
    """Remove outputs of shards that no longer exist, and temp files that this host's dead
    processes left. Another node's temp files are never touched: on a shared folder they
    may be its work in progress."""
    host = socket.gethostname()
    for folder in ("shards", "text"):
        for path in (out / folder).glob("*.safetensors") if (out / folder).is_dir() else []:
            if path.stem not in stems:
                path.unlink()
        for temp in (out / folder).glob(f".*.tmp-{host}-*") if (out / folder).is_dir() else []:
            pid = temp.name.rsplit("-", 2)[-2]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                temp.unlink(missing_ok=True)
