"""Training samples/s of the UNet and of Transformer denoisers of several shapes, side by side.

    .venv/bin/python benchmarks/denoiser_step_speed.py [--steps 6]

One real training step each (`training_loss`, backward, AdamW) on the default profile's
shapes: 8x8x4 latents, 77x384 text states (the transformer also gets the attention mask),
batch 128, 2 threads, after 2 warm-up steps. `--bf16` also times the UNet under bf16
autocast (`torch.autocast("cpu", torch.bfloat16)`, what `train.mixed_precision: bf16` does
on a CPU), fp32 and bf16 alternated twice.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from sdlab.config import TrainConfig, TransformerConfig  # noqa: E402
from sdlab.diffusion import make_noise_scheduler, training_loss  # noqa: E402
from sdlab.models.denoiser import make_denoiser  # noqa: E402

SHAPES = [  # (layers, heads, head dim, patch)
    (6, 8, 32, 1),
    (4, 8, 32, 1),
    (6, 6, 32, 1),
    (6, 8, 32, 2),
    (12, 8, 32, 2),
    (8, 8, 48, 2),
]


def samples_per_s(cfg: TrainConfig, steps: int, batch: int = 128, bf16: bool = False) -> tuple[float, float]:
    model = make_denoiser(cfg, 8, 4, 384)
    optimizer, scheduler = torch.optim.AdamW(model.parameters(), 1e-3), make_noise_scheduler(cfg)
    latents, hidden = torch.randn(batch, 4, 8, 8), torch.randn(batch, 77, 384)
    mask = torch.ones(batch, 77, dtype=torch.long) if cfg.denoiser == "transformer" else None
    generator = torch.Generator().manual_seed(0)
    for step in range(steps + 2):
        if step == 2:
            started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = training_loss(model, scheduler, latents, hidden=hidden, generator=generator, mask=mask)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return batch * steps / (time.perf_counter() - started), sum(p.numel() for p in model.parameters()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--bf16", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.bf16:
        for bf16 in (False, True, False, True):
            speed = samples_per_s(TrainConfig(), args.steps, bf16=bf16)[0]
            print(f"UNet {'bf16 autocast' if bf16 else 'fp32'}: {speed:.0f} samples/s")
        return
    print("| denoiser | params (M) | samples/s |\n|---|---|---|")
    speed, params = samples_per_s(TrainConfig(), args.steps)
    print(f"| UNet (default) | {params:.2f} | {speed:.0f} |")
    for layers, heads, dim, patch in SHAPES:
        shape = TransformerConfig(
            num_layers=layers, num_attention_heads=heads, attention_head_dim=dim, patch_size=patch
        )
        speed, params = samples_per_s(TrainConfig(denoiser="transformer", transformer=shape), args.steps)
        print(f"| transformer {layers}x{heads}x{dim}, patch {patch} | {params:.2f} | {speed:.0f} |")


if __name__ == "__main__":
    main()
