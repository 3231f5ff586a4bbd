"""`sdlab` command line: `sdlab generate` samples images from a trained pipeline folder
(SD-1.x layout or PixArt-alpha).

The defaults are the evaluate stage's (`evaluate.scheduler`, `num_inference_steps`,
`guidance_scale` in params.yaml), so `sdlab generate` draws what report.html shows for the
same prompt and seed; README's Python snippet spells out the same settings."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from PIL import Image

from sdlab.config import SCHEDULERS  # light: --help does not import torch
from sdlab.drawing_rules import (
    DEFAULT_GUIDANCE,
    DEFAULT_SCHEDULER,
    DEFAULT_STEPS,
    fits,
    size_rules,
    trained_buckets,
    trained_sizes,
)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}


def _fail(message: str, command: str = "generate") -> int:
    print(f"sdlab {command}: error: {message}", file=sys.stderr)
    return 2


def _model_error(model: str) -> str | None:
    """Why `model` is not a pipeline folder (checked before torch is imported), or None."""
    if (Path(model) / "model_index.json").is_file():
        return None
    hint = ""
    if Path(model).resolve() == Path("models/pipeline").resolve():
        hint = " (run `dvc repro` to train one, or `dvc checkout models/pipeline` to restore it)"
    return f"--model {model}: not a diffusers pipeline folder (no model_index.json){hint}"


def _device(requested: str | None) -> tuple[str, str | None]:
    """(the device to use, or why it cannot be used): default cuda when visible, else cpu."""
    import torch

    device = requested or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        return device, f"--device {device}: no CUDA device is visible"
    return device, None


def _generate(args: argparse.Namespace) -> int:
    if args.steps < 1:
        return _fail(f"--steps must be at least 1, got {args.steps}")
    if args.num_images < 1:
        return _fail(f"--num-images must be at least 1, got {args.num_images}")
    if args.guidance < 0:
        return _fail(
            f"--guidance must be 0 or more (1 or less turns classifier-free guidance off), got {args.guidance}"
        )
    if Path(args.out).suffix.lower() not in IMAGE_SUFFIXES:
        return _fail(f"--out {args.out}: name an image file ({', '.join(sorted(IMAGE_SUFFIXES))})")
    if error := _model_error(args.model):
        return _fail(error)
    multiple, trained = size_rules(Path(args.model))
    for name in ("height", "width"):
        value = getattr(args, name)
        if value is not None and not fits(value, multiple):
            return _fail(
                f"--{name} {value}: must be a positive multiple of {multiple} "
                f"(trained at {trained_sizes(trained, trained_buckets(Path(args.model)))})"
            )
    device, error = _device(args.device)
    if error:
        return _fail(error)

    from sdlab.models.pipeline import load_pipeline
    from sdlab.sampling import generate, use_scheduler

    try:
        pipeline = load_pipeline(args.model, device=device)
    except (FileNotFoundError, OSError, ValueError) as exc:
        print(f"sdlab generate: cannot load {args.model}: {exc}", file=sys.stderr)
        return 1
    try:
        use_scheduler(pipeline, args.scheduler)
    except ValueError as exc:
        return _fail(f"--{exc}")
    pipeline.set_progress_bar_config(disable=False, desc="denoise")  # one bar over the sampling steps
    seeds = [args.seed + i for i in range(args.num_images)]
    images = generate(
        pipeline,
        [args.prompt] * args.num_images,
        seeds,
        steps=args.steps,
        guidance=args.guidance,
        batch_size=args.num_images,
        negative_prompt=args.negative_prompt,
        progress=False,
        height=args.height or trained,  # diffusers drops both when one is missing
        width=args.width or trained,
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out] if len(images) == 1 else [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(len(images))]
    for image, path in zip(images, paths, strict=True):
        Image.fromarray(image).save(path)
        print(path)
    return 0


def _serve(args: argparse.Namespace) -> int:
    if error := _model_error(args.model):
        return _fail(error, "serve")
    device, error = _device(args.device)
    if error:
        return _fail(error, "serve")
    from sdlab.serve import Playground, make_server

    server = make_server(Playground(args.model, device=device), args.host, args.port)
    host, port = server.server_address[:2]
    print(f"sdlab playground on http://{host}:{port}/ (Ctrl-C stops it)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _profile(args: argparse.Namespace) -> int:
    import shlex
    import subprocess

    import yaml

    from sdlab.config import ConfigError
    from sdlab.profiles import load_profile

    try:
        profile = load_profile(args.name)
    except ConfigError as exc:
        return _fail(str(exc), "profile")
    if args.show:
        print(yaml.safe_dump(profile.composed, sort_keys=False, width=100), end="")
        return 0
    name = args.exp_name or args.name
    where = [] if args.workspace else ["--temp"]
    command = ["dvc", "exp", "run", *where, "-n", name, *profile.overrides, *args.targets]
    print(shlex.join(command), flush=True)
    if args.dry_run:
        return 0
    bin_dir = str(Path(sys.executable).parent)  # the stages call `python`: this environment's
    env = dict(os.environ, PATH=os.pathsep.join([bin_dir, os.environ.get("PATH", "")]))
    return subprocess.run([sys.executable, "-m", *command], env=env).returncode


def add_model_and_device(command: argparse.ArgumentParser) -> None:
    command.add_argument("--model", default="models/pipeline", help="the pipeline folder the train stage exported")
    command.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when visible, else cpu)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdlab")
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser(
        "generate",
        help="sample images from a diffusers pipeline folder",
        description="Sample images from a trained pipeline folder. Each seed fixes its image: the same "
        "model, prompt, seed, scheduler, steps and guidance give the same pixels.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_model_and_device(gen)
    gen.add_argument("--prompt", required=True, help="what to draw (the caption form the model was trained on)")
    gen.add_argument("--negative-prompt", default=None, help="what to steer away from (default: the empty prompt)")
    gen.add_argument("--scheduler", default=DEFAULT_SCHEDULER, choices=sorted(SCHEDULERS), help="sampler")
    gen.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="denoising steps")
    gen.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE, help="classifier-free guidance scale")
    gen.add_argument("--seed", type=int, default=0, help="seed of the first image; image i uses seed + i")
    gen.add_argument("--num-images", type=int, default=1, help="images to draw (OUT-0.png, OUT-1.png, ... when > 1)")
    gen.add_argument("--height", type=int, default=None, help="image height in pixels (default: the trained size)")
    gen.add_argument("--width", type=int, default=None, help="image width in pixels (default: the trained size)")
    gen.add_argument("--out", default="out.png", help="image file to write")
    gen.set_defaults(run=_generate)
    serve = commands.add_parser(
        "serve",
        help="a local web page to try prompts",
        description="Serve a page with prompt, negative prompt, seed, steps, guidance, scheduler and size; "
        "each image comes with the `sdlab generate` command that draws the same pixels.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_model_and_device(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    serve.add_argument("--port", type=int, default=7860, help="port to listen on (0: any free one)")
    serve.set_defaults(run=_serve)
    profile = commands.add_parser(
        "profile",
        help="run a profile (configs/NAME.yaml) as a DVC experiment",
        description="Run the pipeline on a profile: configs/NAME.yaml states only what differs from "
        "params.yaml, and runs as `dvc exp run --temp -n NAME -S key=value ...` (one override per value it "
        "sets) in a temporary copy: no tracked file changes, `dvc exp show` lists the profile's values and "
        "metrics, `dvc exp apply NAME` brings its params and outputs into the workspace. Runs that must "
        "resume after a kill (checkpoints, the download cache) need --workspace.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    profile.add_argument("name", help="a profile in configs/ (tiny, noto, discord-blobs, laion) or a YAML path")
    profile.add_argument("targets", nargs="*", help="stages to run up to (default: all)")
    profile.add_argument("--exp-name", default=None, help="the experiment's name (default: the profile's)")
    profile.add_argument(
        "--workspace",
        action="store_true",
        help="run in the workspace, not a temporary copy: params.yaml then holds the profile's values (as after "
        "any `dvc exp run -S`) and the persisted outputs (checkpoints, download cache) stay for a resumed run",
    )
    profile.add_argument("--show", action="store_true", help="print params.yaml with the profile applied, run nothing")
    profile.add_argument("--dry-run", action="store_true", help="print the dvc command, run nothing")
    profile.set_defaults(run=_profile)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
