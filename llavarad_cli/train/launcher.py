"""From a run spec to running workers: world size, the DeepSpeed config, the launcher command, failure reports.

The parent process (``llavarad pretrain|finetune``) writes ``resolved_spec.yaml`` and ``deepspeed_config.json``
into the run directory, then starts DeepSpeed's own launcher, which starts one
``python -m llavarad_cli.train.worker`` per GPU (or per CPU worker with ``--num-workers``). A worker that fails
writes ``.errors/rank<r>.json``; the parent turns it into one line naming the rank and the error.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from llavarad_cli.errors import Interrupted, UserError, WorkerFailed
from llavarad_cli.io_utils import read_json_object
from llavarad_cli.specs import RunSpec

WORKER_MODULE = "llavarad_cli.train.worker"
#: The files the parent writes into the run folder before starting the workers, which read them from there.
RESOLVED_SPEC = "resolved_spec.yaml"
DS_CONFIG = "deepspeed_config.json"
ERRORS_DIR = ".errors"


@dataclass
class Topology:
    world_size: int
    nodes: int
    per_node: int
    cpu: bool  # gloo on CPU processes instead of NCCL on GPUs


def parse_hostfile(path: Path) -> dict[str, int]:
    """``host slots=N`` lines (DeepSpeed's format) -> {host: N}."""
    hosts: dict[str, int] = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        slots = [p for p in parts[1:] if p.startswith("slots=")]
        if not slots or not slots[0][6:].isdigit():
            raise UserError(f"{path}:{number}: expected `hostname slots=N`, got {line!r}")
        hosts[parts[0]] = int(slots[0][6:])
    if not hosts:
        raise UserError(f"{path}: the hostfile lists no hosts")
    return hosts


def topology(spec: RunSpec, num_workers: int | None, gpu_count: int | None = None) -> Topology:
    """How many ranks the launcher will start. ``num_workers`` forces CPU/gloo workers."""
    launcher = spec.launcher
    if num_workers is not None:
        if launcher.num_nodes > 1:
            raise UserError("--num-workers runs CPU workers on this machine; it cannot be used with several nodes")
        return Topology(num_workers, 1, num_workers, cpu=True)
    if launcher.hostfile is not None:
        hosts = list(parse_hostfile(launcher.hostfile).items())[: launcher.num_nodes]
        per_node = launcher.num_gpus or min(slots for _, slots in hosts)
        return Topology(per_node * len(hosts), len(hosts), per_node, cpu=False)
    if gpu_count is None:
        import torch

        gpu_count = torch.cuda.device_count()
    if gpu_count == 0:
        return Topology(1, 1, 1, cpu=True)  # no GPU: one CPU worker, as `--num-workers 1`
    per_node = launcher.num_gpus or gpu_count
    if per_node > gpu_count:
        raise UserError(f"launcher.num_gpus is {per_node} but this machine has {gpu_count} GPUs")
    return Topology(per_node, 1, per_node, cpu=False)


def gradient_accumulation(spec: RunSpec, world_size: int) -> int:
    per_step = spec.train.per_device_batch_size * world_size
    if spec.train.global_batch_size % per_step:
        raise UserError(
            f"train.global_batch_size ({spec.train.global_batch_size}) is not a multiple of "
            f"per_device_batch_size x workers ({spec.train.per_device_batch_size} x {world_size} = {per_step})",
            hint="change train.global_batch_size or train.per_device_batch_size")
    return spec.train.global_batch_size // per_step


def deepspeed_config(spec: RunSpec, world_size: int) -> dict:
    """The generated ZeRO config, or the user's JSON with its ``auto`` values filled from the spec."""
    train = spec.train
    gas = gradient_accumulation(spec, world_size)
    filled = {
        "train_batch_size": train.global_batch_size,
        "train_micro_batch_size_per_gpu": train.per_device_batch_size,
        "gradient_accumulation_steps": gas,
        "gradient_clipping": train.max_grad_norm,
    }
    if spec.deepspeed.config is None:
        cfg = dict(filled)
        cfg.update({
            "zero_optimization": {"stage": spec.deepspeed.zero_stage, "overlap_comm": spec.deepspeed.overlap_comm,
                                  "contiguous_gradients": spec.deepspeed.contiguous_gradients,
                                  "reduce_bucket_size": 5e8, "allgather_bucket_size": 5e8},
            "bf16": {"enabled": train.precision == "bf16"},
            "fp16": {"enabled": train.precision == "fp16", "loss_scale": 0, "loss_scale_window": 1000,
                     "initial_scale_power": 16, "hysteresis": 2, "min_loss_scale": 1},
        })
    else:
        cfg = read_json_object(spec.deepspeed.config, "DeepSpeed config")
        for key, value in filled.items():
            given = cfg.get(key, "auto")
            if given != "auto" and given != value:
                raise UserError(f"{spec.deepspeed.config}: {key} is {given} but the spec gives {value}",
                                hint='set it to "auto" in the JSON, or change the spec')
            cfg[key] = value
        for section, enabled in (("bf16", train.precision == "bf16"), ("fp16", train.precision == "fp16")):
            if isinstance(cfg.get(section), dict) and cfg[section].get("enabled") == "auto":
                cfg[section]["enabled"] = enabled
        zero = cfg.setdefault("zero_optimization", {"stage": spec.deepspeed.zero_stage})
        for key in ("reduce_bucket_size", "allgather_bucket_size", "stage3_prefetch_bucket_size",
                    "stage3_param_persistence_threshold"):
            if zero.get(key) == "auto":
                zero[key] = 5e8 if "bucket" in key else 1e5
        # The worker builds a torch AdamW (with the projector's own LR group) and the spec's LR schedule.
        cfg.pop("optimizer", None)
        cfg.pop("scheduler", None)
    if int(cfg.get("zero_optimization", {}).get("stage", 0)) == 3:
        # Saving adapters/projector and resuming assume whole parameters on every rank (ZeRO 0-2).
        raise UserError("ZeRO stage 3 is not supported for training yet", hint="use deepspeed.zero_stage 2 (the paper's)")
    cfg["zero_allow_untested_optimizer"] = True
    cfg.setdefault("steps_per_print", 10**9)  # the worker prints its own progress
    cfg.setdefault("wall_clock_breakdown", False)
    return cfg


def launcher_command(spec: RunSpec, topo: Topology, spec_path: Path, merge: bool = False,
                     trust_pickle: bool = False) -> list[str]:
    launcher = spec.launcher
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner"]
    if launcher.hostfile is not None and not topo.cpu:
        cmd += ["--hostfile", str(launcher.hostfile), "--num_nodes", str(topo.nodes)]
        if launcher.master_addr:
            cmd += ["--master_addr", launcher.master_addr]
    visible = _visible_gpus() if not topo.cpu and launcher.hostfile is None else None
    if visible:
        # DeepSpeed's runner ignores CUDA_VISIBLE_DEVICES when given --num_gpus and would start on GPUs 0..N-1
        # (someone else's, on a shared server); --include keeps the GPUs this shell was given.
        cmd += ["--include", "localhost:" + ",".join(visible[: topo.per_node])]
    else:
        cmd += ["--num_gpus", str(topo.per_node)]
    cmd += ["--master_port", str(launcher.master_port), "--module", WORKER_MODULE, "--spec", str(spec_path)]
    if trust_pickle:
        cmd.append("--trust-pickle")
    if merge:
        cmd.append("--merge")
    return cmd


def _visible_gpus() -> list[str] | None:
    """The GPU indices in CUDA_VISIBLE_DEVICES, when it is set to plain indices (UUIDs: None)."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    ids = [part.strip() for part in value.split(",") if part.strip()]
    return ids if ids and all(part.isdigit() for part in ids) else None


def worker_env(topo: Topology) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    if topo.cpu:
        env["DS_ACCELERATOR"] = "cpu"
        env["CUDA_VISIBLE_DEVICES"] = ""
        # Split the cores between workers; oversubscribed OpenMP threads make CPU training crawl.
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // topo.world_size)))
    return env


def read_worker_errors(out_dir: Path) -> list[dict]:
    errors = []
    for path in sorted((Path(out_dir) / ERRORS_DIR).glob("rank*.json")):
        try:
            errors.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    return sorted(errors, key=lambda e: e.get("rank", 0))


#: Errors a rank raises when a *peer* died: the rank that reported it is not the cause.
_PEER_LOST = ("connection reset", "connection closed", "broken pipe", "timed out", "nccl", "gloo")


def _follows_a_peer(error: dict) -> bool:
    """A rank that stopped because another one had gone: stopped from outside (DeepSpeed's launcher stops every
    rank once one has failed; a scheduler's SIGTERM), or its collective broke when the peer died."""
    return error.get("kind") == "stopped" or any(m in str(error.get("message", "")).lower() for m in _PEER_LOST)


def _signal_name(returncode: int) -> str | None:
    """The signal in the launcher's exit code (DeepSpeed exits with the failed rank's -N, which shows as 256-N)."""
    code = returncode - 256 if returncode > 128 else returncode
    return signal.Signals(-code).name if code < 0 and -code in signal.valid_signals() else None


def failure(out_dir: Path, returncode: int, world_size: int | None = None) -> UserError | WorkerFailed:
    """The parent's one-line account of a failed run: which rank, what error, where the traceback is.

    Ranks die in no fixed order: the one that failed first may be killed outright (no record), and its peers
    either see their connection break or are stopped by the launcher, in either order. So the cause is the
    first rank whose own error is not a consequence of a peer going (oldest record first); failing that, a rank
    that left no record at all was killed; only then a record of a rank that merely followed a peer.
    """
    errors = read_worker_errors(out_dir)
    silent = sorted(set(range(world_size or 0)) - {e.get("rank") for e in errors})
    resume = "rerun the same command to resume from the newest complete checkpoint"
    causes = sorted((e for e in errors if not _follows_a_peer(e)), key=lambda e: (e.get("time", 0), e.get("rank", 0)))
    if causes:
        first = causes[0]
        others = f" (and {len(causes) - 1} more ranks)" if len(causes) > 1 else ""
        where = f"; traceback in {first['traceback_file']}" if first.get("traceback_file") else ""
        if first.get("kind") == "user":
            return UserError(f"worker rank {first['rank']}: {first['message']}{others}", hint=first.get("hint"))
        return WorkerFailed(f"worker rank {first['rank']} failed: {_short(first['message'])}{others}{where}",
                            hint=resume)
    how = f"killed by {_signal_name(returncode)}" if _signal_name(returncode) else "killed"
    if silent:
        # Killed outright (OOM killer, SIGKILL, node loss): nothing reported, the others followed.
        who = f"worker rank {silent[0]} was" if len(silent) == 1 else \
            f"worker ranks {', '.join(map(str, silent))} were"
        then = "; the other ranks stopped after it" if errors else ""
        return WorkerFailed(f"{who} {how} without reporting an error (out of memory? pre-empted?){then}",
                            hint=resume)
    if errors:
        if all(e.get("kind") == "stopped" for e in errors):
            return WorkerFailed(f"every training worker was {errors[0]['message']} (pre-empted?)", hint=resume)
        first = min(errors, key=lambda e: (e.get("time", 0), e.get("rank", 0)))
        return WorkerFailed(f"worker rank {first['rank']} failed: {_short(first['message'])}", hint=resume)
    what = how if _signal_name(returncode) else f"exit code {returncode}"
    return WorkerFailed(f"a training worker stopped ({what}) without reporting an error", hint=resume)


def _short(message: str, limit: int = 240) -> str:
    return message if len(message) <= limit else message[: limit - 1] + "…"


def run_launcher(cmd: list[str], env: dict[str, str], out_dir: Path, world_size: int | None = None,
                 grace_s: float = 10.0) -> None:
    """Run the DeepSpeed launcher in the foreground; raise the workers' error if it fails.

    Ctrl-C is one line (``Interrupted``, exit 130 like every other command) once the launcher and its workers
    are gone.
    """
    import shutil

    shutil.rmtree(Path(out_dir) / ERRORS_DIR, ignore_errors=True)
    proc = subprocess.Popen(cmd, env=env)
    try:
        returncode = proc.wait()
    except KeyboardInterrupt:
        stop_launcher(proc, grace_s)
        raise Interrupted("interrupted", hint="rerun the same command to resume from the newest checkpoint") from None
    if returncode != 0:
        raise failure(out_dir, returncode, world_size)


def stop_launcher(proc: subprocess.Popen, grace_s: float) -> None:
    """After Ctrl-C: from a terminal the launcher got SIGINT too and stops its workers itself, so wait for that;
    if it is still there after ``grace_s`` (the interrupt reached only this process) or a second Ctrl-C comes,
    SIGTERM the launcher and every process under it, then SIGKILL what is left."""
    try:
        proc.wait(timeout=grace_s)
        return
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        pass
    import psutil

    try:
        tree = psutil.Process(proc.pid).children(recursive=True) + [psutil.Process(proc.pid)]
    except psutil.NoSuchProcess:
        tree = []
    for process in tree:
        try:
            process.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(tree, timeout=grace_s)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait()
