"""What ``infer`` reads: records from ``prepare`` or the PhysioNet "LLaVA-Rad MIMIC-CXR Annotations" files.

Both are LLaVA conversation records. PhysioNet records are filtered and re-prompted as the reference's
``mimic_test_findings`` loader does (rule-based findings, AP/PA, string findings; the prompt rebuilt from
``reason``). The query text keeps its leading ``<image>\\n``, as the reference writes it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llavarad_cli.errors import UserError
from llavarad_cli.io_utils import read_json
from llavarad_cli.prompts import normalise_query, user_turn
from llavarad_cli.skips import Skip


@dataclass(frozen=True)
class Query:
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


def _is_physionet(item: dict[str, Any]) -> bool:
    """PhysioNet records carry ``generate_method`` but, unlike ``prepare``'s records, no ``split`` (the split
    is the file)."""
    return "generate_method" in item and "split" not in item


def _turn(item: dict[str, Any], who: str) -> Any:
    for turn in item.get("conversations") or []:
        if isinstance(turn, dict) and turn.get("from") == who:
            return turn.get("value")
    return None


def physionet_query(reason: Any) -> str:
    """The human turn exactly as ``mimic_test_findings`` builds it (see ``prompts.clean_reason``)."""
    return user_turn(reason)


def read_queries(path: Path) -> QuerySet:
    """Read and validate a query file; bad records are counted, not fatal. Ids are made unique (see below)."""
    data = read_json(path)
    if isinstance(data, dict):
        data = data.get("records", data.get("data"))
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of records (as written by `llavarad prepare`)")
    physionet = any(isinstance(item, dict) and _is_physionet(item) for item in data[:100])
    queries: list[Query] = []
    skipped: Counter = Counter()
    for item in data:
        if not isinstance(item, dict) or item.get("id") in (None, "") or not isinstance(item.get("image"), str):
            skipped[Skip.BAD_RECORD] += 1
            continue
        reference = _turn(item, "gpt")
        if physionet:
            # mimic_test_findings: rule-based findings of frontal views only, prompt rebuilt from the reason.
            if item.get("generate_method") != "rule-based":
                skipped[Skip.NOT_RULE_BASED] += 1
                continue
            if item.get("view") not in ("AP", "PA"):
                skipped[Skip.NOT_FRONTAL] += 1
                continue
            if not isinstance(reference, str):
                skipped[Skip.NO_FINDINGS] += 1
                continue
            query = physionet_query(item.get("reason"))
        else:
            human = _turn(item, "human")
            if isinstance(human, str) and human.strip():
                query = normalise_query(human)
            else:
                reason = item.get("reason")
                query = user_turn(reason)
        queries.append(Query(str(item["id"]), query, item["image"],
                             reference if isinstance(reference, str) else None))
    queries, renamed = _unique_ids(queries)
    if not queries:
        raise UserError(f"{path}: no usable records" + (f" (skipped: {_fmt(skipped)})" if skipped else ""))
    return QuerySet(queries, "physionet" if physionet else "records", skipped, renamed)


def _unique_ids(queries: list[Query]) -> tuple[list[Query], int]:
    """Resuming and merging go by id, so ids must be unique. PhysioNet ids are ``subject_study`` and repeat
    for studies with several frontal images; a repeated id gets the image's file stem appended (stable,
    so every chunk and merge-chunks derive the same ids)."""
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
