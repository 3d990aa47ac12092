"""The resumable predictions file: one JSON object per line, appended and flushed (fsync) per batch.

On reopening, ids already written are skipped; a half-written last line (a kill mid-write) is cut off and its
record redone. Nothing is lost and nothing duplicated.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from llavarad_cli.errors import UserError


def scan_predictions(path: Path) -> tuple[set[str], int]:
    """Ids in a predictions file and the byte length of its intact part (up to the last good line)."""
    done: set[str] = set()
    good_bytes = 0
    if path.is_dir():
        raise UserError(f"{path} is a folder", hint="--output takes the predictions file, e.g. preds.jsonl")
    if not path.exists():
        return done, 0
    with open(path, "rb") as fh:
        data = fh.read()
    lines = data.split(b"\n")
    offset = 0
    for number, raw in enumerate(lines, start=1):
        is_last = number == len(lines)
        end = offset + len(raw) + (0 if is_last else 1)
        if raw.strip():
            try:
                obj = json.loads(raw)
                if not isinstance(obj, dict) or "id" not in obj or "prediction" not in obj:
                    raise ValueError("not a prediction object")
            except ValueError:
                if is_last or all(not rest.strip() for rest in lines[number:]):
                    if not _could_be_torn(raw):  # e.g. --output pointed at a query file: never truncate it
                        raise UserError(f"{path}:{number}: not a predictions file (neither a prediction line "
                                        "nor the cut-off start of one)",
                                        hint="--output takes a new or earlier predictions JSONL") from None
                    break  # the torn tail of an interrupted write: redo that record
                raise UserError(f"{path}:{number}: not a prediction line; the file is damaged in the middle",
                                hint="move the file away or fix that line, then rerun") from None
            if is_last:
                break  # valid JSON but no newline: it may still be cut short; redo it to be safe
            done.add(str(obj["id"]))
        good_bytes = end
        offset = end
    return done, good_bytes


#: How every line this writer appends starts; a torn tail is a cut-off line, so it starts the same way.
_LINE_START = b'{"id": '


def _could_be_torn(raw: bytes) -> bool:
    """True when ``raw`` can be what a kill or power cut left of a line we wrote (a prefix of it, or the
    zero bytes a file system may leave after a crash)."""
    text = raw.strip(b"\0 \t\r")
    return text.startswith(_LINE_START) or _LINE_START.startswith(text)


class PredictionWriter:
    """Append-only writer; ``done`` holds the ids already in the file when it was opened."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.done, good = scan_predictions(self.path)
        self.truncated = self.path.exists() and self.path.stat().st_size != good
        if self.truncated:
            with open(self.path, "r+b") as fh:
                fh.truncate(good)
        self._fh = open(self.path, "a", encoding="utf-8")

    def write_batch(self, rows: Iterable[dict]) -> None:
        for row in rows:
            row = {"id": row["id"], **row}  # id first: every line starts with _LINE_START
            self._fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            self.done.add(str(row["id"]))
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
