"""The evaluation run, in one file: `run` at the bottom is what `dvc repro evaluate` does, top
to bottom; the functions above it are its metrics (held-out denoising loss, FID/KID, CLIP
score), the report's strips and sweeps. The judges of the synthetic attributes are
`sdlab.judge`, the distribution metrics `sdlab.distribution`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sdlab.config import ConfigError, Params
from sdlab.data.records import DataError
from sdlab.data.shards import load_images
from sdlab.diffusion import denoising_loss, loss_schedule
from sdlab.distribution import distribution_metrics, psnr, reconstruct
from sdlab.evaluation_files import write_evaluation
from sdlab.io import first_rows, spread_rows
from sdlab.judge import judge_samples
from sdlab.label_judge import judge_labelled_samples, train_label_judge
from sdlab.models.pipeline import denoiser_of, load_pipeline
from sdlab.reports import Overview, read_curve, report_html, sample_grid
from sdlab.sampling import generate, use_scheduler


def timestep_grid(num_train_timesteps: int, count: int) -> list[int]:
    """`count` evenly spaced timesteps, centred in their buckets."""
    step = num_train_timesteps / count
    return [int(step * (i + 0.5)) for i in range(count)]


@torch.no_grad()
def heldout_loss(
    unet,
    scheduler,
    latents: torch.Tensor,
    hidden: torch.Tensor,
    timesteps: list[int],
    seed: int,
    batch_size: int = 64,
    mask: torch.Tensor | None = None,
) -> dict[int, float]:
    """Mean denoising loss per timestep on fixed latents with fixed noise (deterministic)."""
    unet.eval()
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed))
    losses = {}
    for t in timesteps:
        total = 0.0
        for start in range(0, len(latents), batch_size):
            part = slice(start, start + batch_size)
            t_batch = torch.full((len(latents[part]),), t, dtype=torch.long)
            total += (
                denoising_loss(
                    unet,
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
    latents_dir: Path, limit: int, text_encoder
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Up to `limit` val rows, shard by shard: (the unflipped latent mean (N, C, h, w), hidden
    states (N, L, D), the text attention mask (N, L) when the states were encoded with it),
    token ids encoded here by the pipeline's text encoder."""
    from sdlab.latents import SPLIT_CODES, read_meta, read_rows
    from sdlab.models.text_encoder import encode_tokens

    meta = read_meta(latents_dir)
    masked = meta.get("text_mask", False)
    means, hidden, masks, have = [], [], [], 0
    for shard in meta["shards"]:
        if have >= limit:
            break
        if not shard["val"]:
            continue
        stored = read_rows(latents_dir, shard["name"], SPLIT_CODES["val"])
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


def to_uint8_nchw(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) array -> uint8 (N, 3, H, W) tensor, the layout torchmetrics takes."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)


def fid_kid(extractor: torch.nn.Module, real: np.ndarray, generated: np.ndarray) -> tuple[float, float]:
    """FID and KID (mean) between two uint8 (N, H, W, 3) sets, in `extractor`'s feature space."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    subset = max(2, min(50, len(real), len(generated)))
    fid = FrechetInceptionDistance(feature=extractor, normalize=False)
    kid = KernelInceptionDistance(feature=extractor, subset_size=subset, normalize=False)
    for images, is_real in ((real, True), (generated, False)):
        batch = to_uint8_nchw(images)
        fid.update(batch, real=is_real)
        kid.update(batch, real=is_real)
    return float(fid.compute()), float(kid.compute()[0])


def attribute_rows(pipeline, base: dict, steps: int, guidance: float, seed: int) -> list:
    """Per attribute, a labelled strip of samples of one seed in which only that attribute of
    the `base` row's prompt changes."""
    from sdlab.sources.synthetic import ATTRIBUTES, variations

    strips = []
    for attribute in ATTRIBUTES:
        values, prompts = zip(*variations(base, attribute), strict=True)
        images = generate(pipeline, list(prompts), [seed] * len(prompts), steps, guidance, len(prompts), progress=False)
        strips.append((attribute, sample_grid(images, list(values), len(values), label_px=16)))
    return strips


JUDGE_TRAIN_ROWS = 8000  # real train images the label judge learns from, spread over the index
CONCEPT_ROWS = 4  # report: concepts shown in every style they exist in


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
        made = generate(pipeline, prompts, [seed] * len(prompts), steps, guidance, len(prompts), progress=False)
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
    lines = [
        f"A {train.get('denoiser', 'unet')} of {train['unet_parameters'] / 1e6:.2f}M parameters, trained "
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
    by_scale = [generate(pipeline, prompts, seeds, steps, scale, len(prompts), progress=False) for scale in scales]
    images = np.stack(by_scale, axis=1).reshape(-1, *by_scale[0].shape[1:])  # row = prompt, column = scale
    labels = [f"guidance {scale:g}" for _ in prompts for scale in scales]
    note = " | ".join(f"row {i + 1}: {p}" for i, p in enumerate(prompts))
    return sample_grid(images, labels, len(scales), label_px=16), note


class PooledCLIP(torch.nn.Module):
    """A CLIPModel whose get_image_features/get_text_features return tensors.

    transformers 5 returns `BaseModelOutputWithPooling` from both (the projected embedding
    is its `pooler_output`), which breaks torchmetrics' CLIPScore (`.norm` on the output)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config = model, model.config

    @staticmethod
    def _tensor(output):
        return output if isinstance(output, torch.Tensor) else output.pooler_output

    def get_image_features(self, *args, **kwargs) -> torch.Tensor:
        return self._tensor(self.model.get_image_features(*args, **kwargs))

    def get_text_features(self, *args, **kwargs) -> torch.Tensor:
        return self._tensor(self.model.get_text_features(*args, **kwargs))


def clip_score(model_name_or_path: str, images: np.ndarray, prompts: list[str]) -> float:
    """torchmetrics CLIPScore of images against their prompts: the mean of 100 x cosine, floored at 0."""
    from torchmetrics.multimodal.clip_score import CLIPScore
    from transformers import CLIPModel, CLIPProcessor

    def load():
        return (
            PooledCLIP(CLIPModel.from_pretrained(model_name_or_path).eval()),
            CLIPProcessor.from_pretrained(model_name_or_path),
        )

    metric = CLIPScore(model_name_or_path=load)
    metric.update(to_uint8_nchw(images), prompts)
    return float(metric.compute())


# torch-fidelity's pt_inception-2015-12-05-6726825d.pth: by torch.hub's convention the name's
# hash is the start of the file's sha256 (what `torch.hub.download_url_to_file` checks).
INCEPTION_SHA256_PREFIX = "6726825d"


def check_weights_file(path: str, sha256: str | None, key: str = "evaluate.inception_weights") -> None:
    """Refuse a weights file before it is unpickled unless its sha256 is the published one
    (`sha256` pins the whole digest; else the published file's prefix)."""
    import hashlib

    if not Path(path).is_file():
        raise ConfigError(f"{key}: file not found: {path}")
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    actual = digest.hexdigest()
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


def run(params: Params, paths: EvaluatePaths) -> None:
    """Held-out loss, samples for val prompts, adherence (with a judge), distribution metrics,
    VAE reconstructions; metrics.json + details.json, samples.png and report.html."""
    cfg, latents_dir = params.evaluate, paths.latents
    pipeline = load_pipeline(paths.pipeline)
    pick = spread_rows if cfg.judge == "labels" else first_rows  # labels: every vendor/source part of the index
    rows = pick(latents_dir / "index.parquet", cfg.num_samples, "split", "val").to_pylist()
    if not rows:
        raise DataError("the val split is empty (raise dedupe.val_fraction)")
    mean, hidden, mask = heldout_latents(latents_dir, cfg.heldout_samples, pipeline.text_encoder)
    scheduler = loss_schedule(pipeline.scheduler.config)  # the training noise schedule
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
    real = load_images(paths.shards, rows, max_pixels)  # the real val images behind the prompts
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
                load_images(paths.shards, train_rows, max_pixels),
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
    elif cfg.judge == "labels":  # real images with labelled records: category/style judges and retrieval
        wanted = [*cfg.label_columns, *filter(None, [cfg.concept_column])]
        if missing := [c for c in wanted if c not in rows[0]]:
            raise DataError(
                f"evaluate.label_columns/concept_column: the val rows have no column {missing[0]!r} "
                f"(they have {sorted(rows[0])})"
            )
        train_rows = spread_rows(latents_dir / "index.parquet", JUDGE_TRAIN_ROWS, "split", "train").to_pylist()
        real_train = load_images(paths.shards, train_rows, max_pixels)
        judge = train_label_judge(real_train, train_rows, cfg.label_columns, cfg.judge_steps, cfg.seed, pipeline.vae)
        metrics.update(
            judge_labelled_samples(
                judge,
                images,
                rows,
                real_val=real,
                real_train=real_train,
                train_rows=train_rows,
                concept_column=cfg.concept_column,
                reconstructed_val=reconstructed,
            )
        )
        overview.adherence = [
            (name, value, metrics["judge_accuracy_on_real"][name], metrics["chance"][name])
            for name, value in metrics["adherence"].items()
        ]
        if cfg.concept_column:
            overview.row_heading = "{}: the real images in every style (top), samples for their prompts (bottom)"
            overview.attribute_rows = concept_rows(
                pipeline, paths, rows, cfg.concept_column, cfg.num_inference_steps, cfg.guidance_scale, cfg.seed
            )
    if cfg.inception_weights:  # the standard features: only then the standard names
        metrics["fid_inception"], metrics["kid_inception"] = fid_kid(
            inception_extractor(cfg.inception_weights, cfg.inception_sha256), real, images
        )
    if cfg.clip_model:
        metrics["clip_score"] = clip_score(cfg.clip_model, images, prompts)
    out = paths.out
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
        f"train/{name}": read_curve(paths.curves / "train" / f"{name}.tsv", name)
        for name in ("loss", "lr", "grad_norm", "samples_per_s")
    }
    sampling = {
        k: getattr(cfg, k) for k in ("scheduler", "num_inference_steps", "guidance_scale", "num_samples", "seed")
    }
    train_stats = json.loads(paths.train_stats.read_text())
    overview.lines = overview_lines(train_stats, metrics, sampling)
    (out / "report.html").write_text(report_html(metrics, grid, sweep, note, curves, sampling, prompts, overview))
    write_evaluation(out, metrics)
    print(f"evaluate: {metrics}")
