"""The PhysioNet "LLaVA-Rad MIMIC-CXR Annotations" JSON files -> validated, normalised records.

Which items are used and the id each gets are `physionet.py`'s rules (shared with `infer`); the human turn is
rewritten with the LLaVA-Rad prompt, as the reference's loaders do.
"""

from __future__ import annotations

import re
from pathlib import Path

from llavarad_cli.data import physionet
from llavarad_cli.data.records import Candidate, SourceResult, Skips, clean_text, make_record
from llavarad_cli.errors import UserError
from llavarad_cli.io_utils import read_json
from llavarad_cli.skips import Skip

SKIP_REASONS = (Skip.BAD_ROW, Skip.NOT_FRONTAL, Skip.NO_FINDINGS, Skip.NOT_RULE_BASED, Skip.DUPLICATE,
                Skip.MISSING_IMAGE, Skip.UNREADABLE_IMAGE)

# chat_train_MIMIC_CXR_all_gpt4extract_rulebased_v1.json, chat_dev_..., chat_test_...
_SPLIT_IN_NAME = re.compile(r"(?:^|[_.-])(train|dev|valid|validate|validation|test)(?:[_.-]|$)", re.IGNORECASE)
_SPLIT_ALIASES = {"train": "train", "dev": "dev", "valid": "dev", "validate": "dev", "validation": "dev",
                  "test": "test"}


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
        for number, item in physionet.select(items, test=split == "test", seen=seen):
            where = f"{path.name}[{number}]"
            if isinstance(item, physionet.Rejected):
                skips.add(item.reason, f"{where} {item.detail}".rstrip())
                continue
            labels = item.raw.get("chexpert_labels")
            record = make_record(
                id=item.id, subject_id=item.subject_id, study_id=item.study_id, dicom_id=item.dicom_id,
                image=item.image, view=item.view, split=split, reason=item.reason, findings=item.findings,
                impression=clean_text(item.raw.get("impression")), generate_method=item.generate_method,
                chexpert_labels=labels if isinstance(labels, dict) else None, with_labels=True,
            )
            candidates.append(Candidate(record, image_root / item.image if image_root is not None else None))

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
