"""The library API that the README and DESIGN.md promise: `from llavarad_cli.infer import …` and
`from llavarad_cli.evaluate import …` import, and a tiny run goes query file -> predictions -> merge -> scores."""

from __future__ import annotations

import json
import subprocess
import sys

from PIL import Image


def test_importing_the_infer_package_does_not_load_torch():
    code = ("import sys, llavarad_cli.infer as infer; assert 'torch' not in sys.modules; "
            "infer.read_queries; infer.merge_chunks; infer.GenerationSettings; assert 'torch' not in sys.modules; print(sorted(infer.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "run_queries" in out and "run_batch" not in out


def test_every_advertised_name_exists():
    import llavarad_cli.evaluate as evaluate
    import llavarad_cli.infer as infer

    for package in (infer, evaluate):
        for name in package.__all__:
            assert getattr(package, name) is not None, f"{package.__name__}.{name}"


def test_a_tiny_run_through_the_library(tmp_path):
    from llavarad_cli.evaluate import EvalOptions, evaluate_pairs, load_pairs
    from llavarad_cli.infer import GenerationSettings, Predictor, merge_chunks, read_queries, run_queries, \
        select_chunk
    from llavarad_cli.prompts import conversations
    from llavarad_cli.testing import tiny_llavarad_model

    (tmp_path / "img").mkdir()
    records = []
    for i in range(3):
        Image.new("RGB", (40, 40), (60 * i, 90, 120)).save(tmp_path / "img" / f"{i}.png")
        records.append({"id": f"r{i}", "image": f"{i}.png", "conversations": conversations(None, "Lungs are clear.")})
    (tmp_path / "test.json").write_text(json.dumps(records))

    model, tokenizer, _ = tiny_llavarad_model()
    predictor = Predictor(model, tokenizer, GenerationSettings(max_new_tokens=4))
    queries = read_queries(tmp_path / "test.json").queries
    parts = []
    for k in range(2):
        part = tmp_path / f"preds_{k}.jsonl"
        summary = run_queries(predictor, select_chunk(queries, 2, k), tmp_path / "img", part, batch_size=2)
        assert summary.predicted == len(select_chunk(queries, 2, k))
        parts.append(part)
    report = merge_chunks(parts, tmp_path / "preds.jsonl", [q.id for q in queries])
    assert report.clean and report.written == 3 and not report.missing

    pairs = load_pairs(tmp_path / "preds.jsonl")
    assert [p.id for p in pairs] == ["r0", "r1", "r2"] and all(p.reference == "Lungs are clear." for p in pairs)
    result = evaluate_pairs(pairs, EvalOptions(metrics=("bleu",), bootstrap=0))
    scores = {s.name: s for s in result.scores}
    assert result.n == 3 and "BLEU-4" in scores and 0 <= scores["BLEU-4"].value <= 1
