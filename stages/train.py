"""DVC stage `train`: the UNet on cached latents; checkpoints persist, the pipeline is exported.

With `train.num_processes > 1` (or `train.accelerate_config`) it re-runs itself under
`accelerate launch`; every rank then loads only its slice of the latent shards.
"""

import contextlib
import functools
import hashlib
import sys
from pathlib import Path

import pyarrow.compute as pc
import torch
from diffusers import AutoencoderKL
from dvclive import Live

from sdlab.diffusion import make_noise_scheduler
from sdlab.encode import load_latents, load_text
from sdlab.evaluate import generate
from sdlab.io import read_json, read_table, write_json
from sdlab.launch import relaunch_if_needed
from sdlab.models.pipeline import build_pipeline, export_pipeline
from sdlab.models.text_encoder import load_text_encoder
from sdlab.models.unet import make_unet
from sdlab.reports import sample_grid
from sdlab.stage import parse_args, stage
from sdlab.train import TrainData, make_accelerator, rank_slice, train_unet


def log_validation_grid(model, step: int, vae, tokenizer, text_encoder, cfg, prompts: list[str], live) -> None:
    """A few val prompts sampled with the current weights, into the dvclive folder."""
    pipeline = build_pipeline(model, vae, tokenizer, text_encoder, make_noise_scheduler(cfg))
    pipeline.set_progress_bar_config(disable=True)
    images = generate(pipeline, prompts, list(range(len(prompts))), 20, 5.0, len(prompts), progress=False)
    live.log_image(f"validation/step-{step:07d}.png", sample_grid(images, prompts, len(prompts)))
    model.train()


@stage("train")
def main(args, params):
    cfg, latents_dir = params.train, Path(args.latents)
    relaunch_if_needed(cfg, __file__, sys.argv[1:])
    accelerator = make_accelerator(cfg)
    meta = read_json(latents_dir / "meta.json")
    index = read_table(latents_dir / "index.parquet")
    train_index = index.filter(pc.equal(index["split"], "train"))
    mine = rank_slice(train_index, accelerator.process_index, accelerator.num_processes)
    text = load_text(latents_dir)
    data = TrainData(load_latents(latents_dir, mine), torch.tensor(mine["caption_id"].to_pylist()), text)
    channels, size = meta["latent_shape"][0], meta["latent_shape"][1]
    unet = make_unet(cfg, size, channels, cross_attention_dim=text.shape[-1])
    fingerprint = hashlib.sha256(((latents_dir / "meta.json").read_text()
                                  + "\n".join(train_index["key"].to_pylist())).encode()).hexdigest()
    main_process = accelerator.is_main_process
    val_prompts: list[str] = []
    if main_process:  # only the main process samples, logs and exports
        tokenizer, text_encoder = load_text_encoder(**meta["text_encoder"])
        vae = AutoencoderKL.from_pretrained(args.vae)
        val_prompts = index.filter(pc.equal(index["split"], "val"))["caption"].to_pylist()[: cfg.validation_prompts]
    with (Live(dir=args.live, dvcyaml=None, save_dvc_exp=False) if main_process else contextlib.nullcontext()) as live:
        validate = functools.partial(log_validation_grid, vae=vae, tokenizer=tokenizer, text_encoder=text_encoder,
                                     cfg=cfg, prompts=val_prompts, live=live) if val_prompts else None
        unet, summary = train_unet(unet, data, cfg, Path(args.checkpoints), fingerprint, live, validate, accelerator)
    if main_process:
        (Path(args.live) / "plots" / "images").mkdir(parents=True, exist_ok=True)  # a DVC plots out
        summary.update(train_samples=train_index.num_rows, unet_parameters=sum(p.numel() for p in unet.parameters()),
                       trainable_parameters=sum(p.numel() for p in unet.parameters() if p.requires_grad))
        export_pipeline(unet, cfg, vae, tokenizer, text_encoder, Path(args.out))  # merges LoRA into unet
        write_json(Path(args.report) / "stats.json", summary)
        print(f"train: {summary}")
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main(parse_args(__doc__, "latents", "vae", "checkpoints", "live", "out", "report"))
