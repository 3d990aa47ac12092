"""run_queries with a stand-in predictor: output in input order, resume after a kill, run fields recorded."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from llavarad_cli.infer.queries import Query
from llavarad_cli.infer.runner import run_queries


class Killed(Exception):
    pass


class FakePredictor:
    """Predicts ``query upper-cased``; prompt length is the query length, so the runner reorders by it."""

    def __init__(self, fail_after_batches: int | None = None):
        self.model = SimpleNamespace(dtype=torch.float16, config=SimpleNamespace(extra={"source": "some/model"}))
        self.batches = 0
        self.fail_after = fail_after_batches

    def prompt_ids(self, query):
        return list(range(len(query)))

    def pixel_values(self, image):
        return torch.zeros(3, 2, 2)

    def predict(self, queries, pixels):
        if self.fail_after is not None and self.batches >= self.fail_after:
            raise Killed()
        self.batches += 1
        return [q.upper() for q in queries]


@pytest.fixture()
def setup(tmp_path):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "img" / "a.png")
    # Lengths out of order: the runner predicts longest first.
    queries = [Query(f"q{i}", "x" * n, "a.png", f"ref{i}") for i, n in enumerate([3, 9, 1, 7, 5, 8])]
    return tmp_path, queries


def _ids(path):
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


def test_output_keeps_the_input_order_and_records_model_and_dtype(setup):
    tmp_path, queries = setup
    out = tmp_path / "preds.jsonl"
    summary = run_queries(FakePredictor(), queries, tmp_path / "img", out, batch_size=2)
    assert summary.predicted == 6
    assert _ids(out) == [q.id for q in queries]
    first = json.loads(out.read_text().splitlines()[0])
    assert first == {"id": "q0", "query": "xxx", "reference": "ref0", "prediction": "XXX",
                     "model": "some/model", "dtype": "float16"}


def test_a_killed_run_resumes_and_ends_in_input_order(setup):
    tmp_path, queries = setup
    out = tmp_path / "preds.jsonl"
    with pytest.raises(Killed):
        run_queries(FakePredictor(fail_after_batches=1), queries, tmp_path / "img", out, batch_size=2)
    assert _ids(out) == ["q1", "q5"]  # the longest two, appended as predicted
    summary = run_queries(FakePredictor(), queries, tmp_path / "img", out, batch_size=2)
    assert summary.already_done == 2 and summary.predicted == 4
    assert _ids(out) == [q.id for q in queries]


def test_evaluate_reports_what_the_predictions_were_made_with(setup):
    from llavarad_cli.evaluate import EvalOptions, evaluate_pairs, load_pairs

    tmp_path, queries = setup
    out = tmp_path / "preds.jsonl"
    run_queries(FakePredictor(), queries, tmp_path / "img", out, batch_size=2)
    result = evaluate_pairs(load_pairs(out), EvalOptions(metrics=("bleu",), bootstrap=0))
    assert result.extra["predictions_made_with"] == {"model": "some/model", "dtype": "float16"}
    lines = out.read_text().splitlines()
    out.write_text("\n".join([lines[0].replace("float16", "bfloat16"), *lines[1:]]) + "\n")
    result = evaluate_pairs(load_pairs(out), EvalOptions(metrics=("bleu",), bootstrap=0))
    assert result.extra["predictions_made_with"]["dtype"] == ["bfloat16", "float16"]
