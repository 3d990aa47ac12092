"""MIMIC-CXR-JPG 2.0.0 + the MIMIC-CXR reports -> records (one per frontal image whose study has findings).

Layout (MIMIC-CXR-JPG 2.0.0 as PhysioNet distributes it): images at `files/pXX/p<subject>/s<study>/<dicom>.jpg`, one metadata row per
image (ViewPosition), one split row per image, CheXpert labels per study, one report per study.
"""

from __future__ import annotations

import re
from pathlib import Path

from llavarad_cli.data.records import FRONTAL_VIEWS, Candidate, SourceResult, Skips, make_record, record_id
from llavarad_cli.data.reports import ReportStore, UnreadableReport, default_reports
from llavarad_cli.data.sections import ReportSections, extract_sections
from llavarad_cli.data.tables import find_table, read_rows
from llavarad_cli.errors import UserError
from llavarad_cli.skips import Skip

SPLIT_NAMES = {"train": "train", "validate": "dev", "test": "test"}
CHEXPERT_LABELS = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
    "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
    "Pneumothorax", "Support Devices",
)
SKIP_REASONS = (Skip.NO_SPLIT, Skip.NOT_FRONTAL, Skip.NO_REPORT, Skip.UNREADABLE_REPORT, Skip.EMPTY_REPORT,
                Skip.NO_FINDINGS, Skip.MISSING_IMAGE, Skip.UNREADABLE_IMAGE, Skip.BAD_ROW)

# Ids become path parts, so they must not be able to climb out of files/.
_NUMERIC = re.compile(r"^\d+$")
_DICOM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _id(value: str, prefix: str) -> str:
    """`10000032`, also accepting the `p10000032` / `s50414267` spellings some derived CSVs use."""
    value = value.strip()
    if value[:1] == prefix and _NUMERIC.match(value[1:]):
        value = value[1:]
    return value


def image_path(subject_id: str, study_id: str, dicom_id: str) -> str:
    return f"p{subject_id[:2]}/p{subject_id}/s{study_id}/{dicom_id}.jpg"


def _read_splits(path: Path, skips: Skips) -> dict[str, str]:
    return {row["dicom_id"].strip(): row["split"].strip()
            for _, row in read_rows(path, ("dicom_id", "split"), skips)}


def _read_chexpert(path: Path, skips: Skips) -> dict[str, dict[str, str]]:
    labels = {}
    for _, row in read_rows(path, ("study_id",), skips):
        labels[_id(row["study_id"], "s")] = {name: row.get(name, "") for name in CHEXPERT_LABELS}
    return labels


def _study_text(store: ReportStore, subject_id: str, study_id: str) -> ReportSections | tuple[Skip, str]:
    """The study's sections, or the skip reason that applies to its report (with why, when there is more to say)."""
    try:
        raw = store.read(subject_id, study_id)
    except UnreadableReport as exc:
        return Skip.UNREADABLE_REPORT, str(exc)
    if raw is None:
        return Skip.NO_REPORT, ""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return Skip.UNREADABLE_REPORT, "not UTF-8"
    if not text.strip():
        return Skip.EMPTY_REPORT, ""
    sections = extract_sections(text)
    return sections if sections.findings else (Skip.NO_FINDINGS, "")


def load_mimic(mimic_dir: Path, reports: Path | None = None) -> SourceResult:
    mimic_dir = Path(mimic_dir)
    if not mimic_dir.is_dir():
        raise UserError(f"{mimic_dir}: --mimic-dir is not a folder")
    metadata_path = find_table(mimic_dir, "mimic-cxr-2.0.0-metadata")
    split_path = find_table(mimic_dir, "mimic-cxr-2.0.0-split")
    chexpert_path = find_table(mimic_dir, "mimic-cxr-2.0.0-chexpert", required=False)
    reports_path = Path(reports) if reports is not None else default_reports(mimic_dir)
    store = ReportStore(reports_path)

    skips = Skips()
    splits = _read_splits(split_path, skips)
    chexpert = _read_chexpert(chexpert_path, skips) if chexpert_path else None
    image_root = mimic_dir / "files"
    candidates: list[Candidate] = []
    studies: dict[str, ReportSections | tuple[Skip, str]] = {}
    seen: set[str] = set()

    try:
        for line, row in read_rows(metadata_path, ("dicom_id", "subject_id", "study_id", "ViewPosition"), skips):
            subject_id, study_id = _id(row["subject_id"], "p"), _id(row["study_id"], "s")
            dicom_id = row["dicom_id"].strip()
            if not (_NUMERIC.match(subject_id) and _NUMERIC.match(study_id) and _DICOM.match(dicom_id)):
                skips.add(Skip.BAD_ROW, f"{metadata_path.name} line {line}")
                continue
            rel = image_path(subject_id, study_id, dicom_id)
            if dicom_id in seen:
                skips.add(Skip.DUPLICATE, f"{rel} ({metadata_path.name} line {line})")
                continue
            seen.add(dicom_id)
            split = SPLIT_NAMES.get(splits.get(dicom_id, ""))
            if split is None:
                skips.add(Skip.NO_SPLIT, rel)
                continue
            view = row["ViewPosition"].strip().upper()
            if view not in FRONTAL_VIEWS:
                skips.add(Skip.NOT_FRONTAL, f"{rel} ({view or 'no view'})")
                continue
            if study_id not in studies:
                studies[study_id] = _study_text(store, subject_id, study_id)
            sections = studies[study_id]
            if isinstance(sections, tuple):
                reason, why = sections
                skips.add(reason, store.describe(subject_id, study_id) + (f" ({why})" if why else ""))
                continue
            record = make_record(
                id=record_id(subject_id, study_id, dicom_id), subject_id=subject_id, study_id=study_id,
                dicom_id=dicom_id, image=rel, view=view, split=split, reason=sections.reason,
                findings=sections.findings, impression=sections.impression, generate_method="rule-based",
                chexpert_labels=chexpert.get(study_id) if chexpert is not None else None,
                with_labels=chexpert is not None,
            )
            candidates.append(Candidate(record, image_root / rel))
    finally:
        store.close()

    if studies and all(isinstance(value, tuple) and value[0] == Skip.NO_REPORT for value in studies.values()):
        raise UserError(f"no report found for any of the {len(studies)} studies in {reports_path}",
                        hint="pass --reports mimic-cxr-reports.zip (or the folder it unpacks to)")
    return SourceResult(
        name="mimic-cxr",
        candidates=candidates,
        skips=skips,
        splits=("train", "dev", "test"),
        skip_reasons=SKIP_REASONS,
        inputs={"mimic_dir": str(mimic_dir), "reports": str(reports_path), "metadata": metadata_path.name,
                "split": split_path.name, "chexpert": chexpert_path.name if chexpert_path else None},
        image_root=image_root,
    )
