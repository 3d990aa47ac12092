"""What ``infer`` reads: records from ``prepare`` or the PhysioNet "LLaVA-Rad MIMIC-CXR Annotations" files.

Both are LLaVA conversation records, read by ``data.records.read_records``. PhysioNet items are selected and
given ids by ``data.physionet`` (the test-split rules, as the reference's ``mimic_test_findings`` loader), so
an item gets the same id as the record ``prepare --annotations`` makes of it; the prompt is rebuilt from
``reason``. The query text keeps its leading ``<image>\\n``, as the reference writes it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llavarad_cli.data import physionet
from llavarad_cli.data.records import read_records, turn_values
from llavarad_cli.errors import UserError
from llavarad_cli.prompts import normalise_query, user_turn
from llavarad_cli.skips import Skip


@dataclass(frozen=True)
class Query:
    """A record as ``infer`` uses it."""

    id: str
    query: str            # the user turn, "<image>\n…"
    image: str            # path relative to the image folder
    reference: str | None = None


@dataclass
class QuerySet:
    queries: list[Query]
    source_format: str                      # "records" or "physionet"
    skipped: Counter = field(default_factory=Counter)
    renamed_duplicates: int = 0


def record_query(record: dict[str, Any]) -> Query | None:
    """A ``prepare``-style record as a query; None when it has no id or image path."""
    if record.get("id") in (None, "") or not isinstance(record.get("image"), str):
        return None
    human, reference = turn_values(record)
    query = normalise_query(human) if human and human.strip() else user_turn(record.get("reason"))
    return Query(str(record["id"]), query, record["image"], reference)


def read_queries(path: Path) -> QuerySet:
    """Read and validate a query file; bad records are counted, not fatal. Ids are made unique (see below)."""
    data = read_records(path)
    if any(physionet.is_annotation_item(item) for item in data[:100]):
        (queries, skipped), renamed = _physionet_queries(data), 0
        source_format = "physionet"
    else:
        queries, skipped = [], Counter()
        for item in data:
            query = record_query(item) if isinstance(item, dict) else None
            if query is None:
                skipped[Skip.BAD_RECORD] += 1
            else:
                queries.append(query)
        queries, renamed = _unique_ids(queries)
        source_format = "records"
    if not queries:
        raise UserError(f"{path}: no usable records" + (f" (skipped: {_fmt(skipped)})" if skipped else ""))
    return QuerySet(queries, source_format, skipped, renamed)


def _physionet_queries(items: list) -> tuple[list[Query], Counter]:
    """mimic_test_findings: rule-based findings of frontal views only, the prompt rebuilt from the reason."""
    queries, skipped = [], Counter()
    for _, item in physionet.select(items, test=True):
        if isinstance(item, physionet.Rejected):
            skipped[item.reason] += 1
        else:
            queries.append(Query(item.id, user_turn(item.reason), item.image, item.findings))
    return queries, skipped


def _unique_ids(queries: list[Query]) -> tuple[list[Query], int]:
    """Resuming and merging go by id, so ids must be unique. A hand-made records file may repeat an id for
    several images of a study; a repeated id gets the image's file stem appended (stable, so every chunk and
    merge-chunks derive the same ids)."""
    counts = Counter(q.id for q in queries)
    if all(c == 1 for c in counts.values()):
        return queries, 0
    out, seen, renamed = [], set(), 0
    for q in queries:
        new_id = q.id
        if counts[q.id] > 1:
            new_id = f"{q.id}_{Path(q.image).stem}"
            renamed += 1
        if new_id in seen:
            raise UserError(f"duplicate record id `{new_id}` (same id and image twice in the query file)")
        seen.add(new_id)
        out.append(Query(new_id, q.query, q.image, q.reference) if new_id != q.id else q)
    return out, renamed


def _fmt(counter: Counter) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items()))
