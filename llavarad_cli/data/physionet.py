"""The PhysioNet "LLaVA-Rad MIMIC-CXR Annotations" items: which are used, and the id each one gets.

One set of rules for `prepare --annotations` and for `infer --query-file chat_test_….json`, as LLaVA-Rad's
`mimic_train_findings` / `mimic_test_findings` loaders select: findings must be a string (here also not blank:
a blank answer trains nothing and cannot be scored), the view AP or PA, and a test item must be `rule-based`
(the train loader keeps the GPT-4-extracted items too). A leading `mimic/` is dropped from the image path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Iterable, Iterator

from llavarad_cli.data.records import FRONTAL_VIEWS, record_id
from llavarad_cli.skips import Skip

RULE_BASED = "rule-based"

_IDS_IN_PATH = re.compile(r"p(\d+)/s(\d+)/([^/]+)\.[A-Za-z]+$")


@dataclass(frozen=True)
class AnnotationItem:
    """One usable item, its fields checked and its id made unique."""

    id: str
    subject_id: str | None
    study_id: str | None
    dicom_id: str
    image: str               # relative to MIMIC-CXR-JPG's files/, `mimic/` dropped
    view: str
    reason: str | None
    findings: str
    generate_method: str
    raw: dict                # the item as read, for the fields only prepare keeps (impression, labels)


@dataclass(frozen=True)
class Rejected:
    reason: str              # a name of llavarad_cli.skips
    detail: str              # what the summary shows after the item's position


def is_annotation_item(item: Any) -> bool:
    """PhysioNet items carry ``generate_method`` but, unlike `prepare`'s records, no ``split`` (the split is
    the file they are in)."""
    return isinstance(item, dict) and "generate_method" in item and "split" not in item


def image_path(value: Any) -> str | None:
    """The image path with a leading `mimic/` dropped; None unless it is a safe relative path."""
    if not isinstance(value, str) or not value.strip():
        return None
    path = PurePosixPath(value.strip().replace("\\", "/"))
    if path.parts[:1] == ("mimic",):
        path = PurePosixPath(*path.parts[1:])
    if path.is_absolute() or ".." in path.parts or not path.parts:
        return None
    return path.as_posix()


def _findings(item: dict) -> Any:
    conversations = item.get("conversations")
    if not isinstance(conversations, list) or len(conversations) < 2 or not isinstance(conversations[1], dict):
        return None
    return conversations[1].get("value")


def _check(item: Any, test: bool) -> AnnotationItem | Rejected:
    image = image_path(item.get("image")) if isinstance(item, dict) else None
    if image is None:
        return Rejected(Skip.BAD_ROW, "")
    findings = _findings(item)
    if not isinstance(findings, str) or not findings.strip():
        return Rejected(Skip.NO_FINDINGS, image)
    view = item.get("view")
    if view not in FRONTAL_VIEWS:
        return Rejected(Skip.NOT_FRONTAL, f"{image} ({view})")
    method = item.get("generate_method") if isinstance(item.get("generate_method"), str) else None
    if test and method != RULE_BASED:
        return Rejected(Skip.NOT_RULE_BASED, f"{image} ({method})")
    ids = _IDS_IN_PATH.search(image)
    subject_id, study_id, dicom_id = ids.groups() if ids else (None, None, PurePosixPath(image).stem)
    # The published id is subject_study, shared by every image of a study and by both extraction methods; the
    # image (as for MIMIC-CXR records) and, for text not extracted by rules, the method make it unique.
    base = record_id(subject_id, study_id, dicom_id) if ids else str(item.get("id") or dicom_id)
    rid = base if method == RULE_BASED else f"{base}_{method or 'unknown'}"
    reason = item.get("reason")
    return AnnotationItem(id=rid, subject_id=subject_id, study_id=study_id, dicom_id=dicom_id, image=image,
                          view=view, reason=reason if isinstance(reason, str) else None, findings=findings,
                          generate_method=method or "unknown", raw=item)


def select(items: Iterable[Any], test: bool, seen: set[str] | None = None
           ) -> Iterator[tuple[int, AnnotationItem | Rejected]]:
    """(position, item or why it is left out) for every item, in file order; an id in ``seen`` (ids of
    earlier items, also across files) is a duplicate.

    ``test``: the items are a test split (only rule-based findings are used).
    """
    seen = set() if seen is None else seen
    for number, item in enumerate(items):
        checked = _check(item, test)
        if isinstance(checked, AnnotationItem):
            if checked.id in seen:
                checked = Rejected(Skip.DUPLICATE, checked.id)
            else:
                seen.add(checked.id)
        yield number, checked
