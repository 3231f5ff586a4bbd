"""Training samples/s with cached latents vs encoding online every step.

    .venv/bin/python benchmarks/train_cached_vs_online.py [--steps 20]

Same UNet (the default profile's), same batch size, same optimizer, side by side:
- cached: what `train` does: a batch of stored posterior mean/std + cached caption states,
  streamed from a latents folder in the encode stage's format;
- online: how the diffusers `train_text_to_image.py` example (and the source project)
  train: every step runs the VAE encoder on the batch's images and the text encoder on
  its captions (both frozen, no grad), then the same UNet step.
Images are synthetic blobs at the default resolution, decoded in memory beforehand, so
neither side pays for file reading. VAE and UNet weights are random: throughput does not
depend on them. Each side runs a warm-up step first.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from latents_folder import latents_stream  # noqa: E402

from sdlab.config import load_params  # noqa: E402
from sdlab.data.images import composite_on_white, fit_square  # noqa: E402
from sdlab.diffusion import drop_captions, make_noise_scheduler, sample_latents, training_loss  # noqa: E402
from sdlab.models.text_encoder import encode_prompts, load_text_encoder  # noqa: E402
from sdlab.models.unet import build_unet  # noqa: E402
from sdlab.models.vae import build_vae, encode_moments, to_tensor  # noqa: E402
from sdlab.sources.synthetic import draw_blob, sample_blob  # noqa: E402
from sdlab.train import make_batch  # noqa: E402


def blobs(count: int, px: int) -> tuple[torch.Tensor, list[str]]:
    drawn = [sample_blob(np.random.default_rng([1, i])) for i in range(count)]
    images = np.stack([np.asarray(fit_square(composite_on_white(draw_blob(b, 128)), px)) for b in drawn])
    return to_tensor(images), [b.caption() for b in drawn]


def timed(step, steps: int, batch_size: int) -> float:
    step(0)  # warm-up
    started = time.perf_counter()
    for s in range(1, steps + 1):
        step(s)
    return steps * batch_size / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--images", type=int, default=1024)
    args = parser.parse_args()
    params = load_params(REPO / "params.yaml")
    cfg, px = params.train, params.download.image_px
    torch.manual_seed(0)
    images, captions = blobs(args.images, px)
    vae = build_vae(params.vae, px).eval()
    vae.register_to_config(scaling_factor=1.0)
    tokenizer, text_encoder = load_text_encoder(None, params.text_encoder.max_length)
    latent_px = px // 2 ** (len(params.vae.block_out_channels) - 1)
    unet = build_unet(cfg.unet, latent_px, params.vae.latent_channels, text_encoder.config.hidden_size)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=cfg.lr)
    scheduler = make_noise_scheduler(cfg)
    empty = encode_prompts(tokenizer, text_encoder, [""])[0]

    def update(latents, hidden, mask, generator):
        loss = training_loss(unet, scheduler, latents, hidden=hidden, generator=generator, mask=mask)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    with torch.no_grad():  # the cache, as `encode` writes it
        mean, std = encode_moments(vae, images, 256)
        vocabulary = [""] + captions
        text = encode_prompts(tokenizer, text_encoder, vocabulary, 128)
    folder = tempfile.TemporaryDirectory()
    stream, conditioning = latents_stream(
        Path(folder.name), {"mean": mean[:, None], "std": std[:, None]}, text[1:], empty, cfg.batch_size
    )

    def cached(step):
        update(*make_batch(stream, conditioning, step, cfg, 0, torch.device("cpu")))

    def online(step):
        generator = torch.Generator().manual_seed(step)
        ids = torch.randint(len(images), (cfg.batch_size,), generator=generator)
        with torch.no_grad():
            dist = vae.encode(images[ids]).latent_dist
            latents = sample_latents(dist.mean, dist.std, generator) * vae.config.scaling_factor
            hidden = encode_prompts(tokenizer, text_encoder, [captions[i] for i in ids], cfg.batch_size)
        update(latents, drop_captions(hidden, empty, cfg.caption_dropout, generator)[0], None, generator)

    print(
        f"UNet {sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M params, batch {cfg.batch_size}, "
        f"{px} px images -> {latent_px}x{latent_px} latents, {torch.get_num_threads()} threads, {args.steps} steps"
    )
    rate_cached = timed(cached, args.steps, cfg.batch_size)
    rate_online = timed(online, args.steps, cfg.batch_size)
    print(f"cached latents:  {rate_cached:.1f} samples/s")
    print(f"online encoding: {rate_online:.1f} samples/s")
    print(f"speed-up: {rate_cached / rate_online:.2f}x")


if __name__ == "__main__":
    main()
