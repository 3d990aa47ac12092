"""One prediction: the line `infer` writes (and resumes from), `merge-chunks` joins and `evaluate` scores.

A line is a JSON object with ``id``, ``prediction`` and ``reference`` (``null`` when the query had no ground
truth), usually ``query``, and the run fields ``model`` and ``dtype`` saying how it was made. Other fields are
kept as they are. A ``null`` prediction means the model produced no text: every reader takes it as ``""`` (done
for resume, merged, scored as an empty report); the writer never writes one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from llavarad_cli.io_utils import JSONProblem, loads

REQUIRED = ("id", "prediction", "reference")
#: How the prediction was made, not what was predicted: two lines that differ only here are the same prediction.
RUN_FIELDS = ("model", "dtype")
_TEXT_FIELDS = ("prediction", "reference", "query")


class BadLine(ValueError):
    """A line that is not a prediction; ``is_json`` tells a torn or foreign text from a foreign JSON object."""

    def __init__(self, why: str, is_json: bool):
        super().__init__(why)
        self.is_json = is_json


@dataclass(frozen=True)
class Prediction:
    id: str
    prediction: str
    reference: str | None
    query: str | None = None
    run: dict[str, Any] = field(default_factory=dict)      # RUN_FIELDS present on the line
    extra: dict[str, Any] = field(default_factory=dict)    # any other field, written back unchanged

    def content(self) -> tuple:
        """Everything but the run fields: what "the same prediction" compares."""
        return (self.id, self.query, self.reference, self.prediction, self.extra)

    def to_json(self) -> dict[str, Any]:
        # id first: a cut-off line still starts like every line the writer appends (see infer/writer.py).
        return {"id": self.id, "query": self.query, "reference": self.reference, "prediction": self.prediction,
                **self.extra, **self.run}


def format_line(prediction: Prediction) -> str:
    return json.dumps(prediction.to_json(), ensure_ascii=False) + "\n"


def parse_line(text: str | bytes) -> Prediction:
    """One line -> Prediction; ``BadLine`` says in a few words why it is not one."""
    try:
        obj = loads(text, line=False)
    except JSONProblem as problem:
        raise BadLine(str(problem), is_json=False) from None
    if not isinstance(obj, dict):
        raise BadLine(f"expected a JSON object with {', '.join(REQUIRED)}", is_json=True)
    missing = [name for name in REQUIRED if name not in obj]
    if missing:
        raise BadLine(f"missing field(s) {', '.join(missing)}", is_json=True)
    rid = obj["id"]
    if isinstance(rid, bool) or not isinstance(rid, (str, int)) or rid == "":
        raise BadLine(f"field 'id' must be a non-empty string or an integer, got {json.dumps(rid)[:40]}", is_json=True)
    for name in (*_TEXT_FIELDS, *RUN_FIELDS):
        value = obj.get(name)
        if value is not None and not isinstance(value, str):
            raise BadLine(f"field {name!r} must be a string, got {type(value).__name__}", is_json=True)
    known = {"id", *_TEXT_FIELDS, *RUN_FIELDS}
    return Prediction(
        id=str(rid), prediction=obj["prediction"] or "", reference=obj["reference"], query=obj.get("query"),
        run={name: obj[name] for name in RUN_FIELDS if obj.get(name) is not None},
        extra={k: v for k, v in obj.items() if k not in known},
    )
