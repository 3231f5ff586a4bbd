"""The evaluation run, in one file: `run` at the bottom is what `dvc repro evaluate` does, top
to bottom; the functions above it are its metrics (held-out denoising loss, FID/KID, CLIP
score), the report's strips and sweeps. The judges of the synthetic attributes are
`sdlab.judge`, the distribution metrics `sdlab.distribution`."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sdlab.card import denoiser_parameters
from sdlab.config import ConfigError, Params, judge_setting
from sdlab.data.images import bucket_size
from sdlab.data.records import DataError
from sdlab.data.shards import center_square, load_image_list, load_images
from sdlab.diffusion import denoising_loss, loss_schedule
from sdlab.distribution import distribution_metrics, fid_kid, psnr, reconstruct, to_uint8_nchw
from sdlab.evaluation_files import write_evaluation
from sdlab.io import file_sha256, first_rows, spread_rows
from sdlab.judge import judge_samples, train_blob_judge
from sdlab.label_judge import judge_labelled_samples, train_label_judges
from sdlab.models.pipeline import denoiser_of, load_pipeline
from sdlab.reports import Overview, bucket_rows, curation_lines, sample_grid, write_report
from sdlab.sampling import generate, generate_at_sizes, use_scheduler


def timestep_grid(num_train_timesteps: int, count: int) -> list[int]:
    """`count` evenly spaced timesteps, centred in their buckets."""
    step = num_train_timesteps / count
    return [int(step * (i + 0.5)) for i in range(count)]


@torch.no_grad()
def heldout_loss(
    denoiser,
    scheduler,
    latents: torch.Tensor,
    *,
    hidden: torch.Tensor,
    timesteps: list[int],
    seed: int,
    batch_size: int = 64,
    mask: torch.Tensor | None = None,
) -> dict[int, float]:
    """Mean denoising loss per timestep on fixed latents with fixed noise (deterministic)."""
    denoiser.eval()
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed))
    losses = {}
    for t in timesteps:
        total = 0.0
        for start in range(0, len(latents), batch_size):
            part = slice(start, start + batch_size)
            t_batch = torch.full((len(latents[part]),), t, dtype=torch.long)
            total += (
                denoising_loss(
                    denoiser,
                    scheduler,
                    latents[part],
                    hidden[part],
                    t_batch,
                    noise[part],
                    None if mask is None else mask[part],
                )
                .sum()
                .item()
            )
        losses[t] = total / len(latents)
    return losses


def heldout_latents(
    latents_dir: Path, limit: int, text_encoder, bucket: str | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Up to `limit` val rows (of one aspect `bucket`), shard by shard: (the unflipped latent
    mean (N, C, h, w), hidden states (N, L, D), the text attention mask (N, L) when the states
    were encoded with it), token ids encoded here by the pipeline's text encoder."""
    from sdlab.latents import SPLIT_CODES, read_meta, read_rows
    from sdlab.models.text_encoder import encode_tokens

    meta = read_meta(latents_dir)
    masked = meta.get("text_mask", False)
    means, hidden, masks, have = [], [], [], 0
    for shard in meta["shards"]:
        if have >= limit:
            break
        if not (shard["buckets"].get(bucket, {}).get("val") if bucket else shard["val"]):
            continue
        stored = read_rows(latents_dir, shard["name"], SPLIT_CODES["val"], bucket=bucket)
        take = slice(0, limit - have)
        means.append(stored["mean" if "mean" in stored else "sample"][take, 0].float())
        masks.append(stored["attention_mask"][take].long() if masked else None)
        if "hidden" in stored:
            hidden.append(stored["hidden"][take].float())
        else:
            with torch.no_grad():
                hidden.append(
                    encode_tokens(
                        text_encoder, stored["input_ids"][take], stored["attention_mask"][take], masked
                    ).float()
                )
        have += len(means[-1])
    if not means:
        raise DataError("the val split is empty (raise dedupe.val_fraction)")
    return torch.cat(means), torch.cat(hidden), torch.cat(masks) if masked else None


def heldout_losses(pipeline, latents_dir: Path, cfg) -> dict:
    """Held-out loss (mean over a timestep grid) and per timestep; with aspect buckets also per
    bucket (`heldout_loss_by_bucket`), the overall figure weighting each bucket by its rows."""
    from sdlab.latents import read_meta

    scheduler = loss_schedule(pipeline.scheduler.config)  # the training noise schedule
    timesteps = timestep_grid(scheduler.config.num_train_timesteps, cfg.loss_timesteps)
    buckets = list(read_meta(latents_dir).get("buckets", {})) or [None]
    by_bucket, counts = {}, {}
    for bucket in buckets:
        try:
            mean, hidden, mask = heldout_latents(latents_dir, cfg.heldout_samples, pipeline.text_encoder, bucket)
        except DataError:
            if bucket is None:
                raise
            continue  # a bucket with no val rows
        losses = heldout_loss(
            denoiser_of(pipeline), scheduler, mean, hidden=hidden, timesteps=timesteps, seed=cfg.seed, mask=mask
        )
        by_bucket[bucket], counts[bucket] = losses, len(mean)
    total = sum(counts.values())
    by_t = {t: sum(by_bucket[b][t] * counts[b] for b in by_bucket) / total for t in timesteps}
    if len(by_bucket) == 1:  # one size: exactly its own figures
        by_t = next(iter(by_bucket.values()))
    out = {
        "heldout_loss": float(np.mean(list(by_t.values()))),
        "heldout_loss_by_t": {str(t): v for t, v in by_t.items()},
    }
    if buckets != [None]:
        out["heldout_loss_by_bucket"] = {b: float(np.mean(list(v.values()))) for b, v in by_bucket.items()}
    return out


def attribute_rows(pipeline, base: dict, steps: int, guidance: float, seed: int) -> list:
    """Per attribute, a labelled strip of samples of one seed in which only that attribute of
    the `base` row's prompt changes."""
    from sdlab.sources.synthetic import ATTRIBUTES, variations

    strips = []
    for attribute in ATTRIBUTES:
        values, prompts = zip(*variations(base, attribute), strict=True)
        images = generate(
            pipeline,
            list(prompts),
            [seed] * len(prompts),
            steps=steps,
            guidance=guidance,
            batch_size=len(prompts),
            progress=False,
        )
        strips.append((attribute, sample_grid(images, list(values), len(values), label_px=16)))
    return strips


JUDGE_TRAIN_ROWS = 8000  # real train images the label judge learns from, spread over the index


def judge_pool(raw: Path | None, download, square: int | None, limit: int):
    """(images, rows) of the source's judge-only records (`data/raw/judge_records.parquet`:
    real images the model never trains on), made as the download stage makes training images;
    None when the source wrote none."""
    from sdlab.data.packing import prepare
    from sdlab.data.records import JUDGE_RECORDS
    from sdlab.data.shards import png_to_array
    from sdlab.io import read_table

    path = raw / JUDGE_RECORDS if raw is not None else None
    if path is None or not path.is_file() or limit == 0:
        return None
    table = read_table(path)
    picked = [i * table.num_rows // min(limit, table.num_rows) for i in range(min(limit, table.num_rows))]
    rows = table.take(picked).to_pylist() if picked else []  # spread over the table
    images, kept = [], []
    for row in rows:
        made = prepare(Path(row["path"]).read_bytes(), download)
        if not isinstance(made, Exception):
            images.append(png_to_array(made.png))
            kept.append(row)
    return (squares(images, square), kept) if images else None


log = logging.getLogger(__name__)
CONCEPT_ROWS = 4  # report: concepts shown in every style they exist in


def has_buckets(latents_dir: Path) -> bool:
    """Whether the latents hold aspect buckets (then index rows carry `bucket`)."""
    from sdlab.latents import read_meta

    return "buckets" in read_meta(latents_dir)


def squares(images: list[np.ndarray], side: int | None) -> np.ndarray:
    """The images stacked; of several sizes, each one's middle `side` square (`center_square`)."""
    return np.stack([center_square(i, side) for i in images] if side else images)


def concept_rows(
    pipeline, paths: EvaluatePaths, rows: list[dict], concept_column: str, steps: int, guidance: float, seed: int
) -> list:
    """Per held-out concept, a strip: its real image in every style it exists in (train or val),
    above the samples for those rows' own prompts, one seed: one concept, every vendor."""
    import pyarrow.parquet as pq

    concepts = list(dict.fromkeys(str(r[concept_column]) for r in rows))[:CONCEPT_ROWS]
    found = pq.read_table(paths.latents / "index.parquet", filters=[(concept_column, "in", concepts)]).to_pylist()
    strips = []
    for concept in concepts:
        same = [r for r in found if str(r[concept_column]) == concept]
        real = load_images(paths.shards, same)
        prompts = [r["caption"] for r in same]
        made = generate(
            pipeline,
            prompts,
            [seed] * len(prompts),
            steps=steps,
            guidance=guidance,
            batch_size=len(prompts),
            progress=False,
        )
        style = [str(r.get("style") or r["key"]) for r in same]
        labels = [f"real {s} ({r['split']})" for s, r in zip(style, same, strict=True)] + [
            f"generated {s}" for s in style
        ]
        grid = sample_grid(np.concatenate([real, made]), labels, len(same), label_px=16)
        strips.append((str(same[0].get("title") or concept), grid))
    return strips


def overview_lines(train: dict, metrics: dict, sampling: dict) -> list[str]:
    """The report's first sentences: what was trained on what, for how long, and how it samples."""
    epochs = train["final_step"] * train["global_batch"] / max(train["train_samples"], 1)
    parameters = denoiser_parameters(train)
    lines = [
        f"A {train.get('denoiser', 'unet')} of {parameters / 1e6:.2f}M parameters, trained "
        f"{train['final_step']} steps of batch {train['global_batch']} ({epochs:.1f} epochs) on "
        f"{train['train_samples']:,} images in {train.get('train_seconds', float('nan')) / 60:.1f} min "
        f"on {train['world_size']} process(es).",
        f"Sampled for {metrics['num_samples']} held-out prompts: {sampling['scheduler']}, "
        f"{sampling['num_inference_steps']} steps, guidance {sampling['guidance_scale']:g}; held-out "
        f"denoising loss {metrics['heldout_loss']:.4f}.",
        f"VAE reconstruction PSNR {metrics['vae_reconstruction_psnr_db']:.1f} dB on the real val images.",
        f"Colour histogram distance to real val images {metrics['colour_histogram_distance']:.3f} "
        f"(another real sample: {metrics['colour_histogram_distance_real_vs_real']:.3f}); KID in the VAE's "
        f"latent space {metrics['kid_vae_latent']:.4f} (real: {metrics['kid_vae_latent_real_vs_real']:.4f}).",
    ]
    if "adherence" in metrics:
        lines.append(
            "Prompt adherence (judged by a classifier trained on the real train images): "
            + ", ".join(f"{k} {v:.2f}" for k, v in metrics["adherence"].items())
            + "."
        )
    return lines


def guidance_sweep(pipeline, prompts: list[str], scales: list[float], seed: int, steps: int):
    """The same prompts and seeds across guidance scales: a grid, one row per prompt."""
    if not prompts or not scales:
        return None, ""
    seeds = [seed + i for i in range(len(prompts))]
    by_scale = [
        generate(pipeline, prompts, seeds, steps=steps, guidance=scale, batch_size=len(prompts), progress=False)
        for scale in scales
    ]
    images = np.stack(by_scale, axis=1).reshape(-1, *by_scale[0].shape[1:])  # row = prompt, column = scale
    labels = [f"guidance {scale:g}" for _ in prompts for scale in scales]
    note = " | ".join(f"row {i + 1}: {p}" for i, p in enumerate(prompts))
    return sample_grid(images, labels, len(scales), label_px=16), note


def clip_score(model_name_or_path: str, images: np.ndarray, prompts: list[str]) -> float:
    """torchmetrics CLIPScore of images against their prompts: the mean of 100 x cosine, floored at 0."""
    from torchmetrics.multimodal.clip_score import CLIPScore

    from sdlab.models.clip import load_clip

    metric = CLIPScore(model_name_or_path=lambda: load_clip(model_name_or_path))
    metric.update(to_uint8_nchw(images), prompts)
    return float(metric.compute())


# torch-fidelity's pt_inception-2015-12-05-6726825d.pth: by torch.hub's convention the name's
# hash is the start of the file's sha256 (what `torch.hub.download_url_to_file` checks).
INCEPTION_SHA256_PREFIX = "6726825d"


def check_weights_file(path: str, sha256: str | None, key: str = "evaluate.inception_weights") -> None:
    """Refuse a weights file before it is unpickled unless its sha256 is the published one
    (`sha256` pins the whole digest; else the published file's prefix)."""
    if not Path(path).is_file():
        raise ConfigError(f"{key}: file not found: {path}")
    actual = file_sha256(path)
    expected = (sha256 or INCEPTION_SHA256_PREFIX).lower()
    if not actual.startswith(expected):
        raise ConfigError(
            f"{key}: {path} has sha256 {actual}, expected {expected}{'' if sha256 else '...'} "
            "(the published file); refusing to unpickle it"
        )


def inception_extractor(weights_path: str, sha256: str | None = None) -> torch.nn.Module:
    """The standard FID InceptionV3 (2048-d pool features), weights from a local file checked
    against its published sha256 first (torch-fidelity unpickles it)."""
    from torchmetrics.image.fid import NoTrainInceptionV3

    check_weights_file(weights_path, sha256)
    return NoTrainInceptionV3(
        name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=weights_path
    )


# -- the run, top to bottom: what `dvc repro evaluate` does ---------------------------------------


@dataclass
class EvaluatePaths:
    latents: Path  # data/latents: val latents, captions and the attribute columns
    shards: Path  # data/images/shards: the real val (and train) images
    pipeline: Path  # models/trained: the pipeline folder under evaluation
    curves: Path  # reports/train/live/plots/metrics: the training curves for the report
    train_stats: Path  # reports/train/stats.json
    out: Path  # reports/evaluate
    raw: Path | None = None  # data/raw: a source's judge records (`JUDGE_RECORDS`), when it writes them
    dedupe: Path | None = None  # reports/dedupe: what curation removed (stats.json, near_pairs.png)


def run(params: Params, paths: EvaluatePaths) -> None:
    """Held-out loss, samples for val prompts, adherence (with a judge), distribution metrics,
    VAE reconstructions; metrics.json + details.json, samples.png and report.html."""
    cfg, latents_dir = params.evaluate, paths.latents
    judging = judge_setting(params.scrape.source, cfg)
    pipeline = load_pipeline(paths.pipeline)
    pick = spread_rows if judging.kind == "labels" else first_rows  # labels: every vendor/source part of the index
    rows = pick(latents_dir / "index.parquet", cfg.num_samples, "split", "val").to_pylist()
    if not rows:
        raise DataError("the val split is empty (raise dedupe.val_fraction)")
    metrics = heldout_losses(pipeline, latents_dir, cfg)
    use_scheduler(pipeline, cfg.scheduler)
    prompts = [r["caption"] for r in rows]
    # aspect buckets: each prompt sampled at its real image's size; the metrics below read the
    # middle square every bucket covers, the report shows every bucket at its own size
    sizes = [bucket_size(r["bucket"]) for r in rows] if has_buckets(latents_dir) else [None] * len(rows)
    square = min(min(size) for size in sizes) if sizes[0] else None
    sample_list = generate_at_sizes(
        pipeline,
        prompts,
        [cfg.seed + i for i in range(len(rows))],
        sizes,
        steps=cfg.num_inference_steps,
        guidance=cfg.guidance_scale,
        batch_size=cfg.batch_size,
    )
    metrics["num_samples"] = len(rows)
    max_pixels = params.download.max_image_pixels
    real_list = load_image_list(paths.shards, rows, max_pixels)  # the real val images behind the prompts
    images, real = squares(sample_list, square), squares(real_list, square)
    reconstructed = reconstruct(pipeline.vae, real)
    metrics["vae_reconstruction_psnr_db"] = psnr(real, reconstructed)
    metrics.update(distribution_metrics(pipeline.vae, real, images))
    overview = Overview()
    if judging.kind == "blob_attributes":  # the synthetic source: attributes are ground truth, judge adherence
        if "skin_color" not in rows[0]:
            raise DataError(
                "evaluate.judge: blob_attributes needs the synthetic source's attribute columns "
                "(skin_color, head_shape, ...); these val rows have none (set evaluate.judge: null)"
            )
        train_rows = first_rows(latents_dir / "index.parquet", 4000, "split", "train").to_pylist()
        real_train = load_images(paths.shards, train_rows, max_pixels, square)
        judge = train_blob_judge(real_train, train_rows, cfg.judge_steps, cfg.seed, pipeline.vae)
        metrics.update(
            judge_samples(judge, images, rows, real_val=real, vae=pipeline.vae, reconstructed_val=reconstructed)
        )
        overview.adherence = [
            (name, value, metrics["judge_accuracy_on_real"][name], metrics["chance"][name])
            for name, value in metrics["adherence"].items()
        ]
        overview.attribute_rows = attribute_rows(
            pipeline, rows[0], cfg.num_inference_steps, cfg.guidance_scale, cfg.seed
        )
    elif judging.kind == "labels":  # real images with labelled records: category/style judges and retrieval
        wanted = [*judging.label_columns, *filter(None, [judging.concept_column])]
        if missing := [c for c in wanted if c not in rows[0]]:
            raise DataError(
                f"evaluate.label_columns/concept_column: the val rows have no column {missing[0]!r} "
                f"(they have {sorted(rows[0])})"
            )
        train_rows = spread_rows(latents_dir / "index.parquet", JUDGE_TRAIN_ROWS, "split", "train").to_pylist()
        columns = [c for c in judging.label_columns if len({str(r[c]) for r in train_rows}) > 1]
        if skipped := sorted(set(judging.label_columns) - set(columns)):  # one value: nothing to tell apart
            log.warning("evaluate: label column(s) %s hold one value in the train rows: not judged", skipped)
            metrics["label_columns_not_judged"] = skipped
        if columns:
            real_train = load_images(paths.shards, train_rows, max_pixels, square)
            heads = [*columns, *[c for c in [judging.concept_column] if c and c not in columns]]
            pool = judge_pool(paths.raw, params.download, square, cfg.judge_pool_rows)
            judges = train_label_judges(
                real_train,
                train_rows,
                heads,
                cfg.judge_steps,
                cfg.seed,
                pipeline.vae,
                pool=pool,
                # the pool's concepts are never prompted: no concept head from them
                pool_columns=[c for c in columns if cfg.judge_pool_columns is None or c in cfg.judge_pool_columns],
            )
            if pool is not None:
                metrics["judge_pool_images"] = len(pool[1])
            metrics.update(
                judge_labelled_samples(
                    judges,
                    images,
                    rows,
                    real_val=real,
                    real_train=real_train,
                    train_rows=train_rows,
                    concept_column=judging.concept_column,
                    reconstructed_val=reconstructed,
                )
            )
            overview.adherence = [
                (name, value, metrics["judge_accuracy_on_real"][name], metrics["chance"][name])
                for name, value in metrics["adherence"].items()
            ]
            if judging.concept_column:
                overview.row_heading = "{}: the real images in every style (top), samples for their prompts (bottom)"
                overview.attribute_rows = concept_rows(
                    pipeline, paths, rows, judging.concept_column, cfg.num_inference_steps, cfg.guidance_scale, cfg.seed
                )
    if cfg.inception_weights:  # the standard features: only then the standard names
        metrics["fid_inception"], metrics["kid_inception"] = fid_kid(
            inception_extractor(cfg.inception_weights, cfg.inception_sha256), real, images
        )
    if cfg.clip_model:
        metrics["clip_score"] = clip_score(cfg.clip_model, images, prompts)
    sweep = guidance_sweep(
        pipeline, prompts[: cfg.sweep_prompts], cfg.guidance_sweep, cfg.seed, cfg.num_inference_steps
    )
    sampling = {
        k: getattr(cfg, k) for k in ("scheduler", "num_inference_steps", "guidance_scale", "num_samples", "seed")
    }
    overview.lines = overview_lines(json.loads(paths.train_stats.read_text()), metrics, sampling)
    if paths.dedupe is not None and (paths.dedupe / "stats.json").is_file():
        dedupe_stats = json.loads((paths.dedupe / "stats.json").read_text())
        overview.curation = curation_lines(dedupe_stats)
        near_removed = any(dedupe_stats.get(f"near_duplicate_{layer}") for layer in ("phash", "embedding"))
        if near_removed and (paths.dedupe / "near_pairs.png").is_file():  # else the sheet is only a note
            overview.curation_pairs = Image.open(paths.dedupe / "near_pairs.png").convert("RGB")
    if square:
        overview.bucket_rows = bucket_rows(real_list, sample_list, rows)
    out = paths.out
    write_report(
        out,
        metrics,
        samples=images,
        prompts=prompts,
        real=real,
        reconstructed=reconstructed,
        sweep=sweep,
        curves_dir=paths.curves,
        sampling=sampling,
        overview=overview,
        grid_columns=cfg.grid_columns,
    )
    write_evaluation(out, metrics)
    print(f"evaluate: {metrics}")
