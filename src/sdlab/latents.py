"""The latents folder: the on-disk format `encode` writes and `train`/`evaluate` stream.

  meta.json                  recipe and shapes: vae, scaling factor, latent shape, store,
                             views, text mode, text encoder, text width, and one entry per
                             shard {name, rows, train, val, latents, text} (the last two are
                             the files' content fingerprints). Nothing about the machine.
  shards/<stem>.safetensors  the VAE latents of *every* image of image shard `<stem>.tar`, in
                             tar order: `mean` + `std` (store: distribution) or `sample`, each
                             (N, V, C, h, w) fp16 (V = 2 with flip). Header: fingerprint,
                             sha256 of the tensors, the keys in row order. A shard of aspect
                             buckets (`download.fit: bucket`, images of several sizes) holds
                             those per bucket instead: `mean.<W>x<H>` (N_b, V, C, h_b, w_b)
                             and `rows.<W>x<H>` (N_b,) int64, the rows' places in tar order.
  text/<stem>.safetensors    the same rows: `split` (N,) uint8 (0 train, 1 val, 2 not kept,
                             e.g. a duplicate) and the conditioning: `hidden` (N, L, D) fp16
                             (text: states) or `input_ids` (N, L) int32 + `attention_mask`
                             (N, L) uint8 (text: tokens, the encoder runs in the train step).
                             With `caption.keep_original`: the source caption's fields as
                             `original_hidden` (...) (the backend caption's where a row has
                             none) and `has_original` (N,) uint8, for `train.caption_mix`.
  uncond.safetensors         the empty prompt for classifier-free guidance, in the same fields.
  index.parquet              key, split, latent_shard, row, caption (+ the record's columns).

Latents depend on the image bytes, the VAE and the latent recipe only; captions and splits
live in the cheap text files, so a caption edit or a new split never re-runs the VAE.
Every file is written under a name unique to this host and process, then renamed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import struct
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import load_file as load_numpy
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)

STORAGE_DTYPE = torch.float16
SPLIT_CODES = {"train": 0, "val": 1}
NOT_KEPT = 2
LATENT_FIELDS = ("mean", "std", "sample")
TEXT_FIELDS = ("hidden", "input_ids", "attention_mask")
ORIGINAL = "original_"  # prefix of the source caption's text fields (caption.keep_original)
ROWS = "rows"  # per bucket: where its rows sit in tar order


def bucketed_name(field: str, bucket: str) -> str:
    return f"{field}.{bucket}"


def tensor_bucket(name: str) -> str | None:
    """The bucket a stored tensor belongs to (`mean.40x24` -> `40x24`); None for a one-size shard's."""
    return name.partition(".")[2] or None


def latent_path(root: Path, stem: str) -> Path:
    return Path(root) / "shards" / f"{stem}.safetensors"


def text_path(root: Path, stem: str) -> Path:
    return Path(root) / "text" / f"{stem}.safetensors"


def unique_temp(path: Path) -> Path:
    """A temp sibling no other node or process uses: nodes may share one output folder."""
    return path.with_name(f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(memoryview(tensors[name].contiguous().view(torch.uint8).numpy()))  # no copy
    return digest.hexdigest()


def save_checked(path: Path, tensors: dict[str, torch.Tensor], fingerprint: str, **extra) -> None:
    """Write tensors with their fingerprint, checksum and `extra` header fields, via a temp name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    temp = unique_temp(path)
    # One metadata key: safetensors orders several keys differently from run to run.
    check = json.dumps({"fingerprint": fingerprint, "sha256": tensors_sha256(tensors), **extra}, sort_keys=True)
    save_file(tensors, str(temp), metadata={"sdlab": check})
    os.replace(temp, path)


SAFETENSORS_DTYPES = {
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float32: "F32",
    torch.uint8: "U8",
    torch.int32: "I32",
    torch.int64: "I64",
}


def save_checked_streamed(
    path: Path,
    layout: dict[str, tuple[torch.dtype, tuple[int, ...]]],
    blocks: Callable[[str], Iterator[torch.Tensor]],
    fingerprint: str,
    **extra,
) -> None:
    """`save_checked` for tensors too big to hold at once: `layout` names each tensor's dtype
    and shape, `blocks(name)` yields its rows block by block (first dimension), and each block
    is hashed and written as it comes, so memory holds one block. The file is a plain
    safetensors file with the same header fields and checksum as `save_checked` writes (the
    tensors in name order; the header, whose length does not depend on the checksum, goes
    into its reserved place last), written under a temp name and renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    names = sorted(layout)
    header: dict = {}
    offset = 0
    for name in names:
        dtype, shape = layout[name]
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        header[name] = {
            "dtype": SAFETENSORS_DTYPES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size

    def header_bytes(sha256: str) -> bytes:
        check = json.dumps({"fingerprint": fingerprint, "sha256": sha256, **extra}, sort_keys=True)
        text = json.dumps({"__metadata__": {"sdlab": check}, **header}, separators=(",", ":")).encode()
        return text + b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors writes it

    reserved = len(header_bytes("0" * 64))
    digest = hashlib.sha256()
    temp = unique_temp(path)
    try:
        with open(temp, "wb") as handle:
            handle.seek(8 + reserved)
            for name in names:
                dtype, shape = layout[name]
                digest.update(name.encode())
                rows = 0
                for block in blocks(name):
                    if block.dtype != dtype or tuple(block.shape[1:]) != tuple(shape[1:]):
                        raise ValueError(
                            f"{path}: {name} block is {block.dtype} {tuple(block.shape)}, not {dtype} {shape}"
                        )
                    data = memoryview(block.contiguous().view(torch.uint8).numpy())  # no copy
                    digest.update(data)
                    handle.write(data)
                    rows += block.shape[0]
                if rows != shape[0]:
                    raise ValueError(f"{path}: {name} got {rows} rows, {shape[0]} expected")
            final = header_bytes(digest.hexdigest())
            assert len(final) == reserved
            handle.seek(0)
            handle.write(struct.pack("<Q", reserved) + final)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def read_header(path: Path) -> dict | None:
    """The sdlab header of a file (fingerprint, sha256, extras) plus `shapes`; None if unreadable."""
    try:
        with safe_open(str(path), "pt") as handle:
            header = json.loads((handle.metadata() or {}).get("sdlab", "{}"))
            header["shapes"] = {name: list(handle.get_slice(name).get_shape()) for name in handle.keys()}
        return header
    except Exception as exc:  # a truncated or foreign file: redone, and said so
        log.warning("%s is unreadable (%s); it will be written again", path, exc)
        return None


def is_complete(path: Path, fingerprint: str, verify: bool = True, shape=None) -> bool:
    """True if `path` holds the output of these inputs: same fingerprint, per-row shape for
    its latent tensors as `shape` says (a tuple, or a function of the tensor's bucket name or
    None), and with `verify` intact tensors."""
    if not path.is_file():
        return False
    header = read_header(path)
    if header is None or header.get("fingerprint") != fingerprint:
        return False
    expected = shape if callable(shape) else (lambda bucket: shape)
    if shape is not None and any(
        tuple(dims[2:]) != tuple(expected(tensor_bucket(name)))
        for name, dims in header["shapes"].items()
        if name.partition(".")[0] in LATENT_FIELDS
    ):
        log.warning("%s holds latents of another shape; encoding it again", path)
        return False
    if verify:
        try:
            return tensors_sha256(load_file(str(path))) == header.get("sha256")
        except Exception as exc:
            log.warning("%s is unreadable (%s); it will be written again", path, exc)
            return False
    return True


def read_rows(
    root: Path, stem: str, split: int, stride: int = 1, offset: int = 0, bucket: str | None = None
) -> dict[str, torch.Tensor]:
    """Stored tensors (latents + text fields) of the rows of one shard whose split is `split`,
    taking every `stride`-th of them from `offset` (of one aspect `bucket`); dtypes as stored."""
    arrays = read_rows_numpy(root, stem, split, stride, offset, bucket)
    return {name: torch.from_numpy(array) for name, array in arrays.items()}


def read_rows_numpy(
    root: Path, stem: str, split: int, stride: int = 1, offset: int = 0, bucket: str | None = None
) -> dict[str, np.ndarray]:
    """`read_rows` as numpy arrays: no torch op, so a loader thread never competes with the
    training step's intra-op threads. `bucket`: only that aspect bucket's rows, read alone
    from a shard of buckets (a one-size shard is its own single bucket)."""
    text = load_numpy(str(text_path(root, stem)))
    codes = text.pop("split")
    with safe_open(str(latent_path(root, stem)), "np") as handle:
        names = list(handle.keys())
        if bucket is None or ROWS not in {n.partition(".")[0] for n in names}:
            rows = np.flatnonzero(codes == split)[offset::stride]
            return {name: handle.get_tensor(name)[rows] for name in names} | {n: a[rows] for n, a in text.items()}
        if bucketed_name(ROWS, bucket) not in names:
            return {}
        places = handle.get_tensor(bucketed_name(ROWS, bucket))
        picked = np.flatnonzero(codes[places] == split)[offset::stride]
        latents = {
            f: handle.get_tensor(bucketed_name(f, bucket))[picked]
            for f in LATENT_FIELDS
            if bucketed_name(f, bucket) in names
        }
    return latents | {name: array[places[picked]] for name, array in text.items()}


def read_meta(root: Path) -> dict:
    path = Path(root) / "meta.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (did the encode stage run?)")
    return json.loads(path.read_text())


def read_uncond(root: Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(root) / "uncond.safetensors"))
