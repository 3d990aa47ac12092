"""benchmarks/device_check.py: its batching arithmetic, and its whole --tiny run on CPU so it cannot rot."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "device_check.py"


@pytest.fixture(scope="module")
def dc():
    spec = importlib.util.spec_from_file_location("device_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reference_batches_are_equal_length_runs_of_at_most_eight(dc):
    lengths = [5, 7, 5, 5, 9, 7] + [6] * 11
    batches = dc.reference_batches(lengths)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(len({lengths[i] for i in b}) == 1 and len(b) <= 8 for b in batches)
    # Stable sort by length, then cut: [0, 2, 3] (5), the 11 sixes as 8 + 3, [1, 5] (7), [4] (9).
    assert batches == [[0, 2, 3], list(range(6, 14)), [14, 15, 16], [1, 5], [4]]


def test_llavarad_batches_are_longest_first_and_full(dc):
    lengths = [5, 7, 5, 5, 9, 7]
    assert dc.llavarad_batches(lengths, 4) == [[4, 1, 5, 0], [2, 3]]
    assert dc.every_kth([[i] for i in range(10)], 4) == [[0], [2], [5], [7]]
    assert dc.every_kth([[0], [1]], 4) == [[0], [1]]


def test_prompt_lengths_follow_the_openi_indications(dc):
    lengths = dc.prompt_lengths()
    assert len(lengths) == 3851
    bare = dc.PROMPT_BEFORE_IMAGE + 1 + dc.PROMPT_AFTER_IMAGE  # no indication: the fixed wording only
    assert min(lengths) == bare and bare in lengths and 60 < sum(lengths) / len(lengths) < 80
    # Enough distinct lengths that the reference's equal-length groups are not all full.
    assert 1 < len(lengths) / len(dc.reference_batches(lengths)) < 8


@pytest.mark.slow
def test_tiny_run_prints_one_table_and_writes_every_part(tmp_path):
    out = tmp_path / "device_check.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--out", str(out)], capture_output=True,
                          text=True, cwd=tmp_path, timeout=2400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    parts = result["parts"]
    assert set(parts) == {"infer_fp16", "infer_bf16", "cli", "train_sdpa", "chexbert", "radgraph"}
    assert all(p["status"] == "ok" for p in parts.values()), {k: p["status"] for k, p in parts.items()}
    assert parts["infer_fp16"]["reference"]["reports_per_s"] > 0 and parts["infer_fp16"]["non_finite_steps"] == 0
    assert parts["cli"]["batched_eq_one_at_a_time"] == parts["cli"]["reports"] == 8
    assert parts["train_sdpa"]["tokens_per_s"] > 0
    assert parts["chexbert"]["identical"] == parts["chexbert"]["reports"] == 32
    if "skipped" not in parts["radgraph"]:  # the radgraph package is optional
        assert parts["radgraph"]["identical"] == parts["radgraph"]["reports"] == 16
    assert proc.stdout.splitlines()[0].startswith("part") and result["table"][0] == proc.stdout.splitlines()[0]
