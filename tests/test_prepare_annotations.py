"""`llavarad prepare --annotations`: the PhysioNet LLaVA-Rad annotation JSON, validated and normalised."""

from __future__ import annotations

import io
import json

from PIL import Image
from typer.testing import CliRunner

from llavarad_cli.cli import app

OLD_PROMPT = "<image>\nDescribe the findings of the chest x-ray.\n"
IMG = "mimic/p10/p10003502/s50084553/70d7e600-373c1311-929f5ff9-23ee3621-ff551ff9.jpg"
IMG2 = "mimic/p10/p10003502/s50084553/aaaaaaaa-bbbbbbbb-cccccccc-dddddddd-eeeeeeee.jpg"
IMG3 = "mimic/p19/p19000001/s59000001/ffffffff-bbbbbbbb-cccccccc-dddddddd-eeeeeeee.jpg"


def _item(image=IMG, method="rule-based", view="PA", findings="Lungs are clear.", reason="eval\nfor edema",
          **extra):
    item = {"id": "10003502_50084553", "image": image, "generate_method": method, "reason": reason,
            "impression": "No acute process.", "indication": None, "history": None, "view": view,
            "orientation": "Erect", "chexpert_labels": {"Edema": 1.0, "Pneumonia": float("nan")},
            "conversations": [{"from": "human", "value": OLD_PROMPT}, {"from": "gpt", "value": findings}]}
    item.update(extra)
    return item


def _write(folder, name, items):
    # json.dumps writes NaN as the PhysioNet files do (they come from pandas).
    (folder / name).write_text(json.dumps(items))


def test_records_are_normalised(tmp_path):
    folder = tmp_path / "ann"
    folder.mkdir()
    _write(folder, "chat_train_MIMIC_CXR_all_gpt4extract_rulebased_v1.json", [
        _item(),
        _item(method="gpt4", findings="The lungs are clear."),
        _item(image=IMG2, view="LATERAL"),
        _item(image=IMG2, findings=None),
        _item(image=IMG2, findings=float("nan")),
        _item(image="../../etc/passwd"),
        "not a record",
        _item(),  # same image, same method: a duplicate
        _item(image=IMG2, view="AP", reason=None),
    ])
    _write(folder, "chat_test_MIMIC_CXR_all_gpt4extract_rulebased_v1.json", [
        _item(image=IMG3, method="gpt4"), _item(image=IMG3, reason=float("nan")),
        _item(),  # the same image as in train: ids stay unique across all the files
    ])
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["prepare", "--annotations", str(folder), "--out", str(out)])
    assert result.exit_code == 0, result.output

    train = json.loads((out / "train.json").read_text())
    assert [r["id"] for r in train] == [
        "10003502_50084553_70d7e600-373c1311-929f5ff9-23ee3621-ff551ff9",
        "10003502_50084553_70d7e600-373c1311-929f5ff9-23ee3621-ff551ff9_gpt4",
        "10003502_50084553_aaaaaaaa-bbbbbbbb-cccccccc-dddddddd-eeeeeeee",
    ]
    assert train[0] == {
        "id": "10003502_50084553_70d7e600-373c1311-929f5ff9-23ee3621-ff551ff9",
        "subject_id": "10003502", "study_id": "50084553",
        "dicom_id": "70d7e600-373c1311-929f5ff9-23ee3621-ff551ff9",
        "image": "p10/p10003502/s50084553/70d7e600-373c1311-929f5ff9-23ee3621-ff551ff9.jpg",
        "view": "PA", "split": "train", "reason": "eval\nfor edema", "findings": "Lungs are clear.",
        "impression": "No acute process.", "generate_method": "rule-based",
        "chexpert_labels": {"Edema": 1.0, "Pneumonia": None},
        "conversations": [
            {"from": "human", "value": "<image>\nProvide a description of the findings in the radiology image "
                                       "given the following indication: eval for edema"},
            {"from": "gpt", "value": "Lungs are clear."}],
    }
    assert train[2]["conversations"][0]["value"] == "<image>\nProvide a description of the findings in the radiology image."
    test = json.loads((out / "test.json").read_text())
    assert len(test) == 1 and test[0]["reason"] is None and test[0]["generate_method"] == "rule-based"
    assert not (out / "dev.json").exists()
    # Standard JSON out (no NaN), even though NaN came in.
    assert "NaN" not in (out / "train.json").read_text()

    summary = json.loads((out / "prepare-summary.json").read_text())
    counts = {key: value["count"] for key, value in summary["skipped"].items() if value["count"]}
    assert counts == {"bad_row": 2, "not_frontal": 1, "no_findings": 2, "not_rule_based": 1, "duplicate": 2}
    assert summary["records"] == {"train": 3, "test": 1}


def test_images_checked_under_mimic_dir(tmp_path):
    folder = tmp_path / "ann"
    folder.mkdir()
    _write(folder, "chat_dev_x.json", [_item(), _item(image=IMG2), _item(method="gpt4")])
    mimic = tmp_path / "mimic"
    image = mimic / "files" / IMG.removeprefix("mimic/")
    image.parent.mkdir(parents=True)
    buf = io.BytesIO()
    Image.new("L", (20, 30)).save(buf, "JPEG")
    image.write_bytes(buf.getvalue())
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["prepare", "--annotations", str(folder), "--mimic-dir", str(mimic),
                                      "--out", str(out), "--workers", "1", "--image-size", "16"])
    assert result.exit_code == 0, result.output
    dev = json.loads((out / "dev.json").read_text())
    assert [r["generate_method"] for r in dev] == ["rule-based", "gpt4"]
    assert {r["image"] for r in dev} == {IMG.removeprefix("mimic/")}
    summary = json.loads((out / "prepare-summary.json").read_text())
    assert summary["skipped"]["missing_image"]["examples"] == [IMG2.removeprefix("mimic/")]
    # Both records share one copy, made once.
    assert (summary["images"]["written"], summary["images"]["reused"]) == (1, 0)
    with Image.open(out / "images" / dev[0]["image"]) as copy:
        assert copy.size == (16, 24)


def test_annotation_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(app, ["prepare", "--annotations", str(empty), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "no annotation JSON files" in result.output
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "chat_train_x.json").write_text("{not json")
    result = CliRunner().invoke(app, ["prepare", "--annotations", str(bad), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "not valid JSON" in result.output
    good = tmp_path / "good"
    good.mkdir()
    _write(good, "chat_train_x.json", [_item()])
    result = CliRunner().invoke(app, ["prepare", "--annotations", str(good), "--image-size", "64",
                                      "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "--image-size needs the images" in result.output
