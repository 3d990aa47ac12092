"""Reading the `infer` output: one (id, prediction, reference) per line, with errors that name the line."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from llavarad_cli.errors import UserError
from llavarad_cli.io_utils import iter_jsonl

REQUIRED_FIELDS = ("id", "prediction", "reference")


@dataclass(frozen=True)
class Pair:
    id: str
    prediction: str
    reference: str


def load_pairs(path: Path) -> list[Pair]:
    """All pairs in file order. Bad JSON, a missing field, a non-string text or a duplicate id is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: predictions file not found", hint="pass the JSONL that `llavarad infer --output` wrote")
    pairs: list[Pair] = []
    seen: dict[str, int] = {}
    for number, line in iter_jsonl(path):
        where = f"{path}, line {number}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(rec, dict):
            raise UserError(f"{where}: expected a JSON object with {', '.join(REQUIRED_FIELDS)}")
        missing = [f for f in REQUIRED_FIELDS if f not in rec]
        if missing:
            raise UserError(f"{where}: missing field(s) {', '.join(missing)}",
                            hint="each line needs id, prediction and reference")
        for field in ("prediction", "reference"):
            if rec[field] is None:
                rec[field] = ""  # a failed generation: scored as an empty report, never dropped
            elif not isinstance(rec[field], str):
                raise UserError(f"{where}: field {field!r} must be a string, got {type(rec[field]).__name__}")
        rid = str(rec["id"])
        if rid in seen:
            raise UserError(f"{where}: duplicate id {rid!r} (first on line {seen[rid]})",
                            hint="merge chunk files with `llavarad merge-chunks`, which refuses duplicates")
        seen[rid] = number
        pairs.append(Pair(rid, rec["prediction"], rec["reference"]))
    if not pairs:
        raise UserError(f"{path}: no predictions in the file")
    return pairs


def is_empty(text: str) -> bool:
    """Whitespace-only counts as empty (the reference's RadGraph wrapper did not; see reference-behaviour §7.16)."""
    return not text.strip()
