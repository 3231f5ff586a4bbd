"""DVC stage `evaluate`: held-out loss, samples for val prompts, adherence, FID/KID, sample grid."""

from pathlib import Path

import numpy as np
from diffusers import DDPMScheduler

from sdlab.data.records import DataError
from sdlab.data.shards import load_images
from sdlab.evaluate import (clip_score, fid_kid, generate, guidance_sweep, heldout_latents, heldout_loss,
                            inception_extractor, judge_samples, timestep_grid, use_scheduler)
from sdlab.io import first_rows, write_json
from sdlab.models.pipeline import load_pipeline
from sdlab.reports import read_curve, report_html, sample_grid
from sdlab.stage import parse_args, stage


@stage("evaluate")
def main(args, params):
    cfg, latents_dir = params.evaluate, Path(args.latents)
    pipeline = load_pipeline(args.pipeline)
    rows = first_rows(latents_dir / "index.parquet", cfg.num_samples, "split", "val").to_pylist()
    if not rows:
        raise DataError("the val split is empty (raise dedupe.val_fraction)")
    mean, hidden = heldout_latents(latents_dir, cfg.heldout_samples, pipeline.text_encoder)
    scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)  # the training noise schedule
    losses = heldout_loss(pipeline.unet, scheduler, mean, hidden,
                          timestep_grid(scheduler.config.num_train_timesteps, cfg.loss_timesteps), cfg.seed)
    use_scheduler(pipeline, cfg.scheduler)
    prompts = [r["caption"] for r in rows]
    images = generate(pipeline, prompts, [cfg.seed + i for i in range(len(rows))], cfg.num_inference_steps,
                      cfg.guidance_scale, cfg.batch_size)
    metrics = {"heldout_loss": float(np.mean(list(losses.values()))),
               "heldout_loss_by_t": {str(t): v for t, v in losses.items()}, "num_samples": len(rows)}
    real = load_images(args.shards, rows, params.download.max_image_pixels)  # the real val images behind the prompts
    if "skin_color" in rows[0]:  # the synthetic source: attributes are ground truth
        train_rows = first_rows(latents_dir / "index.parquet", 4000, "split", "train").to_pylist()
        metrics.update(judge_samples(images, rows, real, load_images(args.shards, train_rows, params.download.max_image_pixels), train_rows,
                                     cfg.judge_steps, cfg.seed))
    if cfg.inception_weights:  # the standard features: only then the standard names
        metrics["fid_inception"], metrics["kid_inception"] = fid_kid(inception_extractor(cfg.inception_weights, cfg.inception_sha256),
                                                                     real, images)
    if cfg.clip_model:
        metrics["clip_score"] = clip_score(cfg.clip_model, images, prompts)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    grid = sample_grid(images, prompts, cfg.grid_columns)
    grid.save(out / "samples.png")
    sweep, note = guidance_sweep(pipeline, prompts[: cfg.sweep_prompts], cfg.guidance_sweep, cfg.seed,
                                 cfg.num_inference_steps)
    curves = {f"train/{name}": read_curve(Path(args.curves) / "train" / f"{name}.tsv", name)
              for name in ("loss", "lr", "grad_norm", "samples_per_s")}
    sampling = {k: getattr(cfg, k) for k in ("scheduler", "num_inference_steps", "guidance_scale", "num_samples", "seed")}
    (out / "report.html").write_text(report_html(metrics, grid, sweep, note, curves, sampling, prompts))
    write_json(out / "metrics.json", metrics)
    print(f"evaluate: {metrics}")


if __name__ == "__main__":
    main(parse_args(__doc__, "latents", "shards", "pipeline", "curves", "out"))
