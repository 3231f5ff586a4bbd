"""Evaluation: held-out denoising loss, sampling with fixed seeds, adherence, grid."""

from __future__ import annotations

import textwrap

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from sdlab.diffusion import epsilon_loss


def timestep_grid(num_train_timesteps: int, count: int) -> list[int]:
    """`count` evenly spaced timesteps, centred in their buckets."""
    step = num_train_timesteps / count
    return [int(step * (i + 0.5)) for i in range(count)]


@torch.no_grad()
def heldout_loss(unet, scheduler, latents: torch.Tensor, hidden: torch.Tensor, timesteps: list[int],
                 seed: int, batch_size: int = 64) -> dict[int, float]:
    """Mean epsilon loss per timestep on fixed latents with fixed noise (deterministic)."""
    unet.eval()
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed))
    losses = {}
    for t in timesteps:
        total = 0.0
        for start in range(0, len(latents), batch_size):
            part = slice(start, start + batch_size)
            t_batch = torch.full((len(latents[part]),), t, dtype=torch.long)
            total += epsilon_loss(unet, scheduler, latents[part], hidden[part], t_batch, noise[part]).sum().item()
        losses[t] = total / len(latents)
    return losses


def generate(pipeline, prompts: list[str], seeds: list[int], steps: int, guidance: float,
             batch_size: int, negative_prompt: str | None = None, progress: bool = True) -> np.ndarray:
    """uint8 (N, H, W, 3) images, one per (prompt, seed); each seed fixes its image."""
    images = []
    for start in tqdm(range(0, len(prompts), batch_size), desc="sample", unit="batch", disable=not progress):
        chunk = slice(start, start + batch_size)
        generators = [torch.Generator().manual_seed(s) for s in seeds[chunk]]
        negative = None if negative_prompt is None else [negative_prompt] * len(prompts[chunk])
        out = pipeline(prompts[chunk], negative_prompt=negative, num_inference_steps=steps,
                       guidance_scale=guidance, generator=generators, output_type="np").images
        images.append((np.clip(out, 0, 1) * 255).round().astype(np.uint8))
    return np.concatenate(images)


def sample_grid(images: np.ndarray, labels: list[str], columns: int, label_px: int = 56) -> Image.Image:
    """Images in a grid with their wrapped labels underneath, upscaled to >= 96 px."""
    scale = max(1, 96 // images.shape[1])
    cell = images.shape[1] * scale
    width = max(cell, 120)
    rows = (len(images) + columns - 1) // columns
    grid = Image.new("RGB", (columns * width, rows * (cell + label_px)), "white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default(size=9)
    for i, (image, label) in enumerate(zip(images, labels)):
        x, y = (i % columns) * width, (i // columns) * (cell + label_px)
        tile = Image.fromarray(image).resize((cell, cell), Image.Resampling.NEAREST)
        grid.paste(tile, (x + (width - cell) // 2, y))
        text = "\n".join(textwrap.wrap(label, width=width // 5)[:5])
        draw.multiline_text((x + 2, y + cell + 1), text, fill="black", font=font, spacing=0)
    return grid


SCHEDULERS = {
    "dpm_solver_multistep": "DPMSolverMultistepScheduler",
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_ancestral": "EulerAncestralDiscreteScheduler",
    "pndm": "PNDMScheduler",
    "unipc": "UniPCMultistepScheduler",
}


def use_scheduler(pipeline, name: str) -> None:
    """Swap the pipeline's sampler for `name`, keeping the trained noise schedule."""
    import diffusers
    pipeline.scheduler = getattr(diffusers, SCHEDULERS[name]).from_config(pipeline.scheduler.config)


def fid_kid(extractor: torch.nn.Module, real: np.ndarray, generated: np.ndarray) -> tuple[float, float]:
    """FID and KID (mean) between two uint8 (N, H, W, 3) sets, in `extractor`'s feature space."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    subset = max(2, min(50, len(real), len(generated)))
    fid = FrechetInceptionDistance(feature=extractor, normalize=False)
    kid = KernelInceptionDistance(feature=extractor, subset_size=subset, normalize=False)
    for images, is_real in ((real, True), (generated, False)):
        batch = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)  # uint8 (N, 3, H, W)
        fid.update(batch, real=is_real)
        kid.update(batch, real=is_real)
    return float(fid.compute()), float(kid.compute()[0])


def judge_samples(generated: np.ndarray, rows: list[dict], real_val: np.ndarray, real_train: np.ndarray,
                  train_rows: list[dict], judge_steps: int, seed: int) -> dict:
    """Adherence per attribute (pixel judges for color and head shape, a classifier trained
    on the real train images for the rest), each judge's accuracy on the real val images,
    and FID/KID in the classifier's feature space (named as the substitute they are)."""
    from sdlab.attribute_classifier import CLASSES, FeatureExtractor, accuracy, train_classifier
    from sdlab.judge import adherence

    classifier = train_classifier(real_train, train_rows, judge_steps, seed)
    learned = [name for name in CLASSES if name != "head_shape"]  # head shape: the exact pixel judge
    adherence_scores = {**adherence(generated, rows), **{k: v for k, v in accuracy(classifier, generated, rows).items()
                                                        if k in learned}}
    judge_scores = {**adherence(real_val, rows), **{k: v for k, v in accuracy(classifier, real_val, rows).items()
                                                   if k in learned}}
    fid, kid = fid_kid(FeatureExtractor(classifier), real_val, generated)
    return {"adherence": adherence_scores, "judge_accuracy_on_real": judge_scores,
            "fid_blob_judge": fid, "kid_blob_judge": kid}
