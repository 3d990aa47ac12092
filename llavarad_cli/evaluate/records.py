"""Reading the `infer` output for scoring: the prediction lines, with errors that name the line."""

from __future__ import annotations

from pathlib import Path

from llavarad_cli.errors import UserError
from llavarad_cli.io_utils import iter_jsonl
from llavarad_cli.predictions import RUN_FIELDS, BadLine, Prediction, parse_line

#: What evaluate scores: a prediction line (``reference`` is a string for every pair it scores).
Pair = Prediction


class Pairs(list):
    """The pairs to score, plus the ids of records left out because they have no reference (``null``)."""

    no_reference: list[str]

    def __init__(self, items=(), no_reference=None):
        super().__init__(items)
        self.no_reference = list(no_reference or [])

    def made_with(self) -> dict[str, str | list[str]]:
        """The run fields (model, dtype) the predictions record: one value, or every distinct one in order of
        appearance when the file mixes runs; a field no line records is left out."""
        out: dict[str, str | list[str]] = {}
        for name in RUN_FIELDS:
            values = list(dict.fromkeys(p.run[name] for p in self if name in p.run))
            if values:
                out[name] = values[0] if len(values) == 1 else values
        return out


def load_pairs(path: Path) -> Pairs:
    """All pairs in file order. A line that is not a prediction or a duplicate id is a UserError.

    A ``null`` prediction (no text generated) is scored as an empty report, never dropped. A ``null``
    reference means the record has no ground truth (``infer`` writes that for queries without one): it cannot be
    scored, so the record is left out and counted, never scored against an empty text."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: predictions file not found", hint="pass the JSONL that `llavarad infer --output` wrote")
    pairs = Pairs()
    seen: dict[str, int] = {}
    for number, line in iter_jsonl(path):
        where = f"{path}, line {number}"
        try:
            pred = parse_line(line)
        except BadLine as bad:
            hint = "each line needs id, prediction and reference" if "missing field" in str(bad) else None
            raise UserError(f"{where}: {bad}", hint=hint) from None
        if pred.id in seen:
            raise UserError(f"{where}: duplicate id {pred.id!r} (first on line {seen[pred.id]})",
                            hint="merge chunk files with `llavarad merge-chunks`, which refuses duplicates")
        seen[pred.id] = number
        if pred.reference is None:
            pairs.no_reference.append(pred.id)
            continue
        pairs.append(pred)
    if not pairs:
        if pairs.no_reference:
            raise UserError(f"{path}: none of the {len(pairs.no_reference)} records has a reference (all null)",
                            hint="evaluate needs ground-truth findings; run infer on queries that carry them")
        raise UserError(f"{path}: no predictions in the file")
    return pairs


def is_empty(text: str) -> bool:
    """Whitespace-only counts as empty (the reference's RadGraph wrapper did not, so a blank report got annotated)."""
    return not text.strip()
