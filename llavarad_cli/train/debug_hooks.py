"""Opt-in environment hooks for tests and CPU development; a normal run sets neither variable.

``LLAVARAD_DEBUG_KILL_AFTER_STEP=RANK:STEP``
    that rank SIGKILLs itself right after finishing optimizer step STEP: the way the resume tests reproduce a
    pre-empted or OOM-killed rank (nothing is reported, nothing is flushed, exactly like the real thing).
``LLAVARAD_DS_NO_SHM=1``
    skip DeepSpeed's shared-memory all-reduce op on CPU. DeepSpeed 0.19's CPU backend JIT-compiles that op
    (about a minute, with a C++ compiler) the first time a process group starts; gloo all-reduces without it.
    The switch replaces a private DeepSpeed function, so it is never on by default.
"""

from __future__ import annotations

import os
import signal

KILL_ENV = "LLAVARAD_DEBUG_KILL_AFTER_STEP"
NO_SHM_ENV = "LLAVARAD_DS_NO_SHM"


def kill_step(rank: int) -> int | None:
    """The optimizer step after which this rank must kill itself, or None."""
    value = os.environ.get(KILL_ENV, "")
    if ":" not in value:
        return None
    want_rank, step = value.split(":", 1)
    return int(step) if int(want_rank) == rank else None


def kill_now() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def skip_deepspeed_shm_op() -> None:
    """Apply ``LLAVARAD_DS_NO_SHM`` (before ``deepspeed.init_distributed``)."""
    if os.environ.get(NO_SHM_ENV) == "1":
        import importlib

        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
