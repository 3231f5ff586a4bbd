"""The training run, in one file: `run` at the bottom is what `dvc repro train` does, top to
bottom (setup, data, model, resume, loop, export); the loop is `train_denoiser`, the helpers above
it are each one step of the run. The denoiser (UNet or Transformer) trains on cached latents
with accelerate.

One loop for 1 CPU process and N GPUs on M nodes: `accelerate launch` starts the
processes (see `sdlab.launch`), each rank streams its own share of the latent shards from
disk (`sdlab.stream`), DDP averages gradients, and only the main process logs and writes.

Determinism: micro-step m of rank r reads its samples and draws all its randomness
(posterior draw, noise, timesteps, caption dropout) from (seed, m, r) alone, so a run
resumed from a checkpoint sees exactly what an uninterrupted run would have seen, and the
data position of a checkpoint (epoch, samples of that epoch already seen) follows from its step.

Runs are kept apart: `checkpoints/<run id>/step-N`, where the id covers only what changes
the trajectory (recipe, data, world size). Raising `max_steps`, or changing a cadence,
continues the same run; older runs are removed only beyond `train.keep_runs`, logged.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from diffusers import AutoencoderKL
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from dvclive import Live
from tqdm import tqdm

from sdlab.config import ConfigError, TrainConfig
from sdlab.data.records import DataError
from sdlab.diffusion import drop_captions, make_noise_scheduler, sample_latents, training_loss
from sdlab.io import atomic_path, first_rows, write_json
from sdlab.latents import LATENT_FIELDS, ORIGINAL, TEXT_FIELDS, read_meta, read_uncond
from sdlab.models.denoiser import make_denoiser, select_trainable
from sdlab.models.pipeline import build_pipeline, export_pipeline
from sdlab.models.text_encoder import encode_tokens, load_text_encoder
from sdlab.reports import sample_grid
from sdlab.sampling import generate
from sdlab.stream import BucketStream, LatentStream, bucket_parts, rank_parts

log = logging.getLogger(__name__)
CAPTION_MIX_SALT = 1  # step_generator salt of train.caption_mix's draw
CHECKPOINT_PREFIX = "step-"
LOSS_SMOOTHING = 0.9  # the EMA-smoothed loss curve logged beside the raw one
LIVE_SNAPSHOT = "live"  # the dvclive folder as it stood at a checkpoint
RECIPE_FILE = "recipe.json"  # in each run folder: what its name hashes


NOT_IN_RUN_IDENTITY = {  # cadence, bookkeeping and machine settings: they never change the trajectory
    "max_steps",
    "log_every_steps",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "keep_runs",
    "validation_every_steps",
    "validation_prompts",
    "validation_steps",
    "validation_guidance",
    "compile",
    "allow_tf32",
    "gradient_checkpointing",
    "num_processes",
    "accelerate_config",
}
ADDED_SINCE = {"caption_mix": 0.0}  # keys added after runs existed: at this value a run keeps the name it had


@dataclass
class Conditioning:
    """Turns a batch's stored text fields into (hidden states (B, L, D), attention mask (B, L)
    or None): stored states as they are, or token ids through the frozen text encoder
    (encode.text: tokens). `masked` (the transformer): states as encoded with the attention
    mask, and the mask itself goes to the denoiser."""

    uncond: torch.Tensor  # (1, L, D) float: the empty prompt, for caption dropout
    encoder: torch.nn.Module | None = None
    uncond_mask: torch.Tensor | None = None  # (1, L), when masked

    @property
    def masked(self) -> bool:
        return self.uncond_mask is not None

    @torch.no_grad()
    def __call__(
        self, stored: dict[str, torch.Tensor], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        mask = stored["attention_mask"].to(device).long() if self.masked else None
        if "hidden" in stored:
            return stored["hidden"].to(device).float(), mask
        hidden = encode_tokens(
            self.encoder, stored["input_ids"].to(device), stored["attention_mask"].to(device), self.masked
        )
        return hidden.float(), mask


def conditioning_for(
    latents_dir: Path, text: str, encoder: torch.nn.Module | None, masked: bool = False
) -> Conditioning:
    """The conditioning of a latents folder: its stored empty-prompt states, or (tokens) the
    encoder, which also encodes the empty prompt once."""
    uncond = read_uncond(latents_dir)
    mask = uncond["attention_mask"].long() if masked else None
    if text == "states":
        return Conditioning(uncond["hidden"].float(), uncond_mask=mask)
    with torch.no_grad():
        hidden = encode_tokens(encoder.eval(), uncond["input_ids"], uncond["attention_mask"], masked).float()
    return Conditioning(hidden, encoder, mask)


def data_fingerprint(latents_dir: Path) -> str:
    """The data a run trains on: meta.json names every shard with its content fingerprints."""
    return hashlib.sha256((Path(latents_dir) / "meta.json").read_bytes()).hexdigest()


def prepare_run(run_dir: Path, keep_runs: int, live_dir: Path, recipe: dict | None = None) -> bool:
    """Main process, before training: record the run's recipe (`recipe.json`, what its name
    hashes), apply the keep_runs policy, put back the curves of the checkpoint this run resumes
    (or clear them for a new run); True when resuming."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if recipe is not None and not (run_dir / RECIPE_FILE).is_file():
        with atomic_path(run_dir / RECIPE_FILE) as temp:
            temp.write_text(json.dumps(recipe, indent=2, sort_keys=True))
    os.utime(run_dir)
    prune_runs(run_dir.parent, run_dir.name, keep_runs, recipe)
    checkpoint = resumable_checkpoint(run_dir)
    if checkpoint is None:
        shutil.rmtree(live_dir, ignore_errors=True)
        return False
    restore_curves(checkpoint, live_dir)
    return True


def step_generator(seed: int, step: int, rank: int = 0, salt: int = 0) -> torch.Generator:
    """The generator of micro-step `step` on `rank`; a `salt` gives an independent one (a
    draw added later must not shift the draws runs already make)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step + 104_729 * rank + salt * 2_147_483_647)


def mix_captions(stored: dict[str, torch.Tensor], fraction: float, generator: torch.Generator) -> dict:
    """A batch's text fields with each row's replaced by its source caption's (`original_*`)
    with probability `fraction`, where the row has one (`has_original`); unchanged at 0."""
    if not fraction:
        return stored
    draw = torch.rand(len(stored["has_original"]), generator=generator) < fraction
    use = draw & stored["has_original"].bool()
    mixed = dict(stored)
    for name in TEXT_FIELDS:
        if name in stored:
            where = use.view(-1, *[1] * (stored[name].dim() - 1))
            mixed[name] = torch.where(where, stored[ORIGINAL + name], stored[name])
    return mixed


def run_recipe(cfg: TrainConfig, data_fingerprint: str, world: int = 1) -> dict:
    """What changes a run's trajectory (recipe, data, world size), not its cadence or length, so
    raising max_steps or log_every_steps continues the same run."""
    unused = {"unet", "transformer"} - {cfg.denoiser}  # the other denoiser's section
    recipe = {
        k: v
        for k, v in cfg.model_dump().items()
        if k not in NOT_IN_RUN_IDENTITY | unused and not (k in ADDED_SINCE and v == ADDED_SINCE[k])
    }
    return {"train": recipe, "data": data_fingerprint, "world": world}


def recipe_id(recipe: dict) -> str:
    return "run-" + hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def run_identity(cfg: TrainConfig, data_fingerprint: str, world: int = 1) -> str:
    """Names a run by its recipe (`run_recipe`): `run-<hash>`, the folder its checkpoints live in."""
    return recipe_id(run_recipe(cfg, data_fingerprint, world))


def recipe_difference(old: dict | None, new: dict | None) -> str:
    """How an older run's recipe differs from this one's, in words (`train.lr 0.001 -> 0.002`)."""
    if old is None or new is None:
        return "no recipe.json to compare (a run from before runs recorded their recipe)"
    changes = [
        f"train.{key} {old['train'].get(key)!r} -> {new['train'].get(key)!r}"
        for key in sorted(set(old["train"]) | set(new["train"]))
        if old["train"].get(key) != new["train"].get(key)
    ]
    if old["data"] != new["data"]:
        changes.append("other data (the latents changed)")
    if old["world"] != new["world"]:
        changes.append(f"world size {old['world']} -> {new['world']}")
    return ", ".join(changes) or "the same recipe"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of one run, oldest first (a half-written one has a temp name)."""
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir() if p.name.startswith(CHECKPOINT_PREFIX) and p.is_dir()]
    return sorted(found, key=lambda p: int(p.name.removeprefix(CHECKPOINT_PREFIX)))


def resumable_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def prune_runs(checkpoints_dir: Path, current: str, keep_runs: int, recipe: dict | None = None) -> list[str]:
    """Remove the oldest run folders beyond `keep_runs` (the current one counts and stays);
    logged with how each removed run's recipe differs from the current `recipe`."""
    runs = [p for p in checkpoints_dir.glob("run-*") if p.is_dir() and p.name != current]
    runs.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    removed = []
    for old in runs[max(keep_runs - 1, 0) :]:
        recorded = json.loads((old / RECIPE_FILE).read_text()) if (old / RECIPE_FILE).is_file() else None
        log.warning(
            "train.keep_runs=%d: removing the checkpoints of older run %s (it differs from this run in: %s)",
            keep_runs,
            old.name,
            recipe_difference(recorded, recipe),
        )
        shutil.rmtree(old)
        removed.append(old.name)
    return removed


def save_checkpoint(
    accelerator: Accelerator, run_dir: Path, step: int, run_state: dict, keep: int, live_dir: Path | None = None
) -> None:
    """accelerate state (every rank's RNG, model, optimizer, LR schedule, EMA) and the training
    curves so far, under a temp name renamed by the main process: a half-written checkpoint is
    never resumed."""
    final = run_dir / f"{CHECKPOINT_PREFIX}{step:07d}"
    temp = run_dir / f".tmp-{final.name}"
    if accelerator.is_main_process:
        if temp.exists():
            shutil.rmtree(temp)
        temp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if live_dir is not None and live_dir.is_dir():
            shutil.copytree(live_dir, temp / LIVE_SNAPSHOT)
        (temp / "run.json").write_text(json.dumps({"step": step, **run_state}))
        if final.exists():
            shutil.rmtree(final)
        os.replace(temp, final)
        os.utime(run_dir)  # the run's age, for keep_runs
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def restore_curves(checkpoint: Path, live_dir: Path) -> None:
    """Put the curves saved with `checkpoint` back in `live_dir`, rows up to its step only, so a
    resumed run's curves cover every step once."""
    step = json.loads((checkpoint / "run.json").read_text())["step"]
    if live_dir.exists():
        shutil.rmtree(live_dir)
    if (checkpoint / LIVE_SNAPSHOT).is_dir():
        shutil.copytree(checkpoint / LIVE_SNAPSHOT, live_dir)
    for tsv in live_dir.rglob("*.tsv"):
        lines = tsv.read_text().splitlines(keepends=True)
        column = lines[0].rstrip("\n").split("\t").index("step")
        tsv.write_text("".join(lines[:1] + [line for line in lines[1:] if int(line.split("\t")[column]) <= step]))


def make_batch(
    stream: LatentStream | BucketStream,
    conditioning: Conditioning,
    micro_step: int,
    cfg: TrainConfig,
    rank: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Generator]:
    """(latents (B, C, h, w), hidden (B, L, D), text mask (B, L) or None, generator) of one
    micro-step, all from (seed, step, rank)."""
    generator = step_generator(cfg.seed, micro_step, rank)
    stored = stream.batch(micro_step)
    fields = [name for name in LATENT_FIELDS if name in stored]
    size, views = stored[fields[0]].shape[:2]
    view = torch.randint(views, (size,), generator=generator)  # original or flipped
    picked = {name: stored[name][torch.arange(size), view].float() for name in fields}  # (B, C, h, w) each
    latents = picked["sample"] if "sample" in picked else sample_latents(picked["mean"], picked["std"], generator)
    stored = mix_captions(stored, cfg.caption_mix, step_generator(cfg.seed, micro_step, rank, salt=CAPTION_MIX_SALT))
    hidden, mask = conditioning(stored, device)
    hidden, mask = drop_captions(
        hidden, conditioning.uncond.to(device), cfg.caption_dropout, generator, mask, conditioning.uncond_mask
    )
    return latents.to(device), hidden, mask, generator


def data_stream(
    latents: Path, meta: dict, rank: int, world: int, batch_size: int, cfg: TrainConfig
) -> LatentStream | BucketStream:
    """This rank's batches: one stream, or one per aspect bucket (`meta["buckets"]`) with every
    rank on the same bucket at every step."""
    if "buckets" not in meta:
        return LatentStream(latents, rank_parts(meta["shards"], rank, world), batch_size, cfg.seed, cfg.shuffle_shards)
    per_rank = [bucket_parts(meta["shards"], r, world) for r in range(world)]
    rows = {b: min(sum(p.rows for p in parts.get(b, [])) for parts in per_rank) for b in meta["buckets"]}
    return BucketStream(latents, per_rank[rank], rows, batch_size, cfg.seed, cfg.shuffle_shards)


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    if cfg.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("train.mixed_precision: fp16 needs a GPU; use bf16 or no on a CPU")
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = cfg.allow_tf32
        torch.backends.cudnn.allow_tf32 = cfg.allow_tf32
    # the LR schedule is stepped by hand once per optimizer step, whatever the world size
    return Accelerator(
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        step_scheduler_with_optimizer=False,
    )


class Metrics:
    """Running window of the logged quantities; loss is averaged over every rank."""

    def __init__(self):
        self.smoothed: float | None = None
        self.reset()

    def reset(self) -> None:
        self.losses, self.norms, self.samples, self.tick = [], [], 0, time.perf_counter()

    def add_micro_step(self, loss: float, samples: int) -> None:
        """One micro-step: its loss (the mean over ranks) and the samples every rank saw."""
        self.losses.append(loss)
        self.samples += samples

    def add_grad_norm(self, norm: float) -> None:
        self.norms.append(norm)

    def summary(self, lr: float) -> dict:
        loss = sum(self.losses) / len(self.losses)
        self.smoothed = loss if self.smoothed is None else LOSS_SMOOTHING * self.smoothed + (1 - LOSS_SMOOTHING) * loss
        return {
            "loss": loss,
            "loss_smoothed": self.smoothed,
            "lr": lr,
            "grad_norm": sum(self.norms) / max(len(self.norms), 1),
            "samples_per_s": self.samples / (time.perf_counter() - self.tick),
        }


def train_denoiser(
    denoiser,
    stream: LatentStream,
    conditioning: Conditioning,
    *,
    cfg: TrainConfig,
    run_dir: Path,
    live=None,
    validate: Callable[[torch.nn.Module, int], None] | None = None,
    accelerator: Accelerator | None = None,
) -> tuple[torch.nn.Module, dict]:
    """Train `denoiser` to `cfg.max_steps` optimizer steps in `run_dir`, resuming its newest checkpoint.

    Returns (the denoiser with EMA weights, summary). `validate(denoiser, step)` runs on the main
    process every `validation_every_steps`."""
    accelerator = accelerator or make_accelerator(cfg)
    rank, world, accumulation = accelerator.process_index, accelerator.num_processes, cfg.gradient_accumulation_steps
    torch.manual_seed(cfg.seed)
    if cfg.gradient_checkpointing:
        denoiser.enable_gradient_checkpointing()
    trainable = select_trainable(denoiser, cfg.trainable, cfg.lora_rank)
    scheduler = make_noise_scheduler(cfg)
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    lr_schedule = get_scheduler(
        cfg.lr_schedule, optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=cfg.max_steps
    )
    ema = EMAModel(trainable, decay=cfg.ema_decay, use_ema_warmup=cfg.ema_warmup, power=cfg.ema_power)
    denoiser, optimizer = accelerator.prepare(denoiser, optimizer)
    accelerator.register_for_checkpointing(lr_schedule, ema)
    model = torch.compile(denoiser) if cfg.compile else denoiser
    if conditioning.encoder is not None:
        conditioning.encoder.to(accelerator.device).eval().requires_grad_(False)

    start, seconds_before, loss_before = 0, 0.0, None
    checkpoint = resumable_checkpoint(run_dir)
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        saved = json.loads((checkpoint / "run.json").read_text())
        start, seconds_before = saved["step"], saved.get("train_seconds", 0.0)
        loss_before = saved.get("loss")  # the last logged loss (checkpoints before 2026-12-05 lack it)
        log.info("resuming %s from %s (step %d of %d)", run_dir.name, checkpoint.name, start, cfg.max_steps)
    if start > cfg.max_steps:
        raise ConfigError(
            f"train.max_steps: {cfg.max_steps} is below the step this run already reached ({start}); "
            "raise it, or change the recipe to start a new run"
        )

    denoiser.train()
    bar = tqdm(
        range(start, cfg.max_steps),
        initial=start,
        total=cfg.max_steps,
        desc="train",
        unit="step",
        disable=not accelerator.is_main_process,
    )
    metrics, curve, started = Metrics(), [], time.perf_counter()
    for step in bar:
        for micro in range(step * accumulation, (step + 1) * accumulation):
            latents, hidden, mask, generator = make_batch(stream, conditioning, micro, cfg, rank, accelerator.device)
            with accelerator.accumulate(denoiser), accelerator.autocast():
                loss = training_loss(
                    model,
                    scheduler,
                    latents,
                    hidden=hidden,
                    generator=generator,
                    noise_offset=cfg.noise_offset,
                    snr_gamma=cfg.snr_gamma,
                    mask=mask,
                )
                losses = accelerator.gather(loss.detach()[None])  # every rank stops together
                if not torch.isfinite(losses).all():
                    bad = (~torch.isfinite(losses)).nonzero().flatten().tolist()
                    raise FloatingPointError(
                        f"train: loss is {losses[bad[0]].item()} at step {step} (rank {bad}); stopped with the last "
                        f"good checkpoint kept in {run_dir} (try a lower train.lr)"
                    )
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    metrics.add_grad_norm(float(accelerator.clip_grad_norm_(trainable, cfg.max_grad_norm)))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            metrics.add_micro_step(losses.mean().item(), len(latents) * world)
        lr_schedule.step()
        ema.step(trainable)
        done = step + 1
        if done % cfg.log_every_steps == 0 or done == cfg.max_steps:
            logged = metrics.summary(lr_schedule.get_last_lr()[0])
            curve.append(logged["loss"])
            bar.set_postfix(loss=f"{logged['loss']:.4f}")
            if live is not None and accelerator.is_main_process:
                live.step = done
                for name, value in logged.items():
                    live.log_metric(f"train/{name}", value)
            metrics.reset()
        if cfg.validation_every_steps and done % cfg.validation_every_steps == 0 and validate is not None:
            if accelerator.is_main_process:
                validate(accelerator.unwrap_model(denoiser), done)
            accelerator.wait_for_everyone()
        if done % cfg.checkpoint_every_steps == 0 or done == cfg.max_steps:
            state = {
                "run": run_dir.name,
                "world_size": world,
                "data_position_rank0": stream.position(done * accumulation * stream.batch_size),
                "train_seconds": seconds_before + time.perf_counter() - started,
                "loss": curve[-1] if curve else loss_before,
            }  # the whole run's, resumes included
            if live is not None and accelerator.is_main_process:
                live.make_summary()
            save_checkpoint(
                accelerator,
                run_dir,
                done,
                state,
                cfg.keep_checkpoints,
                Path(live.dir) if getattr(live, "dir", None) else None,
            )

    final = accelerator.unwrap_model(denoiser)
    summary = {
        "run": run_dir.name,
        "start_step": start,
        "final_step": cfg.max_steps,
        "final_loss": curve[-1] if curve else loss_before,  # a run resumed at its end: the saved one
        "world_size": world,
        "train_seconds": seconds_before + time.perf_counter() - started,
        "batch_size_used": stream.batch_size,
        "global_batch": stream.batch_size * world * accumulation,
        "optimizer_steps": optimizer_steps(optimizer),
        "gradient_checkpointing": bool(getattr(final, "is_gradient_checkpointing", False)),
        "rank_weight_sha256": gather_object([weights_sha256(final)]),
    }
    ema.copy_to(trainable)
    final.eval()
    return final, summary


def optimizer_steps(optimizer) -> int:
    """Updates the optimizer itself counted (AdamW's per-parameter `step`), not the loop."""
    inner = getattr(optimizer, "optimizer", optimizer)
    steps = [int(state["step"]) for state in inner.state.values() if "step" in state]
    return max(steps, default=0)


def weights_sha256(module: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# -- the run, top to bottom: what `dvc repro train` does -----------------------------------------


@dataclass
class RunPaths:
    latents: Path  # data/latents: the encode stage's shards, index and meta.json
    vae: Path  # models/vae: exported with the denoiser
    checkpoints: Path  # models/checkpoints: one folder per run (`run_identity`)
    live: Path  # reports/train/live: dvclive curves and validation grids
    out: Path  # models/trained: the exported pipeline folder
    report: Path  # reports/train: stats.json


@dataclass
class MainProcess:
    """What only the main process holds, built in one place: the VAE (validation grids and the
    export), the dvclive logger and the val prompts the grids draw."""

    vae: AutoencoderKL
    live: Live
    prompts: list[str]


def validation_grid(model, step: int, cfg: TrainConfig, main: MainProcess, tokenizer, text_encoder) -> None:
    """`train.validation_prompts` val prompts sampled with the current weights (the sampler at
    `validation_steps` / `validation_guidance`), into the dvclive folder."""
    if not main.prompts:
        return
    pipeline = build_pipeline(model, main.vae, tokenizer, text_encoder, make_noise_scheduler(cfg))
    pipeline.set_progress_bar_config(disable=True)
    prompts = main.prompts
    images = generate(
        pipeline,
        prompts,
        list(range(len(prompts))),
        steps=cfg.validation_steps,
        guidance=cfg.validation_guidance,
        batch_size=len(prompts),
        progress=False,
    )
    main.live.log_image(f"validation/step-{step:07d}.png", sample_grid(images, prompts, len(prompts)))
    model.train()


def run(cfg: TrainConfig, paths: RunPaths) -> None:
    """Train the denoiser on the latents folder and export the pipeline; every process of an
    `accelerate launch` runs this, and only the main process logs, samples and writes."""
    # setup: processes and ranks
    accelerator = make_accelerator(cfg)
    rank, world = accelerator.process_index, accelerator.num_processes

    # data: this rank's share of the latent shards, streamed
    meta = read_meta(paths.latents)
    per_rank = [sum(p.rows for p in rank_parts(meta["shards"], r, world)) for r in range(world)]
    if min(per_rank) == 0:
        raise DataError(
            f"train: the train split has {sum(per_rank)} image(s), too few for {world} process(es) "
            "(lower dedupe.val_fraction or add data)"
        )
    batch_size = min(cfg.batch_size, min(per_rank))
    if batch_size < cfg.batch_size and accelerator.is_main_process:
        print(
            f"train: train.batch_size {cfg.batch_size} is above the {min(per_rank)} train images a process "
            f"has; using batch {batch_size}",
            file=sys.stderr,
        )
    stream = data_stream(paths.latents, meta, rank, world, batch_size, cfg)
    if isinstance(stream, BucketStream) and stream.dropped and accelerator.is_main_process:
        print(f"train: aspect buckets with fewer train rows than a batch, not drawn: {stream.dropped}", file=sys.stderr)
    if cfg.caption_mix and not meta.get("original_captions"):
        raise DataError(
            f"train.caption_mix: {cfg.caption_mix:g} draws the source's own captions, and {paths.latents} holds "
            "none (set caption.keep_original: true on a source with captions, e.g. LAION's alt text)"
        )
    masked = cfg.denoiser == "transformer"
    if masked != meta.get("text_mask", False):
        raise DataError(
            f"train.denoiser: {cfg.denoiser} needs text states encoded {'with' if masked else 'without'} "
            f"the attention mask; {paths.latents} has them {'with' if not masked else 'without'} (rerun encode)"
        )

    # model: the text side (frozen) and the denoiser
    tokenizer, text_encoder = load_text_encoder(
        **meta["text_encoder"], load_model=accelerator.is_main_process or meta["text"] == "tokens"
    )
    conditioning = conditioning_for(paths.latents, meta["text"], text_encoder, masked)
    denoiser = make_denoiser(cfg, meta["latent_shape"][1], meta["latent_shape"][0], meta["text_dim"])

    # the run's folder: a new run, or the checkpoints of this recipe to resume
    recipe = run_recipe(cfg, data_fingerprint(paths.latents), world)
    run_dir = paths.checkpoints / recipe_id(recipe)
    main = None
    if accelerator.is_main_process:
        resuming = prepare_run(run_dir, cfg.keep_runs, paths.live, recipe)
        prompts = first_rows(paths.latents / "index.parquet", cfg.validation_prompts, "split", "val", ["caption"])
        main = MainProcess(
            vae=AutoencoderKL.from_pretrained(paths.vae),
            live=Live(dir=str(paths.live), dvcyaml=None, save_dvc_exp=False, resume=resuming),
            prompts=prompts["caption"].to_pylist(),
        )
    accelerator.wait_for_everyone()

    # resume + loop
    validate = None
    if main is not None:
        validate = functools.partial(
            validation_grid, cfg=cfg, main=main, tokenizer=tokenizer, text_encoder=text_encoder
        )
    with main.live if main is not None else contextlib.nullcontext():
        denoiser, summary = train_denoiser(
            denoiser,
            stream,
            conditioning,
            cfg=cfg,
            run_dir=run_dir,
            live=main and main.live,
            validate=validate,
            accelerator=accelerator,
        )
    stream.close()

    # export: the pipeline folder and the run's stats
    if main is not None:
        (paths.live / "plots" / "images").mkdir(parents=True, exist_ok=True)  # a DVC plots out
        summary.update(
            train_samples=sum(per_rank),
            denoiser=cfg.denoiser,
            denoiser_parameters=sum(p.numel() for p in denoiser.parameters()),
            trainable_parameters=sum(p.numel() for p in denoiser.parameters() if p.requires_grad),
        )
        if isinstance(stream, BucketStream):
            summary.update(buckets=stream.buckets, buckets_not_drawn=stream.dropped)
        summary["single_file"] = export_pipeline(
            denoiser, cfg, main.vae, tokenizer, text_encoder, paths.out, buckets=summary.get("buckets", ())
        )
        write_json(paths.report / "stats.json", summary)
        print(f"train: {summary}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
