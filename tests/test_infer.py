"""`llavarad infer` on the tiny checkpoint: single image, batch, skips, batched == unbatched, resume, chunks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llavarad_cli.cli import app

GEN = ["--device", "cpu", "--max-new-tokens", "6"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    from llavarad_cli.testing import write_tiny_checkpoint

    out = tmp_path_factory.mktemp("ckpt") / "native"
    write_tiny_checkpoint(out, "native")
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory, data_dir) -> Path:
    """Small copies of the real test images (the originals are 2-3k px; decoding them is most of the time)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    for path in sorted((data_dir / "cxr-images").rglob("*.png")):
        target = root / path.parent.name / path.name
        target.parent.mkdir(exist_ok=True)
        with Image.open(path) as im:
            im.thumbnail((96, 96))
            im.save(target)
    return root


def _record(rid, image, reason=None, findings="The lungs are clear."):
    from llavarad_cli.prompts import conversations

    return {"id": rid, "image": image, "reason": reason, "findings": findings,
            "conversations": conversations(reason, findings)}


@pytest.fixture()
def queries(tmp_path, images) -> Path:
    pngs = sorted(str(p.relative_to(images)) for p in images.rglob("*.png"))
    reasons = [None, "cough", "Chest pain, cough, fever, dyspnea, evaluate for pneumonia.", "preop", "fever"]
    records = [_record(f"r{i}", png, reasons[i % len(reasons)]) for i, png in enumerate(pngs)]
    records += [_record(f"r{i + len(pngs)}", png, "shortness of breath") for i, png in enumerate(pngs[:3])]
    records.append(_record("missing", "iu/nope.png"))
    records.append(_record("escape", "../outside.png"))
    path = tmp_path / "test.json"
    path.write_text(json.dumps(records))
    return path


def _run(*args):
    result = CliRunner().invoke(app, ["infer", *map(str, args)])
    return result


def _preds(path: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), "duplicated ids"
    return {r["id"]: r for r in rows}


def test_single_image_json(ckpt, images):
    result = _run("--image", images / "iu" / "CXR3_IM-1384-1001.png", "--reason", "cough", "--model", ckpt,
                  "--json", *GEN)
    assert result.exit_code == 0, result.output
    obj = json.loads(result.stdout)
    assert obj["prompt"].endswith("given the following indication: cough ASSISTANT:")
    assert isinstance(obj["findings"], str) and obj["findings"]


def test_single_image_missing_is_one_line(ckpt, tmp_path):
    result = _run("--image", tmp_path / "none.png", "--model", ckpt, *GEN)
    assert result.exit_code == 2
    assert "image not found" in result.output and "Traceback" not in result.output


def test_batch_writes_all_readable_records_and_counts_skips(ckpt, images, queries, tmp_path):
    out = tmp_path / "preds.jsonl"
    result = _run("--query-file", queries, "--image-folder", images, "--output", out, "--model", ckpt,
                  "--batch-size", "4", *GEN)
    assert result.exit_code == 0, result.output
    preds = _preds(out)
    assert sorted(preds) == sorted(f"r{i}" for i in range(8))
    assert list(preds) == [f"r{i}" for i in range(8)]  # the query file's order, though predicted by length
    row = preds["r1"]
    assert set(row) == {"id", "query", "reference", "prediction", "model", "dtype"}
    assert row["model"] == str(ckpt) and row["dtype"] == "float32"
    assert row["query"].startswith("<image>\n") and row["reference"] == "The lungs are clear."
    assert "skipped 2 record(s)" in result.output and "image_outside_folder" in result.output

    again = _run("--query-file", queries, "--image-folder", images, "--output", out, "--model", ckpt, *GEN)
    assert again.exit_code == 0 and "8 already done" in again.output
    assert _preds(out) == preds


def test_batched_equals_unbatched(ckpt, images, queries, tmp_path):
    outs = {}
    for bs in (1, 8):
        out = tmp_path / f"bs{bs}.jsonl"
        result = _run("--query-file", queries, "--image-folder", images, "--output", out, "--model", ckpt,
                      "--batch-size", bs, *GEN)
        assert result.exit_code == 0, result.output
        outs[bs] = {k: v["prediction"] for k, v in _preds(out).items()}
    assert outs[1] == outs[8]


def test_resume_after_kill_and_torn_line(ckpt, images, queries, tmp_path, monkeypatch):
    from llavarad_cli.infer import generate

    full = tmp_path / "full.jsonl"
    assert _run("--query-file", queries, "--image-folder", images, "--output", full, "--model", ckpt,
                "--batch-size", "3", *GEN).exit_code == 0

    # A "kill" after the first batch: the second predict call dies.
    out = tmp_path / "preds.jsonl"
    real, calls = generate.Predictor.predict, []

    def dying(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(generate.Predictor, "predict", dying)
    _run("--query-file", queries, "--image-folder", images, "--output", out, "--model", ckpt,
         "--batch-size", "3", *GEN)
    monkeypatch.setattr(generate.Predictor, "predict", real)
    assert len(_preds(out)) == 3
    # ...and a half-written line on top, as a kill during write() leaves it.
    with open(out, "a") as fh:
        fh.write('{"id": "r7", "query": "<ima')
    result = _run("--query-file", queries, "--image-folder", images, "--output", out, "--model", ckpt,
                  "--batch-size", "3", *GEN)
    assert result.exit_code == 0, result.output
    assert "half-written" in result.output and "3 already done" in result.output
    assert _preds(out) == _preds(full)


@pytest.mark.parametrize("k", [3, 20])
def test_chunks_cover_every_record_once_and_merge(ckpt, images, queries, tmp_path, k):
    for i in range(k):
        result = _run("--query-file", queries, "--image-folder", images, "--output", tmp_path / f"p_{i}.jsonl",
                      "--model", ckpt, "--num-chunks", k, "--chunk-idx", i, *GEN)
        assert result.exit_code == 0, result.output
    files = sorted(tmp_path.glob("p_*.jsonl"))
    assert len(files) == k  # empty chunks (k > records) still leave an (empty) file
    merged = CliRunner().invoke(app, ["merge-chunks", *map(str, files), "--output", str(tmp_path / "all.jsonl"),
                                      "--query-file", str(queries)])
    # The two bad-image records are missing from every chunk: reported, exit 1 unless --allow-missing.
    assert merged.exit_code == 1 and "2 id(s) of the query file not predicted" in merged.output
    assert sorted(_preds(tmp_path / "all.jsonl")) == sorted(f"r{i}" for i in range(8))


def test_bad_chunk_index_and_gpus_without_gpus(ckpt, images, queries, tmp_path):
    result = _run("--query-file", queries, "--image-folder", images, "--output", tmp_path / "p.jsonl",
                  "--model", ckpt, "--num-chunks", "2", "--chunk-idx", "2", *GEN)
    assert result.exit_code == 2 and "--chunk-idx 2 is outside 0..1" in result.output
    result = _run("--query-file", queries, "--image-folder", images, "--output", tmp_path / "p.jsonl",
                  "--model", ckpt, "--gpus", "2")
    assert result.exit_code == 2 and "only 0 CUDA GPU(s) visible" in result.output


def test_needs_exactly_one_mode_and_a_folder(ckpt, queries, tmp_path):
    assert "either --image" in _run("--model", ckpt).output
    result = _run("--query-file", queries, "--output", tmp_path / "p.jsonl", "--model", ckpt)
    assert result.exit_code == 2 and "--image-folder" in result.output


def test_default_model_offline_without_a_cache_is_one_line(images, monkeypatch, tmp_path):
    """`llavarad infer --image X` with no local weights and HF_HUB_OFFLINE=1: one line naming the files and the
    cache it looked in, no traceback, before any loading."""
    import huggingface_hub.constants as c

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    result = _run("--image", images / "iu" / "CXR3_IM-1384-1001.png", "--device", "cpu")
    assert result.exit_code == 2, result.output
    out = " ".join(result.output.split())
    assert "config.json" in out and "microsoft/llava-rad" in out and str(tmp_path / "hub") in out
    assert "HF_HUB_OFFLINE=1" in out and "Traceback" not in out


def test_gpus_run_fails_when_its_merge_is_not_clean(ckpt, images, queries, tmp_path, monkeypatch):
    """--gpus N: the merge at the end decides the exit code (a conflict there must not exit 0)."""
    from llavarad_cli.infer import launch

    def fake_workers(args, output, gpus, log_dir):
        parts = [output.with_name(f"{output.stem}_{i}.jsonl") for i in range(gpus)]
        for i, part in enumerate(parts):
            part.write_text(json.dumps({"id": "r0", "query": "q", "reference": "r", "prediction": f"p{i}"}) + "\n")
        return parts

    monkeypatch.setattr(launch, "check_gpus", lambda gpus: None)
    monkeypatch.setattr(launch, "run_workers", fake_workers)
    out = tmp_path / "preds.jsonl"
    result = _run("--query-file", queries, "--output", out, "--model", ckpt, "--gpus", "2")
    assert result.exit_code == 2 and "--image-folder" in result.output  # checked before any worker starts
    result = _run("--query-file", queries, "--image-folder", images, "--output", out, "--model", ckpt, "--gpus", "2")
    assert result.exit_code == 1 and "conflicting duplicate id" in result.output and not out.exists()


def test_batch_counts_undecodable_dicom_and_symlinked_images_and_goes_on(ckpt, images, tmp_path):
    # A DICOM in a compression nothing installed decodes (or not DICOM at all), and a link out of the image
    # folder: each a counted skip; the batch still writes the good record.
    from test_images import _compressed_dicom

    from pydicom.uid import JPEGLSLossless

    folder = tmp_path / "images"
    folder.mkdir()
    good = next(images.rglob("*.png"))
    (folder / "good.png").write_bytes(good.read_bytes())
    _compressed_dicom(folder / "jls.dcm", JPEGLSLossless, b"\xff\xd8\xff\xf7 stream")
    (folder / "fake.dcm").write_bytes(b"not a dicom")
    (tmp_path / "private.png").write_bytes(good.read_bytes())
    (folder / "link.png").symlink_to(tmp_path / "private.png")
    records = [_record("good", "good.png"), _record("jls", "jls.dcm"), _record("fake", "fake.dcm"),
               _record("link", "link.png")]
    query_file = tmp_path / "q.json"
    query_file.write_text(json.dumps(records))
    out = tmp_path / "preds.jsonl"
    result = _run("--query-file", query_file, "--image-folder", folder, "--output", out, "--model", ckpt, *GEN)
    assert result.exit_code == 0, result.output
    assert sorted(_preds(out)) == ["good"]
    assert "skipped 3 record(s)" in result.output
    assert "unreadable_image" in result.output and "image_outside_folder" in result.output
