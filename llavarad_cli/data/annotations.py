"""The PhysioNet "LLaVA-Rad MIMIC-CXR Annotations" JSON files -> validated, normalised records.

Same selection as LLaVA-Rad's `mimic_train_findings` / `mimic_test_findings` loaders:
string findings, AP/PA only, test keeps only `rule-based` records, a leading `mimic/` is dropped from image paths,
and the human turn is rewritten with the LLaVA-Rad prompt.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from llavarad_cli.data.records import Candidate, SourceResult, Skips, clean_text, make_record
from llavarad_cli.errors import UserError
from llavarad_cli.skips import Skip
from llavarad_cli.io_utils import read_json

FRONTAL_VIEWS = ("PA", "AP")
SKIP_REASONS = (Skip.BAD_ROW, Skip.NOT_FRONTAL, Skip.NO_FINDINGS, Skip.NOT_RULE_BASED, Skip.DUPLICATE,
                Skip.MISSING_IMAGE, Skip.UNREADABLE_IMAGE)

# chat_train_MIMIC_CXR_all_gpt4extract_rulebased_v1.json, chat_dev_..., chat_test_...
_SPLIT_IN_NAME = re.compile(r"(?:^|[_.-])(train|dev|valid|validate|validation|test)(?:[_.-]|$)", re.IGNORECASE)
_SPLIT_ALIASES = {"train": "train", "dev": "dev", "valid": "dev", "validate": "dev", "validation": "dev",
                  "test": "test"}
_IDS_IN_PATH = re.compile(r"p(\d+)/s(\d+)/([^/]+)\.[A-Za-z]+$")


def _reason(value: object) -> str | None:
    """Kept as the annotation has it: any string (even blank) is a reason for the reference's loader."""
    return value if isinstance(value, str) else None


def annotation_files(folder: Path) -> list[tuple[str, Path]]:
    """(split, file) for every JSON file whose name says its split, in train/dev/test order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: --annotations is not a folder")
    found = []
    for path in sorted(folder.glob("*.json")):
        match = _SPLIT_IN_NAME.search(path.stem)
        if match:
            found.append((_SPLIT_ALIASES[match.group(1).lower()], path))
    if not found:
        raise UserError(f"{folder}: no annotation JSON files with train/dev/test in their names",
                        hint="expected chat_{train,dev,test}_MIMIC_CXR_all_gpt4extract_rulebased_v1.json")
    order = {"train": 0, "dev": 1, "test": 2}
    return sorted(found, key=lambda item: order[item[0]])


def _image(value) -> str | None:
    """The image path with a leading `mimic/` dropped; None unless it is a safe relative path."""
    if not isinstance(value, str) or not value.strip():
        return None
    path = PurePosixPath(value.strip().replace("\\", "/"))
    if path.parts[:1] == ("mimic",):
        path = PurePosixPath(*path.parts[1:])
    if path.is_absolute() or ".." in path.parts or not path.parts:
        return None
    return path.as_posix()


def _findings(item: dict):
    conversations = item.get("conversations")
    if not isinstance(conversations, list) or len(conversations) < 2 or not isinstance(conversations[1], dict):
        return None
    return conversations[1].get("value")


def load_annotations(folder: Path, mimic_dir: Path | None = None) -> SourceResult:
    image_root = Path(mimic_dir) / "files" if mimic_dir is not None else None
    if image_root is not None and not image_root.is_dir():
        raise UserError(f"{mimic_dir}: no files/ folder in --mimic-dir",
                        hint="--mimic-dir must be the MIMIC-CXR-JPG 2.0.0 root")
    skips = Skips()
    candidates: list[Candidate] = []
    seen: set[str] = set()
    files = annotation_files(folder)
    for split, path in files:
        items = read_json(path)
        if not isinstance(items, list):
            raise UserError(f"{path}: expected a JSON array of records, found {type(items).__name__}")
        for number, item in enumerate(items):
            where = f"{path.name}[{number}]"
            image = _image(item.get("image")) if isinstance(item, dict) else None
            if image is None:
                skips.add(Skip.BAD_ROW, where)
                continue
            findings = _findings(item)
            if not isinstance(findings, str) or not findings.strip():
                skips.add(Skip.NO_FINDINGS, f"{where} {image}")
                continue
            view = item.get("view")
            if view not in FRONTAL_VIEWS:
                skips.add(Skip.NOT_FRONTAL, f"{where} {image} ({view})")
                continue
            method = item.get("generate_method") if isinstance(item.get("generate_method"), str) else None
            if split == "test" and method != "rule-based":
                skips.add(Skip.NOT_RULE_BASED, f"{where} {image} ({method})")
                continue
            ids = _IDS_IN_PATH.search(image)
            subject_id, study_id, dicom_id = ids.groups() if ids else (None, None, PurePosixPath(image).stem)
            # The published id is subject_study, shared by every image of a study and by both extraction
            # methods; the image and (for non-rule-based text) the method make it unique.
            base = f"{subject_id}_{study_id}_{dicom_id}" if ids else str(item.get("id") or dicom_id)
            record_id = base if method == "rule-based" else f"{base}_{method or 'unknown'}"
            if record_id in seen:
                skips.add(Skip.DUPLICATE, f"{where} {record_id}")
                continue
            seen.add(record_id)
            labels = item.get("chexpert_labels")
            record = make_record(
                id=record_id, subject_id=subject_id, study_id=study_id, dicom_id=dicom_id, image=image, view=view,
                split=split, reason=_reason(item.get("reason")), findings=findings,
                impression=clean_text(item.get("impression")), generate_method=method or "unknown",
                chexpert_labels=labels if isinstance(labels, dict) else None, with_labels=True,
            )
            candidates.append(Candidate(record, image_root / image if image_root is not None else None))

    return SourceResult(
        name="physionet-annotations",
        candidates=candidates,
        skips=skips,
        splits=tuple(dict.fromkeys(split for split, _ in files)),
        skip_reasons=SKIP_REASONS,
        inputs={"annotations": str(folder), "files": ", ".join(p.name for _, p in files),
                "mimic_dir": str(mimic_dir) if mimic_dir is not None else None},
        image_root=image_root,
    )
