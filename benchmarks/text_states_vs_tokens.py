"""Text conditioning at scale: cached hidden states vs token ids with the encoder in the step.

    .venv/bin/python benchmarks/text_states_vs_tokens.py [--images 10000] [--steps 30]

Two shapes, each trained by the real `stages/train.py` from a latents folder in the encode
stage's own format, once with `encode.text: states` and once with `tokens`:
- default: 8x8x4 latents, the packaged MiniLM (77x384), the default profile's UNet, batch 128;
- LAION-shaped: 4x32x32 latents, a CLIP ViT-L/14-sized text encoder (12 layers, 768 wide,
  built from config with random weights: the cost is in the shape, not the weights), a small
  UNet (32/64 channels), batch 16.
Prints disk bytes per image of the text files and the stage's steady samples/s.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(Path(__file__).parent))

from train_memory_scaling import run_stage, write_latents  # noqa: E402

from sdlab.config import VaeConfig  # noqa: E402
from sdlab.models.vae import build_vae  # noqa: E402

DEFAULT_UNET = {
    "block_out_channels": [64, 128],
    "layers_per_block": 1,
    "attention_head_dim": 8,
    "cross_attention_levels": [True, True],
}


def clip_l_text_encoder(folder: Path) -> dict:
    """A CLIP ViT-L/14-sized text tower with a (MiniLM) tokenizer, saved to `folder`."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from sdlab.models.text_encoder import load_text_encoder

    tokenizer, _ = load_text_encoder(None, 77, load_model=False)
    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=77,
    )
    CLIPTextModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return {"pretrained": str(folder), "max_length": 77, "subfolder": None, "tokenizer_subfolder": None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clip = clip_l_text_encoder(tmp / "clip-l")
        shapes = {
            "default (8x8x4, MiniLM 77x384)": dict(
                shape=(4, 8, 8), text_dim=384, encoder=None, unet=DEFAULT_UNET, batch=128, vae=[32, 64, 64]
            ),
            "LAION-shaped (4x32x32, CLIP-L 77x768)": dict(
                shape=(4, 32, 32), text_dim=768, encoder=clip, unet=None, batch=16, vae=[8, 16]
            ),
        }
        print("| shape | text | text bytes / image | latent bytes / image | samples/s |\n|---|---|---|---|---|")
        for name, spec in shapes.items():
            for text in ("states", "tokens"):
                root = tmp / f"{len(name)}-{text}"
                write_latents(
                    root / "latents", args.images, spec["shape"], text, spec["text_dim"], spec["encoder"], shard=2_500
                )
                build_vae(VaeConfig(block_out_channels=spec["vae"]), 32).save_pretrained(root / "vae")
                per_image = lambda folder: sum(p.stat().st_size for p in folder.glob("*.safetensors")) / args.images  # noqa: E731
                result = run_stage(root, args.steps, spec["unet"], spec["batch"], log_every=5)
                print(
                    f"| {name} | {text} | {per_image(root / 'latents' / 'text'):,.0f} | "
                    f"{per_image(root / 'latents' / 'shards'):,.0f} | {result['samples_per_s']:.1f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
