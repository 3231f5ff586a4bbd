"""DVC stage `evaluate`: held-out loss, samples for val prompts, adherence, distribution
metrics, VAE reconstructions, and report.html (overview first)."""

import json
from pathlib import Path

import numpy as np
from diffusers import DDPMScheduler

from sdlab.data.records import DataError
from sdlab.data.shards import load_images
from sdlab.distribution import distribution_metrics, psnr, reconstruct
from sdlab.evaluate import (
    attribute_rows,
    clip_score,
    fid_kid,
    guidance_sweep,
    heldout_latents,
    heldout_loss,
    inception_extractor,
    judge_samples,
    overview_lines,
    timestep_grid,
)
from sdlab.io import first_rows, write_json
from sdlab.models.pipeline import denoiser_of, load_pipeline
from sdlab.reports import Overview, read_curve, report_html, sample_grid
from sdlab.sampling import generate, use_scheduler
from sdlab.stage import parse_args, stage


@stage("evaluate")
def main(args, params):
    cfg, latents_dir = params.evaluate, Path(args.latents)
    pipeline = load_pipeline(args.pipeline)
    rows = first_rows(latents_dir / "index.parquet", cfg.num_samples, "split", "val").to_pylist()
    if not rows:
        raise DataError("the val split is empty (raise dedupe.val_fraction)")
    mean, hidden, mask = heldout_latents(latents_dir, cfg.heldout_samples, pipeline.text_encoder)
    scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)  # the training noise schedule
    losses = heldout_loss(
        denoiser_of(pipeline),
        scheduler,
        mean,
        hidden,
        timestep_grid(scheduler.config.num_train_timesteps, cfg.loss_timesteps),
        cfg.seed,
        mask=mask,
    )
    use_scheduler(pipeline, cfg.scheduler)
    prompts = [r["caption"] for r in rows]
    images = generate(
        pipeline,
        prompts,
        [cfg.seed + i for i in range(len(rows))],
        cfg.num_inference_steps,
        cfg.guidance_scale,
        cfg.batch_size,
    )
    metrics = {
        "heldout_loss": float(np.mean(list(losses.values()))),
        "heldout_loss_by_t": {str(t): v for t, v in losses.items()},
        "num_samples": len(rows),
    }
    max_pixels = params.download.max_image_pixels
    real = load_images(args.shards, rows, max_pixels)  # the real val images behind the prompts
    reconstructed = reconstruct(pipeline.vae, real)
    metrics["vae_reconstruction_psnr_db"] = psnr(real, reconstructed)
    metrics.update(distribution_metrics(pipeline.vae, real, images))
    overview = Overview()
    if cfg.judge == "blob_attributes":  # the synthetic source: attributes are ground truth, judge adherence
        if "skin_color" not in rows[0]:
            raise DataError(
                "evaluate.judge: blob_attributes needs the synthetic source's attribute columns "
                "(skin_color, head_shape, ...); these val rows have none (set evaluate.judge: null)"
            )
        train_rows = first_rows(latents_dir / "index.parquet", 4000, "split", "train").to_pylist()
        metrics.update(
            judge_samples(
                images,
                rows,
                real,
                load_images(args.shards, train_rows, max_pixels),
                train_rows,
                cfg.judge_steps,
                cfg.seed,
                pipeline.vae,
                reconstructed,
            )
        )
        overview.adherence = [
            (name, value, metrics["judge_accuracy_on_real"][name], metrics["chance"][name])
            for name, value in metrics["adherence"].items()
        ]
        overview.attribute_rows = attribute_rows(
            pipeline, rows[0], cfg.num_inference_steps, cfg.guidance_scale, cfg.seed
        )
    if cfg.inception_weights:  # the standard features: only then the standard names
        metrics["fid_inception"], metrics["kid_inception"] = fid_kid(
            inception_extractor(cfg.inception_weights, cfg.inception_sha256), real, images
        )
    if cfg.clip_model:
        metrics["clip_score"] = clip_score(cfg.clip_model, images, prompts)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    grid = sample_grid(images, prompts, cfg.grid_columns)
    grid.save(out / "samples.png")
    pairs = min(cfg.grid_columns, len(rows))
    overview.real_vs_generated = sample_grid(
        np.concatenate([real[:pairs], images[:pairs]]), ["real"] * pairs + ["generated"] * pairs, pairs, label_px=16
    )
    overview.reconstructions = sample_grid(
        np.concatenate([real[:pairs], reconstructed[:pairs]]), ["real"] * pairs + ["VAE"] * pairs, pairs, label_px=16
    )
    overview.reconstruction_note = (
        f"decode(encode(x)) of real val images: PSNR "
        f"{metrics['vae_reconstruction_psnr_db']:.1f} dB on {len(real)} images"
    )
    sweep, note = guidance_sweep(
        pipeline, prompts[: cfg.sweep_prompts], cfg.guidance_sweep, cfg.seed, cfg.num_inference_steps
    )
    curves = {
        f"train/{name}": read_curve(Path(args.curves) / "train" / f"{name}.tsv", name)
        for name in ("loss", "lr", "grad_norm", "samples_per_s")
    }
    sampling = {
        k: getattr(cfg, k) for k in ("scheduler", "num_inference_steps", "guidance_scale", "num_samples", "seed")
    }
    train_stats = json.loads(Path(args.train_stats).read_text())
    overview.lines = overview_lines(train_stats, metrics, sampling)
    (out / "report.html").write_text(report_html(metrics, grid, sweep, note, curves, sampling, prompts, overview))
    write_json(out / "metrics.json", metrics)
    print(f"evaluate: {metrics}")


if __name__ == "__main__":
    main(parse_args(__doc__, "latents", "shards", "pipeline", "curves", "train_stats", "out"))
