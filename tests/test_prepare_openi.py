"""`llavarad prepare` on the real Open-I (Indiana University) CSVs and images."""

from __future__ import annotations

import json
import shutil

from PIL import Image
from typer.testing import CliRunner

from llavarad_cli.cli import app
from llavarad_cli.data.openi import openi_stem

UID7 = {
    "id": "CXR7_IM-2263-1001",
    "subject_id": None,
    "study_id": "7",
    "dicom_id": "CXR7_IM-2263-1001",
    "image": "CXR7_IM-2263-1001.png",
    "view": "Frontal",
    "split": "test",
    "reason": "Preop lumbar surgery",
    "findings": "The cardiac contours are normal. XXXX basilar atelectasis. The lungs are clear. Thoracic "
                "spondylosis. Lower cervical XXXX arthritis.",
    "impression": "Basilar atelectasis. No confluent lobar consolidation or pleural effusion.",
    "generate_method": "rule-based",
    "conversations": [
        {"from": "human", "value": "<image>\nProvide a description of the findings in the radiology image given "
                                   "the following indication: Preop lumbar surgery"},
        {"from": "gpt", "value": "The cardiac contours are normal. XXXX basilar atelectasis. The lungs are clear. "
                                 "Thoracic spondylosis. Lower cervical XXXX arthritis."},
    ],
}


def _openi_args(data_dir):
    return ["prepare", "--openi-reports", str(data_dir / "openi" / "indiana_reports.csv"),
            "--openi-projections", str(data_dir / "openi" / "indiana_projections.csv")]


def test_all_real_reports_without_images(data_dir, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [*_openi_args(data_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    records = json.loads((out / "test.json").read_text())
    summary = json.loads((out / "prepare-summary.json").read_text())
    # 7,466 images: 3,648 lateral, 3,818 frontal of which 511 belong to studies with an empty findings field.
    assert len(records) == 3307 == summary["records"]["test"]
    counts = {key: value["count"] for key, value in summary["skipped"].items()}
    assert counts == {"not_frontal": 3648, "no_report": 0, "no_findings": 511, "missing_image": 0,
                      "unreadable_image": 0, "bad_row": 0}
    assert summary["skipped"]["no_findings"]["examples"][0] == "uid 3"
    assert summary["images"]["not_checked"] == 3307
    assert not (out / "train.json").exists()
    assert len({r["id"] for r in records}) == len(records)
    assert next(r for r in records if r["study_id"] == "7") == UID7
    # uid 1 has an indication; every record's prompt is one of the two exact wordings.
    for record in records:
        human = record["conversations"][0]["value"]
        if record["reason"] is None:
            assert human == "<image>\nProvide a description of the findings in the radiology image."
        else:
            assert human == ("<image>\nProvide a description of the findings in the radiology image given the "
                             f"following indication: {record['reason']}")
        assert record["conversations"][1]["value"] == record["findings"]


def test_with_real_images_in_kaggle_names_and_resized(data_dir, tmp_path, monkeypatch):
    # The Kaggle download names images 7_IM-2263-1001.dcm.png inside a sub-folder.
    images = tmp_path / "images" / "images_normalized"
    images.mkdir(parents=True)
    for name in ("CXR3_IM-1384-1001.png", "CXR7_IM-2263-1001.png", "CXR7_IM-2263-2001.png"):
        shutil.copy(data_dir / "cxr-images" / "iu" / name, images / (name[3:].replace(".png", ".dcm.png")))
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)  # a relative --out, as users type it
    result = CliRunner().invoke(app, [*_openi_args(data_dir), "--openi-images", str(tmp_path / "images"),
                                      "--image-size", "256", "--split", "dev", "--workers", "1", "--out", "out"])
    assert result.exit_code == 0, result.output
    records = json.loads((out / "dev.json").read_text())
    assert [r["id"] for r in records] == ["CXR7_IM-2263-1001"]
    assert records[0]["image"] == "images_normalized/7_IM-2263-1001.dcm.jpg"
    assert records[0]["split"] == "dev"
    with Image.open(out / "images" / records[0]["image"]) as image:
        assert image.size == (256, 256) and image.format == "JPEG"
    summary = json.loads((out / "prepare-summary.json").read_text())
    # Every other frontal image with findings is not in the folder: counted, not fatal.
    assert summary["skipped"]["missing_image"]["count"] == 3306
    assert summary["images"]["written"] == 1
    # The summary says where the copies are wherever it is read from.
    assert summary["images"]["root"] == str(out / "images")


def test_open_i_names():
    assert openi_stem("7_IM-2263-1001.dcm.png") == "CXR7_IM-2263-1001"
    assert openi_stem("CXR7_IM-2263-1001.png") == "CXR7_IM-2263-1001"
    assert openi_stem("notes.txt") is None


def test_bad_split_is_a_user_error(data_dir, tmp_path):
    result = CliRunner().invoke(app, [*_openi_args(data_dir), "--split", "validation", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--split 'validation'" in result.output


def _small_openi(data_dir, tmp_path, extra_projection_rows):
    """The real reports, and the first frontal rows of the real projections plus `extra_projection_rows`."""
    lines = (data_dir / "openi" / "indiana_projections.csv").read_text().splitlines()
    projections = tmp_path / "projections.csv"
    projections.write_text("\n".join([*lines[:13], *extra_projection_rows]) + "\n")
    return ["prepare", "--openi-reports", str(data_dir / "openi" / "indiana_reports.csv"),
            "--openi-projections", str(projections)], lines


def test_a_repeated_projection_row_is_a_counted_duplicate_and_infer_reads_the_records(data_dir, tmp_path):
    from llavarad_cli.infer.queries import read_queries

    lines = (data_dir / "openi" / "indiana_projections.csv").read_text().splitlines()
    frontal = next(line for line in lines[1:] if line.split(",")[2] == "Frontal")
    uid, name, view = frontal.split(",")
    # The same row again, and the same image under its Open-I name: both would repeat the record id.
    args, _ = _small_openi(data_dir, tmp_path, [frontal, f"{uid},CXR{name.replace('.dcm.png', '.png')},{view}"])
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    records = json.loads((out / "test.json").read_text())
    assert len({r["id"] for r in records}) == len(records)
    duplicate = json.loads((out / "prepare-summary.json").read_text())["skipped"]["duplicate"]
    assert duplicate["count"] == 2 and duplicate["examples"][0].endswith("(projections.csv line 14)")
    assert len(read_queries(out / "test.json").queries) == len(records)


def test_a_repeated_report_uid_is_a_counted_duplicate_and_the_first_row_counts(data_dir, tmp_path):
    import csv

    with (data_dir / "openi" / "indiana_reports.csv").open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    first = rows[0]
    reports = tmp_path / "reports.csv"
    with reports.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(first))
        writer.writeheader()
        writer.writerows([*rows[:20], {**first, "findings": "A later copy of this study's report."},
                          {**first, "uid": " "}])
    args, _ = _small_openi(data_dir, tmp_path, [])
    args[args.index("--openi-reports") + 1] = str(reports)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    records = json.loads((out / "test.json").read_text())
    study = [r for r in records if r["study_id"] == first["uid"]]
    assert study and all(r["findings"] != "A later copy of this study's report." for r in study)
    skipped = json.loads((out / "prepare-summary.json").read_text())["skipped"]
    assert skipped["duplicate"]["count"] == 1 and skipped["duplicate"]["examples"] == [f"uid {first['uid']} (reports.csv line 22)"]
    assert skipped["bad_row"]["examples"] == ["reports.csv line 23"]


def test_a_field_over_the_csv_limit_is_a_counted_bad_row_and_the_rest_is_read(data_dir, tmp_path):
    lines = (data_dir / "openi" / "indiana_projections.csv").read_text().splitlines()
    huge = '9999,"' + "x" * 200_000 + '",Frontal'  # over Python's 128 KiB field limit
    args, _ = _small_openi(data_dir, tmp_path, [huge, lines[13]])
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "prepare-summary.json").read_text())
    bad = summary["skipped"]["bad_row"]
    assert bad["count"] == 1 and bad["examples"][0].startswith("projections.csv line 14 (field larger than")
    (tmp_path / "plain").mkdir()
    kept_before = CliRunner().invoke(app, [*_small_openi(data_dir, tmp_path / "plain", [lines[13]])[0],
                                           "--out", str(tmp_path / "plain-out")])
    assert kept_before.exit_code == 0, kept_before.output
    assert json.loads((out / "test.json").read_text()) == json.loads((tmp_path / "plain-out" / "test.json").read_text())


def test_an_image_that_is_a_symlink_out_of_the_image_folder_is_not_read(data_dir, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(data_dir / "cxr-images" / "iu" / "CXR7_IM-2263-1001.png", images)
    outside = tmp_path / "elsewhere" / "someone-elses.png"
    outside.parent.mkdir()
    shutil.copy(data_dir / "cxr-images" / "iu" / "CXR3_IM-1384-1001.png", outside)
    (images / "CXR1_IM-0001-4001.png").symlink_to(outside)  # uid 1's frontal image, a study with findings
    for size in ([], ["--image-size", "64"]):
        out = tmp_path / f"out{len(size)}"
        result = CliRunner().invoke(app, [*_openi_args(data_dir), "--openi-images", str(images), *size,
                                          "--workers", "1", "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert [r["id"] for r in json.loads((out / "test.json").read_text())] == ["CXR7_IM-2263-1001"]
        outside_folder = json.loads((out / "prepare-summary.json").read_text())["skipped"]["image_outside_folder"]
        assert outside_folder["count"] == 1
        assert outside_folder["examples"] == ["CXR1_IM-0001-4001.png (a symbolic link out of the image folder)"]
        assert not (out / "images" / "CXR1_IM-0001-4001.jpg").exists()


def test_control_characters_from_the_csv_reach_the_terminal_as_escapes(data_dir, tmp_path):
    from rich.console import Console

    from llavarad_cli.data.prepare import summary_table

    projections = tmp_path / "projections.csv"
    projections.write_text("uid,filename,projection\n1,1_IM-\x1b[2J\x1b]0;owned\x07.dcm.png,Lateral\n"
                           "9\x1b[2J9,9_IM-1-1.dcm.png,Frontal\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["prepare", "--openi-reports", str(data_dir / "openi" / "indiana_reports.csv"),
                                      "--openi-projections", str(projections), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\x07" not in result.output
    summary = json.loads((out / "prepare-summary.json").read_text())
    wide = Console(width=300, record=True, force_terminal=False)
    wide.print(summary_table(summary))
    text = wide.export_text()
    assert "1_IM-\\x1b[2J\\x1b]0;owned\\x07.dcm.png (Lateral)" in text and "uid 9\\x1b[2J9" in text
    assert "\x1b" not in text

    header = tmp_path / "header.csv"
    header.write_text("uid,\x1b[2Jfilename,projection\n1,a.png,Frontal\n")
    result = CliRunner().invoke(app, ["prepare", "--openi-reports", str(data_dir / "openi" / "indiana_reports.csv"),
                                      "--openi-projections", str(header), "--out", str(tmp_path / "out2")])
    assert result.exit_code == 2 and "missing column(s) filename" in result.output
    assert "\x1b" not in result.output and "\\x1b[2Jfilename" in result.output
