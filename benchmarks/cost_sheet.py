"""GPU cost of the seed's run (the `laion` profile, 12M images) per stage, computed from model FLOPs.

    .venv/bin/python benchmarks/cost_sheet.py [--images 12000000] [--mfu 0.4]

No GPU here, so these are computations, not measurements: each stage's FLOPs per image are
counted on the profile's own models (`torch.utils.flop_counter` on the SD-layout VAE encoder and
UNet the profile builds, at its resolution; parameter counts x tokens for the text encoder and
Qwen2.5-VL-3B, built on the meta device from their published configurations), and a GPU's rate
is its dense bf16 peak x `--mfu` (an assumed utilisation) / FLOPs. The README's runbook puts
them beside what BENCHMARKS.md measured on this machine's CPUs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from sdlab.models.unet import build_unet  # noqa: E402
from sdlab.profiles import load_profile  # noqa: E402

PEAK_BF16 = {"A100": 312e12, "H100 SXM": 989e12}  # dense, no sparsity (NVIDIA's data sheets)
SD_VAE = dict(  # stabilityai/sd-vae-ft-mse's configuration (the profile's pinned VAE)
    block_out_channels=[128, 256, 512, 512],
    layers_per_block=2,
    latent_channels=4,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
)
CLIP_L_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
QWEN_3B = dict(  # Qwen/Qwen2.5-VL-3B-Instruct's config.json
    text=dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
              num_key_value_heads=2, vocab_size=151936),
    vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048),
)  # fmt: skip


def counted(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


@torch.no_grad()
def vae_encode_flops(px: int) -> float:
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(**SD_VAE).eval()
    return counted(lambda: vae.encode(torch.zeros(1, 3, px, px)))


def unet_train_flops(params, px: int) -> float:
    """Forward + backward of one sample (backward counted by autograd, ~2x the forward)."""
    cfg = params.train
    with torch.device("meta"):
        unet = build_unet(cfg.unet, px // 8, 4, 768)
        latents = torch.zeros(1, 4, px // 8, px // 8, requires_grad=True)
        text = torch.zeros(1, 77, 768)

        def step():
            unet(latents, torch.tensor([500]), encoder_hidden_states=text).sample.sum().backward()

        return counted(step)


def text_params(config: dict) -> int:
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        model = CLIPTextModel(CLIPTextConfig(**config))
    return sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n)


def qwen_caption_flops(image_px: int = 448, prompt_tokens: int = 190, new_tokens: int = 40) -> tuple[float, int, int]:
    """2 x parameters x tokens for the vision tower (patches) and the language model (prefill +
    decode); attention's quadratic terms are small at these lengths and left out."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    config = Qwen2_5_VLConfig(text_config=QWEN_3B["text"], vision_config=QWEN_3B["vision"])
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(config)
    vision = sum(p.numel() for n, p in model.named_parameters() if ".visual." in f".{n}")
    language = sum(
        p.numel() for n, p in model.named_parameters() if ".visual." not in f".{n}" and "embed_tokens" not in n
    )
    patches = (image_px // 14) ** 2
    image_tokens = patches // 4  # 2 x 2 patch merge
    flops = 2 * vision * patches + 2 * language * (prompt_tokens + image_tokens + new_tokens)
    return flops, vision, language


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=12_000_000)
    parser.add_argument("--mfu", type=float, default=0.4, help="assumed fraction of the dense bf16 peak")
    args = parser.parse_args()
    params = load_profile("laion", REPO).params
    px = params.download.image_px
    samples = params.train.max_steps * params.train.batch_size * 32  # the runbook's 4 nodes x 8 GPUs
    clip = 2 * text_params(CLIP_L_TEXT) * 77
    qwen, vision, language = qwen_caption_flops()
    stages = {
        "caption (Qwen2.5-VL-3B, 448 px max, ~190 prompt + 40 new tokens)": (qwen, args.images),
        f"encode (SD VAE encoder at {px} px; CLIP-L ids only)": (vae_encode_flops(px), args.images),
        f"train (the profile's SD 1.x UNet, {px // 8}x{px // 8} latents, + CLIP-L forward)": (
            unet_train_flops(params, px) + clip,
            samples,
        ),
    }
    print(f"Qwen2.5-VL-3B: vision {vision / 1e6:.0f}M, language {language / 1e9:.2f}B parameters (no embeddings)")
    print(
        f"train: {params.train.max_steps:,} steps x {params.train.batch_size} x 32 GPUs = {samples / 1e6:.0f}M samples"
    )
    print(f"{'stage':<80} {'GFLOP/image':>12} " + " ".join(f"{g + ' img/s':>16} {g + ' GPU-h':>14}" for g in PEAK_BF16))
    for name, (flops, count) in stages.items():
        cells = []
        for peak in PEAK_BF16.values():
            rate = peak * args.mfu / flops
            cells += [f"{rate:>16,.0f}", f"{count / rate / 3600:>14,.0f}"]
        print(f"{name:<80} {flops / 1e9:>12,.1f} " + " ".join(cells))


if __name__ == "__main__":
    main()
