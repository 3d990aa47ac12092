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


#: What each command's help must say: its summary line and the options a user looks for.
HELP = {
    "prepare": ("Build training/evaluation records", ["--out", "--mimic-dir", "--openi-reports", "--image-size", "--overwrite"]),
    "pretrain": ("Stage 1: align the projector", ["--print-spec", "--dry-run", "--set", "--num-workers"]),
    "finetune": ("Stage 2: LoRA", ["--print-spec", "--dry-run", "--set", "--merge"]),
    "infer": ("Write findings for one image", ["--image", "--query-file", "--output", "--limit", "--overwrite",
                                               "--seed", "--gpus", "--max-new-tokens"]),
    "merge-chunks": ("Join per-GPU prediction files", ["--output", "--query-file", "--allow-missing"]),
    "evaluate": ("Score predictions with BLEU-1/4", ["--metrics", "--bootstrap", "--chexbert-weights", "--plot"]),
    "doctor": ("Report versions, GPUs and memory", ["--no-hub"]),
}


def _help(*command: str) -> str:
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, (command, result.output)
    return result.output


def test_each_subcommand_has_help():
    assert set(HELP) == set(SUBCOMMANDS)
    for name, (summary, options) in HELP.items():
        text = _help(name)
        assert f"Usage: llavarad {name}" in text and summary in text, name
        for option in options:
            assert option in text, (name, option)
        assert "<bool>" not in text, name  # a flag takes no value: no type placeholder


def test_option_defaults_are_the_librarys():
    """The CLI shows and uses the library's defaults instead of writing them again."""
    import typer

    from llavarad_cli.evaluate.options import DEFAULT_METRICS, EvalOptions
    from llavarad_cli.infer.settings import DEFAULT_BATCH_SIZE, GenerationSettings, ModelChoice

    commands = typer.main.get_command(app).commands
    infer = {p.name: p.default for p in commands["infer"].params}
    gen, choice = GenerationSettings(), ModelChoice()
    assert (infer["max_new_tokens"], infer["temperature"], infer["top_p"], infer["num_beams"], infer["seed"]) == \
        (gen.max_new_tokens, gen.temperature, gen.top_p, gen.num_beams, gen.seed)
    assert (infer["model"], infer["attn"], infer["batch_size"]) == (choice.model, choice.attn, DEFAULT_BATCH_SIZE)
    evaluate = {p.name: p.default for p in commands["evaluate"].params}
    ev = EvalOptions()
    assert (evaluate["bootstrap"], evaluate["seed"], evaluate["chexbert_batch_size"]) == \
        (ev.bootstrap, ev.seed, ev.chexbert_batch_size)
    cp = ev.chexprompt
    assert (evaluate["cp_base_url"], evaluate["cp_model"], evaluate["cp_api_version"], evaluate["cp_rpm"],
            evaluate["cp_workers"], evaluate["cp_retries"]) == \
        (cp.base_url, cp.model, cp.api_version, cp.requests_per_minute, cp.workers, cp.max_retries)
    assert "default: " + ",".join(DEFAULT_METRICS) in " ".join(_help("evaluate").split())
    assert "[default: 256]" in _help("infer") and "[default: 500]" in _help("evaluate")


def test_usage_errors_are_one_line_exit_2():
    for args, words in ((["infer", "--bogus"], "No such option: --bogus"),
                        (["infer", "--batch-size", "x"], "Invalid value for '--batch-size'"),
                        (["evaluate"], "Missing argument"),
                        (["nosuch"], "No such command 'nosuch'")):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], (args, result.output)
        assert "--help` lists the" in lines[0]


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
    rows = [line.split("│")[1].strip() for line in result.output.splitlines() if line.count("│") >= 3]
    assert rows.count("flash-attn") == 1
    assert "CheXbert weights" in rows and "RadGraph weights" in rows and "DICOM decoders" in rows


def test_doctor_names_the_dicom_encodings_no_installed_decoder_reads(monkeypatch):
    import pydicom.pixels

    from llavarad_cli.data.images import DICOM_DECODER_HINT
    from llavarad_cli.doctor import dicom_row

    def decoder(available):
        return type("Decoder", (), {"is_available": available})()

    # every encoding readable but JPEG-LS (transfer syntax 1.2.840.10008.1.2.4.80)
    monkeypatch.setattr(pydicom.pixels, "get_decoder", lambda syntax: decoder(not syntax.endswith(".4.80")))
    label, text = dicom_row()
    assert label == "DICOM decoders"
    assert text == ("uncompressed, JPEG baseline, JPEG extended, JPEG lossless, JPEG 2000, RLE; not JPEG-LS (such "
                    "images are counted skips): " + DICOM_DECODER_HINT)
    monkeypatch.setattr(pydicom.pixels, "get_decoder", lambda syntax: decoder(True))
    assert dicom_row()[1] == "uncompressed, JPEG baseline, JPEG extended, JPEG lossless, JPEG-LS, JPEG 2000, RLE"


def test_doctor_finds_scorer_weights_in_the_hf_cache_without_downloading(monkeypatch, tmp_path):
    from llavarad_cli.doctor import scorer_rows
    from llavarad_cli.evaluate.assets import SCORERS_REPO

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    cache = tmp_path / "hub"
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    rows = dict(scorer_rows())
    assert rows["CheXbert weights"].startswith("not in the HF cache") and "--chexbert-weights" in rows["CheXbert weights"]
    # a cached chexbert.pth, laid out as huggingface_hub stores it
    repo = cache / f"models--{SCORERS_REPO.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "chexbert.pth").write_bytes(b"x")
    rows = dict(scorer_rows())
    assert rows["CheXbert weights"] == f"found in the HF cache: {repo / 'snapshots' / 'abc123' / 'chexbert.pth'}"
    assert rows["RadGraph weights"].startswith("not in the HF cache")


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
