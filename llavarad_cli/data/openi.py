"""Open-I (Indiana University chest X-rays) -> records: the paper's external test set.

`indiana_reports.csv` holds one study per row with its sections already split out; `indiana_projections.csv` one
image per row (Kaggle name `7_IM-2263-1001.dcm.png`, Open-I name `CXR7_IM-2263-1001.png`) with Frontal/Lateral.
"""

from __future__ import annotations

import re
from pathlib import Path

from llavarad_cli.data.records import Candidate, SourceResult, Skips, clean_text, make_record
from llavarad_cli.data.sections import collapse_whitespace
from llavarad_cli.data.tables import read_rows
from llavarad_cli.errors import UserError
from llavarad_cli.skips import Skip

SPLITS = ("train", "dev", "test")
SKIP_REASONS = (Skip.NOT_FRONTAL, Skip.NO_REPORT, Skip.NO_FINDINGS, Skip.MISSING_IMAGE, Skip.UNREADABLE_IMAGE,
                Skip.BAD_ROW)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm"}

_KAGGLE_NAME = re.compile(r"^(\d+)_(.+?)(?:\.dcm)?\.(png|jpg|jpeg)$", re.IGNORECASE)


def openi_stem(filename: str) -> str | None:
    """`7_IM-2263-1001.dcm.png` -> `CXR7_IM-2263-1001` (the Open-I image name); None if it is neither form."""
    name = Path(filename).name
    if name.upper().startswith("CXR"):
        return Path(name).stem
    match = _KAGGLE_NAME.match(name)
    return f"CXR{match.group(1)}_{match.group(2)}" if match else None


def _section(value: str) -> str | None:
    text = clean_text(value)
    return collapse_whitespace(text) if text else None


def _index_images(folder: Path) -> dict[str, str]:
    """Open-I stem -> path relative to folder, for both naming schemes and any sub-folder layout."""
    index: dict[str, str] = {}
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            stem = openi_stem(path.name)
            if stem is not None:
                index.setdefault(stem, path.relative_to(folder).as_posix())
    return index


def load_openi(reports_csv: Path, projections_csv: Path, images: Path | None = None,
               split: str | None = None) -> SourceResult:
    split = split or "test"
    if split not in SPLITS:
        raise UserError(f"--split {split!r} is not one of {', '.join(SPLITS)}")
    if images is not None and not Path(images).is_dir():
        raise UserError(f"{images}: --openi-images is not a folder")

    skips = Skips()
    reports: dict[str, dict[str, str]] = {}
    for line, row in read_rows(reports_csv, ("uid", "indication", "findings", "impression"), skips):
        uid = row["uid"].strip()
        if not uid:
            skips.add(Skip.BAD_ROW, f"{Path(reports_csv).name} line {line}")
        elif uid in reports:  # a study's report listed twice: the first row counts, as for the images
            skips.add(Skip.DUPLICATE, f"uid {uid} ({Path(reports_csv).name} line {line})")
        else:
            reports[uid] = row
    index = _index_images(Path(images)) if images is not None else None

    candidates: list[Candidate] = []
    seen: set[str] = set()
    for line, row in read_rows(projections_csv, ("uid", "filename", "projection"), skips):
        uid, filename = row["uid"].strip(), row["filename"].strip()
        stem = openi_stem(filename)
        if not uid or stem is None:
            skips.add(Skip.BAD_ROW, f"{Path(projections_csv).name} line {line}")
            continue
        # The stem is the record id: a row listed twice (or under both naming schemes) would write the same
        # id twice, and `infer` refuses a records file with repeated ids. The first row counts, as for MIMIC.
        if stem in seen:
            skips.add(Skip.DUPLICATE, f"{filename} ({Path(projections_csv).name} line {line})")
            continue
        seen.add(stem)
        projection = row["projection"].strip()
        if projection.lower() != "frontal":
            skips.add(Skip.NOT_FRONTAL, f"{filename} ({projection or 'no view'})")
            continue
        report = reports.get(uid)
        if report is None:
            skips.add(Skip.NO_REPORT, f"uid {uid}")
            continue
        findings = _section(report["findings"])
        if findings is None:
            skips.add(Skip.NO_FINDINGS, f"uid {uid}")
            continue
        if index is None:
            image, source = f"{stem}.png", None
        elif stem in index:
            image, source = index[stem], Path(images) / index[stem]
        else:
            skips.add(Skip.MISSING_IMAGE, f"{stem}.png / {filename}")
            continue
        record = make_record(
            id=stem, subject_id=None, study_id=uid, dicom_id=stem, image=image, view="Frontal", split=split,
            reason=_section(report["indication"]), findings=findings, impression=_section(report["impression"]),
            # The sections come from the report's own structure, not from a language model.
            generate_method="rule-based",
        )
        candidates.append(Candidate(record, source))

    return SourceResult(
        name="openi",
        candidates=candidates,
        skips=skips,
        splits=(split,),
        skip_reasons=SKIP_REASONS,
        inputs={"openi_reports": str(reports_csv), "openi_projections": str(projections_csv),
                "openi_images": str(images) if images is not None else None},
        image_root=Path(images) if images is not None else None,
    )
