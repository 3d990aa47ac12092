"""merge-chunks: natural order, duplicates, conflicts, bad lines, gaps, exit codes; chunk planning; query files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llavarad_cli.cli import app
from llavarad_cli.errors import UserError


def _write(path: Path, rows, extra_lines=()):
    text = "".join(json.dumps(r) + "\n" for r in rows) + "".join(extra_lines)
    path.write_text(text)
    return path


def _row(i, pred=None):
    return {"id": f"s{i}", "query": "<image>\nq", "reference": "r", "prediction": pred or f"p{i}"}


def _records(path: Path, n: int) -> Path:
    from llavarad_cli.prompts import conversations

    path.write_text(json.dumps([{"id": f"s{i}", "image": f"{i}.png", "conversations": conversations(None, "r")}
                                for i in range(n)]))
    return path


def _merge(*args):
    return CliRunner().invoke(app, ["merge-chunks", *map(str, args)])


def test_natural_order_and_clean_complete_merge(tmp_path):
    # Chunk i holds record i: with a plain sort p_10 would come before p_2.
    files = [_write(tmp_path / f"p_{i}.jsonl", [_row(i)]) for i in range(12)]
    result = _merge(*reversed(files), "--output", tmp_path / "all.jsonl", "--query-file", _records(tmp_path / "q.json", 12))
    assert result.exit_code == 0, result.output
    ids = [json.loads(line)["id"] for line in (tmp_path / "all.jsonl").read_text().splitlines()]
    assert ids == [f"s{i}" for i in range(12)]
    assert "12 of 12 predictions" in result.output


def test_identical_duplicates_kept_once_conflicts_refused(tmp_path):
    a = _write(tmp_path / "p_0.jsonl", [_row(0), _row(1)])
    b = _write(tmp_path / "p_1.jsonl", [_row(1), _row(2)])
    result = _merge(a, b, "--output", tmp_path / "all.jsonl")
    assert result.exit_code == 0 and "1 identical duplicate" in result.output
    assert len((tmp_path / "all.jsonl").read_text().splitlines()) == 3

    c = _write(tmp_path / "p_2.jsonl", [_row(2, pred="something else")])
    result = _merge(a, b, c, "--output", tmp_path / "conflict.jsonl")
    assert result.exit_code == 1
    assert "conflicting duplicate id" in result.output and "s2" in result.output and "p_2.jsonl:1" in result.output
    assert not (tmp_path / "conflict.jsonl").exists()


def test_bad_lines_reported_with_file_and_line(tmp_path):
    a = _write(tmp_path / "p_0.jsonl", [_row(0)], ['{"id": "s1", "predic\n', '[1, 2]\n', "\n"])
    result = _merge(a, "--output", tmp_path / "all.jsonl")
    assert result.exit_code == 1
    out = " ".join(result.output.split())
    assert "p_0.jsonl:2: not valid JSON" in out and "p_0.jsonl:3: expected a JSON object" in out


def test_a_duplicate_is_identical_only_when_the_whole_line_is(tmp_path):
    """Same id and prediction but another query or reference is a conflict, never silently dropped; lines that
    differ only in how they were made (model, dtype) are the same prediction."""
    a = _write(tmp_path / "p_0.jsonl", [{**_row(0), "dtype": "float16"}])
    same = _write(tmp_path / "p_1.jsonl", [{**_row(0), "dtype": "bfloat16"}])
    result = _merge(a, same, "--output", tmp_path / "all.jsonl")
    assert result.exit_code == 0 and "1 identical duplicate" in result.output
    for field, value in (("query", "<image>\nanother query"), ("reference", "another reference")):
        other = _write(tmp_path / f"p_{field}.jsonl", [{**_row(0), field: value}])
        result = _merge(a, other, "--output", tmp_path / f"{field}.jsonl")
        assert result.exit_code == 1 and "conflicting duplicate id" in result.output, field
        assert not (tmp_path / f"{field}.jsonl").exists()


def test_a_null_prediction_is_an_empty_one(tmp_path):
    # One meaning everywhere (resume, merge, evaluate): the model produced no text.
    a = _write(tmp_path / "p_0.jsonl", [{**_row(0), "prediction": None}, _row(1)])
    result = _merge(a, "--output", tmp_path / "all.jsonl")
    assert result.exit_code == 0, result.output
    assert [json.loads(x)["prediction"] for x in (tmp_path / "all.jsonl").read_text().splitlines()] == ["", "p1"]


def test_deep_or_huge_json_lines_are_bad_lines(tmp_path):
    a = _write(tmp_path / "p_0.jsonl", [_row(0)], ["[" * 100000 + "\n", '{"id": ' + "9" * 5000 + "}\n"])
    result = _merge(a, "--output", tmp_path / "all.jsonl")
    out = " ".join(result.output.split())
    assert result.exit_code == 1 and "p_0.jsonl:2: not usable JSON (nested too deeply)" in out
    assert "p_0.jsonl:3: not usable JSON" in out


def test_gaps_listed_and_allow_missing(tmp_path):
    q = _records(tmp_path / "q.json", 4)
    a = _write(tmp_path / "p_0.jsonl", [_row(0), _row(2)])
    result = _merge(a, "--output", tmp_path / "all.jsonl", "--query-file", q)
    assert result.exit_code == 1 and "2 id(s) of the query file not predicted" in result.output
    assert "s1, s3" in result.output
    assert _merge(a, "--output", tmp_path / "all.jsonl", "--query-file", q, "--allow-missing").exit_code == 0


def test_ids_outside_the_query_file_and_output_among_inputs(tmp_path):
    q = _records(tmp_path / "q.json", 1)
    a = _write(tmp_path / "p_0.jsonl", [_row(0), _row(9)])
    result = _merge(a, "--output", tmp_path / "all.jsonl", "--query-file", q)
    assert result.exit_code == 1 and "not in the query file" in result.output
    result = _merge(a, "--output", a)
    assert result.exit_code == 2 and "both a chunk and the --output" in result.output


@pytest.mark.parametrize("n,k", [(10, 3), (5, 8), (0, 2), (7, 7), (2461, 8)])
def test_chunk_bounds_partition_any_k(n, k):
    from llavarad_cli.infer.chunks import chunk_bounds

    spans = [chunk_bounds(n, k, i) for i in range(k)]
    covered = [j for s, e in spans for j in range(s, e)]
    assert covered == list(range(n))
    sizes = [e - s for s, e in spans]
    assert max(sizes) - min(sizes) <= 1


def test_chunk_file_names_sort_naturally():
    from llavarad_cli.infer.chunks import chunk_output, natural_key

    names = [chunk_output(Path("out/preds.jsonl"), i, 12) for i in range(12)]
    assert names[10] == Path("out/preds_10.jsonl")
    assert sorted(reversed(names), key=natural_key) == names


def test_gpu_worker_commands_split_and_pin_devices():
    from llavarad_cli.infer.launch import worker_commands

    cmds = worker_commands(["--query-file", "q.json"], Path("o/preds.jsonl"), 3)
    assert [env["CUDA_VISIBLE_DEVICES"] for _, env, _ in cmds] == ["0", "1", "2"]
    argv, _, part = cmds[2]
    assert part == Path("o/preds_2.jsonl")
    assert argv[argv.index("--chunk-idx") + 1] == "2" and argv[argv.index("--num-chunks") + 1] == "3"
    assert argv[argv.index("--output") + 1] == "o/preds_2.jsonl"


def test_output_that_is_a_folder_is_a_user_error(tmp_path):
    from llavarad_cli.infer.writer import scan_predictions

    folder = tmp_path / "preds"
    folder.mkdir()
    with pytest.raises(UserError, match="is a folder"):
        scan_predictions(folder)
    chunk = _write(tmp_path / "c_0.jsonl", [_row(0)])
    result = CliRunner().invoke(app, ["merge-chunks", str(chunk), "--output", str(folder)])
    assert result.exit_code == 2 and "is a folder" in result.output
