"""Run a stage under `accelerate launch` when params ask for more than one process.

The DVC command stays `python stages/train.py ...`; with `train.num_processes > 1` or an
`train.accelerate_config` file, the stage re-runs itself through `accelerate launch`
(DDP: NCCL on GPUs, gloo on CPUs; several machines through the config file, each started
with `NODE_RANK` = its machine rank, as for `encode`) and exits with its status. The
launched processes see `SDLAB_LAUNCHED=1` and do not launch again.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import torch

from sdlab.config import TrainConfig

MARKER = "SDLAB_LAUNCHED"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_command(cfg: TrainConfig, script: str, argv: list[str], cuda: bool) -> list[str]:
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    if cfg.accelerate_config:
        command += ["--config_file", cfg.accelerate_config]
        if os.environ.get("NODE_RANK"):  # one config file for every machine; each says which one it is
            command += ["--machine_rank", os.environ["NODE_RANK"]]
    else:
        command += [
            "--num_processes",
            str(cfg.num_processes),
            "--num_machines",
            "1",
            "--mixed_precision",
            cfg.mixed_precision,
            "--dynamo_backend",
            "no",
            "--main_process_port",
            str(free_port()),
        ]
        # torchrun starts the processes; on a CPU, ACCELERATE_USE_CPU (see launch_env) makes
        # accelerate pick DDP over gloo (its `--cpu` flag alone starts a single process)
        command += ["--multi_gpu"] if cfg.num_processes > 1 else []
        if not cuda:
            threads = max(1, (os.cpu_count() or 1) // cfg.num_processes)
            command += ["--num_cpu_threads_per_process", str(threads)]
    return command + [script, *argv]


def launch_env(cuda: bool) -> dict[str, str]:
    env = {**os.environ, MARKER: "1"}
    if not cuda:
        env["ACCELERATE_USE_CPU"] = "true"
    return env


def needs_launch(cfg: TrainConfig) -> bool:
    return os.environ.get(MARKER) != "1" and (cfg.num_processes > 1 or cfg.accelerate_config is not None)


def relaunch_if_needed(cfg: TrainConfig, script: str, argv: list[str]) -> None:
    """Re-run `script argv` under `accelerate launch` and exit with its status, if needed."""
    if not needs_launch(cfg):
        return
    if cfg.accelerate_config and not os.path.isfile(cfg.accelerate_config):
        raise FileNotFoundError(f"train.accelerate_config: {cfg.accelerate_config} not found")
    cuda = torch.cuda.is_available()
    command = launch_command(cfg, script, argv, cuda)
    print("launching:", " ".join(command), flush=True)
    sys.exit(subprocess.run(command, env=launch_env(cuda)).returncode)
