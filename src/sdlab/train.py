"""Train the UNet on cached latents with accelerate; checkpoint, resume, export.

Determinism: the samples of step s and all its randomness (posterior draw, noise,
timesteps, caption dropout) are functions of (seed, s) alone, so a run resumed from a
checkpoint sees exactly what an uninterrupted run would have seen.
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

import torch
from accelerate import Accelerator
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm import tqdm

from sdlab.config import TrainConfig
from sdlab.diffusion import drop_captions, make_noise_scheduler, sample_latents, training_loss

log = logging.getLogger(__name__)
CHECKPOINT_PREFIX = "step-"


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


def step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def batch_indices(step: int, num_samples: int, batch_size: int, seed: int) -> torch.Tensor:
    """Sample ids of `step`: epoch-wise permutations, last partial batch dropped."""
    batch_size = min(batch_size, num_samples)
    per_epoch = num_samples // batch_size
    epoch, position = divmod(step, per_epoch)
    order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed + 7919 * epoch))
    return order[position * batch_size:(position + 1) * batch_size]


def run_fingerprint(cfg: TrainConfig, data_fingerprint: str) -> str:
    """Identifies a run: checkpoints of another config or data are never resumed."""
    blob = json.dumps({"train": cfg.model_dump(), "data": data_fingerprint}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def list_checkpoints(checkpoints_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a half-written one has a temp name)."""
    if not checkpoints_dir.is_dir():
        return []
    found = [p for p in checkpoints_dir.iterdir() if p.name.startswith(CHECKPOINT_PREFIX) and p.is_dir()]
    return sorted(found, key=lambda p: int(p.name.removeprefix(CHECKPOINT_PREFIX)))


def resumable_checkpoint(checkpoints_dir: Path, fingerprint: str) -> Path | None:
    """The newest checkpoint of this run; checkpoints of other runs are removed."""
    newest = None
    for path in list_checkpoints(checkpoints_dir):
        state = path / "run.json"
        if state.is_file() and json.loads(state.read_text()).get("fingerprint") == fingerprint:
            newest = path
        else:
            log.warning("removing checkpoint %s of a different config or dataset", path)
            shutil.rmtree(path)
    return newest


def save_checkpoint(accelerator: Accelerator, checkpoints_dir: Path, step: int, fingerprint: str, keep: int) -> None:
    final = checkpoints_dir / f"{CHECKPOINT_PREFIX}{step:07d}"
    temp = checkpoints_dir / f".tmp-{final.name}"
    if temp.exists():
        shutil.rmtree(temp)
    accelerator.save_state(str(temp))
    (temp / "run.json").write_text(json.dumps({"step": step, "fingerprint": fingerprint}))
    if final.exists():
        shutil.rmtree(final)
    os.replace(temp, final)
    for old in list_checkpoints(checkpoints_dir)[:-keep]:
        shutil.rmtree(old)


def make_batch(data: TrainData, step: int, cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Generator]:
    generator = step_generator(cfg.seed, step)
    ids = batch_indices(step, len(data), cfg.batch_size, cfg.seed)
    view = torch.randint(data.views, (len(ids),), generator=generator)  # original or flipped
    picked = {name: tensor[ids, view] for name, tensor in data.latents.items()}  # (B, C, h, w) each
    latents = picked["sample"] if "sample" in picked else sample_latents(picked["mean"], picked["std"], generator)
    hidden = data.text[data.caption_ids[ids]]  # (B, L, D)
    hidden = drop_captions(hidden, data.text[0], cfg.caption_dropout, generator)
    return latents, hidden, generator


def train_unet(unet, data: TrainData, cfg: TrainConfig, checkpoints_dir: Path, data_fingerprint: str,
               live=None) -> tuple[torch.nn.Module, dict]:
    """Train `unet` to `cfg.max_steps`, resuming a matching checkpoint; return (EMA unet, summary)."""
    torch.manual_seed(cfg.seed)
    accelerator = Accelerator()
    scheduler = make_noise_scheduler(cfg)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    lr_schedule = get_scheduler(cfg.lr_schedule, optimizer, num_warmup_steps=cfg.warmup_steps,
                                num_training_steps=cfg.max_steps)
    ema = EMAModel(unet.parameters(), decay=cfg.ema_decay, use_ema_warmup=True)
    unet, optimizer, lr_schedule = accelerator.prepare(unet, optimizer, lr_schedule)
    accelerator.register_for_checkpointing(ema)

    fingerprint = run_fingerprint(cfg, data_fingerprint)
    start = 0
    checkpoint = resumable_checkpoint(checkpoints_dir, fingerprint)
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        start = json.loads((checkpoint / "run.json").read_text())["step"]
        log.info("resuming from %s (step %d of %d)", checkpoint, start, cfg.max_steps)

    unet.train()
    bar = tqdm(range(start, cfg.max_steps), initial=start, total=cfg.max_steps, desc="train",
               unit="step", disable=not accelerator.is_main_process)
    window, norms, tick, losses = [], [], time.perf_counter(), []
    for step in bar:
        latents, hidden, generator = make_batch(data, step, cfg)
        latents, hidden = latents.to(accelerator.device), hidden.to(accelerator.device)
        loss = training_loss(unet, scheduler, latents, hidden, generator, cfg.noise_offset, cfg.snr_gamma)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"train: loss is {loss.item()} at step {step}; stopped with the last good checkpoint "
                f"kept in {checkpoints_dir} (try a lower train.lr)")
        accelerator.backward(loss)
        grad_norm = accelerator.clip_grad_norm_(unet.parameters(), cfg.max_grad_norm)
        optimizer.step()
        lr_schedule.step()
        optimizer.zero_grad(set_to_none=True)
        ema.step(accelerator.unwrap_model(unet).parameters())
        window.append(loss.item())
        norms.append(float(grad_norm))
        done = step + 1
        if done % cfg.log_every_steps == 0 or done == cfg.max_steps:
            elapsed = time.perf_counter() - tick
            metrics = {"loss": sum(window) / len(window), "lr": lr_schedule.get_last_lr()[0],
                       "grad_norm": sum(norms) / len(norms), "samples_per_s": len(window) * latents.shape[0] / elapsed}
            losses.append(metrics["loss"])
            bar.set_postfix(loss=f"{metrics['loss']:.4f}")
            if live is not None and accelerator.is_main_process:
                live.step = done
                for name, value in metrics.items():
                    live.log_metric(f"train/{name}", value)
            window, norms, tick = [], [], time.perf_counter()
        if done % cfg.checkpoint_every_steps == 0 or done == cfg.max_steps:
            save_checkpoint(accelerator, checkpoints_dir, done, fingerprint, cfg.keep_checkpoints)

    final = accelerator.unwrap_model(unet)
    ema.copy_to(final.parameters())
    final.eval()
    return final, {"start_step": start, "final_step": cfg.max_steps,
                   "final_loss": losses[-1] if losses else None}
