"""Encode stage throughput vs the raw VAE forward on the same batches already in memory.

    .venv/bin/python benchmarks/encode_throughput.py [--images 24000] [--workers 1 2] [--captions template]

Builds a synthetic dataset of `--images` blobs at the default profile's resolution (shards
of `download.shard_size`), and takes the VAE from a finished default run (`--vae`, e.g.
`models/vae` after `make repro`) or, if missing, a freshly built one of the default
architecture (throughput does not depend on the weights). Then, side by side:

- raw: `vae.encode(batch)` over the decoded images already in memory, batch by batch,
  in this process (the physical limit of the stage);
- stage: `encode_dataset` (the real stage code: worker processes — one CPU worker runs in this
  process, as in a stage — shard reading and PNG
  decoding, posterior mean/std, fp16 safetensors with checksums). `--captions same` (default):
  every row has the same caption, so the text job is one prompt; `--captions template`: each
  row's caption from the default template (the default profile's captions, mostly distinct), so
  the stage also encodes every shard's captions with the text encoder, as it does in a run.
Each worker has `encode.threads_per_worker` threads (1: the bytes do not depend on the
worker count), so each stage run is compared with the raw forward on as many threads as its
workers have in all (1 worker: raw on 1 thread, as one GPU worker against that GPU's forward).
The stage is timed twice: whole (including spawning workers and loading models) and
steady state (first shard written -> last shard written, from the files' mtimes).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pyarrow as pa
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from sdlab.caption import CAPTIONERS  # noqa: E402
from sdlab.config import DownloadConfig, EncodeConfig, ScrapeConfig, SyntheticConfig, TextEncoderConfig, load_params  # noqa: E402
from sdlab.data.download import download as download_images  # noqa: E402
from sdlab.data.shards import load_images  # noqa: E402
from sdlab.encode import encode_dataset  # noqa: E402
from sdlab.models.vae import build_vae, load_pretrained_vae, to_tensor  # noqa: E402
from sdlab.sources import synthetic  # noqa: E402


def make_dataset(root: Path, count: int, params, captions: str = "same") -> list[dict]:
    # drawn directly at the training resolution: the benchmark is about encoding, not drawing
    scrape = ScrapeConfig(
        synthetic=SyntheticConfig(num_images=count, image_px=params.download.image_px, duplicate_fraction=0)
    )
    records = synthetic.scrape(scrape, root / "raw")
    download = DownloadConfig(**{**params.download.model_dump(), "processes": 2})
    index, _ = download_images(pa.Table.from_pylist(records), download, root / "shards")
    if captions == "same":
        return [dict(r, caption="blob", split="train") for r in index.to_pylist()]
    written = CAPTIONERS["template"](index, params.caption, root / "shards", root / "caption-cache")
    return [dict(r, caption=c, split="train") for r, (c, _) in zip(index.to_pylist(), written.pairs(), strict=True)]


@torch.no_grad()
class WorkerMemory:
    """Peak resident memory of any one child process (the encode workers), polled every 50 ms;
    with no child (one CPU worker runs in this process) the peak this process grew by."""

    def __enter__(self):
        self.peak, self.grown, self._stop = 0, 0, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        me = psutil.Process()
        base = me.memory_info().rss
        while not self._stop.wait(0.05):
            self.grown = max(self.grown, me.memory_info().rss - base)
            for child in me.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    self.peak = max(self.peak, child.memory_info().rss)

    def describe(self, in_process: bool) -> str:
        if not in_process:
            return f"peak worker RSS {self.peak / 2**20:.0f} MiB"
        return f"in this process: peak RSS grew {self.grown / 2**20:.0f} MiB"

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def raw_throughput(vae, images: torch.Tensor, batch_size: int) -> float:
    for start in range(0, min(len(images), 4 * batch_size), batch_size):  # warm-up (oneDNN primitives)
        vae.encode(images[start : start + batch_size])
    started = time.perf_counter()
    for start in range(0, len(images), batch_size):
        _ = vae.encode(images[start : start + batch_size]).latent_dist.mean
    return len(images) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=24000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--vae", default=str(REPO / "models" / "vae"))
    parser.add_argument("--captions", choices=["same", "template"], default="same")
    parser.add_argument("--shard-size", type=int, help="images per shard (default: download.shard_size)")
    parser.add_argument("--text", choices=["states", "tokens"], help="encode.text (default: params.yaml's)")
    args = parser.parse_args()
    params = load_params(REPO / "params.yaml")
    if args.shard_size:
        download = params.download.model_copy(update={"shard_size": args.shard_size})
        params = params.model_copy(update={"download": download})
    root = Path(tempfile.mkdtemp(prefix="sdlab-encode-bench-"))
    try:
        rows = make_dataset(root, args.images, params, args.captions)
        vae_dir = Path(args.vae)
        if not (vae_dir / "config.json").is_file():
            vae_dir = root / "vae"
            vae = build_vae(params.vae, params.download.image_px)
            vae.register_to_config(scaling_factor=1.0)
            vae.save_pretrained(vae_dir)
        vae = load_pretrained_vae(str(vae_dir)).eval()
        images = to_tensor(load_images(root / "shards", rows))
        threads = params.encode.threads_per_worker
        raws = {}  # the raw forward on the threads the stage's workers have in all
        for count in sorted({min(w * threads, os.cpu_count() or 1) for w in args.workers}):
            torch.set_num_threads(count)
            raws[count] = raw_throughput(vae, images, params.encode.batch_size)
        text = args.text or params.encode.text
        print(f"images: {len(rows)} at {params.download.image_px} px, batch {params.encode.batch_size}, text: {text}")
        for count, rate in raws.items():
            print(f"raw vae.encode in memory, one process, {count} thread(s): {rate:.0f} images/s")
        for workers in args.workers:
            raw = raws[min(workers * threads, os.cpu_count() or 1)]
            out = root / f"latents-{workers}"
            cfg = EncodeConfig(
                **{**params.encode.model_dump(), "workers": workers, "text": args.text or params.encode.text}
            )
            started = time.perf_counter()
            with WorkerMemory() as memory:
                encode_dataset(
                    pa.Table.from_pylist(rows),
                    shards_dir=str(root / "shards"),
                    vae_dir=str(vae_dir),
                    out_dir=str(out),
                    image_px=params.download.image_px,
                    cfg=cfg,
                    te=TextEncoderConfig(),
                )
            ended = time.time()
            whole = len(rows) / (time.perf_counter() - started)
            # Worker w wrote every workers-th shard; its steady rate is (shards - 1) / (last - first).
            shards = sorted((out / "shards").glob("*.safetensors"))
            per_shard = len(rows) / len(shards)
            steady = 0.0
            for w in range(workers):
                mtimes = sorted(p.stat().st_mtime for p in shards[w::workers])
                steady += per_shard * (len(mtimes) - 1) / (mtimes[-1] - mtimes[0])
            written = sorted(p.stat().st_mtime for p in shards)
            # up to the first latent file: spawning, imports, model loads, the first shard itself
            first, after = written[0] - (ended - len(rows) / whole), ended - written[-1]
            print(
                f"stage, {workers} worker(s) x {threads} thread(s): whole {whole:.0f} images/s ({whole / raw:.0%} of "
                f"raw on as many threads), steady state {steady:.0f} images/s ({steady / raw:.0%}); "
                f"first shard written after {first:.1f} s, {after:.1f} s after the last one; "
                f"{memory.describe(in_process=workers == 1)}"
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
