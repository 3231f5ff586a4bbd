"""Train the UNet on cached latents with accelerate; checkpoint, resume, export.

One loop for 1 CPU process and N GPUs on M nodes: `accelerate launch` starts the
processes (see `sdlab.launch`), each rank holds its own slice of the latent shards
(`rank_slice`), DDP averages gradients, and only the main process logs and writes.

Determinism: micro-step m of rank r draws its samples and all its randomness (posterior
draw, noise, timesteps, caption dropout) from (seed, m, r) alone, so a run resumed from a
checkpoint sees exactly what an uninterrupted run would have seen, and the data position
of a checkpoint (epoch, samples of that epoch already seen) follows from its step.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pyarrow as pa
import torch
from accelerate import Accelerator
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm import tqdm

from sdlab.config import ConfigError, TrainConfig
from sdlab.diffusion import drop_captions, make_noise_scheduler, sample_latents, training_loss
from sdlab.models.unet import select_trainable

log = logging.getLogger(__name__)
CHECKPOINT_PREFIX = "step-"
LOSS_SMOOTHING = 0.9  # the EMA-smoothed loss curve logged beside the raw one


@dataclass
class TrainData:
    latents: dict[str, torch.Tensor]  # `mean`+`std` or `sample`, each (N, V, C, h, w), V views
    caption_ids: torch.Tensor  # (N,) rows of `text`
    text: torch.Tensor  # (num captions, L, D); row 0 is the empty prompt

    def __len__(self) -> int:
        return len(self.caption_ids)

    @property
    def views(self) -> int:
        return next(iter(self.latents.values())).shape[1]


def rank_slice(index: pa.Table, rank: int, world: int) -> pa.Table:
    """The rows rank `rank` of `world` trains on: whole latent shards, round robin (rows
    round robin when there are fewer shards than ranks), so each rank reads only its own."""
    if world == 1:
        return index
    shards = sorted(set(index.column("latent_shard").to_pylist()))
    if len(shards) >= world:
        mine = set(shards[rank::world])
        keep = [s in mine for s in index.column("latent_shard").to_pylist()]
    else:
        keep = [i % world == rank for i in range(index.num_rows)]
    return index.filter(pa.array(keep))


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step + 104_729 * rank)


def batch_indices(step: int, num_samples: int, batch_size: int, seed: int) -> torch.Tensor:
    """Sample ids of `step`: epoch-wise permutations, last partial batch dropped."""
    batch_size = min(batch_size, num_samples)
    per_epoch = num_samples // batch_size
    epoch, position = divmod(step, per_epoch)
    order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed + 7919 * epoch))
    return order[position * batch_size:(position + 1) * batch_size]


def data_position(micro_steps: int, num_samples: int, batch_size: int) -> dict:
    """Where the data stream stands after `micro_steps`: epoch and samples of it seen."""
    batch_size = min(batch_size, num_samples)
    epoch, batches = divmod(micro_steps, num_samples // batch_size)
    return {"epoch": epoch, "samples_seen_in_epoch": batches * batch_size, "samples_per_epoch": num_samples}


def run_fingerprint(cfg: TrainConfig, data_fingerprint: str, world: int = 1) -> str:
    """Identifies a run: checkpoints of another config, data or world size are never resumed."""
    blob = json.dumps({"train": cfg.model_dump(), "data": data_fingerprint, "world": world}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def list_checkpoints(checkpoints_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a half-written one has a temp name)."""
    if not checkpoints_dir.is_dir():
        return []
    found = [p for p in checkpoints_dir.iterdir() if p.name.startswith(CHECKPOINT_PREFIX) and p.is_dir()]
    return sorted(found, key=lambda p: int(p.name.removeprefix(CHECKPOINT_PREFIX)))


def checkpoint_fingerprint(path: Path) -> str | None:
    state = path / "run.json"
    return json.loads(state.read_text()).get("fingerprint") if state.is_file() else None


def remove_foreign_checkpoints(checkpoints_dir: Path, fingerprint: str) -> None:
    for path in list_checkpoints(checkpoints_dir):
        if checkpoint_fingerprint(path) != fingerprint:
            log.warning("removing checkpoint %s of a different config or dataset", path)
            shutil.rmtree(path)


def resumable_checkpoint(checkpoints_dir: Path, fingerprint: str) -> Path | None:
    """The newest complete checkpoint of this run."""
    mine = [p for p in list_checkpoints(checkpoints_dir) if checkpoint_fingerprint(p) == fingerprint]
    return mine[-1] if mine else None


def save_checkpoint(accelerator: Accelerator, checkpoints_dir: Path, step: int, run_state: dict, keep: int) -> None:
    """accelerate state (every rank's RNG, model, optimizer, LR schedule, EMA) under a temp
    name, then renamed by the main process: a half-written checkpoint is never resumed."""
    final = checkpoints_dir / f"{CHECKPOINT_PREFIX}{step:07d}"
    temp = checkpoints_dir / f".tmp-{final.name}"
    if accelerator.is_main_process:
        if temp.exists():
            shutil.rmtree(temp)
        temp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (temp / "run.json").write_text(json.dumps({"step": step, **run_state}))
        if final.exists():
            shutil.rmtree(final)
        os.replace(temp, final)
        for old in list_checkpoints(checkpoints_dir)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def make_batch(data: TrainData, micro_step: int, cfg: TrainConfig, rank: int = 0
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Generator]:
    generator = step_generator(cfg.seed, micro_step, rank)
    ids = batch_indices(micro_step, len(data), cfg.batch_size, cfg.seed)
    view = torch.randint(data.views, (len(ids),), generator=generator)  # original or flipped
    picked = {name: tensor[ids, view] for name, tensor in data.latents.items()}  # (B, C, h, w) each
    latents = picked["sample"] if "sample" in picked else sample_latents(picked["mean"], picked["std"], generator)
    hidden = data.text[data.caption_ids[ids]]  # (B, L, D)
    hidden = drop_captions(hidden, data.text[0], cfg.caption_dropout, generator)
    return latents, hidden, generator


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    if cfg.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("train.mixed_precision: fp16 needs a GPU; use bf16 or no on a CPU")
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = cfg.allow_tf32
        torch.backends.cudnn.allow_tf32 = cfg.allow_tf32
    # the LR schedule is stepped by hand once per optimizer step, whatever the world size
    return Accelerator(mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.gradient_accumulation_steps,
                       step_scheduler_with_optimizer=False)


class Metrics:
    """Running window of the logged quantities; loss is averaged over every rank."""

    def __init__(self):
        self.smoothed: float | None = None
        self.reset()

    def reset(self) -> None:
        self.losses, self.norms, self.samples, self.tick = [], [], 0, time.perf_counter()

    def summary(self, lr: float) -> dict:
        loss = sum(self.losses) / len(self.losses)
        self.smoothed = loss if self.smoothed is None else LOSS_SMOOTHING * self.smoothed + (1 - LOSS_SMOOTHING) * loss
        return {"loss": loss, "loss_smoothed": self.smoothed, "lr": lr,
                "grad_norm": sum(self.norms) / max(len(self.norms), 1),
                "samples_per_s": self.samples / (time.perf_counter() - self.tick)}


def train_unet(unet, data: TrainData, cfg: TrainConfig, checkpoints_dir: Path, data_fingerprint: str,
               live=None, validate: Callable[[torch.nn.Module, int], None] | None = None,
               accelerator: Accelerator | None = None) -> tuple[torch.nn.Module, dict]:
    """Train `unet` to `cfg.max_steps` optimizer steps, resuming a matching checkpoint.

    Returns (the unet with EMA weights, summary). `validate(unet, step)` runs on the main
    process every `validation_every_steps`."""
    accelerator = accelerator or make_accelerator(cfg)
    rank, world, accumulation = accelerator.process_index, accelerator.num_processes, cfg.gradient_accumulation_steps
    torch.manual_seed(cfg.seed)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    trainable = select_trainable(unet, cfg.trainable, cfg.lora_rank)
    scheduler = make_noise_scheduler(cfg)
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    lr_schedule = get_scheduler(cfg.lr_schedule, optimizer, num_warmup_steps=cfg.warmup_steps,
                                num_training_steps=cfg.max_steps)
    ema = EMAModel(trainable, decay=cfg.ema_decay, use_ema_warmup=cfg.ema_warmup, power=cfg.ema_power)
    unet, optimizer = accelerator.prepare(unet, optimizer)
    accelerator.register_for_checkpointing(lr_schedule, ema)
    model = torch.compile(unet) if cfg.compile else unet

    fingerprint = run_fingerprint(cfg, data_fingerprint, world)
    if accelerator.is_main_process:
        remove_foreign_checkpoints(checkpoints_dir, fingerprint)
    accelerator.wait_for_everyone()
    start = 0
    checkpoint = resumable_checkpoint(checkpoints_dir, fingerprint)
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        start = json.loads((checkpoint / "run.json").read_text())["step"]
        log.info("resuming from %s (step %d of %d)", checkpoint, start, cfg.max_steps)

    unet.train()
    bar = tqdm(range(start, cfg.max_steps), initial=start, total=cfg.max_steps, desc="train",
               unit="step", disable=not accelerator.is_main_process)
    metrics, curve = Metrics(), []
    for step in bar:
        for micro in range(step * accumulation, (step + 1) * accumulation):
            latents, hidden, generator = make_batch(data, micro, cfg, rank)
            latents, hidden = latents.to(accelerator.device), hidden.to(accelerator.device)
            with accelerator.accumulate(unet), accelerator.autocast():
                loss = training_loss(model, scheduler, latents, hidden, generator, cfg.noise_offset, cfg.snr_gamma)
                losses = accelerator.gather(loss.detach()[None])  # every rank stops together
                if not torch.isfinite(losses).all():
                    bad = (~torch.isfinite(losses)).nonzero().flatten().tolist()
                    raise FloatingPointError(
                        f"train: loss is {losses[bad[0]].item()} at step {step} (rank {bad}); stopped with the last "
                        f"good checkpoint kept in {checkpoints_dir} (try a lower train.lr)")
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    metrics.norms.append(float(accelerator.clip_grad_norm_(trainable, cfg.max_grad_norm)))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            metrics.losses.append(losses.mean().item())
            metrics.samples += len(latents) * world
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
                validate(accelerator.unwrap_model(unet), done)
            accelerator.wait_for_everyone()
        if done % cfg.checkpoint_every_steps == 0 or done == cfg.max_steps:
            state = {"fingerprint": fingerprint, "world_size": world,
                     "data_position_rank0": data_position(done * accumulation, len(data), cfg.batch_size)}
            save_checkpoint(accelerator, checkpoints_dir, done, state, cfg.keep_checkpoints)

    final = accelerator.unwrap_model(unet)
    ema.copy_to(trainable)
    final.eval()
    return final, {"start_step": start, "final_step": cfg.max_steps, "final_loss": curve[-1] if curve else None,
                   "world_size": world, "global_batch": cfg.batch_size * world * accumulation}
