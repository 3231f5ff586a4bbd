"""Model FLOPs utilisation of training on this machine, and what the same code should reach on H100s.

    .venv/bin/python benchmarks/train_mfu.py [--steps 20]

- UNet FLOPs per training step (forward + backward) are counted by
  `torch.utils.flop_counter.FlopCounterMode` on one real step of the default profile's
  UNet at its batch size (convolutions, attention, linear layers; elementwise ops are
  not counted, as usual for MFU).
- Steps/s come from the real step (`make_batch` from latents streamed from a temp folder, `training_loss`,
  backward, clipping, AdamW), after a warm-up step.
- This machine's dense matmul FLOP/s: fp32 2048x2048 `torch.matmul`, best of 5 rounds,
  with the same thread count.
MFU = FLOPs per step x steps/s / matmul FLOP/s. The H100 figures are a model, printed
with its assumptions: time per step = max(compute at an assumed MFU of bf16 dense peak,
one kernel launch per dispatched aten op).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from latents_folder import latents_stream  # noqa: E402

from sdlab.config import load_params  # noqa: E402
from sdlab.diffusion import make_noise_scheduler, training_loss  # noqa: E402
from sdlab.models.unet import build_unet  # noqa: E402
from sdlab.train import make_batch  # noqa: E402

H100_BF16_DENSE = 989e12  # FLOP/s, SXM, dense (NVIDIA datasheet)
ASSUMED_H100_MFU = 0.35  # typical of well-fed diffusion UNet training in bf16
LAUNCH_S = 5e-6  # per kernel, eager PyTorch (no CUDA graphs)
DDP_EFFICIENCY_8 = 0.9  # 8 GPUs on NVLink; the gradient all-reduce is small


class CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


def matmul_flops_per_s(n: int = 2048, reps: int = 10, rounds: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(reps):
            torch.matmul(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * n**3 * reps / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    params = load_params(REPO / "params.yaml")
    cfg = params.train
    latent_px = params.download.image_px // 2 ** (len(params.vae.block_out_channels) - 1)
    channels, text_dim = params.vae.latent_channels, 384
    torch.manual_seed(0)
    unet = build_unet(cfg.unet, latent_px, channels, text_dim).train()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=cfg.lr)
    scheduler = make_noise_scheduler(cfg)
    mean = torch.randn(1024, 1, channels, latent_px, latent_px)
    states = torch.randn(65, params.text_encoder.max_length, text_dim)
    folder = tempfile.TemporaryDirectory()
    stream, conditioning = latents_stream(
        Path(folder.name),
        {"mean": mean, "std": torch.full_like(mean, 0.1)},
        states[torch.randint(1, 65, (1024,))],
        states[0],
        cfg.batch_size,
    )

    def step(s: int) -> None:
        latents, hidden, _, generator = make_batch(stream, conditioning, s, cfg, 0, torch.device("cpu"))
        loss = training_loss(
            unet,
            scheduler,
            latents,
            hidden=hidden,
            generator=generator,
            noise_offset=cfg.noise_offset,
            snr_gamma=cfg.snr_gamma,
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    counter = FlopCounterMode(display=False)
    with counter:
        step(0)
    flops = counter.get_total_flops()
    ops = CountOps()
    with ops:
        step(1)
    started = time.perf_counter()
    for s in range(2, 2 + args.steps):
        step(s)
    steps_per_s = args.steps / (time.perf_counter() - started)
    peak = matmul_flops_per_s()
    batch = cfg.batch_size
    print(
        f"UNet {sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M params, batch {batch}, "
        f"{latent_px}x{latent_px}x{channels} latents, text {params.text_encoder.max_length}x{text_dim}, "
        f"{torch.get_num_threads()} threads"
    )
    print(
        f"FLOPs per training step (fwd+bwd): {flops / 1e9:.1f} GFLOP = {flops / batch / 1e6:.1f} MFLOP/sample; "
        f"{ops.ops} aten ops dispatched per step"
    )
    print(
        f"training: {steps_per_s:.2f} steps/s = {steps_per_s * batch:.0f} samples/s = "
        f"{flops * steps_per_s / 1e9:.1f} GFLOP/s"
    )
    print(f"dense fp32 matmul on this machine: {peak / 1e9:.1f} GFLOP/s")
    print(f"MFU: {flops * steps_per_s / peak:.1%}")
    compute_s = flops / (H100_BF16_DENSE * ASSUMED_H100_MFU)
    launch_s = ops.ops * LAUNCH_S
    per_step = max(compute_s, launch_s)
    bound = "kernel launches" if launch_s > compute_s else "compute"
    print(
        f"H100 (model): compute {compute_s * 1e3:.2f} ms at {ASSUMED_H100_MFU:.0%} of {H100_BF16_DENSE / 1e12:.0f} "
        f"TFLOP/s bf16, launches {launch_s * 1e3:.2f} ms ({ops.ops} x {LAUNCH_S * 1e6:.0f} us) -> "
        f"{bound}-bound, ~{batch / per_step:,.0f} samples/s on 1 GPU, "
        f"~{8 * DDP_EFFICIENCY_8 * batch / per_step:,.0f} on 8 (batch {batch} per GPU)"
    )
    big = 16 * batch  # a batch that fills the GPU
    per_step_big = max(compute_s * 16, launch_s)
    print(
        f"H100 at batch {big} per GPU: ~{big / per_step_big:,.0f} samples/s on 1, "
        f"~{8 * DDP_EFFICIENCY_8 * big / per_step_big:,.0f} on 8"
    )


if __name__ == "__main__":
    main()
