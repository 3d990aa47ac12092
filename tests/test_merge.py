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
    assert "p_0.jsonl:2: not JSON" in out and "p_0.jsonl:3: not a prediction" in out


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


def test_torn_and_damaged_prediction_files(tmp_path):
    from llavarad_cli.infer.writer import PredictionWriter, scan_predictions

    path = _write(tmp_path / "p.jsonl", [_row(0), _row(1)], ['{"id": "s2", "pre'])
    done, good = scan_predictions(path)
    assert done == {"s0", "s1"} and good == len(path.read_bytes()) - len('{"id": "s2", "pre')
    with PredictionWriter(path) as writer:
        assert writer.truncated
        writer.write_batch([_row(2)])
    assert [json.loads(x)["id"] for x in path.read_text().splitlines()] == ["s0", "s1", "s2"]
    # A complete-looking last line without its newline is redone too (it may be cut mid-value).
    path.write_text(json.dumps(_row(0)) + "\n" + json.dumps(_row(1)))
    assert scan_predictions(path)[0] == {"s0"}
    damaged = _write(tmp_path / "d.jsonl", [_row(0)], ["garbage\n", json.dumps(_row(1)) + "\n"])
    with pytest.raises(UserError, match="d.jsonl:2"):
        scan_predictions(damaged)


@pytest.mark.parametrize("content", [
    '[{"id": "a", "image": "x.png", "conversations": []}]',      # a compact JSON file (json.dump), no newline
    '[{"id": "a", "image": "x.png", "conversations": []}]\n',    # ... with one
    'id,prediction\n',                                           # a CSV header
])
def test_writer_never_truncates_a_file_that_is_not_predictions(tmp_path, content):
    # `--output` pointed at the wrong file must be refused, not cut to zero bytes as a "torn last line".
    from llavarad_cli.infer.writer import PredictionWriter

    path = tmp_path / "test.json"
    path.write_text(content)
    with pytest.raises(UserError, match="not a predictions file"):
        PredictionWriter(path)
    assert path.read_text() == content


def test_output_that_is_a_folder_is_a_user_error(tmp_path):
    from llavarad_cli.infer.writer import scan_predictions

    folder = tmp_path / "preds"
    folder.mkdir()
    with pytest.raises(UserError, match="is a folder"):
        scan_predictions(folder)
    chunk = _write(tmp_path / "c_0.jsonl", [_row(0)])
    result = CliRunner().invoke(app, ["merge-chunks", str(chunk), "--output", str(folder)])
    assert result.exit_code == 2 and "is a folder" in result.output
