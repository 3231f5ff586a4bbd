"""`sdlab` command line: `sdlab generate` samples images from a trained pipeline folder
(SD-1.x layout or PixArt-alpha)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image


def _generate(args: argparse.Namespace) -> int:
    from sdlab.models.pipeline import load_pipeline
    from sdlab.sampling import generate

    try:
        pipeline = load_pipeline(args.model)
    except (FileNotFoundError, OSError, ValueError) as exc:
        print(f"sdlab generate: cannot load {args.model}: {exc}", file=sys.stderr)
        return 1
    pipeline.set_progress_bar_config(disable=False, desc="denoise")  # one bar over the sampling steps
    seeds = [args.seed + i for i in range(args.num_images)]
    images = generate(
        pipeline,
        [args.prompt] * args.num_images,
        seeds,
        args.steps,
        args.guidance,
        batch_size=args.num_images,
        negative_prompt=args.negative_prompt,
        progress=False,
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out] if len(images) == 1 else [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(len(images))]
    for image, path in zip(images, paths, strict=True):
        Image.fromarray(image).save(path)
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdlab")
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="sample images from a diffusers pipeline folder")
    gen.add_argument("--model", default="models/pipeline")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--negative-prompt", default=None)
    gen.add_argument("--steps", type=int, default=20)
    gen.add_argument("--guidance", type=float, default=5.0)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--num-images", type=int, default=1)
    gen.add_argument("--out", default="out.png")
    gen.set_defaults(run=_generate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
