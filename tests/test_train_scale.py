"""The train stage for real runs: accelerate with 2 gloo processes, kill -9 and resume,
fine-tuning a pretrained UNet (cross-attention only, LoRA), mixed precision, accumulation."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO
from safetensors.torch import load_file

from sdlab.config import TrainConfig, UnetConfig, VaeConfig
from sdlab.launch import free_port
from sdlab.models.denoiser import select_trainable
from sdlab.models.unet import build_unet
from sdlab.models.vae import build_vae

TINY_UNET = {
    "block_out_channels": [16, 32],
    "layers_per_block": 1,
    "attention_head_dim": 4,
    "cross_attention_levels": [False, True],
}
TEXT_DIM = 384  # the packaged MiniLM


BUCKETS = {"32x32": (4, 8, 8), "40x24": (4, 6, 10), "24x40": (4, 10, 6)}  # latent shapes at 32 px


@pytest.fixture(scope="module")
def latents(tmp_path_factory) -> Path:
    """64 rows in the encode stage's layout (8 shards of 8, 8x8x4 latents, 77 MiniLM-sized text
    states; every 8th row val: 56 train / 8 val) and a tiny VAE to export with. Written, not
    encoded: what these tests check is training, and a VAE worker process per module (and per
    mutant) cost ~10 s here (test_encode covers encoding)."""
    from latent_fixtures import write_latents

    root = tmp_path_factory.mktemp("train-scale")
    write_latents(root / "latents", images=64, shard_size=8, shape=(4, 8, 8), text_dim=TEXT_DIM, length=77, val_every=8)
    torch.manual_seed(0)
    build_vae(VaeConfig(block_out_channels=[8, 16]), 16).save_pretrained(root / "vae")
    return root


def train_params(tmp: Path, **train) -> Path:
    settings = {
        "unet": TINY_UNET,
        "max_steps": 30,
        "batch_size": 8,
        "lr": 2e-3,
        "warmup_steps": 5,
        "checkpoint_every_steps": 10,
        "keep_checkpoints": 2,
        "log_every_steps": 1,
        "shuffle_shards": 2,
        **train,
    }
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump({"train": settings}))
    return path


def train_command(root: Path, run: Path, params: Path, checkpoints: Path | None = None) -> list[str]:
    return [
        sys.executable,
        str(REPO / "stages" / "train.py"),
        "--params",
        str(params),
        "--latents",
        str(root / "latents"),
        "--vae",
        str(root / "vae"),
        "--checkpoints",
        str(checkpoints or run / "checkpoints"),
        "--live",
        str(run / "live"),
        "--out",
        str(run / "pipeline"),
        "--report",
        str(run / "report"),
    ]


def run_train(root: Path, run: Path, **train) -> dict:
    run.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        train_command(root, run, train_params(run, **train)), cwd=run, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads((run / "report" / "stats.json").read_text())


def curve(run: Path, name: str = "loss") -> dict[int, float]:
    with open(run / "live" / "plots" / "metrics" / "train" / f"{name}.tsv") as f:
        rows = [(int(r["step"]), float(r[name])) for r in csv.DictReader(f, delimiter="\t")]
    assert len({step for step, _ in rows}) == len(rows), "a step is logged twice"
    return dict(rows)


def checkpoints(run: Path) -> list[Path]:
    return sorted((run / "checkpoints").glob("run-*/step-*"))


def kill_when(proc: subprocess.Popen, ready, timeout_s: float = 300) -> None:
    """kill -9 the stage and every process under it (torchrun starts its workers in sessions
    of their own) as soon as `ready()` holds."""
    import psutil

    deadline = time.time() + timeout_s
    while not ready():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() < deadline
        time.sleep(0.01)
    tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for process in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGKILL)
    proc.wait()
    psutil.wait_procs(tree, timeout=30)


def start_train(latents: Path, run: Path, **train) -> subprocess.Popen:
    run.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        train_command(latents, run, train_params(run, **train)),
        cwd=run,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def unet_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors"))


def test_two_gloo_processes_follow_one_process_with_twice_the_batch(latents, tmp_path):
    one = run_train(latents, tmp_path / "one", batch_size=16, validation_every_steps=15, validation_prompts=2)
    two = run_train(latents, tmp_path / "two", batch_size=8, num_processes=2)
    assert (one["world_size"], one["global_batch"]) == (1, 16)
    assert (two["world_size"], two["global_batch"]) == (2, 16)
    a, b = curve(tmp_path / "one"), curve(tmp_path / "two")
    assert sorted(a) == sorted(b) == list(range(1, 31))
    first, last = np.mean([a[s] for s in range(1, 6)]), np.mean([a[s] for s in range(21, 31)])
    assert last < 0.8 * first  # it learns
    for window in (range(1, 11), range(11, 21), range(21, 31)):  # the same curve within 15 %
        mean_a, mean_b = np.mean([a[s] for s in window]), np.mean([b[s] for s in window])
        assert abs(mean_a - mean_b) < 0.15 * mean_a, (window, mean_a, mean_b)
    # both ranks' weights ended identical (gradients were synced), so the export is the DDP model
    hashes = two["rank_weight_sha256"]
    assert len(hashes) == 2 and hashes[0] == hashes[1]
    assert hashes[0] != one["rank_weight_sha256"][0]
    # validation images landed in the dvclive folder at the asked steps
    images = sorted(p.name for p in (tmp_path / "one" / "live" / "plots" / "images" / "validation").glob("*.png"))
    assert images == ["step-0000015.png", "step-0000030.png"]


@pytest.fixture(scope="module")
def uninterrupted(latents, tmp_path_factory):
    """The 40-step run a killed and resumed run must equal, trained once per process count
    (the kill tests and the two-machine test compare against the same one): (folder, stats)."""
    made: dict[int, tuple[Path, dict]] = {}

    def run(processes: int) -> tuple[Path, dict]:
        if processes not in made:
            folder = tmp_path_factory.mktemp(f"uninterrupted-{processes}")
            made[processes] = folder, run_train(latents, folder, max_steps=40, num_processes=processes)
        return made[processes]

    return run


# The kill tests run once each (issue 31): one process here, two processes with aspect buckets
# below, and two machines of one process each (a kill, a resume, the same weights) further down.
def test_kill_9_mid_epoch_resumes_to_the_exact_weights_and_step(latents, uninterrupted, tmp_path, processes=1):
    reference_run, reference = uninterrupted(processes)
    run = tmp_path / "killed"
    proc = start_train(latents, run, max_steps=40, num_processes=processes)
    kill_when(proc, lambda: any(p.name == "step-0000020" for p in checkpoints(run)))  # mid-run, mid-epoch
    resumed = run_train(latents, run, max_steps=40, num_processes=processes)
    assert resumed["start_step"] in (20, 30) and resumed["final_step"] == 40
    assert sorted(curve(run)) == list(range(1, 41))  # one curve over every step, before and after the kill
    state = json.loads(checkpoints(run)[-1].joinpath("run.json").read_text())
    per_rank = 56 // processes  # 7 train shards of 8 (shards round robin over ranks)
    assert state["step"] == 40 and state["data_position_rank0"]["samples_seen_in_epoch"] != 0  # mid-epoch
    assert state["data_position_rank0"]["samples_per_epoch"] in (per_rank, 56 - per_rank)
    reference_weights, resumed_weights = unet_weights(reference_run), unet_weights(run)
    assert reference_weights.keys() == resumed_weights.keys()
    for name, tensor in reference_weights.items():
        assert torch.equal(tensor, resumed_weights[name]), name  # bit-exact on CPU
    assert not list((run / "checkpoints").rglob(".tmp-*"))
    assert reference["final_loss"] == resumed["final_loss"]


@pytest.fixture(scope="module")
def bucket_latents(tmp_path_factory) -> Path:
    """240 rows in 6 shards spread over three aspect buckets (the encode stage's layout), 1 in 8 val."""
    from latent_fixtures import write_latents

    root = tmp_path_factory.mktemp("bucket-scale")
    write_latents(
        root / "latents",
        images=240,
        shard_size=40,
        text="tokens",
        text_dim=384,
        length=77,
        val_every=8,
        buckets=BUCKETS,
    )
    build_vae(VaeConfig(block_out_channels=[8, 16]), 16).save_pretrained(root / "vae")
    return root


def test_kill_9_with_aspect_buckets_resumes_to_the_exact_weights(bucket_latents, tmp_path, processes=2):
    reference = run_train(bucket_latents, tmp_path / "reference", max_steps=40, num_processes=processes)
    assert reference["buckets"] == ["24x40", "32x32", "40x24"] and reference["buckets_not_drawn"] == {}
    run = tmp_path / "killed"
    proc = start_train(bucket_latents, run, max_steps=40, num_processes=processes)
    kill_when(proc, lambda: any(p.name == "step-0000020" for p in checkpoints(run)))
    resumed = run_train(bucket_latents, run, max_steps=40, num_processes=processes)
    assert resumed["start_step"] in (20, 30) and resumed["final_step"] == 40
    state = json.loads(checkpoints(run)[-1].joinpath("run.json").read_text())
    assert state["data_position_rank0"]["bucket"] in BUCKETS
    reference_weights, resumed_weights = unet_weights(tmp_path / "reference"), unet_weights(run)
    for name, tensor in reference_weights.items():
        assert torch.equal(tensor, resumed_weights[name]), name
    assert reference["final_loss"] == resumed["final_loss"]


def test_a_kill_after_the_final_checkpoint_reruns_to_a_complete_stage(latents, tmp_path):
    run = tmp_path / "run"
    proc = start_train(latents, run, max_steps=20)
    kill_when(proc, lambda: any(p.name == "step-0000020" for p in checkpoints(run)))  # before or during export
    resumed = run_train(latents, run, max_steps=20)
    assert resumed["start_step"] == 20 and resumed["final_step"] == 20
    assert (run / "pipeline" / "model_index.json").is_file()
    assert sorted(curve(run)) == list(range(1, 21))
    assert json.loads((run / "live" / "metrics.json").read_text())["step"] == 20


def test_raising_max_steps_continues_and_a_new_lr_starts_a_new_run_keeping_the_old(latents, tmp_path):
    run = tmp_path / "run"
    run_train(latents, run, max_steps=20)
    longer = run_train(latents, run, max_steps=30, log_every_steps=1, keep_checkpoints=3)
    assert longer["start_step"] == 20 and longer["final_step"] == 30 and longer["optimizer_steps"] == 30
    assert sorted(curve(run)) == list(range(1, 31))
    first_run = longer["run"]
    other = run_train(latents, run, max_steps=10, lr=1e-3)
    assert other["start_step"] == 0 and other["run"] != first_run
    assert (run / "checkpoints" / first_run / "step-0000030").is_dir()  # the old run is still on disk


def start_machine(latents: Path, run: Path, checkpoints: Path, config: Path, rank: int, **train) -> subprocess.Popen:
    """One machine of a multi-machine run: the train stage with `NODE_RANK`, as README's runbook
    starts it on each node; the checkpoints folder stands for the storage every node shares."""
    run.mkdir(parents=True, exist_ok=True)
    params = train_params(run, accelerate_config=str(config), **train)
    return subprocess.Popen(
        train_command(latents, run, params, checkpoints),
        cwd=run,
        env={**os.environ, "NODE_RANK": str(rank), "GLOO_SOCKET_IFNAME": "lo"},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def two_machine_config(path: Path) -> Path:
    """accelerate's config for 2 machines x 1 process, both on this host, talking over loopback."""
    config = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": "MULTI_GPU",  # torchrun's DDP launcher; gloo, since ACCELERATE_USE_CPU
        "num_machines": 2,
        "num_processes": 2,  # of all machines
        "machine_rank": 0,  # NODE_RANK overrides it per machine
        "main_process_ip": "127.0.0.1",
        "main_process_port": free_port(),
        "rdzv_backend": "static",
        "same_network": True,
        "mixed_precision": "no",
    }
    path.write_text(yaml.safe_dump(config))
    return path


def finish(machines: list[subprocess.Popen], timeout_s: float = 600) -> list[int]:
    codes = []
    for proc in machines:
        try:
            codes.append(proc.wait(timeout=timeout_s))
        except subprocess.TimeoutExpired:
            kill_when(proc, lambda: True)
            codes.append(None)
    return codes


@pytest.mark.scale_out
def test_two_machines_train_as_one_machine_of_two_and_resume_after_a_kill(latents, uninterrupted, tmp_path):
    one_machine, reference = uninterrupted(2)
    shared = tmp_path / "shared" / "checkpoints"
    config = two_machine_config(tmp_path / "accelerate-2-machines.yaml")
    runs = [tmp_path / f"machine{rank}" for rank in (0, 1)]
    machines = [start_machine(latents, runs[rank], shared, config, rank, max_steps=40) for rank in (0, 1)]
    kill_when(machines[1], lambda: any(p.name == "step-0000020" for p in shared.glob("run-*/step-*")))
    (code,) = finish(machines[:1], timeout_s=180)
    assert code not in (0, None)  # machine 0 lost its peer: it failed on its own at the next collective
    assert not (runs[0] / "pipeline").exists()

    machines = [start_machine(latents, runs[rank], shared, config, rank, max_steps=40) for rank in (0, 1)]
    codes = finish(machines)
    assert codes == [0, 0], [proc.stderr.read()[-3000:] for proc in machines]
    resumed = json.loads((runs[0] / "report" / "stats.json").read_text())
    assert (resumed["world_size"], resumed["global_batch"]) == (2, 16)
    assert resumed["start_step"] in (20, 30) and resumed["final_step"] == 40
    # the same trajectory as one machine of two processes: the loss curve within the 2-process
    # test's tolerance, and both ranks' final weights identical (synced) and equal to it
    a, b = curve(one_machine), curve(runs[0])
    assert sorted(b) == list(range(1, 41))  # every step once, before and after the kill
    for window in (range(1, 11), range(11, 21), range(21, 31), range(31, 41)):
        mean_a, mean_b = np.mean([a[s] for s in window]), np.mean([b[s] for s in window])
        assert abs(mean_a - mean_b) < 0.15 * mean_a, (window, mean_a, mean_b)
    assert len(set(resumed["rank_weight_sha256"])) == 1
    assert resumed["rank_weight_sha256"] == reference["rank_weight_sha256"]
    # written once: the main process exports and reports; machine 1 never touches its own paths
    assert (runs[0] / "pipeline" / "model_index.json").is_file()
    assert not any((runs[1] / name).exists() for name in ("pipeline", "report", "live"))
    (run,) = shared.glob("run-*")
    final = run / "step-0000040"
    state = json.loads(final.joinpath("run.json").read_text())
    assert state["data_position_rank0"]["samples_seen_in_epoch"] != 0  # resumed mid-epoch, as one machine of two
    assert state["data_position_rank0"]["samples_per_epoch"] == 56 // 2  # as in the one-machine kill test
    assert sorted(p.name for p in final.glob("random_states_*.pkl")) == ["random_states_0.pkl", "random_states_1.pkl"]
    assert len(list(final.glob("model*.safetensors"))) == 1 and not list(run.glob(".tmp-*"))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """A tiny 'Stable Diffusion' folder with only what fine-tuning reads: unet/."""
    root = tmp_path_factory.mktemp("sd") / "tiny-sd"
    torch.manual_seed(123)
    build_unet(UnetConfig(**TINY_UNET), 8, 4, TEXT_DIM).save_pretrained(root / "unet")
    return root


def test_cross_attention_mode_trains_only_attn2(latents, pretrained, tmp_path):
    run_train(
        latents,
        tmp_path / "xattn",
        init="pretrained",
        pretrained=str(pretrained),
        trainable="cross_attention",
        max_steps=6,
    )
    before = load_file(str(pretrained / "unet" / "diffusion_pytorch_model.safetensors"))
    after = unet_weights(tmp_path / "xattn")
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(".attn2." in name for name in changed)
    assert any(".attn2." in name for name in changed)


def test_lora_export_merges_and_the_saved_adapters_load_with_load_lora_weights(latents, pretrained, tmp_path):
    from diffusers import StableDiffusionPipeline

    stats = run_train(
        latents,
        tmp_path / "lora",
        init="pretrained",
        pretrained=str(pretrained),
        trainable="lora",
        lora_rank=4,
        max_steps=8,
        lr=1e-2,
    )
    assert stats["trainable_parameters"] < stats["denoiser_parameters"] / 5
    out = tmp_path / "lora" / "pipeline"
    assert (out / "lora" / "pytorch_lora_weights.safetensors").is_file()
    merged = StableDiffusionPipeline.from_pretrained(str(out), safety_checker=None)
    base = StableDiffusionPipeline.from_pretrained(
        str(out), safety_checker=None, unet=type(merged.unet).from_pretrained(str(pretrained), subfolder="unet")
    )
    images = {}
    for name, pipe in [("merged", merged), ("base", base)]:
        pipe.set_progress_bar_config(disable=True)
        images[name] = pipe(
            "a blob", num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="np"
        ).images
    base.load_lora_weights(str(out / "lora"))
    images["base+lora"] = base(
        "a blob", num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images
    assert np.abs(images["merged"] - images["base+lora"]).max() < 1e-3
    assert np.abs(images["merged"] - images["base"]).max() > 1e-3  # the adapter changed the model
    # the kohya/A1111 file: its own key layout, the same adapter when diffusers loads it back
    kohya = load_file(str(out / "lora" / "lora_kohya.safetensors"))
    assert kohya and all(name.startswith("lora_unet_") for name in kohya)
    assert {name.rsplit(".", 2)[-2] if name.endswith("weight") else "alpha" for name in kohya} == {
        "lora_down",
        "lora_up",
        "alpha",
    }
    base.unload_lora_weights()
    base.load_lora_weights(str(out / "lora"), weight_name="lora_kohya.safetensors")
    images["base+kohya"] = base(
        "a blob", num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images
    assert np.abs(images["merged"] - images["base+kohya"]).max() < 1e-3


def test_a_pretrained_unet_that_does_not_fit_is_a_clear_error(latents, tmp_path):
    wrong = tmp_path / "wrong"
    build_unet(UnetConfig(**TINY_UNET), 8, 4, 768).save_pretrained(wrong / "unet")
    run = tmp_path / "run"
    run.mkdir()
    result = subprocess.run(
        train_command(latents, run, train_params(run, init="pretrained", pretrained=str(wrong))),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "cross-attends to 768-d text states, the text encoder gives 384-d" in result.stderr


def test_bf16_accumulation_and_checkpointing_step_the_optimizer_once_per_update(latents, tmp_path):
    stats = run_train(
        latents,
        tmp_path / "bf16",
        mixed_precision="bf16",
        gradient_accumulation_steps=2,
        gradient_checkpointing=True,
        max_steps=10,
        warmup_steps=0,
        lr_schedule="linear",
    )
    assert stats["global_batch"] == 16 and stats["final_step"] == 10
    assert stats["optimizer_steps"] == 10  # the optimizer's own count: 10 updates, not 20 micro-steps
    assert stats["gradient_checkpointing"] is True  # the param reached the UNet
    lr = curve(tmp_path / "bf16", "lr")
    assert lr[1] == pytest.approx(2e-3 * 9 / 10) and lr[10] == pytest.approx(0.0)
    assert all(np.isfinite(list(curve(tmp_path / "bf16").values())))
    fp32 = run_train(
        latents,
        tmp_path / "fp32",
        mixed_precision="no",
        gradient_accumulation_steps=2,
        max_steps=10,
        warmup_steps=0,
        lr_schedule="linear",
    )
    assert fp32["rank_weight_sha256"] != stats["rank_weight_sha256"]  # bf16 autocast really ran


@pytest.mark.parametrize("buckets", [None, BUCKETS], ids=["one-size", "aspect-buckets"])
def test_train_stage_peak_memory_is_flat_between_dataset_sizes(tmp_path, buckets):
    """The same steps on 2,000 and 20,000 images: the streamed reader's memory does not grow
    (with aspect buckets: one stream per bucket, each as bounded)."""
    from latent_fixtures import write_latents

    peaks = {}
    for images in (2_000, 20_000):
        root = tmp_path / f"n{images}"
        write_latents(
            root / "latents",
            images=images,
            shard_size=100,  # windows of 2 shards: the 12 steps below read across two of them
            shape=(4, 8, 8),
            text="tokens",
            text_dim=384,
            length=77,
            buckets=buckets,
        )
        build_vae(VaeConfig(block_out_channels=[8, 16]), 16).save_pretrained(root / "vae")
        run = root / "run"
        run.mkdir()
        params = train_params(run, max_steps=12, batch_size=32, checkpoint_every_steps=12, log_every_steps=4)
        code = (
            "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)"
        )
        result = subprocess.run(
            [sys.executable, "-c", code, *train_command(root, run, params)],
            cwd=run,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        peaks[images] = int(result.stdout.split()[-1])  # KiB
    assert peaks[20_000] < 1.1 * peaks[2_000], peaks


def test_fp16_on_a_cpu_is_refused_with_the_key_named(latents, tmp_path):
    run = tmp_path / "fp16"
    run.mkdir()
    result = subprocess.run(
        train_command(latents, run, train_params(run, mixed_precision="fp16")),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1 and "train.mixed_precision: fp16 needs a GPU" in result.stderr


def test_gradient_checkpointing_gives_the_same_gradients():
    cfg = TrainConfig(unet=UnetConfig(**TINY_UNET))
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        unet = build_unet(cfg.unet, 8, 4, TEXT_DIM)
        if checkpointing:
            unet.enable_gradient_checkpointing()
        unet.train()
        select_trainable(unet, "all", 4)
        generator = torch.Generator().manual_seed(1)
        x, text = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 5, TEXT_DIM, generator=generator)
        unet(x, torch.tensor([10, 500]), text).sample.square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in unet.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
