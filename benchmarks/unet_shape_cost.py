"""The default UNet's train step on square latents against the aspect buckets' shapes, per latent pixel.

    .venv/bin/python benchmarks/unet_shape_cost.py [--shapes 8x8 16x16] [--channels 8]

Batch 64, the default profile's UNet (4.6M parameters) and MiniLM-sized text states, forward +
backward + AdamW step, best of 3 rounds of 8 steps per shape, the shapes interleaved: 8x8 (32x32
pixels), 6x10 and 10x6 (40x24 / 24x40); `--shapes` others (16x16: 64 px images), `--channels`
the latent channels (the emoji-sets profile's 8). Prints seconds per step and latent pixels per
second, relative to the first shape.
"""

from __future__ import annotations

import argparse
import time

import torch

from sdlab.config import TrainConfig
from sdlab.models.unet import build_unet

SHAPES = [(8, 8), (6, 10), (10, 6)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=[f"{h}x{w}" for h, w in SHAPES])
    parser.add_argument("--channels", type=int, default=4)
    args = parser.parse_args()
    shapes = [tuple(int(side) for side in shape.split("x")) for shape in args.shapes]
    torch.manual_seed(0)
    unet = build_unet(TrainConfig().unet, 8, args.channels, 384)
    optimizer = torch.optim.AdamW(unet.parameters(), 1e-3)
    hidden = torch.randn(64, 77, 384)

    def step(height: int, width: int) -> None:
        x, t = torch.randn(64, args.channels, height, width), torch.randint(0, 1000, (64,))
        loss = unet(x, t, encoder_hidden_states=hidden).sample.pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for shape in shapes:  # warm-up
        step(*shape)
    best = {shape: float("inf") for shape in shapes}
    for _ in range(3):
        for shape in shapes:
            start = time.perf_counter()
            for _ in range(8):
                step(*shape)
            best[shape] = min(best[shape], (time.perf_counter() - start) / 8)
    first = shapes[0]
    base = 64 * first[0] * first[1] / best[first]
    for (height, width), seconds in best.items():
        rate = 64 * height * width / seconds
        relative = f"{rate / base:.3f} of {first[0]}x{first[1]}"
        print(f"{height}x{width} latents: {seconds:.3f} s/step, {rate:,.0f} latent px/s ({relative})")


if __name__ == "__main__":
    main()
