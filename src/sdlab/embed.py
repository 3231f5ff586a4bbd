"""The embedding pass: what each downloaded image shows, computed once per image shard.

Per shard `<stem>.tar` one file `shards/<stem>.safetensors` (rows in the tar's order, keys in
its header): `phash`, a 64-bit perceptual hash (imagehash's DCT hash of the image on white),
always; with `embed.model` (a CLIP hub id or local folder), also `image`, the L2-normalised
CLIP image embedding (fp16), and for rows whose `embed.text_column` is not empty `text`, the
caption's embedding, and `clip_score`, their cosine (NaN where there is no caption); with
`embed.watermark_weights`, `watermark`, LAION's watermark detector's probability (a pixel model,
`sdlab.models.watermark`). Its fingerprint covers the tar's bytes, the models' files, the batch
size and the shard's captions, so a rerun redoes exactly the shards whose inputs changed, and
`dedupe` (which reads these files) never makes this pass run again: thresholds live there.

Workers and nodes split the shards as encode does (`sdlab.workers`: one process per GPU, or
per core on CPU; `NNODES`/`NODE_RANK`); a worker count never reaches a byte.
`index.parquet` lists every row: key, stem, position in its file, phash, clip_score, watermark.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from sdlab.config import EmbedConfig
from sdlab.data.curation import embedding_path
from sdlab.data.images import composite_on_white, decode
from sdlab.data.records import DataError
from sdlab.data.shard_plan import ShardJob, image_members, write_shard_plan
from sdlab.errors import ConfigError
from sdlab.io import file_sha256, folder_fingerprint, write_json, write_table
from sdlab.workers import Slot, assign, device_and_dtype, node_split, plan_slots, run_pool

log = logging.getLogger(__name__)
HASH_VERSION = "imagehash-phash-8"  # part of every fingerprint: a new hash recipe redoes the files


@dataclass(frozen=True)
class EmbedSpec:
    shards_dir: str
    out_dir: str
    plan: str  # parquet (key, text), one row group per job
    model: str | None
    model_fingerprint: str
    batch_size: int
    precision: str
    max_pixels: int
    watermark_weights: str | None = None
    watermark_fingerprint: str | None = None
    jobs: tuple = field(default_factory=tuple)

    def fingerprint(self, tar_sha256: str, job: ShardJob) -> str:
        parts = {
            "tar": tar_sha256,
            "hash": HASH_VERSION,
            "model": self.model_fingerprint,
            "batch": self.batch_size,
            "precision": self.precision,
            "rows": job.digest,
        }
        if self.watermark_fingerprint is not None:  # absent, not null: files made without it stay valid
            parts["watermark"] = self.watermark_fingerprint
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def perceptual_hash(image) -> int:
    """The 64-bit DCT perceptual hash of a PIL image (composited on white), as a signed int64."""
    import imagehash

    bits = imagehash.phash(composite_on_white(image)).hash.reshape(-1)
    return int(np.packbits(bits).view(">i8")[0])


def read_tar(path: Path, max_pixels: int) -> tuple[list[str], list]:
    """(keys, PIL images) of a shard in tar order; an unreadable image is a DataError naming it."""
    keys, images = [], []
    for key, data in image_members(path):
        try:
            images.append(decode(data, max_pixels))
        except Exception as exc:
            raise DataError(f"{path}: sample {key!r} is unreadable: {exc}") from exc
        keys.append(key)
    return keys, images


def embed_shard(
    path: Path, texts: dict[str, str], spec: EmbedSpec, clip=None, watermark=None
) -> tuple[list[str], dict]:
    """(keys, tensors) of one shard: phash always; image/text embeddings and clip_score with
    `clip`, the watermark probability with `watermark` ((model, device, dtype))."""
    import torch

    keys, images = read_tar(path, spec.max_pixels)
    if not keys:
        raise DataError(f"{path}: no images in this shard")
    tensors = {"phash": torch.tensor([perceptual_hash(image) for image in images], dtype=torch.int64)}
    if clip is None and watermark is None:
        return keys, tensors
    rgb = [composite_on_white(image).convert("RGB") for image in images]
    if watermark is not None:
        from sdlab.models.watermark import watermark_scores

        detector, device, dtype = watermark
        tensors["watermark"] = torch.from_numpy(watermark_scores(detector, rgb, spec.batch_size, device, dtype))
    if clip is None:
        return keys, tensors
    model, processor, device, dtype = clip
    image_embeds = _features(model.get_image_features, processor, device, dtype, spec.batch_size, images=rgb)
    captions = [texts.get(key) or "" for key in keys]
    has_text = torch.tensor([bool(c) for c in captions])
    text_embeds = torch.zeros_like(image_embeds)
    if has_text.any():
        written = [c for c in captions if c]
        text_embeds[has_text] = _features(
            model.get_text_features, processor, device, dtype, spec.batch_size, text=written
        )
    score = (image_embeds * text_embeds).sum(-1)
    score[~has_text] = float("nan")
    tensors |= {
        "image": image_embeds.half(),
        "text": text_embeds.half(),
        "has_text": has_text.to(torch.uint8),
        "clip_score": score,
    }
    return keys, tensors


def _features(method, processor, device, dtype, batch_size: int, **inputs):
    """L2-normalised float32 features, `batch_size` inputs at a time."""
    import torch

    (name, values), out = next(iter(inputs.items())), []
    for start in range(0, len(values), batch_size):
        batch = processor(
            **{name: values[start : start + batch_size]}, return_tensors="pt", padding=True, truncation=True
        )
        batch = {k: v.to(device, dtype) if v.is_floating_point() else v.to(device) for k, v in batch.items()}
        with torch.no_grad():
            features = method(**batch).float().cpu()
        out.append(torch.nn.functional.normalize(features, dim=-1))
    return torch.cat(out)


def embed_worker(slot: Slot, spec: EmbedSpec) -> None:
    """Worker body: this slot's share of the jobs, skipping files already complete."""
    from sdlab.latents import is_complete, save_checked

    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s embed[{slot.rank}] %(levelname)s: %(message)s")
    plan, clip, watermark = pq.ParquetFile(spec.plan), None, None
    for job in tqdm(
        assign(spec.jobs, slot.rank, slot.world), desc=f"embed[{slot.rank}]", unit="shard", disable=slot.rank != 0
    ):
        tar = Path(spec.shards_dir) / job.shard
        if not tar.is_file():
            raise DataError(f"{tar}: image shard listed in the index is missing")
        fingerprint = spec.fingerprint(file_sha256(tar), job)
        path = embedding_path(Path(spec.out_dir), job.stem)
        if is_complete(path, fingerprint):
            continue
        if spec.model and clip is None:
            from sdlab.models.clip import load_clip

            device, dtype = device_and_dtype(spec.precision)
            model, processor = load_clip(spec.model)
            clip = (model.to(device, dtype), processor, device, dtype)
        if spec.watermark_weights and watermark is None:
            from sdlab.models.watermark import load_watermark

            device, dtype = device_and_dtype(spec.precision)
            watermark = (load_watermark(spec.watermark_weights).to(device, dtype), device, dtype)
        rows = plan.read_row_group(job.group)
        texts = dict(zip(rows["key"].to_pylist(), rows["text"].to_pylist(), strict=True))
        keys, tensors = embed_shard(tar, texts, spec, clip, watermark)
        save_checked(path, tensors, fingerprint, keys=keys)


def model_fingerprint(model: str | None) -> str:
    """What names the model's weights: its files' sha256 for a local folder, else its hub id."""
    if model is None:
        return "none"
    if Path(model).is_dir():
        return folder_fingerprint(model)
    return model


def weights_fingerprint(path: str | None, key: str) -> str | None:
    """The sha256 of a weights file the user points to (None: not set); a missing file is a
    ConfigError naming the key, before any worker starts."""
    if path is None:
        return None
    if not Path(path).is_file():
        raise ConfigError(f"{key}: file not found: {path}")
    return file_sha256(path)


def write_plan(rows: pa.Table, path: Path) -> list[ShardJob]:
    """(key, text) of the rows, one row group per shard; a job per shard."""
    return write_shard_plan(rows, ["key", "text"], path)


def ok_rows(index: Path, text_column: str | None) -> pa.Table:
    """(key, shard, text) of the downloaded rows; `text` is '' where the column is missing or empty."""
    names = pq.read_schema(index).names
    if text_column is not None and text_column not in names:
        raise DataError(f"embed.text_column: {index} has no column {text_column!r} (it has {sorted(names)})")
    table = pq.read_table(index, columns=["key", "shard", "status", *([text_column] if text_column else [])])
    table = table.filter(pc.equal(table["status"], "ok"))
    text = pc.fill_null(table[text_column].cast(pa.string()), "") if text_column else pa.array([""] * table.num_rows)
    return pa.table({"key": table["key"], "shard": table["shard"], "text": text})


def embed_dataset(index: Path, shards_dir: Path, out_dir: Path, cfg: EmbedConfig, max_pixels: int) -> dict:
    """The pass over every downloaded image (this node's share on a pool of workers), then
    `index.parquet` and `meta.json` once every shard's file is there; returns the meta."""
    from sdlab.latents import read_header

    rows = ok_rows(index, cfg.text_column)
    if rows.num_rows == 0:
        raise DataError(f"embed: {index} has no downloaded images")
    node_rank, num_nodes = node_split(cfg.num_nodes, cfg.node_rank, "embed")
    plan_dir = Path(tempfile.mkdtemp(prefix="sdlab-embed-plan-"))
    try:
        jobs = write_plan(rows, plan_dir / "plan.parquet")
        spec = EmbedSpec(
            shards_dir=str(shards_dir),
            out_dir=str(out_dir),
            plan=str(plan_dir / "plan.parquet"),
            model=cfg.model,
            model_fingerprint=model_fingerprint(cfg.model),
            batch_size=cfg.batch_size,
            precision=cfg.precision,
            max_pixels=max_pixels,
            watermark_weights=cfg.watermark_weights,
            watermark_fingerprint=weights_fingerprint(cfg.watermark_weights, "embed.watermark_weights"),
            jobs=tuple(assign(jobs, node_rank, num_nodes)),
        )
        _remove_stale(out_dir, {job.stem for job in jobs})
        slots = plan_slots(cfg.workers, 1, jobs=len(spec.jobs))
        log.info(
            "node %d/%d: %d of %d shards on %d worker(s)", node_rank, num_nodes, len(spec.jobs), len(jobs), len(slots)
        )
        run_pool(embed_worker, spec, slots)
    finally:
        shutil.rmtree(plan_dir, ignore_errors=True)
    missing = [job.stem for job in jobs if not embedding_path(out_dir, job.stem).is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} shard(s) not embedded yet, e.g. {missing[0]}: other nodes have not "
            "finished their share; run this stage again once they have"
        )
    table = embeddings_index(out_dir, jobs, read_header)
    write_table(out_dir / "index.parquet", table)
    meta = {"model": cfg.model, "hash": HASH_VERSION, "images": table.num_rows, "shards": len(jobs)}
    if cfg.watermark_weights:
        meta["watermark"] = cfg.watermark_weights
    if cfg.model:
        meta["dim"] = read_header(embedding_path(out_dir, jobs[0].stem))["shapes"]["image"][1]
        meta["with_text"] = int(pc.sum(pc.invert(pc.is_nan(table["clip_score"]))).as_py() or 0)
    write_json(out_dir / "meta.json", meta)
    return meta


def embeddings_index(out_dir: Path, jobs: list[ShardJob], read_header) -> pa.Table:
    """key, stem, position in its file, phash (and clip_score) of every embedded row."""
    from safetensors.numpy import load_file

    parts = []
    for job in jobs:
        path = embedding_path(out_dir, job.stem)
        keys = read_header(path)["keys"]
        tensors = load_file(str(path))
        columns = {
            "key": pa.array(keys, pa.string()),
            "stem": pa.array([job.stem] * len(keys), pa.string()),
            "position": pa.array(np.arange(len(keys)), pa.int32()),
            "phash": pa.array(tensors["phash"], pa.int64()),
        }
        for name in ("clip_score", "watermark"):
            if name in tensors:
                columns[name] = pa.array(tensors[name], pa.float32())
        parts.append(pa.table(columns))
    return pa.concat_tables(parts)


def _remove_stale(out_dir: Path, stems: set[str]) -> None:
    folder = Path(out_dir) / "shards"
    for path in folder.glob("*.safetensors") if folder.is_dir() else []:
        if path.stem not in stems:
            path.unlink()
