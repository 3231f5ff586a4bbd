"""Qwen2.5-VL captions on vLLM (`caption.engine: vllm`), in vLLM's own environment.

vLLM pins its own torch and transformers, which the project's cannot share, so `make vllm`
builds `.venv-vllm` and each caption worker runs this module under that interpreter:

    .venv-vllm/bin/python -m sdlab.caption.vllm_worker < job.json

(`run_in_vllm_env` writes the job: the worker's slot and its `CaptionSpec`). The worker loop,
the prompt, the title-as-data rule and the cache are the transformers path's own
(`qwen_pool.caption_jobs`, `qwen_vl.conversation`): only `generate` differs. Images are
resized by `qwen_vl_utils` exactly as on the transformers path, and the generated token ids
are decoded by the model's processor (vLLM's own `.text` drops a trailing incomplete UTF-8
sequence), so greedy captions are the same strings on both engines.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

KV_CACHE_BYTES_CPU = 256 << 20  # else vLLM reserves 92% of the machine's RAM on a CPU
MAX_MODEL_LEN = 4096  # prompt (instruction + image tokens at max_pixels) + the caption


class VllmCaptioner:
    """The `QwenCaptioner` interface (`generate(images, titles) -> raw texts`) on a vLLM engine."""

    def __init__(self, settings, precision: str = "bf16"):
        import torch
        from transformers import AutoProcessor
        from vllm import LLM

        self.settings = settings
        on_gpu = torch.cuda.is_available()
        size = {"shortest_edge": settings.min_pixels, "longest_edge": settings.max_pixels}
        self.processor = AutoProcessor.from_pretrained(settings.model, size=size)
        self.llm = LLM(
            model=settings.model,
            dtype={"bf16": "bfloat16", "fp16": "float16"}.get(precision, "float32") if on_gpu else "float32",
            max_model_len=MAX_MODEL_LEN,
            limit_mm_per_prompt={"image": 1},
            mm_processor_kwargs={"min_pixels": settings.min_pixels, "max_pixels": settings.max_pixels},
            seed=0,
            **({} if on_gpu else {"kv_cache_memory_bytes": KV_CACHE_BYTES_CPU, "enforce_eager": True}),
        )

    def generate(self, images: list[Image.Image], titles: list[str]) -> list[str]:
        from qwen_vl_utils import process_vision_info
        from vllm import SamplingParams

        from sdlab.caption.qwen_vl import conversation

        s = self.settings
        conversations = [
            conversation(s.prompt, image, title, s.min_pixels, s.max_pixels)
            for image, title in zip(images, titles, strict=True)
        ]
        texts = [
            self.processor.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations
        ]
        resized, _ = process_vision_info(conversations)  # the pixels the transformers path shows
        requests = [{"prompt": t, "multi_modal_data": {"image": im}} for t, im in zip(texts, resized, strict=True)]
        outputs = self.llm.generate(requests, SamplingParams(temperature=0.0, max_tokens=s.max_new_tokens))
        token_ids = [list(o.outputs[0].token_ids) for o in outputs]
        return self.processor.batch_decode(token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def engine_environment(python: str) -> dict[str, str]:
    """The worker's environment: this checkout's `src` importable, vLLM's telemetry off, and
    on a CPU the engine in-process (starts in seconds instead of a minute)."""
    source = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    if not env.get("CUDA_VISIBLE_DEVICES"):
        env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    return env


def check_vllm_python(python: str) -> None:
    """A clear error, before any worker starts, when vLLM's environment is not built."""
    from sdlab.errors import ConfigError

    if not Path(python).is_file():
        raise ConfigError(
            f"caption.vllm_python: {python} not found; caption.engine: vllm runs in its own environment: "
            "build it with `make vllm`"
        )


def _pass_on(chunk: bytes) -> None:
    """Bytes of the worker's stderr to this process's, as they are (a tqdm bar redraws in place)."""
    if hasattr(sys.stderr, "buffer"):
        sys.stderr.buffer.write(chunk)
    else:  # a replaced stderr (a test's capture) takes text
        sys.stderr.write(chunk.decode(errors="replace"))
    sys.stderr.flush()


def run_in_vllm_env(slot, spec) -> None:
    """Run one caption worker's share under vLLM's interpreter (`spec.python`); raise with the
    end of its output if it fails."""
    from sdlab.errors import WorkerError

    check_vllm_python(spec.python)
    job = json.dumps({"slot": dataclasses.asdict(slot), "spec": dataclasses.asdict(spec)})
    last = b""  # the end of its stderr, for the error; everything is passed on as it comes (progress bars too)
    with subprocess.Popen(
        [spec.python, "-m", "sdlab.caption.vllm_worker"],
        stdin=subprocess.PIPE,
        stdout=sys.stdout,
        stderr=subprocess.PIPE,
        env=engine_environment(spec.python),
    ) as done:
        done.stdin.write(job.encode())
        done.stdin.close()
        while chunk := done.stderr.read1(65536):
            _pass_on(chunk)
            last = (last + chunk)[-8192:]
    if done.returncode != 0:
        lines = [line for line in last.decode(errors="replace").replace("\r", "\n").splitlines() if line.strip()]
        tail = "\n".join(lines[-15:])
        raise WorkerError(f"caption worker {slot.rank} on vLLM ({spec.python}) exited with {done.returncode}:\n{tail}")
