"""Entry point of a caption worker on vLLM, run under vLLM's interpreter (`sdlab.caption.vllm_engine`):

.venv-vllm/bin/python -m sdlab.caption.vllm_worker < job.json
"""

from __future__ import annotations

import json
import sys

import torch

from sdlab.caption.qwen_pool import caption_jobs, spec_from_dict
from sdlab.caption.vllm_engine import VllmCaptioner
from sdlab.workers import Slot


def main() -> None:
    """One worker's share, from the job on stdin (its slot and `CaptionSpec`)."""
    job = json.loads(sys.stdin.read())
    slot, spec = Slot(**job["slot"]), spec_from_dict(job["spec"])
    torch.set_num_threads(slot.threads)
    caption_jobs(slot, spec, lambda: VllmCaptioner(spec.settings, spec.precision))


if __name__ == "__main__":
    main()
