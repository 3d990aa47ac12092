"""Resumable training checkpoints: complete, atomic, rotated.

Layout of ``OUT/checkpoint-<step>/``::

    deepspeed/            engine state: trainable weights, ZeRO optimizer partitions, LR scheduler
    rng/rank<r>.pt        python / numpy / torch (CPU and CUDA) RNG states of every rank
    trainer_state.json    global step, data position, world size, skip counters
    weights/              the trainable weights in the toolkit's native layout (`llavarad infer --model` loads
                          it); the frozen vision tower is referenced by path, not copied
    COMPLETE              written last

Everything is written into ``OUT/.checkpoint-<step>.tmp`` first; rank 0 writes ``COMPLETE`` and then renames
the folder. A save killed half-way leaves only a ``.tmp`` folder (deleted on the next start) or a folder with
no marker, which :func:`latest_checkpoint` never picks.

Resuming never runs code from these files: DeepSpeed's own reader unpickles with ``weights_only=False``, so a
pickle planted in ``checkpoint-N/`` would run. :func:`load` routes every read of the load through
:func:`read_checkpoint_file`, which accepts tensors, plain data and the few DeepSpeed state classes a ZeRO 0-2
checkpoint holds, and refuses anything else with one line (unless the user passes ``--trust-pickle``).
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Callable

from llavarad_cli.errors import UserError
from llavarad_cli.io_utils import atomic_write_json, atomic_write_text, read_json_object

MARKER = "COMPLETE"
_NAME = re.compile(r"checkpoint-(\d+)")


def checkpoint_dir(out_dir: Path, step: int) -> Path:
    return Path(out_dir) / f"checkpoint-{step}"


def complete_checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint, oldest first."""
    found = []
    for path in Path(out_dir).glob("checkpoint-*"):
        match = _NAME.fullmatch(path.name)
        if match and path.is_dir() and (path / MARKER).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(out_dir: Path) -> Path | None:
    found = complete_checkpoints(out_dir)
    return found[-1][1] if found else None


def remove_partial(out_dir: Path) -> list[Path]:
    """Delete leftovers of killed saves (``.tmp`` folders, checkpoint folders without the marker)."""
    removed = []
    for path in list(Path(out_dir).glob(".checkpoint-*.tmp")) + list(Path(out_dir).glob("checkpoint-*")):
        if path.is_dir() and not (path / MARKER).is_file():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def rotate(out_dir: Path, keep: int) -> list[Path]:
    """Keep the newest ``keep`` complete checkpoints (``save_total_limit``); return the deleted ones."""
    found = complete_checkpoints(out_dir)
    doomed = [path for _, path in found[:-keep]] if keep > 0 else []
    for path in doomed:
        # Remove the marker first: a folder half-deleted by a kill is then never taken for a checkpoint.
        (path / MARKER).unlink(missing_ok=True)
        shutil.rmtree(path, ignore_errors=True)
    return doomed


# --- RNG states ---------------------------------------------------------------------------------------------------

def rng_state() -> dict[str, Any]:
    """Every RNG a training step touches, as tensors and ints only (loads with ``weights_only=True``)."""
    import numpy as np
    import torch

    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    random.setstate(_as_tuple(state["python"]))
    npst = state["numpy"]
    np.random.set_state(("MT19937", npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
                         npst["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


# --- save / load --------------------------------------------------------------------------------------------------

def save(engine, out_dir: Path, step: int, trainer_state: dict, rank: int, save_weights: Callable[[Path], None],
         keep: int, barrier: Callable[[], None]) -> Path:
    """Write checkpoint-<step> from every rank (collective: all ranks must call it)."""
    import torch

    out_dir = Path(out_dir)
    tmp = out_dir / f".checkpoint-{step}.tmp"
    final = checkpoint_dir(out_dir, step)
    if rank == 0 and tmp.exists():
        shutil.rmtree(tmp)
    barrier()
    # Only trainable tensors: the frozen 7B LM is read from `model.base` again on resume.
    engine.save_checkpoint(str(tmp), tag="deepspeed", save_latest=False, exclude_frozen_parameters=True)
    (tmp / "rng").mkdir(parents=True, exist_ok=True)
    torch.save(rng_state(), tmp / "rng" / f"rank{rank}.pt")
    if rank == 0:
        save_weights(tmp / "weights")
        atomic_write_json(tmp / "trainer_state.json", trainer_state)
    barrier()
    if rank == 0:
        atomic_write_text(tmp / MARKER, f"step {step}\n")
        _fsync_dir(tmp)
        if final.exists():  # the same step saved again (a rerun after the end): replace it whole
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(out_dir)
        rotate(out_dir, keep)
    barrier()
    return final


def load(engine, path: Path, rank: int, world_size: int, trust_pickle: bool = False) -> dict:
    """Restore engine, optimizer, scheduler and this rank's RNG from a complete checkpoint."""
    path = Path(path)
    state = read_json_object(path / "trainer_state.json", "checkpoint's trainer state")
    if state.get("world_size") != world_size:
        raise UserError(f"{path} was written by {state.get('world_size')} workers, this run has {world_size}",
                        hint="resume with the same number of GPUs/workers, or start in a new output.dir")
    # DeepSpeed reads every file of its checkpoint through engine.checkpoint_engine.load (model states, ZeRO
    # partitions, the schedule); an instance attribute puts our reader in front of it for this load only.
    reader = engine.checkpoint_engine
    reader.load = lambda file, map_location=None: read_checkpoint_file(file, map_location, trust_pickle)
    try:
        load_path, _ = engine.load_checkpoint(str(path), tag="deepspeed", load_module_strict=False,
                                              load_optimizer_states=True, load_lr_scheduler_states=True)
    finally:
        del reader.load
    if load_path is None:
        raise UserError(f"{path}: DeepSpeed could not load this checkpoint", hint="delete it to resume from an older one")
    set_rng_state(read_checkpoint_file(path / "rng" / f"rank{rank}.pt", "cpu", trust_pickle))
    return state


def _deepspeed_state_classes() -> list:
    """The non-tensor classes DeepSpeed's ZeRO 0-2 optimizer puts into its files: plain data holders (the loss
    scaler's numbers, the ZeRO stage enum, (start, numel) fragment addresses), nothing that runs code."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def read_checkpoint_file(path, map_location=None, trust_pickle: bool = False):
    """One pickled file of a checkpoint, unpickled with ``weights_only=True`` (tensors, plain data and
    DeepSpeed's state classes), or refused with one line naming it; ``trust_pickle`` reads it as DeepSpeed would."""
    import pickle

    import torch

    path = Path(path)
    if trust_pickle:
        return torch.load(path, map_location=map_location, weights_only=False)
    try:
        with torch.serialization.safe_globals(_deepspeed_state_classes()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message is long and multi-line; the "Unsupported global" line names the offending object.
        detail = next((ln.strip() for ln in str(exc).splitlines() if "Unsupported global" in ln), "")
        raise UserError(f"{path}: refusing to unpickle this checkpoint file: it holds objects beyond tensors and "
                        f"DeepSpeed's training state" + (f" ({detail[:200]})" if detail else ""),
                        hint="resume with --trust-pickle only if this checkpoint was written by your own run and "
                             "nobody else could change it; or delete the checkpoint folder to resume from an "
                             "older one") from None
    except (RuntimeError, EOFError, OSError) as exc:
        message = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else exc.__class__.__name__
        raise UserError(f"{path}: not a readable checkpoint file ({message})",
                        hint="delete the checkpoint folder to resume from an older one") from None


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


#: Sections whose change between a checkpoint and its resume alters what is trained.
_TRAINING_SECTIONS = ("model", "data", "train", "lora")


def changed_settings(saved: dict, spec) -> list[str]:
    """Dotted keys of training settings that differ from those the checkpoint was written with."""
    now = spec.model_dump(mode="json")
    changed = []

    def walk(a, b, prefix):
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                walk(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else key)
        elif a != b:
            changed.append(prefix)

    for section in _TRAINING_SECTIONS:
        if section in saved:
            walk(saved[section], now.get(section), section)
    return changed
