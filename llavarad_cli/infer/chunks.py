"""Splitting records into contiguous chunks, one per GPU/process, and naming their output files."""

from __future__ import annotations

import re
from pathlib import Path

from llavarad_cli.errors import UserError


def chunk_bounds(n: int, num_chunks: int, chunk_idx: int) -> tuple[int, int]:
    """``[start, end)`` of chunk ``chunk_idx`` of ``num_chunks`` over ``n`` records.

    Sizes differ by at most one and chunks beyond the records are empty, for any K, including K > n (the
    reference's ceil-division split raised IndexError there).
    """
    if num_chunks < 1:
        raise UserError("--num-chunks must be at least 1")
    if not 0 <= chunk_idx < num_chunks:
        raise UserError(f"--chunk-idx {chunk_idx} is outside 0..{num_chunks - 1} (--num-chunks {num_chunks})")
    return chunk_idx * n // num_chunks, (chunk_idx + 1) * n // num_chunks


def chunk_output(output: Path, chunk_idx: int, num_chunks: int) -> Path:
    """``preds.jsonl`` -> ``preds_3.jsonl`` for the workers ``--gpus`` starts (merged in natural order later)."""
    if num_chunks == 1:
        return output
    return output.with_name(f"{output.stem}_{chunk_idx}{output.suffix or '.jsonl'}")


def natural_key(path: Path) -> list:
    """``preds_10`` after ``preds_2``: digit runs compare as numbers."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", str(path))]
