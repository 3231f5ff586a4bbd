"""The default UNet's train step on square latents against the aspect buckets' shapes, per latent pixel.

    .venv/bin/python benchmarks/unet_shape_cost.py

Batch 64, the default profile's UNet (4.6M parameters) and MiniLM-sized text states, forward +
backward + AdamW step, best of 3 rounds of 8 steps per shape, the shapes interleaved: 8x8 (32x32
pixels), 6x10 and 10x6 (40x24 / 24x40). Prints seconds per step and latent pixels per second.
"""

from __future__ import annotations

import time

import torch

from sdlab.config import TrainConfig
from sdlab.models.unet import build_unet

SHAPES = [(8, 8), (6, 10), (10, 6)]


def main() -> None:
    torch.manual_seed(0)
    unet = build_unet(TrainConfig().unet, 8, 4, 384)
    optimizer = torch.optim.AdamW(unet.parameters(), 1e-3)
    hidden = torch.randn(64, 77, 384)

    def step(height: int, width: int) -> None:
        x, t = torch.randn(64, 4, height, width), torch.randint(0, 1000, (64,))
        loss = unet(x, t, encoder_hidden_states=hidden).sample.pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for shape in SHAPES:  # warm-up
        step(*shape)
    best = {shape: float("inf") for shape in SHAPES}
    for _ in range(3):
        for shape in SHAPES:
            start = time.perf_counter()
            for _ in range(8):
                step(*shape)
            best[shape] = min(best[shape], (time.perf_counter() - start) / 8)
    base = 64 * 64 / best[(8, 8)]
    for (height, width), seconds in best.items():
        rate = 64 * height * width / seconds
        print(f"{height}x{width} latents: {seconds:.3f} s/step, {rate:,.0f} latent px/s ({rate / base:.3f} of 8x8)")


if __name__ == "__main__":
    main()
