"""The embed stage beside the raw CLIP image forward, on the same images.

    .venv/bin/python benchmarks/embed_throughput.py [--images 1000] [--workers 2] [--watermark]

Builds a CLIP of ViT-B/32's shape from its config (random weights: the time does not depend on
them; no hub here) with the packaged MiniLM tokenizer, and `--images` synthetic blob images
packed into 250-image shards at 64 px by the download stage's own code. Then, side by side:

- raw: `get_image_features` over the images already decoded and preprocessed in memory, batch
  by batch, on as many threads as the stage's workers have in all (the physical limit);
- stage: `embed_dataset` (the real stage: worker processes, tar reading and decoding, the
  perceptual hash, the processor, the forward, checksummed files, the index), whole (spawning
  workers, loading the model) and steady (first file written -> last file written).

With `--watermark`, LAION's watermark detector (its layout, random weights) joins: the raw
detector forward (256 px, the images preprocessed in memory), raw CLIP + detector (one image
through both, back to back), and the stage with `embed.watermark_weights` beside them.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support.tiny_clip import tiny_clip_config  # noqa: E402

from sdlab.config import DownloadConfig, EmbedConfig, ScrapeConfig, SyntheticConfig  # noqa: E402
from sdlab.data.download import download  # noqa: E402
from sdlab.data.shards import load_images  # noqa: E402
from sdlab.embed import embed_dataset  # noqa: E402
from sdlab.io import write_table  # noqa: E402
from sdlab.models.text_encoder import load_text_encoder  # noqa: E402
from sdlab.sources import synthetic  # noqa: E402


def build_clip(folder: Path) -> None:
    """ViT-B/32's vision tower (12 layers, 768 wide, 224 px, patch 32) from config, saved with a processor."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tokenizer, _ = load_text_encoder(None, 77)
    small = tiny_clip_config(tokenizer).to_dict()
    config = CLIPConfig(text_config=small["text_config"], vision_config={}, projection_dim=512)  # vision: ViT-B/32
    torch.manual_seed(0)
    CLIPModel(config).eval().save_pretrained(folder)
    CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tokenizer).save_pretrained(folder)


def raw_throughput(folder: Path, images, batch_size: int, threads: int) -> float:
    from sdlab.models.clip import load_clip

    torch.set_num_threads(threads)
    model, processor = load_clip(str(folder))
    pixels = processor(images=list(images), return_tensors="pt")["pixel_values"]
    started = time.perf_counter()
    with torch.no_grad():
        for start in range(0, len(pixels), batch_size):
            model.get_image_features(pixel_values=pixels[start : start + batch_size])
    return len(pixels) / (time.perf_counter() - started)


def raw_watermark(images, batch_size: int, threads: int) -> float:
    from sdlab.models.watermark import preprocess, watermark_model

    torch.set_num_threads(threads)
    model = watermark_model().eval()
    from PIL import Image

    pixels = preprocess([Image.fromarray(image).convert("RGB") for image in images])
    started = time.perf_counter()
    with torch.no_grad():
        for start in range(0, len(pixels), batch_size):
            torch.softmax(model(pixels[start : start + batch_size]), dim=1)
    return len(pixels) / (time.perf_counter() - started)


def watermark_rows(root: Path, images, args) -> None:
    """The stage with CLIP + the watermark detector beside the two raw forwards."""
    from sdlab.models.watermark import watermark_model

    torch.manual_seed(0)
    torch.save(watermark_model().state_dict(), root / "watermark_model_v1.pt")
    print("\n| workers | raw CLIP | raw detector | raw CLIP + detector | stage CLIP + detector, whole | whole / raw |")
    print("|---|---|---|---|---|---|")
    for workers in args.workers:
        clip = raw_throughput(root / "clip", images, args.batch_size, workers)
        detector = raw_watermark(images, args.batch_size, workers)
        both = 1 / (1 / clip + 1 / detector)
        cfg = EmbedConfig(
            model=str(root / "clip"),
            watermark_weights=str(root / "watermark_model_v1.pt"),
            workers=workers,
            batch_size=args.batch_size,
        )
        started = time.perf_counter()
        embed_dataset(root / "index.parquet", root / "shards", root / f"watermark-{workers}", cfg, 10**8)
        whole = args.images / (time.perf_counter() - started)
        print(
            f"| {workers} | {clip:.1f} images/s | {detector:.1f} images/s | {both:.1f} images/s "
            f"| {whole:.1f} images/s | {whole / both:.0%} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--workers", type=int, nargs="+", default=[2])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--watermark", action="store_true", help="also LAION's watermark detector in the pass")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="embed-bench-"))
    try:
        build_clip(root / "clip")
        records = synthetic.scrape(
            ScrapeConfig(synthetic=SyntheticConfig(num_images=args.images, image_px=64, duplicate_fraction=0)), root
        )
        index, _ = download(
            pa.Table.from_pylist(records), DownloadConfig(image_px=64, shard_size=250, processes=2), root / "shards"
        )
        write_table(root / "index.parquet", index)
        images = load_images(root / "shards", index.to_pylist())
        print("| workers | raw forward (threads = workers) | stage whole | stage steady | whole / raw | steady / raw |")
        print("|---|---|---|---|---|---|")
        for workers in args.workers:
            raw = raw_throughput(root / "clip", images, args.batch_size, workers)
            out = root / f"embeddings-{workers}"
            cfg = EmbedConfig(model=str(root / "clip"), workers=workers, batch_size=args.batch_size)
            started = time.perf_counter()
            embed_dataset(root / "index.parquet", root / "shards", out, cfg, 10**8)
            whole = args.images / (time.perf_counter() - started)
            stamps = sorted(p.stat().st_mtime for p in (out / "shards").glob("*.safetensors"))
            per_file = args.images / len(stamps)
            steady = (
                per_file * (len(stamps) - workers) / max(stamps[-1] - stamps[workers - 1], 1e-9)
                if len(stamps) > workers
                else float("nan")  # every worker wrote one file: no steady state to see
            )
            print(
                f"| {workers} | {raw:.1f} images/s | {whole:.1f} images/s | {steady:.1f} images/s "
                f"| {whole / raw:.0%} | {steady / raw:.0%} |",
                flush=True,
            )
        if args.watermark:
            watermark_rows(root, images, args)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
