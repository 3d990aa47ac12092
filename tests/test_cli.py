"""The CLI surface: help, version, doctor, spec commands and the one-line error path (in-process)."""

from __future__ import annotations

import yaml
from typer.testing import CliRunner

from llavarad_cli import __version__
from llavarad_cli.cli import app

runner = CliRunner()

SUBCOMMANDS = ["prepare", "pretrain", "finetune", "infer", "merge-chunks", "evaluate", "doctor"]


def test_help_lists_every_subcommand():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in SUBCOMMANDS:
        assert name in result.output


def test_each_subcommand_has_help():
    for name in SUBCOMMANDS:
        result = runner.invoke(app, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert "--" in result.output  # documents options


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"llavarad {__version__}"


def test_doctor_prints_a_table_without_gpu_or_hub(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 0, result.output
    for item in ("torch", "transformers", "peft", "deepspeed", "open_clip_torch", "CUDA", "bf16", "flash-attn",
                 "HF hub", "HF cache"):
        assert item in result.output
    assert "offline mode" in result.output


def test_print_spec_then_dry_run(tmp_path):
    result = runner.invoke(app, ["finetune", "--print-spec"])
    assert result.exit_code == 0
    data = yaml.safe_load(result.output)
    records = tmp_path / "train.json"
    records.write_text("[]")
    (tmp_path / "img").mkdir()
    data["data"].update(train_records=str(records), image_folder=str(tmp_path / "img"))
    data["output"]["dir"] = str(tmp_path / "run")
    spec = tmp_path / "run.yaml"
    spec.write_text(yaml.safe_dump(data))
    result = runner.invoke(app, ["finetune", str(spec), "--dry-run", "--set", "train.learning_rate=2e-4"])
    assert result.exit_code == 0, result.output
    assert "learning_rate: 0.0002" in result.output


def test_bad_spec_is_one_red_line_exit_2(tmp_path):
    records = tmp_path / "train.json"
    records.write_text("[]")
    spec = tmp_path / "run.yaml"
    spec.write_text(yaml.safe_dump({
        "data": {"train_records": str(records), "image_folder": str(tmp_path)},
        "train": {"learnig_rate": 1e-4},
        "output": {"dir": str(tmp_path / "run")},
    }))
    result = runner.invoke(app, ["finetune", str(spec), "--dry-run"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: run.yaml: train.learnig_rate: unknown key")
    assert "Traceback" not in result.output


def test_missing_spec_argument_is_a_user_error():
    result = runner.invoke(app, ["pretrain"])
    assert result.exit_code == 2
    assert "needs a run spec" in result.output


def test_cli_module_imports_no_heavy_library():
    """`llavarad --help` stays fast because torch & co. are imported inside commands only."""
    import subprocess
    import sys

    probe = ("import sys, llavarad_cli.cli; "
             "print(sorted(m for m in ('torch', 'transformers', 'deepspeed', 'open_clip', 'timm', 'peft') "
             "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
