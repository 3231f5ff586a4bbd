import json

import pytest
import torch

from sdlab.config import TrainConfig, UnetConfig
from sdlab.models.unet import build_unet
from sdlab.train import TrainData, batch_indices, list_checkpoints, train_unet

CFG = TrainConfig(unet=UnetConfig(block_out_channels=[8, 16], attention_head_dim=2, cross_attention_levels=[False, True]),
                  max_steps=6, batch_size=4, warmup_steps=2, checkpoint_every_steps=2, keep_checkpoints=2,
                  log_every_steps=1)


def data(poison: bool = False) -> TrainData:
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(10, 4, 4, 4, generator=g)
    if poison:
        mean[:] = float("inf")
    latents = {"mean": mean[:, None], "std": torch.full_like(mean, 0.1)[:, None]}  # one view
    return TrainData(latents, torch.arange(10) % 3 + 1, torch.randn(4, 5, 16, generator=g))


def fresh_unet():
    torch.manual_seed(0)
    return build_unet(CFG.unet, 4, 4, 16)


class Interrupt(Exception):
    pass


class StopAt:
    """A dvclive stand-in that kills the run after logging step `at` (before its checkpoint)."""

    def __init__(self, at: int):
        self.at, self.step = at, 0

    def log_metric(self, name, value):
        if self.step == self.at:
            raise Interrupt


def weights(unet):
    return {k: v.clone() for k, v in unet.state_dict().items()}


def test_batches_cover_each_epoch_once_and_are_reproducible():
    seen = torch.cat([batch_indices(s, 10, 4, seed=1) for s in range(2)])  # one epoch = 2 batches of 4
    assert len(set(seen.tolist())) == 8
    assert torch.equal(batch_indices(3, 10, 4, seed=1), batch_indices(3, 10, 4, seed=1))


def test_resumed_run_continues_from_the_saved_step_and_matches_an_uninterrupted_run(tmp_path):
    reference, summary = train_unet(fresh_unet(), data(), CFG, tmp_path / "a", "data-v1")
    assert summary["start_step"] == 0 and summary["final_step"] == 6

    with pytest.raises(Interrupt):
        train_unet(fresh_unet(), data(), CFG, tmp_path / "b", "data-v1", live=StopAt(5))
    assert [p.name for p in list_checkpoints(tmp_path / "b")] == ["step-0000002", "step-0000004"]
    resumed, summary = train_unet(fresh_unet(), data(), CFG, tmp_path / "b", "data-v1")
    assert summary["start_step"] == 4 and summary["final_step"] == 6
    for name, value in weights(reference).items():
        assert torch.equal(value, resumed.state_dict()[name]), name  # bit-exact on CPU
    assert json.loads((list_checkpoints(tmp_path / "b")[-1] / "run.json").read_text())["step"] == 6


def test_a_changed_config_starts_over_instead_of_resuming(tmp_path):
    train_unet(fresh_unet(), data(), CFG, tmp_path, "data-v1")
    _, summary = train_unet(fresh_unet(), data(), CFG.model_copy(update={"lr": 5e-4}), tmp_path, "data-v1")
    assert summary["start_step"] == 0
    _, summary = train_unet(fresh_unet(), data(), CFG, tmp_path, "data-v2")
    assert summary["start_step"] == 0


def test_half_written_checkpoint_is_ignored(tmp_path):
    train_unet(fresh_unet(), data(), CFG.model_copy(update={"max_steps": 2}), tmp_path, "d")
    (tmp_path / ".tmp-step-0000004").mkdir()  # a save that was killed midway
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-0000002"]


def test_nan_loss_stops_loudly(tmp_path):
    with pytest.raises(FloatingPointError, match="loss is (nan|inf) at step 0"):
        train_unet(fresh_unet(), data(poison=True), CFG, tmp_path, "d")


def test_training_reduces_the_loss(tmp_path):
    cfg = CFG.model_copy(update={"max_steps": 60, "checkpoint_every_steps": 60, "log_every_steps": 10, "lr": 3e-3})
    losses = []

    class Record:
        step = 0

        def log_metric(self, name, value):
            if name == "train/loss":
                losses.append(value)

    train_unet(fresh_unet(), data(), cfg, tmp_path, "d", live=Record())
    assert losses[-1] < losses[0] * 0.8


def test_sampled_store_with_flipped_views_trains(tmp_path):
    base = data()
    views = torch.cat([base.latents["mean"], base.latents["mean"].flip(-1)], dim=1)  # (N, 2, C, h, w)
    flipped = TrainData({"sample": views}, base.caption_ids, base.text)
    assert flipped.views == 2
    _, summary = train_unet(fresh_unet(), flipped, CFG, tmp_path, "d")
    assert summary["final_step"] == 6 and summary["final_loss"] > 0
