"""The record every source produces, and the tally of what was skipped and why.

A record is one frontal image with its study's findings, in the LLaVA conversation format that `pretrain`,
`finetune` and `infer` read (the shape of LLaVA-Rad's own training JSON), plus the ids and sections a user wants to filter on.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llavarad_cli import prompts, skips
from llavarad_cli.errors import UserError
from llavarad_cli.io_utils import read_json

#: Output file per split; MIMIC's `validate` split is written as dev.json, as in LLaVA-Rad's scripts.
SPLIT_FILES = {"train": "train.json", "dev": "dev.json", "test": "test.json"}

#: The frontal projections a record may show (MIMIC's ViewPosition, the annotations' `view`); laterals are skipped.
FRONTAL_VIEWS = ("PA", "AP")

#: How many examples of each skip reason the summary names.
EXAMPLES_PER_REASON = 5


@dataclass
class Skips:
    """Counts skipped items per reason and keeps the first few distinct examples of each."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, example: str) -> None:
        skips.label(reason)  # a name outside the vocabulary is a bug: ValueError
        self.counts[reason] += 1
        seen = self.examples.setdefault(reason, [])
        if len(seen) < EXAMPLES_PER_REASON and example not in seen:
            seen.append(example)

    def total(self) -> int:
        return sum(self.counts.values())

    def to_json(self, reasons: tuple[str, ...]) -> dict[str, Any]:
        """Every reason that applies to the source, zero counts included, so a clean run says so."""
        keys = list(reasons) + [r for r in self.counts if r not in reasons]
        return {
            key: {"label": skips.label(key), "count": self.counts.get(key, 0), "examples": self.examples.get(key, [])}
            for key in keys
        }


def record_id(subject_id: str, study_id: str, dicom_id: str) -> str:
    """The id of a MIMIC-CXR image's record: unique per image, so resuming and merging can go by id."""
    return f"{subject_id}_{study_id}_{dicom_id}"


def read_records(path: Path) -> list:
    """The records of a records file: `prepare`'s JSON list, also inside a ``{"records": …}`` or
    ``{"data": …}`` envelope. Items are not checked here; each reader knows what it needs of them."""
    data = read_json(path)
    if isinstance(data, dict):
        data = data.get("records", data.get("data"))
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of records (as written by `llavarad prepare`)")
    return data


def turn_values(record: dict) -> tuple[str | None, str | None]:
    """(human, gpt) values of a record's LLaVA ``conversations`` pair, by position as LLaVA reads them; None for
    a turn that is missing or not a string."""
    conv = record.get("conversations")
    turns = conv[:2] if isinstance(conv, list) else []
    values = [t.get("value") if isinstance(t, dict) else None for t in turns] + [None, None]
    return tuple(v if isinstance(v, str) else None for v in values[:2])


def record_turns(record: dict) -> tuple[str, str]:
    """Both turns, for training: a record without them is a ValueError (counted as a bad record)."""
    conv = record.get("conversations")
    if not isinstance(conv, list) or len(conv) < 2:
        raise ValueError("record has no `conversations` pair")
    human, gpt = turn_values(record)
    if human is None or gpt is None:
        raise ValueError("conversation values must be strings")
    return human, gpt


def clean_text(value: Any) -> str | None:
    """A section value as a string, or None for missing / NaN / blank."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if not isinstance(value, str):
        return None
    return value if value.strip() else None


def clean_labels(labels: dict[str, Any] | None) -> dict[str, float | None] | None:
    """CheXpert labels as floats, with NaN / empty (not mentioned) as null so the JSON stays standard."""
    if labels is None:
        return None
    out: dict[str, float | None] = {}
    for name, value in labels.items():
        if value is None or value == "":
            out[name] = None
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            out[name] = None
            continue
        out[name] = None if math.isnan(number) else number
    return out


def make_record(*, id: str, subject_id: str | None, study_id: str | None, dicom_id: str | None, image: str,
                view: str, split: str, reason: str | None, findings: str, impression: str | None,
                generate_method: str, chexpert_labels: dict | None = None, with_labels: bool = False) -> dict:
    """One record, keys in a fixed order; the human turn comes from `prompts` (the one source of the wording)."""
    record = {
        "id": id,
        "subject_id": subject_id,
        "study_id": study_id,
        "dicom_id": dicom_id,
        "image": image,
        "view": view,
        "split": split,
        "reason": reason,
        "findings": findings,
        "impression": impression,
        "generate_method": generate_method,
    }
    if with_labels:
        record["chexpert_labels"] = clean_labels(chexpert_labels)
    record["conversations"] = prompts.conversations(reason, findings)
    return record


@dataclass
class Candidate:
    """A record that passed the text checks, and the file its image comes from (None: not checkable here)."""

    record: dict
    source_image: Path | None


@dataclass
class SourceResult:
    """What a source hands to the writer: candidates in output order, skips so far, and how to describe it."""

    name: str
    candidates: list[Candidate]
    skips: Skips
    splits: tuple[str, ...]
    skip_reasons: tuple[str, ...]
    inputs: dict[str, str | None]
    image_root: Path | None
