"""DVC stage `train`: the UNet on cached latents; checkpoints persist, the pipeline is exported."""

import hashlib
from pathlib import Path

import pyarrow.compute as pc
import torch
from diffusers import AutoencoderKL
from dvclive import Live

from sdlab.diffusion import make_noise_scheduler
from sdlab.encode import load_latents, load_text
from sdlab.io import read_json, read_table, write_json
from sdlab.models.pipeline import build_pipeline, save_pipeline
from sdlab.models.text_encoder import load_text_encoder
from sdlab.models.unet import build_unet
from sdlab.train import TrainData, train_unet
from sdlab.stage import parse_args, stage


@stage("train")
def main(args, params):
    cfg, latents_dir = params.train, Path(args.latents)
    meta = read_json(latents_dir / "meta.json")
    index = read_table(latents_dir / "index.parquet")
    train_index = index.filter(pc.equal(index["split"], "train"))
    text = load_text(latents_dir)
    data = TrainData(load_latents(latents_dir, train_index), torch.tensor(train_index["caption_id"].to_pylist()), text)
    channels, size = meta["latent_shape"][0], meta["latent_shape"][1]
    unet = build_unet(cfg.unet, size, channels, cross_attention_dim=text.shape[-1])
    fingerprint = hashlib.sha256(((latents_dir / "meta.json").read_text()
                                  + "\n".join(train_index["key"].to_pylist())).encode()).hexdigest()
    with Live(dir=args.live, dvcyaml=None, save_dvc_exp=False) as live:
        unet, summary = train_unet(unet, data, cfg, Path(args.checkpoints), fingerprint, live)
    tokenizer, text_encoder = load_text_encoder(**meta["text_encoder"])
    pipeline = build_pipeline(unet, AutoencoderKL.from_pretrained(args.vae), tokenizer, text_encoder,
                              make_noise_scheduler(cfg))
    save_pipeline(pipeline, Path(args.out))
    summary.update(train_samples=len(data), unet_parameters=sum(p.numel() for p in unet.parameters()))
    write_json(Path(args.report) / "stats.json", summary)
    print(f"train: {summary}")


if __name__ == "__main__":
    main(parse_args(__doc__, "latents", "vae", "checkpoints", "live", "out", "report"))
