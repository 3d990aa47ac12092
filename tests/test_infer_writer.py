"""The resumable predictions writer: what is redone, what is kept, and what is refused untouched."""

from __future__ import annotations

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
