"""Caption throughput of the tiny Qwen2.5-VL on transformers vs vLLM: same images, same settings.

    .venv/bin/python benchmarks/caption_engines.py [--images 256] [--batch 16 64] [--threads 2]

A sanity figure, not a GPU forecast: the model is the tests' random ~0.2M-parameter
Qwen2.5-VL (`tests/support/tiny_qwen.py`) on this machine's CPUs, where per-token Python
overhead, not matrix work, dominates. For each engine: start-up (model and processor loaded,
engine built) and steady captioning throughput over `--images` blob images shown at 56 x 56,
in batches of `--batch`; then whether the two engines wrote the same strings. The vLLM side
runs under vLLM's own interpreter (`make vllm`), as the caption workers do.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO / "tests")]

PROMPT = "Describe this emoji named {title} in one sentence."


def settings(model: str):
    from sdlab.caption.qwen_vl import GenerationSettings

    return GenerationSettings(model, PROMPT, 16, 56 * 56, 56 * 56)


def time_engine(engine: str, model: str, images_file: str, batches: list[int], threads: int) -> dict:
    """Start-up and images/s per batch size of one engine, in this process."""
    import numpy as np
    import torch
    from PIL import Image

    torch.set_num_threads(threads)
    arrays = np.load(images_file)
    images = [Image.fromarray(a) for a in arrays["images"]]
    titles = [str(t) for t in arrays["titles"]]
    started = time.perf_counter()
    if engine == "vllm":
        from sdlab.caption.vllm_engine import VllmCaptioner

        captioner = VllmCaptioner(settings(model), "fp32")
    else:
        from sdlab.caption.qwen_vl import QwenCaptioner

        captioner = QwenCaptioner(settings(model), "cpu", "fp32")
    result = {"startup_s": time.perf_counter() - started, "images_per_s": {}, "captions": {}}
    captioner.generate(images[:4], titles[:4])  # warm-up
    for batch in batches:
        started, raw = time.perf_counter(), []
        for start in range(0, len(images), batch):
            raw += captioner.generate(images[start : start + batch], titles[start : start + batch])
        result["images_per_s"][batch] = len(images) / (time.perf_counter() - started)
        result["captions"][batch] = raw
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--engine-only", choices=["transformers", "vllm"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--images-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine_only:  # one side, called by the main run (under vLLM's interpreter for vllm)
        print(json.dumps(time_engine(args.engine_only, args.model, args.images_file, args.batch, args.threads)))
        return

    import numpy as np
    from support.tiny_qwen import build_tiny_qwen

    from sdlab.caption.vllm_engine import engine_environment
    from sdlab.sources.synthetic import draw_blob, sample_blob

    root = Path(tempfile.mkdtemp(prefix="sdlab-caption-engines-"))
    model = str(build_tiny_qwen(root / "tiny-qwen"))
    rng = np.random.default_rng(0)
    blobs = [sample_blob(rng) for _ in range(args.images)]
    images = np.stack([np.asarray(draw_blob(b, 32).convert("RGB")) for b in blobs])
    np.savez(root / "images.npz", images=images, titles=np.array([b.title for b in blobs]))
    results = {}
    for engine, python in (("transformers", sys.executable), ("vllm", str(REPO / ".venv-vllm/bin/python"))):
        command = [python, __file__, "--engine-only", engine, "--model", model]
        command += ["--images-file", str(root / "images.npz"), "--threads", str(args.threads)]
        command += ["--batch", *map(str, args.batch)]
        done = subprocess.run(command, capture_output=True, text=True, env=engine_environment(python), check=False)
        if done.returncode != 0:
            sys.exit(f"{engine}: exited with {done.returncode}\n{done.stderr[-3000:]}")
        results[engine] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{args.images} images at 56 x 56, tiny Qwen2.5-VL, fp32, {args.threads} threads, greedy, 16 new tokens")
    for engine, result in results.items():
        rates = ", ".join(f"batch {b}: {r:.1f} images/s" for b, r in result["images_per_s"].items())
        print(f"{engine:>12}: start-up {result['startup_s']:.1f} s; {rates}")
    for batch in map(str, args.batch):
        ratio = results["vllm"]["images_per_s"][batch] / results["transformers"]["images_per_s"][batch]
        same = results["vllm"]["captions"][batch] == results["transformers"]["captions"][batch]
        print(f"batch {batch}: vLLM / transformers {ratio:.2f}x; captions identical: {same}")


if __name__ == "__main__":
    main()
