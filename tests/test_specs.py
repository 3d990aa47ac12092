"""Run-spec validation: every kind of mistake gives one line naming file, field and problem."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from llavarad_cli import specs
from llavarad_cli.spec_template import default_spec_yaml
from llavarad_cli.errors import UserError


@pytest.fixture()
def paths(tmp_path: Path) -> dict:
    records = tmp_path / "train.json"
    records.write_text("[]")
    images = tmp_path / "images"
    images.mkdir()
    return {"records": records, "images": images, "out": tmp_path / "run"}


def write_spec(tmp_path: Path, paths: dict, **sections) -> Path:
    data = {
        "data": {"train_records": str(paths["records"]), "image_folder": str(paths["images"])},
        "output": {"dir": str(paths["out"])},
    }
    for name, value in sections.items():
        data[name] = {**data.get(name, {}), **value}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(UserError) as info:
        fn(*args, **kwargs)
    line = info.value.one_line()
    assert "\n" not in line
    return line


def test_valid_spec_gets_stage_defaults(tmp_path, paths):
    spec = specs.load_spec(write_spec(tmp_path, paths), "pretrain")
    assert spec.train.learning_rate == 1e-3 and spec.train.global_batch_size == 256
    assert spec.data.template == "plain" and spec.lora.enabled is False
    ft = specs.load_spec(write_spec(tmp_path, paths), "finetune")
    assert ft.train.learning_rate == 1e-4 and ft.train.epochs == 3 and ft.train.global_batch_size == 64
    assert (ft.lora.enabled, ft.lora.r, ft.lora.alpha, ft.lora.dropout) == (True, 64, 128, 0.05)
    assert ft.data.template == "v1" and ft.deepspeed.zero_stage == 2
    assert ft.data.train_records == paths["records"].resolve()


def test_out_of_range_value(tmp_path, paths):
    path = write_spec(tmp_path, paths, train={"learning_rate": -1})
    assert error_of(specs.load_spec, path, "pretrain") == "run.yaml: train.learning_rate: Input should be greater than 0"


def test_misspelled_key_names_the_close_match(tmp_path, paths):
    path = write_spec(tmp_path, paths, train={"learnig_rate": 2e-4})
    msg = error_of(specs.load_spec, path, "finetune")
    assert msg.startswith("run.yaml: train.learnig_rate: unknown key")
    assert "did you mean `learning_rate`?" in msg


def test_unknown_section(tmp_path, paths):
    path = write_spec(tmp_path, paths, trian={"epochs": 1})
    assert "run.yaml: trian: unknown key; did you mean `train`?" in error_of(specs.load_spec, path, "pretrain")


def test_wrong_type(tmp_path, paths):
    path = write_spec(tmp_path, paths, train={"epochs": "three"})
    assert error_of(specs.load_spec, path, "pretrain") == "run.yaml: train.epochs: Input should be a valid number, unable to parse string as a number"


def test_missing_required_field(tmp_path, paths):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"data": {"image_folder": str(paths["images"])}, "output": {"dir": "x"}}))
    # The stage default supplies a placeholder records path; removing it by override makes it truly missing.
    msg = error_of(specs.load_spec, path, "pretrain", ["data.train_records="])
    assert msg.startswith("run.yaml: data.train_records:")
    path.write_text(yaml.safe_dump({"data": {"train_records": str(paths["records"]), "image_folder": str(paths["images"])}}))
    defaults_without_output = dict(specs.STAGE_DEFAULTS["pretrain"])
    defaults_without_output.pop("output")
    spec_data = specs.deep_merge(defaults_without_output, yaml.safe_load(path.read_text()))
    with pytest.raises(Exception) as info:
        specs.RunSpec.model_validate(spec_data)
    assert "output: required field is missing" in specs.format_validation_error("run.yaml", info.value)


def test_path_that_does_not_exist(tmp_path, paths):
    path = write_spec(tmp_path, paths, data={"train_records": str(tmp_path / "nope.json")})
    msg = error_of(specs.load_spec, path, "pretrain")
    assert msg == f"run.yaml: data.train_records: file not found: {tmp_path / 'nope.json'}"


def test_several_problems_stay_on_one_line(tmp_path, paths):
    path = write_spec(tmp_path, paths, train={"learning_rate": 0, "warmup_ratio": 2})
    msg = error_of(specs.load_spec, path, "pretrain")
    assert "train.learning_rate" in msg and "train.warmup_ratio" in msg


def test_cross_field_check(tmp_path, paths):
    path = write_spec(tmp_path, paths, train={"global_batch_size": 10, "per_device_batch_size": 4})
    assert "must be a multiple of per_device_batch_size" in error_of(specs.load_spec, path, "pretrain")


def test_projector_type(tmp_path, paths):
    path = write_spec(tmp_path, paths, model={"projector_type": "mlp2x_relu"})
    assert "run.yaml: model.projector_type: must be `linear` or `mlp{N}x_gelu`" in error_of(specs.load_spec, path, "pretrain")
    ok = specs.load_spec(write_spec(tmp_path, paths, model={"projector_type": "mlp3x_gelu"}), "pretrain")
    assert ok.model.projector_type == "mlp3x_gelu"


def test_wrong_stage_and_bad_yaml(tmp_path, paths):
    path = write_spec(tmp_path, paths)
    data = yaml.safe_load(path.read_text())
    data["stage"] = "finetune"
    path.write_text(yaml.safe_dump(data))
    assert "this spec is for `finetune`, not `pretrain`" in error_of(specs.load_spec, path, "pretrain")
    path.write_text("train: [unclosed\n")
    assert error_of(specs.load_spec, path, "pretrain").startswith("run.yaml: not valid YAML (line")
    path.write_text("- a list\n")
    assert "must be a mapping" in error_of(specs.load_spec, path, "pretrain")
    assert "spec file not found" in error_of(specs.load_spec, tmp_path / "absent.yaml", "pretrain")


def test_overrides(tmp_path, paths):
    path = write_spec(tmp_path, paths)
    spec = specs.load_spec(path, "finetune", ["train.learning_rate=2e-4", "lora.r=16", "output.report_to=[tensorboard]"])
    assert spec.train.learning_rate == 2e-4 and spec.lora.r == 16 and spec.output.report_to == ["tensorboard"]
    assert "train.learnig_rate: unknown key" in error_of(specs.load_spec, path, "finetune", ["train.learnig_rate=1"])
    assert "expected KEY=VALUE" in error_of(specs.load_spec, path, "finetune", ["train.learning_rate"])
    assert "`learning_rate` is a value, not a section" in error_of(
        specs.load_spec, path, "finetune", ["train.learning_rate.x=1"])


def test_default_spec_is_complete_commented_and_loads(tmp_path, paths):
    for stage in specs.STAGES:
        text = default_spec_yaml(stage)
        assert text.count("# ") > 20
        data = yaml.safe_load(text)
        assert set(data) == set(specs.RunSpec.model_fields)
        data["data"].update(train_records=str(paths["records"]), image_folder=str(paths["images"]))
        data["model"]["pretrained_projector"] = None
        spec = specs.build_spec(stage, data, source="default.yaml")
        assert spec.stage == stage


def test_resolved_spec_round_trips_with_versions(tmp_path, paths):
    spec = specs.load_spec(write_spec(tmp_path, paths), "finetune", ["train.seed=7"])
    target = specs.write_resolved_spec(spec)
    assert target == paths["out"].resolve() / "resolved_spec.yaml"
    text = target.read_text()
    assert "# Package versions of this run" in text and "torch" in text
    again = specs.load_spec(target, "finetune")
    assert again == spec
    assert (target.parent / "versions.json").is_file()
