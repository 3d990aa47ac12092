"""`llavarad infer` options: --limit, --overwrite, --seed, empty chunks, and the --gpus worker command line."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from llavarad_cli.cli import app
from test_infer import GEN, _preds, _run, ckpt, images, queries  # noqa: F401 (fixtures)


def test_limit_takes_the_first_n_records(ckpt, images, queries, tmp_path):
    out = tmp_path / "p.jsonl"
    result = _run("--query-file", queries, "--image-folder", images, "--output", out, "--model", ckpt,
                  "--limit", "3", *GEN)
    assert result.exit_code == 0, result.output
    assert sorted(_preds(out)) == ["r0", "r1", "r2"]  # the first three of the file
    assert "--limit: the first 3" in result.output


def test_overwrite_starts_again_and_still_refuses_a_foreign_file(ckpt, images, queries, tmp_path):
    out = tmp_path / "p.jsonl"
    args = ["--query-file", queries, "--image-folder", images, "--output", out, "--model", ckpt, "--limit", "2", *GEN]
    assert _run(*args).exit_code == 0
    first = out.read_text()
    old = json.loads(first.splitlines()[0]) | {"prediction": "from an older run"}
    out.write_text(json.dumps(old) + "\n" + "\n".join(first.splitlines()[1:]) + "\n")
    resumed = _run(*args)
    assert "2 already done" in resumed.output or "already in" in resumed.output
    assert _preds(out)[old["id"]]["prediction"] == "from an older run"  # resuming keeps what is there
    again = _run(*args, "--overwrite")
    assert again.exit_code == 0, again.output
    assert "2 predicted, 0 already done" in again.output
    assert out.read_text() == first  # started from nothing: the same findings as the first run
    foreign = tmp_path / "records.json"
    foreign.write_text(queries.read_text())
    refused = _run(*args[:4], "--output", foreign, *args[6:], "--overwrite")
    assert refused.exit_code == 2 and "not a predictions file" in refused.output
    assert foreign.read_text() == queries.read_text()


def test_overwrite_replaces_the_file_in_one_step(ckpt, images, queries, tmp_path, monkeypatch):
    """A kill between deleting and rewriting must not be possible: the empty file is renamed over the old one."""
    import os

    from llavarad_cli.infer import commands

    out = tmp_path / "p.jsonl"
    out.write_text(json.dumps({"id": "r0", "query": "q", "reference": "r", "prediction": "p"}) + "\n")
    calls = []
    real_replace = os.replace
    monkeypatch.setattr(os, "unlink", lambda *a, **k: calls.append(("unlink", a)) or None)
    monkeypatch.setattr(os, "remove", lambda *a, **k: calls.append(("remove", a)) or None)
    monkeypatch.setattr(os, "replace", lambda a, b: calls.append(("replace", b)) or real_replace(a, b))
    commands.start_again(out)
    assert out.read_text() == "" and ("replace", out) in [(c[0], type(out)(c[1])) for c in calls]
    assert not [c for c in calls if c[0] in ("unlink", "remove") and str(c[1][0]) == str(out)]


def test_seed_repeats_sampled_findings(ckpt, images, queries, tmp_path):
    runs = []
    for name, seed in (("a", "7"), ("b", "7")):
        out = tmp_path / f"{name}.jsonl"
        result = _run("--query-file", queries, "--image-folder", images, "--output", out, "--model", ckpt,
                      "--limit", "4", "--temperature", "1.5", "--seed", seed, "--device", "cpu",
                      "--max-new-tokens", "8")
        assert result.exit_code == 0, result.output
        runs.append({k: v["prediction"] for k, v in _preds(out).items()})
    assert runs[0] == runs[1]


def test_seed_reaches_torch(monkeypatch):
    import torch

    from llavarad_cli.infer.generate import Predictor
    from llavarad_cli.infer.settings import GenerationSettings

    class Tok:
        pad_token_id, unk_token_id, eos_token_id = 0, 0, 2

    class Model:
        class config:
            template = "v1"

    Predictor(Model(), Tok(), GenerationSettings(seed=11))
    a = torch.rand(3)
    torch.manual_seed(11)
    assert torch.equal(a, torch.rand(3))


def test_an_empty_chunk_says_so(ckpt, images, queries, tmp_path):
    out = tmp_path / "p_0.jsonl"
    result = _run("--query-file", queries, "--image-folder", images, "--output", out, "--model", ckpt,
                  "--num-chunks", "20", "--chunk-idx", "0", *GEN)  # 10 records: chunk 0 of 20 is empty
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "chunk 1/20: no records fall in this chunk" in text and "all 0 records" not in text
    assert out.read_text() == ""


def test_gpus_workers_run_the_command_line_they_are_given(ckpt, images, queries, tmp_path, monkeypatch):
    """--gpus N builds one `llavarad infer` command per worker; here each is parsed and run by the real CLI
    (in-process, the model on CPU instead of the GPU it names), and their merge equals a one-process run."""
    from llavarad_cli.infer import commands, launch

    seen = []
    real_load = commands._load

    def load_on_cpu(choice, err):
        seen.append(choice)
        return real_load(type(choice)(**{**choice.__dict__, "device": "cpu"}), err)

    class InProcess:
        def __init__(self, argv, env, stdout, stderr):
            assert argv[:3] == [sys.executable, "-m", "llavarad_cli"]
            result = CliRunner().invoke(app, argv[3:], env={"CUDA_VISIBLE_DEVICES": env["CUDA_VISIBLE_DEVICES"]})
            stdout.write(result.output)
            self.code = result.exit_code
            seen.append((env["CUDA_VISIBLE_DEVICES"], argv[3:]))

        def wait(self):
            return self.code

    monkeypatch.setattr(launch, "check_gpus", lambda gpus: None)
    monkeypatch.setattr(launch.subprocess, "Popen", InProcess)
    monkeypatch.setattr(commands, "_load", load_on_cpu)
    out = tmp_path / "gpus" / "preds.jsonl"
    args = ["--query-file", queries, "--image-folder", images, "--model", ckpt, "--max-new-tokens", "6",
            "--temperature", "0.7", "--top-p", "0.9", "--seed", "5", "--batch-size", "3", "--limit", "7"]
    result = _run(*args, "--output", out, "--gpus", "2")
    assert result.exit_code == 0, result.output
    assert "merged 2 file(s)" in result.output
    workers = [s for s in seen if isinstance(s, tuple)]
    assert [w[0] for w in workers] == ["0", "1"]
    for _, argv in workers:
        for flag, value in (("--max-new-tokens", "6"), ("--temperature", "0.7"), ("--top-p", "0.9"),
                            ("--seed", "5"), ("--limit", "7"), ("--device", "cuda"), ("--batch-size", "3")):
            assert argv[argv.index(flag) + 1] == value, (flag, argv)
    choices = [s for s in seen if not isinstance(s, tuple)]
    assert len(choices) == 2 and {c.device for c in choices} == {"cuda"} and {c.model for c in choices} == {str(ckpt)}
    single = tmp_path / "one.jsonl"
    assert _run(*args, "--output", single, "--device", "cpu").exit_code == 0
    merged = {k: v for k, v in _preds(out).items()}
    assert set(merged) == set(_preds(single)) == {f"r{i}" for i in range(7)}
