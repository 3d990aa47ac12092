"""`llavarad prepare --mimic-dir`: a small MIMIC-CXR-JPG-shaped tree with every kind of bad input."""

from __future__ import annotations

import csv
import gzip
import io
import json
import zipfile
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from llavarad_cli.cli import app
from llavarad_cli.prompts import conversations

DATA = Path(__file__).parent / "data"
EXAMPLE = (DATA / "mimic-format" / "mimic_cxr_website_example_report.txt").read_text()

METADATA_HEADER = ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition",
                   "Rows", "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
                   "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning"]
LABELS = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
          "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
          "Pneumothorax", "Support Devices"]

HISTORY_REPORT = (
    "\n                                 FINAL REPORT\n"
    " EXAMINATION:  CHEST (PORTABLE AP)\n \n"
    " CLINICAL HISTORY:  ___ with\n shortness of breath.\n \n"
    " FINDNGS:  Heart size is normal.  Small left\n effusion.\n \n"
    " CONCLUSION:  Small effusion.\n"
)
IMPRESSION_ONLY = "\n FINAL REPORT\n INDICATION:  Cough.\n \n IMPRESSION:  No acute process.\n"

# dicom, subject, study, view, split (None = no split row), image kind, report
# image kinds: "ok", "big" (larger than the copy size), "missing", "garbage", "truncated"
ROWS = [
    ("d01", "10000032", "50414267", "PA", "train", "big", EXAMPLE),
    ("d02", "10000032", "50414267", "LATERAL", "train", "ok", EXAMPLE),
    ("d03", "10000764", "57375967", "AP", "validate", "ok", HISTORY_REPORT),
    ("d04", "10000764", "57375967", "PA", "validate", "ok", HISTORY_REPORT),
    ("d05", "10000898", "50771383", "AP", "test", "ok", IMPRESSION_ONLY),
    ("d06", "10000935", "51178377", "AP", "train", "ok", None),
    ("d07", "10001038", "52000001", "PA", "train", "ok", ""),
    ("d08", "10001176", "53000002", "PA", "train", "ok", b"\xff\xfe INDICATION: \x81\x82\n FINDINGS: x\n"),
    ("d09", "10001401", "54000003", "AP", "train", "missing", EXAMPLE),
    ("d10", "10001884", "55000004", "PA", "test", "garbage", EXAMPLE),
    ("d11", "10002013", "56000005", "PA", None, "ok", EXAMPLE),
    ("d12", "10002131", "57000006", "", "train", "ok", EXAMPLE),
    ("d13", "10002428", "58000007", "AP", "test", "truncated", EXAMPLE),
]


def _jpeg(size=(40, 48), value=128) -> bytes:
    buf = io.BytesIO()
    Image.new("L", size, value).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _write_csv(path: Path, header, rows, gz: bool):
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(header)
    writer.writerows(rows)
    data = text.getvalue().encode()
    path.write_bytes(gzip.compress(data) if gz else data)


def _report_rel(subject, study):
    return f"files/p{subject[:2]}/p{subject}/s{study}.txt"


def build_tree(root: Path, reports: str = "tree", chexpert: bool = True) -> Path:
    """reports: 'tree' (unpacked next to the studies), 'zip-inside' (zip in the root) or 'zip-outside'."""
    mimic = root / "mimic-cxr-jpg"
    mimic.mkdir(parents=True)
    metadata, splits, studies = [], [], {}
    for dicom, subject, study, view, split, kind, report in ROWS:
        metadata.append([dicom, subject, study, "CHEST", view, 48, 40, 21800506, 1, "", "", "Erect"])
        if split is not None:
            splits.append([dicom, study, subject, split])
        studies[(subject, study)] = report
        image = mimic / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom}.jpg"
        image.parent.mkdir(parents=True, exist_ok=True)
        if kind == "ok":
            image.write_bytes(_jpeg())
        elif kind == "big":
            image.write_bytes(_jpeg((300, 360)))
        elif kind == "garbage":
            image.write_bytes(b"this is not an image")
        elif kind == "truncated":
            image.write_bytes(_jpeg((300, 360), 90)[:400])
    metadata.append(["bad/../id", "1x", "5", "", "PA", 1, 1, 0, 0, "", "", ""])
    metadata.append(list(metadata[0]))  # the same image listed twice
    _write_csv(mimic / "mimic-cxr-2.0.0-metadata.csv.gz", METADATA_HEADER, metadata, gz=True)
    _write_csv(mimic / "mimic-cxr-2.0.0-split.csv", ["dicom_id", "study_id", "subject_id", "split"], splits, gz=False)
    if chexpert:
        _write_csv(mimic / "mimic-cxr-2.0.0-chexpert.csv.gz", ["subject_id", "study_id", *LABELS],
                   [["10000032", "50414267", "", "", "", "", "", "", "", "", "", "1.0", "", "", "", ""],
                    ["10000764", "57375967", "-1.0", "", "", "", "", "", "", "", "", "", "", "", "", "0.0"]], gz=True)

    texts = {_report_rel(s, t): r for (s, t), r in studies.items() if r is not None}
    if reports == "tree":
        for rel, report in texts.items():
            (mimic / rel).write_bytes(report if isinstance(report, bytes) else report.encode())
    else:
        target = mimic / "mimic-cxr-reports.zip" if reports == "zip-inside" else root / "mimic-cxr-reports.zip"
        with zipfile.ZipFile(target, "w") as zf:
            for rel, report in texts.items():
                zf.writestr(rel, report)
    return mimic


def _run(*args):
    result = CliRunner().invoke(app, ["prepare", *map(str, args)])
    return result


def _labels(**values):
    out = {name: None for name in LABELS}
    out.update(values)
    return out


def expected_records(image_suffix=".jpg"):
    example_findings = (
        "Cardiac size cannot be evaluated. Large left pleural effusion is new. Small right effusion is new. "
        "The upper lungs are clear. Right lower lobe opacities are better seen in prior CT. There is no "
        "pneumothorax. There are mild degenerative changes in the thoracic spine")
    example_reason = "___ year old woman with ?pleural effusion // ?pleural effusion"
    train = [{
        "id": "10000032_50414267_d01", "subject_id": "10000032", "study_id": "50414267", "dicom_id": "d01",
        "image": "p10/p10000032/s50414267/d01.jpg", "view": "PA", "split": "train", "reason": example_reason,
        "findings": example_findings, "impression": "Large left pleural effusion", "generate_method": "rule-based",
        "chexpert_labels": _labels(**{"Pleural Effusion": 1.0}),
        "conversations": [
            {"from": "human", "value": "<image>\nProvide a description of the findings in the radiology image "
                                       "given the following indication: " + example_reason},
            {"from": "gpt", "value": example_findings}],
    }]
    dev = []
    for dicom, view in (("d03", "AP"), ("d04", "PA")):
        dev.append({
            "id": f"10000764_57375967_{dicom}", "subject_id": "10000764", "study_id": "57375967", "dicom_id": dicom,
            "image": f"p10/p10000764/s57375967/{dicom}.jpg", "view": view, "split": "dev",
            "reason": "___ with shortness of breath.", "findings": "Heart size is normal. Small left effusion.",
            "impression": "Small effusion.", "generate_method": "rule-based",
            "chexpert_labels": _labels(Atelectasis=-1.0, **{"Support Devices": 0.0}),
            "conversations": conversations("___ with shortness of breath.", "Heart size is normal. Small left effusion."),
        })
    return train, dev


@pytest.mark.parametrize("reports", ["tree", "zip-inside", "zip-outside"])
def test_records_and_skips(tmp_path, reports):
    mimic = build_tree(tmp_path, reports)
    out = tmp_path / "out"
    args = ["--mimic-dir", mimic, "--out", out, "--workers", 1]
    if reports == "zip-outside":
        args += ["--reports", tmp_path / "mimic-cxr-reports.zip"]
    result = _run(*args)
    assert result.exit_code == 0, result.output
    train, dev = expected_records()
    assert json.loads((out / "train.json").read_text()) == train
    assert json.loads((out / "dev.json").read_text()) == dev
    assert json.loads((out / "test.json").read_text()) == []

    summary = json.loads((out / "prepare-summary.json").read_text())
    assert summary["records"] == {"train": 1, "dev": 2, "test": 0}
    counts = {key: value["count"] for key, value in summary["skipped"].items()}
    assert counts == {"no_split": 1, "not_frontal": 2, "no_report": 1, "unreadable_report": 1, "empty_report": 1,
                      "no_findings": 1, "missing_image": 1, "unreadable_image": 2, "bad_row": 1, "duplicate": 1}
    examples = {key: value["examples"] for key, value in summary["skipped"].items()}
    assert examples["missing_image"] == ["p10/p10001401/s54000003/d09.jpg"]
    # Garbage bytes and a JPEG cut short are both caught (the check decodes, at 1/8 scale).
    assert [e.split(" ")[0] for e in examples["unreadable_image"]] == ["p10/p10001884/s55000004/d10.jpg",
                                                                       "p10/p10002428/s58000007/d13.jpg"]
    assert examples["not_frontal"] == ["p10/p10000032/s50414267/d02.jpg (LATERAL)",
                                       "p10/p10002131/s57000006/d12.jpg (no view)"]
    assert examples["no_split"] == ["p10/p10002013/s56000005/d11.jpg"]
    report_where = "mimic-cxr-reports.zip:" if reports != "tree" else ""
    assert examples["no_report"] == [f"{report_where}p10/p10000935/s51178377.txt"]
    assert examples["unreadable_report"] == [f"{report_where}p10/p10001176/s53000002.txt (not UTF-8)"]
    assert examples["no_findings"] == [f"{report_where}p10/p10000898/s50771383.txt"]
    assert examples["duplicate"] == ["p10/p10000032/s50414267/d01.jpg (mimic-cxr-2.0.0-metadata.csv.gz line 16)"]
    assert summary["total_skipped"] == 12
    # Every metadata row is either a record or a counted skip.
    assert summary["total_records"] + summary["total_skipped"] == len(ROWS) + 2
    # The table names the kinds and counts.
    assert "unreadable report" in result.output and "image missing on disk" in result.output


def test_truncated_jpeg_is_caught_when_resizing(tmp_path):
    mimic = build_tree(tmp_path, chexpert=False)
    out = tmp_path / "out"
    result = _run("--mimic-dir", mimic, "--out", out, "--image-size", 32, "--workers", 1)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "prepare-summary.json").read_text())
    unreadable = summary["skipped"]["unreadable_image"]
    assert unreadable["count"] == 2
    assert {e.split(" ")[0] for e in unreadable["examples"]} == {"p10/p10001884/s55000004/d10.jpg",
                                                                 "p10/p10002428/s58000007/d13.jpg"}
    train = json.loads((out / "train.json").read_text())
    assert "chexpert_labels" not in train[0]  # no label CSV, no labels key
    assert summary["images"]["written"] == 3 and summary["images"]["root"] == str(out / "images")


def test_image_copies_resume_and_use_draft(tmp_path, monkeypatch):
    from PIL import JpegImagePlugin

    calls = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        calls.append((self.size, size))
        return original(self, mode, size)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    mimic = build_tree(tmp_path)
    out = tmp_path / "out"
    result = _run("--mimic-dir", mimic, "--out", out, "--image-size", 40, "--workers", 1)
    assert result.exit_code == 0, result.output
    copy = out / "images" / "p10/p10000032/s50414267/d01.jpg"
    with Image.open(copy) as image:
        assert image.size == (40, 48) and image.format == "JPEG" and image.mode == "L"
    # The 300x360 image was decoded at reduced size, asked for exactly the copy's size.
    assert ((300, 360), (40, 48)) in calls
    train = json.loads((out / "train.json").read_text())
    assert train[0]["image"] == "p10/p10000032/s50414267/d01.jpg"
    # Small images are copied byte for byte, not re-encoded.
    small = "p10/p10000764/s57375967/d03.jpg"
    assert (out / "images" / small).read_bytes() == (mimic / "files" / small).read_bytes()

    # A rerun needs --overwrite for the JSON files ...
    again = _run("--mimic-dir", mimic, "--out", out, "--image-size", 40, "--workers", 1)
    assert again.exit_code == 2 and "--overwrite" in again.output
    # ... and, after an interruption lost one copy, redoes only that one.
    copy.unlink()
    again = _run("--mimic-dir", mimic, "--out", out, "--image-size", 40, "--workers", 2, "--overwrite")
    assert again.exit_code == 0, again.output
    images = json.loads((out / "prepare-summary.json").read_text())["images"]
    assert (images["written"], images["reused"]) == (1, 2)
    assert copy.is_file()
    assert not list((out / "images").rglob("*.tmp"))
    # A different size never mixes into the same folder.
    other = _run("--mimic-dir", mimic, "--out", out, "--image-size", 64, "--overwrite")
    assert other.exit_code == 2 and "--image-size 40" in other.output


def test_parallel_matches_serial(tmp_path):
    mimic = build_tree(tmp_path)
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    assert _run("--mimic-dir", mimic, "--out", serial, "--workers", 1).exit_code == 0
    result = _run("--mimic-dir", mimic, "--out", parallel, "--workers", 2)
    assert result.exit_code == 0, result.output
    for name in ("train.json", "dev.json", "test.json"):
        assert (serial / name).read_text() == (parallel / name).read_text()


def test_no_reports_anywhere_is_one_clear_error(tmp_path):
    mimic = build_tree(tmp_path, reports="zip-outside")
    result = _run("--mimic-dir", mimic, "--out", tmp_path / "out")
    assert result.exit_code == 2
    assert "no report found" in result.output and "--reports" in result.output
    assert not (tmp_path / "out" / "train.json").exists()


@pytest.mark.parametrize("args, words", [
    ([], "nothing to prepare"),
    (["--mimic-dir", "{tmp}/nope"], "not a folder"),
    (["--mimic-dir", "{tmp}"], "mimic-cxr-2.0.0-metadata.csv"),
    (["--mimic-dir", "{tmp}", "--openi-reports", "x.csv"], "cannot be combined"),
    (["--mimic-dir", "{tmp}", "--split", "test"], "Open-I only"),
    (["--openi-reports", "x.csv"], "needs both"),
])
def test_user_errors(tmp_path, args, words):
    result = _run(*[a.format(tmp=tmp_path) for a in args], "--out", tmp_path / "out")
    assert result.exit_code == 2
    assert words in result.output
    assert "Traceback" not in result.output


def test_missing_column_is_named(tmp_path):
    mimic = build_tree(tmp_path)
    _write_csv(mimic / "mimic-cxr-2.0.0-split.csv", ["dicom_id", "study_id", "subject_id"], [], gz=False)
    result = _run("--mimic-dir", mimic, "--out", tmp_path / "out")
    assert result.exit_code == 2 and "missing column(s) split" in result.output


def test_damaged_zip_member_is_an_unreadable_report_not_a_crash(tmp_path):
    # A flipped byte inside a deflated member makes zlib fail mid-stream (zlib.error, not BadZipFile).
    from llavarad_cli.data.reports import ReportStore, UnreadableReport

    name = "files/p10/p10000032/s50414267.txt"
    path = tmp_path / "reports.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(name, " FINDINGS: " + "The lungs are clear. " * 200)
        zf.writestr("files/p10/p10000033/s50414268.txt", " FINDINGS: Normal.\n")
    data = bytearray(path.read_bytes())
    start = 30 + len(name) + 10  # inside the first member's compressed data
    for i in range(start, start + 40):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    store = ReportStore(path)
    try:
        with pytest.raises(UnreadableReport):
            store.read("10000032", "50414267")
        assert store.read("10000033", "50414268") == b" FINDINGS: Normal.\n"
    finally:
        store.close()


def test_full_disk_while_copying_stops_with_the_error_and_the_rerun_continues(tmp_path, monkeypatch):
    from test_prepare_resize import full_disk

    from llavarad_cli.data.prepare import prepare

    mimic = build_tree(tmp_path)
    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        full_disk(patch, after=2)  # the size marker and one copy fit, the next copy does not
        with pytest.raises(OSError) as err:
            prepare(out, image_size=40, workers=1, mimic_dir=mimic)
    assert err.value.strerror == "No space left on device"
    assert err.value.filename.startswith(str(out / "images")) and err.value.filename.endswith(".jpg")
    # Nothing counted as an unreadable image, no records written from a run that lost images.
    assert sorted(p.name for p in out.iterdir()) == ["images"]
    assert not [p for p in (out / "images").rglob("*") if p.name.endswith(".tmp")]
    summary = prepare(out, image_size=40, workers=1, mimic_dir=mimic)
    assert (summary["images"]["written"], summary["images"]["reused"]) == (2, 1)
    assert summary["skipped"]["unreadable_image"]["count"] == 2  # only the two really broken images
    assert summary["total_records"] == 3


def test_full_disk_while_writing_the_records_leaves_the_previous_files_whole_and_together(tmp_path, monkeypatch):
    from test_prepare_resize import full_disk

    from llavarad_cli.data.prepare import prepare

    mimic = build_tree(tmp_path)
    out = tmp_path / "out"
    assert _run("--mimic-dir", mimic, "--out", out, "--workers", 1).exit_code == 0
    names = ("train.json", "dev.json", "test.json", "prepare-summary.json")
    for name in names:  # mark the previous run's files, to see whether any was replaced
        (out / name).write_text(f'"previous {name}"\n')
    for after in (0, 1, 3):  # fails at train.json, at dev.json, at the summary
        with monkeypatch.context() as patch:
            full_disk(patch, after=after)
            with pytest.raises(OSError) as err:
                prepare(out, workers=1, overwrite=True, mimic_dir=mimic)
        assert err.value.strerror == "No space left on device"
        assert err.value.filename == str(out / names[after])
        # Not one new file beside old ones: the previous run's files, all of them, whole.
        assert {name: (out / name).read_text() for name in names} == {name: f'"previous {name}"\n' for name in names}
        assert sorted(p.name for p in out.iterdir()) == sorted(names)  # no staged or temp files left
    assert prepare(out, workers=1, overwrite=True, mimic_dir=mimic)["total_records"] == 3


@pytest.mark.parametrize("reports", ["zip-inside", "tree"])
def test_report_that_inflates_past_the_limit_is_an_unreadable_report_not_read_whole(tmp_path, reports):
    # A zip bomb among the reports: a few KB compressed, megabytes (in real ones gigabytes) once inflated.
    from llavarad_cli.data.reports import MAX_REPORT_BYTES, ReportStore

    mimic = build_tree(tmp_path, reports, chexpert=False)
    bomb = " FINDINGS: " + "The lungs are clear. " * (2 * MAX_REPORT_BYTES // 21)
    rel = _report_rel("10000032", "50414267")
    if reports == "tree":
        (mimic / rel).write_text(bomb)
    else:
        with zipfile.ZipFile(mimic / "mimic-cxr-reports.zip", "a", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("other/" + rel, bomb)  # a second member for the same study; the last one wins
        assert (mimic / "mimic-cxr-reports.zip").stat().st_size < 100_000
    out = tmp_path / "out"
    result = _run("--mimic-dir", mimic, "--out", out, "--workers", 1)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "prepare-summary.json").read_text())
    unreadable = summary["skipped"]["unreadable_report"]
    assert unreadable["count"] == 2  # d01 and d02 share the study
    assert any("s50414267.txt" in example and "larger than 1 MiB" in example for example in unreadable["examples"])
    assert not (out / "train.json").exists() or all(r["study_id"] != "50414267"
                                                     for r in json.loads((out / "train.json").read_text()))


def test_a_killed_image_worker_is_one_line_and_the_rerun_finishes(tmp_path, monkeypatch):
    import signal

    from test_prepare_resize import _kill_myself_on

    from llavarad_cli.data import resize

    mimic = build_tree(tmp_path)
    out = tmp_path / "out"
    monkeypatch.setattr(resize, "encode_copy", _kill_myself_on("d04.jpg", "encode_copy"))
    previous = signal.signal(signal.SIGALRM, lambda *a: pytest.fail("prepare still waiting on a dead worker"))
    signal.alarm(120)  # not a time limit on the work: the old pool waited forever, and a test must not
    try:
        result = _run("--mimic-dir", mimic, "--out", out, "--image-size", 40, "--workers", 2)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert result.exit_code == 1  # a fault of the machine, not a mistake in the input
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("error: an image worker process died") and "run the same command again" in lines[-1]
    assert "Traceback" not in result.output
    assert not (out / "train.json").exists() and not (out / "prepare-summary.json").exists()
    monkeypatch.undo()
    again = _run("--mimic-dir", mimic, "--out", out, "--image-size", 40, "--workers", 2)
    assert again.exit_code == 0, again.output
    assert json.loads((out / "prepare-summary.json").read_text())["total_records"] == 3


def test_a_report_that_is_a_named_pipe_is_unreadable_instead_of_a_hang(tmp_path):
    import os

    mimic = build_tree(tmp_path, "tree", chexpert=False)
    report = mimic / _report_rel("10000764", "57375967")
    report.unlink()
    os.mkfifo(report)  # open() on it would wait for a writer forever
    out = tmp_path / "out"
    result = _run("--mimic-dir", mimic, "--out", out, "--workers", 1)
    assert result.exit_code == 0, result.output
    unreadable = json.loads((out / "prepare-summary.json").read_text())["skipped"]["unreadable_report"]
    assert "p10/p10000764/s57375967.txt (not a regular file)" in unreadable["examples"]


def test_full_disk_through_the_cli_is_one_line_naming_the_file_and_exit_1(tmp_path, monkeypatch):
    from test_prepare_resize import full_disk

    mimic = build_tree(tmp_path)
    out = tmp_path / "out"
    full_disk(monkeypatch, after=1)  # the size marker fits, the first copy does not
    result = _run("--mimic-dir", mimic, "--out", out, "--image-size", 40, "--workers", 1)
    assert result.exit_code == 1
    assert not isinstance(result.exception, OSError)  # handled, not a traceback
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("error: could not write ") and str(out / "images") in line
    assert "No space left on device" in line and "unreadable" not in result.output
    assert sorted(p.name for p in out.iterdir()) == ["images"]
