"""Faults and hostile input at the command level: full disks, unwritable outputs, hostile specs, terminal
escapes, Ctrl-C, the hub out of reach, and bad arguments caught before torch is imported."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

from llavarad_cli.cli import app

runner = CliRunner()
CLEAR = "\x1b[2J"


def _lines(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.strip()]


def _full_disk(monkeypatch):
    """Every fsync fails as on a full disk (we run as root, so chmod cannot make a folder unwritable)."""
    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", fsync)


def _preds(path, n=3, start=0):
    path.write_text("".join(json.dumps({"id": f"s{i}", "query": "q", "reference": "The lungs are clear.",
                                        "prediction": "The lungs are clear."}) + "\n" for i in range(start, start + n)))
    return path


# --- an output that cannot be written: one line, what/where/why, exit 1, nothing torn ------------------------

def test_evaluate_on_a_full_disk_is_one_line_and_leaves_no_partial_file(tmp_path, monkeypatch):
    preds = _preds(tmp_path / "preds.jsonl")
    _full_disk(monkeypatch)
    result = runner.invoke(app, ["evaluate", str(preds), "--metrics", "bleu", "--bootstrap", "0",
                                 "--out", str(tmp_path / "ev")])
    assert result.exit_code == 1, result.output
    lines = _lines(result)
    assert lines[-1].startswith("error: could not write ") and "No space left on device" in lines[-1]
    assert str(tmp_path / "ev") in lines[-1] and "Traceback" not in result.output
    assert [p.name for p in (tmp_path / "ev").iterdir()] == []  # no temp file, no half-written json
    monkeypatch.undo()
    again = runner.invoke(app, ["evaluate", str(preds), "--metrics", "bleu", "--bootstrap", "0",
                                "--out", str(tmp_path / "ev")])
    assert again.exit_code == 0, again.output


def test_merge_chunks_on_a_full_disk_and_into_a_file_in_a_folders_place(tmp_path, monkeypatch):
    parts = [_preds(tmp_path / "p_0.jsonl", 2), _preds(tmp_path / "p_1.jsonl", 2, start=2)]
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the output folder should be")
    result = runner.invoke(app, ["merge-chunks", *map(str, parts), "--output", str(blocker / "merged.jsonl")])
    assert result.exit_code == 1, result.output
    assert len(_lines(result)) == 1 and _lines(result)[0].startswith(f"error: could not write {blocker}")
    assert "a file is in the way where a folder is needed" in _lines(result)[0]
    _full_disk(monkeypatch)
    out = tmp_path / "merged.jsonl"
    result = runner.invoke(app, ["merge-chunks", *map(str, parts), "--output", str(out)])
    assert result.exit_code == 1, result.output
    assert f"could not write {out}: No space left on device" in _lines(result)[-1]
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "p_0.jsonl", "p_1.jsonl"]


def test_infer_on_a_full_disk_names_the_predictions_file_and_the_rerun_continues(tmp_path, monkeypatch):
    from llavarad_cli.testing import write_tiny_checkpoint
    from PIL import Image

    ckpt = tmp_path / "ckpt"
    write_tiny_checkpoint(ckpt, "native")
    (tmp_path / "img").mkdir()
    Image.new("L", (64, 64), 128).save(tmp_path / "img" / "a.png")
    records = [{"id": f"r{i}", "image": "a.png", "reason": None, "findings": "Clear."} for i in range(3)]
    (tmp_path / "q.json").write_text(json.dumps(records))
    out = tmp_path / "preds.jsonl"
    args = ["infer", "--query-file", str(tmp_path / "q.json"), "--image-folder", str(tmp_path / "img"),
            "--output", str(out), "--model", str(ckpt), "--device", "cpu", "--max-new-tokens", "3"]
    _full_disk(monkeypatch)
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert f"could not write {out}: No space left on device" in " ".join(result.output.split())
    assert "Traceback" not in result.output
    monkeypatch.undo()
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert sorted(ids) == ["r0", "r1", "r2"]


ONE_BATCH = ["--set", "train.global_batch_size=1", "--set", "train.per_device_batch_size=1", "--num-workers", "1"]


def _one_record(tmp_path):
    from llavarad_cli.prompts import conversations

    records = tmp_path / "train.json"
    records.write_text(json.dumps([{"id": "r0", "image": "a.png", "reason": None, "findings": "Clear.",
                                    "conversations": conversations(None, "Clear.")}]))
    (tmp_path / "img").mkdir(exist_ok=True)
    return records


def test_pretrain_output_dir_that_is_a_file_is_one_line(tmp_path, monkeypatch):
    from llavarad_cli.train import launcher

    monkeypatch.setattr(launcher.subprocess, "run", lambda *a, **k: pytest.fail("no worker may start"))
    records = _one_record(tmp_path)
    blocker = tmp_path / "run"
    blocker.write_text("not a folder")
    spec = tmp_path / "run.yaml"
    spec.write_text(yaml.safe_dump({"data": {"train_records": str(records), "image_folder": str(tmp_path / "img")},
                                    "output": {"dir": str(blocker / "pretrain")}}))
    result = runner.invoke(app, ["pretrain", str(spec), *ONE_BATCH])
    assert result.exit_code != 0 and "Traceback" not in result.output, result.output
    assert len(_lines(result)) >= 1 and _lines(result)[-1].startswith("error: ")
    assert str(blocker) in _lines(result)[-1]


# --- hostile specs -----------------------------------------------------------------------------------------------

def _spec(tmp_path, text: str):
    records = tmp_path / "train.json"
    records.write_text("[]")
    (tmp_path / "img").mkdir(exist_ok=True)
    spec = tmp_path / "run.yaml"
    spec.write_text(f"data:\n  train_records: {records}\n  image_folder: {tmp_path / 'img'}\n"
                    f"output:\n  dir: {tmp_path / 'run'}\n{text}")
    return spec


def test_yaml_alias_bomb_is_refused(tmp_path):
    bomb = "bomb:\n  a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"  {chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(8))
    result = runner.invoke(app, ["pretrain", str(_spec(tmp_path, bomb)), "--dry-run"])
    assert result.exit_code == 2, result.output
    assert _lines(result) == [_lines(result)[0]] and "aliases (*name) are not allowed" in result.output
    result = runner.invoke(app, ["pretrain", str(_spec(tmp_path, "")), "--dry-run", "--set", "train.epochs=*a"])
    assert result.exit_code == 2 and "not valid YAML" in result.output


def test_a_huge_projector_depth_is_refused_at_validation(tmp_path):
    result = runner.invoke(app, ["pretrain", str(_spec(tmp_path, "model:\n  projector_type: mlp999999999x_gelu\n")),
                                 "--dry-run"])
    assert result.exit_code == 2, result.output
    assert "model.projector_type: `mlp999999999x_gelu`: at most 8 layers" in " ".join(result.output.split())
    ok = runner.invoke(app, ["pretrain", str(_spec(tmp_path, "model:\n  projector_type: mlp8x_gelu\n")), "--dry-run"])
    assert ok.exit_code == 0, ok.output


@pytest.mark.parametrize("text, where", [
    ("train:\n  learning_rate: .inf\n", "train.learning_rate: inf is not a finite number"),
    ("train:\n  warmup_ratio: .nan\n", "train.warmup_ratio: nan is not a finite number"),
    ("train:\n  learning_rate: 'inf'\n", "train.learning_rate"),
])
def test_non_finite_numbers_are_refused_anywhere(tmp_path, text, where):
    result = runner.invoke(app, ["pretrain", str(_spec(tmp_path, text)), "--dry-run"])
    assert result.exit_code == 2, result.output
    assert len(_lines(result)) == 1 and where in result.output


def test_non_finite_override_and_nested_values(tmp_path):
    result = runner.invoke(app, ["pretrain", str(_spec(tmp_path, "")), "--dry-run", "--set", "train.learning_rate=-.inf"])
    assert result.exit_code == 2 and "train.learning_rate: -inf is not a finite number" in result.output
    from llavarad_cli.errors import UserError
    from llavarad_cli.specs import build_spec

    with pytest.raises(UserError, match=r"deepspeed\.config_overrides\[1\]: nan is not a finite number"):
        build_spec("pretrain", {"deepspeed": {"config_overrides": [1.0, float("nan")]}}, source="s")


# --- terminal escapes from input ---------------------------------------------------------------------------------

def test_escape_in_a_csv_header_is_shown_not_sent(tmp_path, data_dir):
    reports = tmp_path / "reports.csv"
    reports.write_text(f"uid,{CLEAR}findings,impression\n1,a,b\n")
    result = runner.invoke(app, ["prepare", "--openi-reports", str(reports), "--openi-projections",
                                 str(data_dir / "openi" / "indiana_projections.csv"),
                                 "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "\x1b" not in result.output and "\\x1b[2Jfindings" in result.output


def test_escape_in_a_record_id_and_a_file_name_is_shown_not_sent(tmp_path):
    a = tmp_path / f"a{CLEAR}.jsonl"
    b = tmp_path / "b.jsonl"
    row = {"id": f"id{CLEAR}1", "query": "q", "reference": "r"}
    a.write_text(json.dumps(row | {"prediction": "one"}) + "\n" + "not json\n")
    b.write_text(json.dumps(row | {"prediction": "two"}) + "\n")
    result = runner.invoke(app, ["merge-chunks", str(a), str(b), "--output", str(tmp_path / "m.jsonl")])
    assert result.exit_code == 1
    assert "\x1b" not in result.output
    assert "id\\x1b[2J1" in result.output and "a\\x1b[2J.jsonl" in result.output


def test_escape_in_findings_and_table_titles(tmp_path):
    preds = tmp_path / f"p{CLEAR}.jsonl"
    preds.write_text(json.dumps({"id": "x", "prediction": f"a{CLEAR}b", "reference": f"a{CLEAR}b"}) + "\n")
    result = runner.invoke(app, ["evaluate", str(preds), "--metrics", "bleu", "--bootstrap", "0",
                                 "--out", str(tmp_path / "ev")])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "p\\x1b[2J.jsonl" in " ".join(result.output.split())


# --- exit codes ------------------------------------------------------------------------------------------------

def test_ctrl_c_during_training_is_one_line_exit_130(tmp_path, monkeypatch):
    from llavarad_cli.train import launcher

    class InterruptedLauncher:  # Ctrl-C reaches the parent while it waits, and the launcher, which ends by itself
        def __init__(self, *args, **kwargs):
            self.waits = 0

        def wait(self, timeout=None):
            self.waits += 1
            if self.waits == 1:
                raise KeyboardInterrupt
            return -2

    monkeypatch.setattr(launcher.subprocess, "Popen", InterruptedLauncher)
    spec = _spec(tmp_path, "")
    _one_record(tmp_path)
    result = runner.invoke(app, ["pretrain", str(spec), *ONE_BATCH])
    assert result.exit_code == 130, result.output
    assert _lines(result)[-1].startswith("error: interrupted")
    assert "rerun the same command to resume" in result.output


def test_infer_rejects_bad_arguments_before_importing_torch(tmp_path):
    probe = ("import sys; from typer.testing import CliRunner; from llavarad_cli.cli import app; "
             "cases = [['--query-file', 'nope.json', '--output', 'p.jsonl', '--image-folder', '.'], "
             "['--query-file', 'q.json', '--output', 'p.jsonl', '--image-folder', 'no-such-folder'], "
             "['--query-file', 'q.json', '--output', 'p.jsonl', '--image-folder', '.', '--num-chunks', '2', "
             "'--chunk-idx', '5'], ['--image', 'no-such.png'], ['--model', 'x']]; "
             "codes = [CliRunner().invoke(app, ['infer', *c]).exit_code for c in cases]; "
             "print(codes, 'torch' in sys.modules)")
    (tmp_path / "q.json").write_text("[]")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, check=True,
                         env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert out.stdout.strip() == "[2, 2, 2, 2, 2] False", out.stdout + out.stderr


def test_an_unreachable_hub_is_found_once_and_quickly(monkeypatch, tmp_path):
    """Offline without HF_HUB_OFFLINE=1: one short probe, then the cache only; the line says what to set."""
    import urllib.error
    import urllib.request

    import huggingface_hub.constants as constants

    from llavarad_cli.errors import UserError
    from llavarad_cli.model import weights

    calls = []

    def no_network(request, timeout=None):
        calls.append(timeout)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setattr(weights, "_unreachable", {})
    for _ in range(2):
        with pytest.raises(UserError) as err:
            weights.resolve_file("microsoft/llava-rad", "config.json", "model config")
        line = err.value.one_line()
        assert "the hub is unreachable" in line and "name resolution" in line and "set HF_HUB_OFFLINE=1" in line
    assert calls == [weights.HUB_PROBE_TIMEOUT_S]  # probed once, with a short timeout
    assert constants.HF_HUB_OFFLINE is True  # everything after that goes straight to the cache
