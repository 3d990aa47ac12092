"""The resumable predictions file: one prediction line each (``llavarad_cli.predictions``), appended and
flushed (fsync) per batch.

On reopening, ids already written are skipped. Only a really torn last line (a kill mid-write: text that is not
JSON and starts like the lines this writer appends) is cut off and its record redone; a complete last line that
only lacks its newline is kept. Anything else that is not a prediction line is refused, the file untouched.
Nothing is lost and nothing duplicated.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from llavarad_cli.errors import UserError
from llavarad_cli.io_utils import atomic_write_text, iter_jsonl, naming
from llavarad_cli.predictions import BadLine, Prediction, format_line, parse_line


@dataclass
class Scan:
    """What an existing predictions file holds."""

    done: set[str] = field(default_factory=set)
    good_bytes: int = 0            # length of the intact part; a torn tail starts there
    size: int = 0
    ends_with_newline: bool = True

    @property
    def torn(self) -> bool:
        return self.size != self.good_bytes


def scan_predictions(path: Path) -> Scan:
    """The ids in a predictions file and the extent of its intact part (UserError if it is not one)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder", hint="--output takes the predictions file, e.g. preds.jsonl")
    scan = Scan()
    if not path.exists():
        return scan
    with open(path, "rb") as fh:
        data = fh.read()
    scan.size = len(data)
    lines = data.split(b"\n")
    offset = 0
    for number, raw in enumerate(lines, start=1):
        is_last = number == len(lines)
        end = offset + len(raw) + (0 if is_last else 1)
        if raw.strip():
            try:
                scan.done.add(parse_line(raw).id)
            except BadLine as bad:
                tail = is_last or all(not rest.strip() for rest in lines[number:])
                if tail and not bad.is_json and _could_be_torn(raw):
                    break  # the torn tail of an interrupted write: redo that record
                if tail or number == 1:  # e.g. --output pointed at a query file: never truncate it
                    raise UserError(f"{path}:{number}: not a predictions file ({bad})",
                                    hint="--output takes a new or earlier predictions JSONL") from None
                raise UserError(f"{path}:{number}: not a prediction line ({bad}); the file is damaged in the "
                                "middle", hint="move the file away or fix that line, then rerun") from None
            if is_last:
                # A line that parses is complete (a JSON object ends with its closing brace); only its newline
                # is missing, which the writer adds before appending.
                scan.ends_with_newline = False
        scan.good_bytes = end
        offset = end
    return scan


#: How every line this writer appends starts; a torn tail is a cut-off line, so it starts the same way.
_LINE_START = b'{"id": '


def _could_be_torn(raw: bytes) -> bool:
    """True when ``raw`` can be what a kill or power cut left of a line we wrote (a prefix of it, or the
    zero bytes a file system may leave after a crash)."""
    text = raw.strip(b"\0 \t\r")
    return text.startswith(_LINE_START) or _LINE_START.startswith(text)


class PredictionWriter:
    """Append-only writer; ``done`` holds the ids already in the file when it was opened.

    A batch that cannot be written (disk full, …) is cut off again, so the file ends with whole lines only and a
    rerun continues from there. Such an OSError goes on naming the predictions file (a failed write names none):
    the CLI turns it into one line, like every output that cannot be written.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            scan = scan_predictions(self.path)
            self.done = scan.done
            self.truncated = scan.torn
            if scan.torn:
                with open(self.path, "r+b") as fh:
                    fh.truncate(scan.good_bytes)
            self._fh = open(self.path, "a", encoding="utf-8")
            self._good = scan.good_bytes
            if not scan.ends_with_newline:
                self._append("\n")
        except OSError as exc:
            raise naming(exc, self.path) from None

    def _append(self, text: str) -> None:
        """Append, flush and fsync ``text``; on failure, cut the file back to its last whole line."""
        try:
            self._fh.write(text)
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as exc:
            self._cut_back()
            raise naming(exc, self.path) from None
        self._good += len(text.encode("utf-8"))

    def _cut_back(self) -> None:
        try:
            self._fh.close()  # may fail again writing its buffer; nothing of it is wanted
        except OSError:
            pass
        try:
            os.truncate(self.path, self._good)
        except OSError:
            pass  # the torn tail is then a prefix of a line we write, which the next run's scan redoes
        self._fh = open(os.devnull, "a", encoding="utf-8")

    def write_batch(self, predictions: Iterable[Prediction]) -> None:
        predictions = list(predictions)
        self._append("".join(format_line(p) for p in predictions))
        self.done.update(p.id for p in predictions)

    def close(self) -> None:
        self._fh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def put_in_order(path: Path, ids: Sequence[str]) -> bool:
    """Rewrite ``path`` with its lines in the order of ``ids`` (lines of other ids after them, as they were).

    ``infer`` predicts in its own order (longest prompt first) and appends as it goes, so a kill loses at most
    one batch; once every query is done, the file is put in input order, so two runs' outputs diff line by line.
    Atomic: a kill or a full disk leaves the file as it was. Returns whether anything moved.
    """
    path = Path(path)
    if not path.exists():
        return False
    rank = {rid: i for i, rid in enumerate(ids)}
    lines = [line if line.endswith("\n") else line + "\n" for _, line in iter_jsonl(path)]
    keyed = [(rank.get(parse_line(line).id, len(rank)), n, line) for n, line in enumerate(lines)]
    ordered = sorted(keyed)
    if [n for _, n, _ in ordered] == list(range(len(keyed))):
        return False
    atomic_write_text(path, "".join(line for _, _, line in ordered))
    return True
