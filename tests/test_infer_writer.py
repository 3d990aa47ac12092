"""The resumable predictions writer: what is redone, what is kept, and what is refused untouched."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from llavarad_cli.errors import UserError
from llavarad_cli.predictions import Prediction


def _row(i, pred=None):
    return {"id": f"s{i}", "query": "<image>\nq", "reference": "r", "prediction": pred or f"p{i}"}


def _pred(i):
    return Prediction(id=f"s{i}", prediction=f"p{i}", reference="r", query="<image>\nq")


def _write(path: Path, rows, extra_lines=()):
    text = "".join(json.dumps(r) + "\n" for r in rows) + "".join(extra_lines)
    path.write_text(text)
    return path


def test_torn_and_damaged_prediction_files(tmp_path):
    from llavarad_cli.infer.writer import PredictionWriter, scan_predictions

    path = _write(tmp_path / "p.jsonl", [_row(0), _row(1)], ['{"id": "s2", "pre'])
    scan = scan_predictions(path)
    assert scan.done == {"s0", "s1"} and scan.good_bytes == len(path.read_bytes()) - len('{"id": "s2", "pre')
    with PredictionWriter(path) as writer:
        assert writer.truncated
        writer.write_batch([_pred(2)])
    assert [json.loads(x)["id"] for x in path.read_text().splitlines()] == ["s0", "s1", "s2"]
    # A last line that parses is complete (a cut inside it would not parse): kept, only its newline added.
    path.write_text(json.dumps(_row(0)) + "\n" + json.dumps(_row(1)))
    assert scan_predictions(path).done == {"s0", "s1"}
    with PredictionWriter(path) as writer:
        assert not writer.truncated
        writer.write_batch([_pred(2)])
    assert [json.loads(x)["id"] for x in path.read_text().splitlines()] == ["s0", "s1", "s2"]
    damaged = _write(tmp_path / "d.jsonl", [_row(0)], ["garbage\n", json.dumps(_row(1)) + "\n"])
    with pytest.raises(UserError, match="d.jsonl:2"):
        scan_predictions(damaged)


@pytest.mark.parametrize("content", [
    '[{"id": "a", "image": "x.png", "conversations": []}]',      # a compact JSON file (json.dump), no newline
    '[{"id": "a", "image": "x.png", "conversations": []}]\n',    # ... with one
    'id,prediction\n',                                           # a CSV header
    '{"id": "q1", "text": "Clear."}',                             # another tool's answers, no final newline
    '{"id": "q1", "text": "Clear."}\n',
    '{"id": "s0", "query": "q", "reference": "r", "prediction": "p"}\n{"id": "q1", "text": "Clear."}',
    '{"id": "s0", "query": "q", "reference": "r", "prediction": "p"}\n{"id": "q1", "text": "Clear."}\n',
])
def test_writer_never_truncates_a_file_that_is_not_predictions(tmp_path, content):
    # `--output` pointed at the wrong file must be refused, not cut to zero bytes as a "torn last line".
    from llavarad_cli.infer.writer import PredictionWriter

    path = tmp_path / "test.json"
    path.write_text(content)
    with pytest.raises(UserError, match="not a predictions file"):
        PredictionWriter(path)
    assert path.read_text() == content


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_is_one_line_leaves_whole_lines_and_the_rerun_continues(tmp_path, monkeypatch):
    from llavarad_cli.infer.writer import PredictionWriter, scan_predictions

    path = tmp_path / "preds.jsonl"
    with PredictionWriter(path) as writer:
        writer.write_batch([_pred(0), _pred(1)])
        good = path.read_bytes()
        # The batch reaches the file, then fsync reports the disk full: it must not stay as a torn tail.
        monkeypatch.setattr("os.fsync", _no_space)
        with pytest.raises(OSError, match="No space left") as full:
            writer.write_batch([_pred(2), _pred(3)])
        assert full.value.filename == str(path)  # the CLI's one line names the file
    monkeypatch.undo()
    assert path.read_bytes() == good
    assert scan_predictions(path).done == {"s0", "s1"}
    with PredictionWriter(path) as writer:
        assert writer.done == {"s0", "s1"} and not writer.truncated
        writer.write_batch([_pred(2), _pred(3)])
    assert [json.loads(x)["id"] for x in path.read_text().splitlines()] == ["s0", "s1", "s2", "s3"]


def test_an_output_that_cannot_be_created_names_it(tmp_path):
    from llavarad_cli.errors import os_error_line
    from llavarad_cli.infer.writer import PredictionWriter

    (tmp_path / "afile").write_text("x")
    with pytest.raises(OSError) as blocked:
        PredictionWriter(tmp_path / "afile" / "preds.jsonl")
    line = os_error_line(blocked.value)
    assert line.startswith(f"could not write {tmp_path / 'afile' / 'preds.jsonl'}: ")
    assert "a file is in the way where a folder is needed" in line


def test_merge_on_a_full_disk_writes_nothing_and_says_where(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from llavarad_cli.cli import app

    chunk = _write(tmp_path / "p_0.jsonl", [_row(0), _row(1)])
    monkeypatch.setattr("os.fsync", _no_space)
    result = CliRunner().invoke(app, ["merge-chunks", str(chunk), "--output", str(tmp_path / "all.jsonl")])
    assert result.exit_code == 1, result.output
    out = " ".join(result.output.split())
    assert f"could not write {tmp_path / 'all.jsonl'}: No space left on device" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p_0.jsonl"]  # no output, no temp file


def test_put_in_order_follows_the_query_order_and_keeps_other_lines(tmp_path):
    from llavarad_cli.infer.writer import put_in_order

    path = _write(tmp_path / "p.jsonl", [_row(2), _row(0), _row(9), _row(1)])
    assert put_in_order(path, ["s0", "s1", "s2"])
    assert [json.loads(x)["id"] for x in path.read_text().splitlines()] == ["s0", "s1", "s2", "s9"]
    assert not put_in_order(path, ["s0", "s1", "s2"])  # already in order: not rewritten
