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


class Pairs(list):
    """The pairs to score, plus the ids of records left out because they have no reference (``null``)."""

    no_reference: list[str]

    def __init__(self, items=(), no_reference=None):
        super().__init__(items)
        self.no_reference = list(no_reference or [])


def load_pairs(path: Path) -> Pairs:
    """All pairs in file order. Bad JSON, a missing field, a non-string text or a duplicate id is a UserError.

    A ``null`` prediction is a failed generation and is scored as an empty report. A ``null`` reference means the
    record has no ground truth (``infer`` writes that for queries without one): it cannot be scored, so the record
    is left out and counted, never scored against an empty text."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: predictions file not found", hint="pass the JSONL that `llavarad infer --output` wrote")
    pairs = Pairs()
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
        if rec["prediction"] is None:
            rec["prediction"] = ""  # a failed generation: scored as an empty report, never dropped
        for field in ("prediction", "reference"):
            if rec[field] is not None and not isinstance(rec[field], str):
                raise UserError(f"{where}: field {field!r} must be a string, got {type(rec[field]).__name__}")
        rid = str(rec["id"])
        if rid in seen:
            raise UserError(f"{where}: duplicate id {rid!r} (first on line {seen[rid]})",
                            hint="merge chunk files with `llavarad merge-chunks`, which refuses duplicates")
        seen[rid] = number
        if rec["reference"] is None:
            pairs.no_reference.append(rid)
            continue
        pairs.append(Pair(rid, rec["prediction"], rec["reference"]))
    if not pairs:
        if pairs.no_reference:
            raise UserError(f"{path}: none of the {len(pairs.no_reference)} records has a reference (all null)",
                            hint="evaluate needs ground-truth findings; run infer on queries that carry them")
        raise UserError(f"{path}: no predictions in the file")
    return pairs


def is_empty(text: str) -> bool:
    """Whitespace-only counts as empty (the reference's RadGraph wrapper did not, so a blank report got annotated)."""
    return not text.strip()
