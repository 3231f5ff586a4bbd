"""Can every attribute of the synthetic blobs be read at the training resolution? And how
much of it survives a VAE?

    .venv/bin/python benchmarks/blob_legibility.py [--px 32] [--vae RUN/models/vae]

Draws 1,900 train and 200 val blobs as the pipeline does (128 px drawing, composited on
white, resized to `--px`), trains the evaluation's attribute classifier (300 steps) on the
train blobs and prints its accuracy per attribute on the val blobs, with the pixel judge's
skin color. With `--vae` (a trained VAE folder, e.g. a repro run's `models/vae`) it also
prints the val PSNR of the VAE's reconstructions and the accuracy on them of a classifier
trained on real + reconstructed train blobs (what the evaluate stage does): the most a
model that samples through that VAE can reach.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from sdlab.data.images import composite_on_white, fit_square  # noqa: E402
from sdlab.distribution import psnr, reconstruct  # noqa: E402
from sdlab.judge import accuracy, adherence, train_classifier  # noqa: E402
from sdlab.sources.synthetic import ATTRIBUTES, draw_blob, sample_blob  # noqa: E402


def blobs(seed: int, count: int, px: int):
    drawn = [sample_blob(np.random.default_rng([seed, i])) for i in range(count)]
    images = np.stack([np.asarray(fit_square(composite_on_white(draw_blob(b, 128)), px)) for b in drawn])
    return images, [{a: getattr(b, a) for a in ATTRIBUTES} for b in drawn]


def judged(classifier, images, rows) -> dict[str, float]:
    return {k: round(v, 3) for k, v in {**adherence(images, rows), **accuracy(classifier, images, rows)}.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--px", type=int, default=32)
    parser.add_argument("--vae", default=None)
    args = parser.parse_args()
    torch.set_num_threads(2)
    train, train_rows = blobs(0, 1900, args.px)
    val, val_rows = blobs(1, 200, args.px)
    print(
        f"judge on real val blobs at {args.px} px:", judged(train_classifier(train, train_rows, 300, 0), val, val_rows)
    )
    if args.vae:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(args.vae).eval()
        recon_train, recon_val = reconstruct(vae, train), reconstruct(vae, val)
        mixed = train_classifier(np.concatenate([train, recon_train]), train_rows + train_rows, 300, 0)
        print(
            f"VAE {args.vae}: val PSNR {psnr(val, recon_val):.2f} dB; judge on its reconstructions:",
            judged(mixed, recon_val, val_rows),
        )


if __name__ == "__main__":
    main()
