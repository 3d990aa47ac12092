"""``infer --gpus N``: one worker process per GPU, each on its own contiguous chunk, then one merge."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from llavarad_cli.errors import UserError
from llavarad_cli.infer.chunks import chunk_output


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_gpus(gpus: int) -> None:
    have = visible_gpus()
    if gpus > have:
        raise UserError(f"--gpus {gpus}: only {have} CUDA GPU(s) visible",
                        hint="lower --gpus, or run chunks yourself with --num-chunks/--chunk-idx")


def worker_commands(base_args: Sequence[str], output: Path, gpus: int) -> list[tuple[list[str], dict, Path]]:
    """(argv, extra env, chunk file) per worker: chunk i on GPU i (``CUDA_VISIBLE_DEVICES=i``, ``--device cuda``)."""
    commands = []
    for i in range(gpus):
        part = chunk_output(output, i, gpus)
        argv = [sys.executable, "-m", "llavarad_cli", "infer", *base_args, "--output", str(part),
                "--num-chunks", str(gpus), "--chunk-idx", str(i), "--device", "cuda"]
        commands.append((argv, {"CUDA_VISIBLE_DEVICES": str(i)}, part))
    return commands


def run_workers(base_args: Sequence[str], output: Path, gpus: int, log_dir: Path) -> list[Path]:
    """Start every worker, wait for all, and fail with the logs' location if any worker failed.

    Each worker resumes its own chunk file, so rerunning the same command after a failure redoes only what
    is missing.
    """
    check_gpus(gpus)
    log_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    for i, (argv, env, part) in enumerate(worker_commands(base_args, output, gpus)):
        log = open(log_dir / f"{output.stem}_{i}.log", "a", encoding="utf-8")
        procs.append((subprocess.Popen(argv, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT),
                      log, part))
    failed = []
    for i, (proc, log, _) in enumerate(procs):
        code = proc.wait()
        log.close()
        if code != 0:
            failed.append(f"worker {i} (exit {code})")
    if failed:
        raise UserError(f"{', '.join(failed)} failed; see the logs in {log_dir}",
                        hint="fix the cause and rerun the same command: finished chunks are kept")
    return [part for _, _, part in procs]
