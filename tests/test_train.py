import json

import pytest
import torch
from latent_fixtures import LossRecorder, write_latents

from sdlab.config import TrainConfig, UnetConfig
from sdlab.data.records import DataError
from sdlab.models.unet import build_unet
from sdlab.stream import LatentStream, Part, rank_parts
from sdlab.train import (
    Conditioning,
    RunPaths,
    list_checkpoints,
    mix_captions,
    prepare_run,
    prune_runs,
    recipe_id,
    restore_curves,
    run,
    run_identity,
    run_recipe,
    step_generator,
    train_denoiser,
)

CFG = TrainConfig(
    unet=UnetConfig(block_out_channels=[8, 16], attention_head_dim=2, cross_attention_levels=[False, True]),
    max_steps=6,
    batch_size=4,
    warmup_steps=2,
    checkpoint_every_steps=2,
    keep_checkpoints=2,
    log_every_steps=1,
    shuffle_shards=2,
)


def stream(root, batch_size: int = 4, seed: int = 0, **kwargs) -> LatentStream:
    meta = json.loads((root / "meta.json").read_text())
    return LatentStream(root, rank_parts(meta["shards"], 0, 1), batch_size, seed, CFG.shuffle_shards, **kwargs)


@pytest.fixture
def latents(tmp_path):
    root = tmp_path / "latents"
    write_latents(root, images=10, shard_size=3, shape=(4, 4, 4), text_dim=16)
    return root


def conditioning() -> Conditioning:
    return Conditioning(torch.zeros(1, 5, 16))


def fresh_unet():
    torch.manual_seed(0)
    return build_unet(CFG.unet, 4, 4, 16)


class Interrupt(Exception):
    pass


class StopAt:
    """A dvclive stand-in that kills the run after logging step `at` (before its checkpoint)."""

    def __init__(self, at: int):
        self.at, self.step, self.dir = at, 0, None

    def log_metric(self, name, value):
        if self.step == self.at:
            raise Interrupt

    def make_summary(self):
        pass


def weights(unet):
    return {k: v.clone() for k, v in unet.state_dict().items()}


def test_each_epoch_covers_every_train_row_once_in_a_new_order(latents):
    source = stream(latents, batch_size=5)
    epochs = [torch.cat([source.batch(m)["mean"] for m in range(e * 2, e * 2 + 2)]) for e in range(2)]
    flat = [{tuple(row.flatten().tolist()) for row in epoch} for epoch in epochs]
    assert len(flat[0]) == len(flat[1]) == 10 and flat[0] == flat[1]  # every row once per epoch
    assert not torch.equal(epochs[0], epochs[1])  # reshuffled
    again = stream(latents, batch_size=5)
    assert torch.equal(again.batch(3)["mean"], source.batch(3)["mean"])  # a pure function of the step
    assert source.batch(0)["mean"].dtype == torch.float16 and source.batch(0)["hidden"].dtype == torch.float16
    source.close(), again.close()


def test_rank_parts_split_whole_shards_or_rows_when_shards_are_few():
    shards = [{"name": f"{i:05d}", "train": 3} for i in range(4)]
    assert [p.shard for p in rank_parts(shards, 0, 2)] == ["00000", "00002"]
    assert [p.shard for p in rank_parts(shards, 1, 2)] == ["00001", "00003"]
    few = rank_parts(shards[:1], 1, 2)
    assert few == [Part("00000", 1, 2, 1)]  # rows 1 of 0..2


def test_data_position_follows_the_stream(latents):
    source = stream(latents, batch_size=4)
    assert source.position(12)["epoch"] == 1 and source.position(12)["samples_seen_in_epoch"] == 2
    assert source.position(9)["samples_per_epoch"] == 10
    source.close()


def test_resumed_run_continues_from_the_saved_step_and_matches_an_uninterrupted_run(latents, tmp_path):
    reference, summary = train_denoiser(fresh_unet(), stream(latents), conditioning(), cfg=CFG, run_dir=tmp_path / "a")
    assert summary["start_step"] == 0 and summary["final_step"] == 6

    with pytest.raises(Interrupt):
        train_denoiser(fresh_unet(), stream(latents), conditioning(), cfg=CFG, run_dir=tmp_path / "b", live=StopAt(5))
    assert [p.name for p in list_checkpoints(tmp_path / "b")] == ["step-0000002", "step-0000004"]
    resumed, summary = train_denoiser(fresh_unet(), stream(latents), conditioning(), cfg=CFG, run_dir=tmp_path / "b")
    assert summary["start_step"] == 4 and summary["final_step"] == 6
    for name, value in weights(reference).items():
        assert torch.equal(value, resumed.state_dict()[name]), name  # bit-exact on CPU
    state = json.loads((list_checkpoints(tmp_path / "b")[-1] / "run.json").read_text())
    assert state["step"] == 6 and state["data_position_rank0"]["samples_seen_in_epoch"] == 4  # 24 samples, 10/epoch
    # run again at its end (a code edit reruns the stage, the recipe is the same): nothing to train,
    # and the summary still carries the run's last loss (the card prints it; None crashed publish)
    _, again = train_denoiser(fresh_unet(), stream(latents), conditioning(), cfg=CFG, run_dir=tmp_path / "b")
    assert again["start_step"] == 6 and again["final_loss"] == summary["final_loss"] == state["loss"] > 0


def test_run_identity_ignores_cadence_and_length_but_not_the_recipe():
    base = run_identity(CFG, "data-v1")
    for change in (
        {"max_steps": 60},
        {"log_every_steps": 7},
        {"keep_checkpoints": 9},
        {"compile": True},
        {"validation_every_steps": 3},
        {"checkpoint_every_steps": 5},
    ):
        assert run_identity(CFG.model_copy(update=change), "data-v1") == base, change
    assert run_identity(CFG.model_copy(update={"lr": 5e-4}), "data-v1") != base
    assert run_identity(CFG, "data-v2") != base
    assert run_identity(CFG, "data-v1", world=2) != base


def test_caption_mix_keeps_old_run_names_at_zero_and_names_a_new_run_otherwise():
    recipe = run_recipe(CFG, "data-v1")
    assert "caption_mix" not in recipe["train"]  # a run from before the key existed keeps its folder
    assert run_identity(CFG.model_copy(update={"caption_mix": 0.5}), "data-v1") != run_identity(CFG, "data-v1")


def test_caption_mix_draws_the_source_caption_for_that_share_of_rows_that_have_one():
    rows = 4000
    stored = {
        "hidden": torch.zeros(rows, 3, 2),
        "original_hidden": torch.ones(rows, 3, 2),
        "attention_mask": torch.zeros(rows, 3, dtype=torch.uint8),
        "original_attention_mask": torch.ones(rows, 3, dtype=torch.uint8),
        "has_original": (torch.arange(rows) % 4 != 0).to(torch.uint8),  # a quarter have none
    }
    assert mix_captions(stored, 0.0, step_generator(0, 0)) is stored
    everything = mix_captions(stored, 1.0, step_generator(0, 0))
    assert torch.equal(everything["hidden"][:, 0, 0], stored["has_original"].float())
    half = mix_captions(stored, 0.5, step_generator(0, 7, rank=1, salt=1))
    drawn = half["hidden"][:, 0, 0]
    assert drawn[stored["has_original"] == 0].sum() == 0  # never a row without a source caption
    assert 0.45 < drawn[stored["has_original"] == 1].mean() < 0.55
    assert torch.equal(half["attention_mask"][:, 0].float(), drawn)  # the mask follows its states
    again = mix_captions(stored, 0.5, step_generator(0, 7, rank=1, salt=1))
    assert torch.equal(again["hidden"], half["hidden"])  # a pure function of (seed, step, rank)
    other = mix_captions(stored, 0.5, step_generator(0, 8, rank=1, salt=1))
    assert not torch.equal(other["hidden"], half["hidden"])


def test_a_batch_trains_on_the_source_captions_when_caption_mix_is_one(latents):
    from safetensors.torch import load_file

    from sdlab.latents import read_header, save_checked
    from sdlab.train import make_batch

    for path in sorted((latents / "text").glob("*.safetensors")):  # as encode writes with caption.keep_original
        tensors = load_file(str(path))
        tensors |= {
            "original_hidden": torch.ones_like(tensors["hidden"]),
            "has_original": torch.ones_like(tensors["split"]),
        }
        save_checked(path, tensors, read_header(path)["fingerprint"])
    cpu = torch.device("cpu")
    _, plain, _, _ = make_batch(
        stream(latents), conditioning(), 0, CFG.model_copy(update={"caption_dropout": 0}), 0, cpu
    )
    mixed = CFG.model_copy(update={"caption_dropout": 0, "caption_mix": 1.0})
    latents_mixed, hidden, _, _ = make_batch(stream(latents), conditioning(), 0, mixed, 0, cpu)
    assert torch.equal(hidden, torch.ones_like(hidden)) and not torch.equal(plain, hidden)
    latents_plain, _, _, _ = make_batch(stream(latents), conditioning(), 0, CFG, 0, cpu)
    assert torch.equal(latents_plain, latents_mixed)  # its own draw: the latents' draws do not move


def test_caption_mix_without_source_captions_in_the_latents_is_a_clear_error(latents, tmp_path):
    paths = RunPaths(latents, tmp_path / "vae", tmp_path / "ckpt", tmp_path / "live", tmp_path / "out", tmp_path / "r")
    with pytest.raises(DataError, match=r"train.caption_mix: 0.5 .*caption.keep_original"):
        run(CFG.model_copy(update={"caption_mix": 0.5}), paths)


def test_raising_max_steps_continues_the_run(latents, tmp_path):
    train_denoiser(fresh_unet(), stream(latents), conditioning(), cfg=CFG, run_dir=tmp_path / "run")
    _, summary = train_denoiser(
        fresh_unet(),
        stream(latents),
        conditioning(),
        cfg=CFG.model_copy(update={"max_steps": 8}),
        run_dir=tmp_path / "run",
    )
    assert summary["start_step"] == 6 and summary["final_step"] == 8 and summary["optimizer_steps"] == 8


def test_old_runs_are_removed_only_beyond_keep_runs(tmp_path):
    import os

    for age, name in enumerate(["run-a", "run-b", "run-c", "run-d"]):
        (tmp_path / name).mkdir()
        os.utime(tmp_path / name, (1000 + age, 1000 + age))
    removed = prune_runs(tmp_path, "run-a", keep_runs=3)  # the current run counts and stays
    assert removed == ["run-b"] and sorted(p.name for p in tmp_path.iterdir()) == ["run-a", "run-c", "run-d"]


def test_each_run_folder_records_its_recipe_and_a_removal_names_the_difference(tmp_path, caplog):
    old_recipe = run_recipe(CFG, "data-v1")
    new_recipe = run_recipe(CFG.model_copy(update={"lr": 5e-4}), "data-v1", world=2)
    old, new = tmp_path / recipe_id(old_recipe), tmp_path / recipe_id(new_recipe)
    assert old.name == run_identity(CFG, "data-v1")  # the name is the hash of what recipe.json holds
    prepare_run(old, keep_runs=1, live_dir=tmp_path / "live", recipe=old_recipe)
    assert recipe_id(json.loads((old / "recipe.json").read_text())) == old.name
    with caplog.at_level("WARNING"):
        prepare_run(new, keep_runs=1, live_dir=tmp_path / "live", recipe=new_recipe)
    assert not old.exists() and (new / "recipe.json").is_file()
    assert f"removing the checkpoints of older run {old.name}" in caplog.text
    assert f"train.lr {CFG.lr!r} -> 0.0005, world size 1 -> 2" in caplog.text


def test_curves_are_restored_up_to_the_checkpoint_step(tmp_path):
    checkpoint = tmp_path / "step-0000004"
    (checkpoint / "live" / "plots" / "metrics" / "train").mkdir(parents=True)
    (checkpoint / "run.json").write_text(json.dumps({"step": 4}))
    tsv = checkpoint / "live" / "plots" / "metrics" / "train" / "loss.tsv"
    tsv.write_text("step\tloss\n" + "".join(f"{s}\t0.{s}\n" for s in range(1, 7)))
    restore_curves(checkpoint, tmp_path / "live")
    restored = (tmp_path / "live" / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()
    assert restored == ["step\tloss"] + [f"{s}\t0.{s}" for s in range(1, 5)]


def test_nan_loss_stops_loudly(tmp_path):
    write_latents(tmp_path / "bad", images=10, shard_size=5, shape=(4, 4, 4), text_dim=16, poison=True)
    with pytest.raises(FloatingPointError, match="loss is (nan|inf) at step 0"):
        train_denoiser(fresh_unet(), stream(tmp_path / "bad"), conditioning(), cfg=CFG, run_dir=tmp_path / "run")


@pytest.mark.parametrize("objective", ["epsilon", "flow_matching"])
def test_training_reduces_the_loss(latents, tmp_path, objective):
    cfg = CFG.model_copy(
        update={
            "max_steps": 120,
            "checkpoint_every_steps": 120,
            "log_every_steps": 20,
            "lr": 3e-3,
            "prediction_type": objective,
            "snr_gamma": None if objective == "flow_matching" else CFG.snr_gamma,
        }
    )
    record = LossRecorder()
    train_denoiser(fresh_unet(), stream(latents), conditioning(), cfg=cfg, run_dir=tmp_path / "run", live=record)
    # flow's velocity target keeps more irreducible variance (E|noise - x0|^2 = 2 at the start)
    assert record.losses[-1] < record.losses[0] * (0.8 if objective == "epsilon" else 0.9)


def test_sampled_store_with_flipped_views_draws_both_views(tmp_path):
    from sdlab.train import make_batch

    root = tmp_path / "flip"
    write_latents(root, images=10, shard_size=5, shape=(4, 4, 4), text_dim=16, views=2, store="sample")
    source = stream(root)
    stored = source.batch(0)
    latents, _, _, _ = make_batch(source, conditioning(), 0, CFG, 0, torch.device("cpu"))
    matches = [[torch.equal(latents[i].half(), stored["sample"][i, v]) for v in range(2)] for i in range(4)]
    picked = {row.index(True) for row in matches}
    assert all(any(row) for row in matches) and picked == {0, 1}  # each row is one of its views; both occur
    _, summary = train_denoiser(fresh_unet(), source, conditioning(), cfg=CFG, run_dir=tmp_path / "run")
    assert summary["final_step"] == 6 and summary["final_loss"] > 0
