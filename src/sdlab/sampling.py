"""Sampling images from a pipeline with fixed seeds: used by training's validation grids, the
evaluate stage and `sdlab generate`."""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from sdlab.config import SCHEDULERS


def use_scheduler(pipeline, name: str) -> None:
    """Swap the pipeline's sampler for `name`, keeping the trained noise schedule (a flow-matching
    model only with the samplers that run on flow sigmas)."""
    import diffusers

    from sdlab.config import FLOW_SCHEDULERS

    if pipeline.scheduler.config.get("prediction_type") == "flow_prediction" and name not in FLOW_SCHEDULERS:
        raise ValueError(
            f"scheduler: {name} cannot sample this flow-matching model (use one of {', '.join(FLOW_SCHEDULERS)})"
        )
    pipeline.scheduler = getattr(diffusers, SCHEDULERS[name]).from_config(pipeline.scheduler.config)


def generate(
    pipeline,
    prompts: list[str],
    seeds: list[int],
    *,
    steps: int,
    guidance: float,
    batch_size: int,
    negative_prompt: str | None = None,
    progress: bool = True,
    height: int | None = None,
    width: int | None = None,
) -> np.ndarray:
    """uint8 (N, H, W, 3) images, one per (prompt, seed); each seed fixes its image. `height` /
    `width` default to the size the model was trained at."""
    from sdlab.models.pipeline import call_kwargs

    extra = call_kwargs(pipeline)
    if extra and negative_prompt is None:
        negative_prompt = ""  # PixArt takes the empty prompt as a string
    images = []
    for start in tqdm(range(0, len(prompts), batch_size), desc="sample", unit="batch", disable=not progress):
        chunk = slice(start, start + batch_size)
        generators = [torch.Generator().manual_seed(s) for s in seeds[chunk]]
        negative = None if negative_prompt is None else [negative_prompt] * len(prompts[chunk])
        out = pipeline(
            prompts[chunk],
            negative_prompt=negative,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=generators,
            output_type="np",
            height=height,
            width=width,
            **extra,
        ).images
        images.append((np.clip(out, 0, 1) * 255).round().astype(np.uint8))
    return np.concatenate(images)


def generate_at_sizes(
    pipeline, prompts: list[str], seeds: list[int], sizes: list[tuple[int, int] | None], **kwargs
) -> list[np.ndarray]:
    """`generate` with each prompt at its own (width, height) (None: the trained size); the
    prompts of one size are batched together. uint8 (H, W, 3) images in prompt order."""
    groups: dict[tuple[int, int] | None, list[int]] = {}
    for i, size in enumerate(sizes):
        groups.setdefault(size, []).append(i)
    out: list[np.ndarray | None] = [None] * len(prompts)
    for size, index in groups.items():
        width, height = size or (None, None)
        images = generate(
            pipeline, [prompts[i] for i in index], [seeds[i] for i in index], height=height, width=width, **kwargs
        )
        for i, image in zip(index, images, strict=True):
            out[i] = image
    return out
