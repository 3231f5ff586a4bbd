"""Qwen2.5-VL captioning images/s: batched `generate` vs the per-image loop.

    .venv/bin/python benchmarks/caption_batched_vs_loop.py [--images 32] [--batch-sizes 4 8 16]

The model is a tiny random Qwen2.5-VL built offline (tests/support/tiny_qwen.py) unless
`--model` names a real one. Both sides use the real backend class on the same blob images
and the same prompt; the loop is one image per `generate` call, as in the source
project's notebook. Greedy decoding always runs `--max-new-tokens` steps here (random
weights rarely emit the end token), so both sides do the same work per image.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO / "tests")]  # tests/support: local servers, tiny models

from support.tiny_qwen import build_tiny_qwen  # noqa: E402

from sdlab.caption.qwen_vl import GenerationSettings, QwenCaptioner  # noqa: E402
from sdlab.data.images import composite_on_white, fit_square  # noqa: E402
from sdlab.prompts import DEFAULT_PROMPT  # noqa: E402
from sdlab.sources.synthetic import draw_blob, sample_blob  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--model", default=None)
    args = parser.parse_args()
    model = args.model or str(build_tiny_qwen(Path(tempfile.mkdtemp()) / "tiny-qwen"))
    blobs = [sample_blob(np.random.default_rng([4, i])) for i in range(args.images)]
    images = [fit_square(composite_on_white(draw_blob(b, 128)), 128) for b in blobs]
    titles = [b.title for b in blobs]
    settings = GenerationSettings(model, DEFAULT_PROMPT, args.max_new_tokens, 112 * 112, 112 * 112)
    captioner = QwenCaptioner(settings)
    captioner.generate(images[:2], titles[:2])  # warm-up

    def rate(batch_size: int) -> float:
        started = time.perf_counter()
        for i in range(0, len(images), batch_size):
            captioner.generate(images[i : i + batch_size], titles[i : i + batch_size])
        return len(images) / (time.perf_counter() - started)

    print(
        f"model {model}: {sum(p.numel() for p in captioner.model.parameters()) / 1e6:.2f}M params, "
        f"{args.images} images, {args.max_new_tokens} new tokens, {torch.get_num_threads()} threads"
    )
    loop = rate(1)
    print(f"per-image loop (batch 1): {loop:.2f} images/s")
    for batch_size in args.batch_sizes:
        batched = rate(batch_size)
        print(f"batched (batch {batch_size}): {batched:.2f} images/s = {batched / loop:.2f}x the loop")


if __name__ == "__main__":
    main()
