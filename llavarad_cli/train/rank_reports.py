"""The worker's side of the failure report: what a rank leaves in ``OUT/.errors/`` for the parent.

A rank that fails writes ``rank<r>.json`` (one-line message, kind, traceback file); a rank stopped from outside
(SIGTERM from the launcher or a scheduler, Ctrl-C) writes a ``stopped`` record. ``launcher.failure`` reads them
and names the rank that failed first, whatever order the others were stopped in.
"""

from __future__ import annotations

import os
import signal
import time
import traceback
from pathlib import Path

from llavarad_cli.errors import UserError
from llavarad_cli.io_utils import atomic_write_json, atomic_write_text
from llavarad_cli.train.launcher import ERRORS_DIR


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def report_failure(out_dir: Path, exc: BaseException) -> None:
    """Leave the parent a one-line account of this rank's failure, with the traceback beside it."""
    rank = _rank()
    errors = Path(out_dir) / ERRORS_DIR
    try:
        errors.mkdir(parents=True, exist_ok=True)
        tb_file = errors / f"rank{rank}-traceback.txt"
        atomic_write_text(tb_file, "".join(traceback.format_exception(exc)))
        user = isinstance(exc, UserError)
        message = exc.message if user else f"{exc.__class__.__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        atomic_write_json(errors / f"rank{rank}.json", {
            "rank": rank, "kind": "user" if user else "crash", "message": message,
            "hint": getattr(exc, "hint", None), "traceback_file": str(tb_file), "time": time.time()})
    except OSError:
        pass


def report_stopped(out_dir: Path, signum: int) -> None:
    """Record that this rank was stopped from outside (SIGTERM from the launcher or a scheduler, Ctrl-C), unless
    it already reported an error of its own, which says more."""
    rank = _rank()
    record = Path(out_dir) / ERRORS_DIR / f"rank{rank}.json"
    try:
        if not record.exists():
            record.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(record, {"rank": rank, "kind": "stopped", "message": f"stopped by {signal.Signals(signum).name}",
                                       "time": time.time()})
    except OSError:
        pass


def stop_quietly_on_sigterm(out_dir: Path):
    """SIGTERM: leave the stopped record and exit at once (Python's default would exit without a word). Forked
    DataLoader workers inherit the handler; only the rank's own process writes. Returns the previous handler."""
    pid = os.getpid()

    def handler(signum, frame):
        if os.getpid() == pid:
            report_stopped(out_dir, signum)
        os._exit(128 + signum)

    return signal.signal(signal.SIGTERM, handler)
