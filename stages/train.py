"""DVC stage `train`: the denoiser (UNet or Transformer) on latents streamed from disk; checkpoints
persist, the pipeline is exported.

With `train.num_processes > 1` (or `train.accelerate_config`) it re-runs itself under
`accelerate launch`; every rank then streams only its share of the latent shards.
"""

import contextlib
import functools
import sys
from pathlib import Path

from diffusers import AutoencoderKL
from dvclive import Live

from sdlab.data.records import DataError
from sdlab.diffusion import make_noise_scheduler
from sdlab.io import first_rows, write_json
from sdlab.latents import read_meta
from sdlab.launch import relaunch_if_needed
from sdlab.models.denoiser import make_denoiser
from sdlab.models.pipeline import build_pipeline, export_pipeline
from sdlab.models.text_encoder import load_text_encoder
from sdlab.reports import sample_grid
from sdlab.sampling import generate
from sdlab.stage import parse_args, stage
from sdlab.stream import LatentStream, rank_parts
from sdlab.train import conditioning_for, data_fingerprint, make_accelerator, prepare_run, run_identity, train_unet


def log_validation_grid(model, step: int, vae, tokenizer, text_encoder, cfg, prompts: list[str], live) -> None:
    """A few val prompts sampled with the current weights, into the dvclive folder."""
    pipeline = build_pipeline(model, vae, tokenizer, text_encoder, make_noise_scheduler(cfg))
    pipeline.set_progress_bar_config(disable=True)
    images = generate(
        pipeline,
        prompts,
        list(range(len(prompts))),
        cfg.validation_steps,
        cfg.validation_guidance,
        len(prompts),
        progress=False,
    )
    live.log_image(f"validation/step-{step:07d}.png", sample_grid(images, prompts, len(prompts)))
    model.train()


@stage("train")
def main(args, params):
    cfg, latents_dir, live_dir = params.train, Path(args.latents), Path(args.live)
    relaunch_if_needed(cfg, __file__, sys.argv[1:])
    accelerator = make_accelerator(cfg)
    rank, world, main_process = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    meta = read_meta(latents_dir)
    per_rank = [sum(p.rows for p in rank_parts(meta["shards"], r, world)) for r in range(world)]
    if min(per_rank) == 0:
        raise DataError(
            f"train: the train split has {sum(per_rank)} image(s), too few for {world} process(es) "
            "(lower dedupe.val_fraction or add data)"
        )
    batch_size = min(cfg.batch_size, min(per_rank))
    if batch_size < cfg.batch_size and main_process:
        print(
            f"train: train.batch_size {cfg.batch_size} is above the {min(per_rank)} train images a process "
            f"has; using batch {batch_size}",
            file=sys.stderr,
        )
    stream = LatentStream(
        latents_dir, rank_parts(meta["shards"], rank, world), batch_size, cfg.seed, cfg.shuffle_shards
    )
    tokenizer, text_encoder = load_text_encoder(
        **meta["text_encoder"], load_model=main_process or meta["text"] == "tokens"
    )
    masked = cfg.denoiser == "transformer"
    if masked != meta.get("text_mask", False):
        raise DataError(
            f"train.denoiser: {cfg.denoiser} needs text states encoded {'with' if masked else 'without'} "
            f"the attention mask; {latents_dir} has them {'with' if not masked else 'without'} (rerun encode)"
        )
    conditioning = conditioning_for(latents_dir, meta["text"], text_encoder, masked)
    unet = make_denoiser(cfg, meta["latent_shape"][1], meta["latent_shape"][0], meta["text_dim"])
    run_dir = Path(args.checkpoints) / run_identity(cfg, data_fingerprint(latents_dir), world)
    resuming = prepare_run(run_dir, cfg.keep_runs, live_dir) if main_process else False
    accelerator.wait_for_everyone()
    validate = vae = None
    if main_process:  # only the main process samples, logs and exports
        vae = AutoencoderKL.from_pretrained(args.vae)
        prompts = first_rows(latents_dir / "index.parquet", cfg.validation_prompts, "split", "val", ["caption"])
        if prompts.num_rows:
            validate = functools.partial(
                log_validation_grid,
                vae=vae,
                tokenizer=tokenizer,
                text_encoder=text_encoder,
                cfg=cfg,
                prompts=prompts["caption"].to_pylist(),
            )
    live = Live(dir=str(live_dir), dvcyaml=None, save_dvc_exp=False, resume=resuming) if main_process else None
    with live or contextlib.nullcontext():
        validate = functools.partial(validate, live=live) if validate else None
        unet, summary = train_unet(unet, stream, conditioning, cfg, run_dir, live, validate, accelerator)
    stream.close()
    if main_process:
        (live_dir / "plots" / "images").mkdir(parents=True, exist_ok=True)  # a DVC plots out
        summary.update(
            train_samples=sum(per_rank),
            denoiser=cfg.denoiser,
            unet_parameters=sum(p.numel() for p in unet.parameters()),
            trainable_parameters=sum(p.numel() for p in unet.parameters() if p.requires_grad),
        )
        summary["single_file"] = export_pipeline(unet, cfg, vae, tokenizer, text_encoder, Path(args.out))
        write_json(Path(args.report) / "stats.json", summary)
        print(f"train: {summary}")
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main(parse_args(__doc__, "latents", "vae", "checkpoints", "live", "out", "report"))
