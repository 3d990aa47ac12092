"""`llavarad evaluate` end to end, in-process: outputs, input errors, skips, tiny CheXbert, RadGraph annotations,
CheXprompt against a local server."""

import csv
import json

import pytest
from typer.testing import CliRunner

from llavarad_cli.cli import app

runner = CliRunner()


def _vectors(data_dir):
    return json.loads((data_dir / "metric-vectors/computed_lexical_vectors.json").read_text())


def _write_preds(path, hyps, refs):
    path.write_text("".join(json.dumps({"id": f"s{i}", "prediction": h, "reference": r}) + "\n"
                            for i, (h, r) in enumerate(zip(hyps, refs))))
    return path


@pytest.fixture
def preds(tmp_path, data_dir):
    v = _vectors(data_dir)["F_iu_shared_real_findings_pairs"]
    return _write_preds(tmp_path / "preds.jsonl", v["hyps"], v["refs"]), v


def test_lexical_run_writes_outputs_with_exact_values_and_skips_models(preds, tmp_path):
    path, v = preds
    res = runner.invoke(app, ["evaluate", str(path), "--out", str(tmp_path / "ev"), "--bootstrap", "50"])
    assert res.exit_code == 0, res.output
    assert "F1-CheXbert skipped" in res.output and "chexbert.pth" in res.output
    assert "F1-RadGraph skipped" in res.output
    m = json.loads((tmp_path / "ev/metrics.json").read_text())
    assert m["n"] == 10 and m["bootstrap"] == {"resamples": 50, "seed": 3, "confidence": 0.95}
    assert m["metrics"]["BLEU-4"]["value"] == v["expected"]["sacrebleu_bleu4_score_0_100"]
    assert m["metrics"]["BLEU-1"]["value"] == v["expected"]["sacrebleu_bleu1_score_0_100"]
    assert m["metrics"]["ROUGE-L"]["value"] == v["expected"]["rouge_score_rougeL_f_mean_nostem"]
    for name in ("BLEU-1", "BLEU-4", "ROUGE-L"):
        assert m["metrics"][name]["ci_low"] <= m["metrics"][name]["value"] <= m["metrics"][name]["ci_high"]
    assert set(m["skipped"]) == {"F1-CheXbert", "F1-RadGraph"}
    assert "sacrebleu" in m["versions"] and "BLEU-1/BLEU-4" in m["conventions"]
    rows = list(csv.reader((tmp_path / "ev/main.csv").open()))
    assert rows[0] == ["", "BLEU-1", "BLEU-4", "ROUGE-L"] and [r[0] for r in rows[1:]] == ["value", "ci_low", "ci_high"]
    per = [json.loads(line) for line in (tmp_path / "ev/per_report.jsonl").read_text().splitlines()]
    assert [p["id"] for p in per] == [f"s{i}" for i in range(10)]
    assert [p["ROUGE-L"] for p in per] == v["expected"]["rouge_score_rougeL_f_per_sample_nostem"]


def test_same_seed_same_intervals_and_no_bootstrap(preds, tmp_path):
    path, _ = preds
    outs = []
    for name, extra in (("a", []), ("b", []), ("c", ["--seed", "4"]), ("d", ["--bootstrap", "0"])):
        res = runner.invoke(app, ["evaluate", str(path), "--metrics", "bleu", "--bootstrap", "40", *extra,
                                  "--out", str(tmp_path / name)])
        assert res.exit_code == 0, res.output
        outs.append(json.loads((tmp_path / name / "metrics.json").read_text())["metrics"]["BLEU-4"])
    assert outs[0] == outs[1] and outs[0]["ci_low"] != outs[2]["ci_low"]
    assert outs[3]["ci_low"] is None and outs[3]["value"] == outs[0]["value"]


@pytest.mark.parametrize("content, message", [
    ('{"id": 1, "prediction": "a", "reference": "b"}\n{"id": 2, "prediction": "a"\n', "line 2: not valid JSON"),
    ('{"id": 1, "prediction": "a"}\n', "line 1: missing field(s) reference"),
    ('{"id": 1, "prediction": "a", "reference": "b"}\n\n{"id": 1, "prediction": "c", "reference": "d"}\n',
     "line 3: duplicate id '1' (first on line 1)"),
    ('{"id": 1, "prediction": 5, "reference": "b"}\n', "line 1: field 'prediction' must be a string"),
    ('[1, 2]\n', "line 1: expected a JSON object"),
    ("[" * 100000 + "\n", "line 1: not usable JSON (nested too deeply)"),
    ('{"id": ' + "1" * 5000 + ', "prediction": "a", "reference": "b"}\n', "line 1: not usable JSON"),
    ('\n', "no predictions"),
])
def test_bad_input_is_one_clear_line(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    res = runner.invoke(app, ["evaluate", str(path), "--metrics", "bleu", "--out", str(tmp_path / "ev")])
    assert res.exit_code == 2
    assert message in " ".join(res.output.split())
    assert "Traceback" not in res.output


def test_unknown_metric_and_missing_file(tmp_path, preds):
    path, _ = preds
    res = runner.invoke(app, ["evaluate", str(path), "--metrics", "bleu,cider"])
    assert res.exit_code == 2 and "unknown metric(s) cider" in res.output
    res = runner.invoke(app, ["evaluate", str(tmp_path / "nope.jsonl")])
    assert res.exit_code == 2 and "predictions file not found" in res.output


def test_empty_predictions_score_zero_and_are_counted(tmp_path):
    path = _write_preds(tmp_path / "p.jsonl", ["", "The heart is normal."], ["The lungs are clear.", "The heart is normal."])
    (tmp_path / "p.jsonl").write_text((tmp_path / "p.jsonl").read_text().replace('"prediction": ""', '"prediction": null'))
    res = runner.invoke(app, ["evaluate", str(path), "--metrics", "rouge", "--out", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "ev/metrics.json").read_text())
    assert m["empty_predictions"] == 1 and m["metrics"]["ROUGE-L"]["value"] == 0.5
    assert "1 empty prediction" in res.output


def test_tiny_chexbert_end_to_end_with_breakdowns_and_plot(tmp_path, preds):
    import chexbert_fixtures as fixtures

    path, v = preds
    fixtures.wordpiece_tokenizer(v["hyps"] + v["refs"], tmp_path / "tok", vocab_size=400)
    fixtures.random_chexbert(tmp_path / "w" / "chexbert.pth", fixtures.tiny_bert_config(400))
    res = runner.invoke(app, ["evaluate", str(path), "--metrics", "chexbert", "--bootstrap", "30", "--plot",
                              "--chexbert-weights", str(tmp_path / "w"), "--chexbert-tokenizer", str(tmp_path / "tok"),
                              "--device", "cpu", "--out", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "ev/metrics.json").read_text())
    assert list(m["metrics"]) == ["Micro-F1-14", "Macro-F1-14", "Micro-F1-5", "Macro-F1-5",
                                  "Micro-F1-14+", "Macro-F1-14+", "Micro-F1-5+", "Macro-F1-5+"]
    for key in ("n", "p"):
        rows = list(csv.reader((tmp_path / f"ev/breakdown_{key}.csv").open()))
        assert rows[0] == ["", "f1-score", "precision", "recall", "support"]
        assert rows[1][0] == "Atelectasis" and rows[-2][0] == "micro avg" and rows[-1][0] == "macro avg"
        assert float(rows[-2][1]) == pytest.approx(m["metrics"]["Micro-F1-14" + ("+" if key == "p" else "")]["value"])
    png = (tmp_path / "ev/per_observation_f1.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    per = json.loads((tmp_path / "ev/per_report.jsonl").read_text().splitlines()[0])
    assert set(per) >= {"id", "chexbert_prediction", "chexbert_reference"}


def test_radgraph_from_annotation_file(tmp_path, data_dir):
    pub = json.loads((data_dir / "metric-vectors/published_vectors.json").read_text())["radgraph_annotation"]
    text, ann = pub["input"][0], pub["expected"]["0"]
    path = _write_preds(tmp_path / "p.jsonl", [text, ""], [text, text])
    (tmp_path / "ann.jsonl").write_text(json.dumps({"text": text, "annotation": ann}) + "\n")
    res = runner.invoke(app, ["evaluate", str(path), "--metrics", "radgraph", "--bootstrap", "0",
                              "--radgraph-annotations", str(tmp_path / "ann.jsonl"), "--out", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "ev/metrics.json").read_text())
    assert m["metrics"]["F1-RadGraph"]["value"] == 0.5


def test_chexprompt_against_local_server(tmp_path, preds):
    from test_evaluate_chexprompt import FakeServer

    path, _ = preds
    server = FakeServer()
    try:
        args = ["evaluate", str(path), "--metrics", "chexprompt", "--bootstrap", "20", "--chexprompt-base-url",
                server.url + "/v1", "--chexprompt-model", "judge", "--chexprompt-rpm", "0",
                "--chexprompt-cache", str(tmp_path / "cache"), "--out", str(tmp_path / "ev")]
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
        m = json.loads((tmp_path / "ev/metrics.json").read_text())
        assert m["metrics"]["CheXprompt-significant"]["value"] == 1.0
        assert m["metrics"]["CheXprompt-total"]["value"] == 4.0
        assert m["chexprompt"]["requested"] == 10 and m["chexprompt"]["unusable_ratings"] == 0
        res = runner.invoke(app, args)
        assert json.loads((tmp_path / "ev/metrics.json").read_text())["chexprompt"]["cached"] == 10
        assert len(server.requests) == 10
    finally:
        server.close()


def test_model_metric_skips_name_the_missing_file(tmp_path, preds):
    import chexbert_fixtures as fixtures

    path, _ = preds
    res = runner.invoke(app, ["evaluate", str(path), "--metrics", "bleu,chexbert,radgraph", "--bootstrap", "0",
                              "--chexbert-weights", str(tmp_path / "none.pth"), "--out", str(tmp_path / "ev")])
    # asked for by name and could not run: exit 1 (the default set would skip it and exit 0), outputs still written
    assert res.exit_code == 1, res.output
    assert "not scored: F1-CheXbert, F1-RadGraph, asked for with --metrics" in " ".join(res.output.split())
    skipped = json.loads((tmp_path / "ev/metrics.json").read_text())["skipped"]
    assert "none.pth: file not found" in skipped["F1-CheXbert"]
    fixtures.random_chexbert(tmp_path / "w" / "chexbert.pth", fixtures.tiny_bert_config(100))
    res = runner.invoke(app, ["evaluate", str(path), "--metrics", "chexbert", "--bootstrap", "0", "--chexbert-weights",
                              str(tmp_path / "w"), "--chexbert-tokenizer", str(tmp_path / "no-tok"), "--out", str(tmp_path / "ev")])
    assert res.exit_code == 1, res.output
    reason = json.loads((tmp_path / "ev/metrics.json").read_text())["skipped"]["F1-CheXbert"]
    assert "vocab.txt" in reason and "--chexbert-tokenizer" in reason


def test_bad_out_and_option_files_fail_before_scoring(tmp_path, preds, monkeypatch):
    import llavarad_cli.evaluate as evaluate_package

    path, _ = preds
    monkeypatch.setattr(evaluate_package, "evaluate_pairs", lambda *a, **k: pytest.fail("scored before checking"))
    (tmp_path / "afile").write_text("x")
    (tmp_path / "deep.jsonl").write_text('{"text": "a", "annotation": {}}\n' + "[" * 100000 + "\n")
    for extra, message in ((["--out", str(tmp_path / "afile")], "cannot create this folder"),
                           (["--metrics", "radgraph", "--radgraph-annotations", str(tmp_path / "no.jsonl")],
                            "no.jsonl: file not found"),
                           (["--metrics", "radgraph", "--radgraph-annotations", str(tmp_path / "deep.jsonl")],
                            "deep.jsonl, line 2: expected"),
                           (["--metrics", "chexprompt", "--chexprompt-prompt", str(tmp_path / "afile")],
                            "not valid JSON")):
        res = runner.invoke(app, ["evaluate", str(path), *extra])
        assert res.exit_code == 2 and message in " ".join(res.output.split()), res.output
        assert "Traceback" not in res.output


def test_rerun_into_the_same_folder_leaves_no_stale_breakdown(tmp_path, preds):
    import chexbert_fixtures as fixtures

    path, v = preds
    fixtures.wordpiece_tokenizer(v["hyps"] + v["refs"], tmp_path / "tok", vocab_size=200)
    fixtures.random_chexbert(tmp_path / "w" / "chexbert.pth", fixtures.tiny_bert_config(200))
    common = ["evaluate", str(path), "--bootstrap", "0", "--out", str(tmp_path / "ev")]
    res = runner.invoke(app, [*common, "--metrics", "bleu,chexbert", "--plot", "--chexbert-weights",
                              str(tmp_path / "w"), "--chexbert-tokenizer", str(tmp_path / "tok"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    first = json.loads((tmp_path / "ev/metrics.json").read_text())["files"]
    assert set(first) == {"metrics.json", "main.csv", "breakdown_n.csv", "breakdown_p.csv", "per_report.jsonl",
                          "per_observation_f1.png"}
    assert set(first) == {p.name for p in (tmp_path / "ev").iterdir()}
    res = runner.invoke(app, [*common, "--metrics", "bleu"])
    assert res.exit_code == 0, res.output
    files = json.loads((tmp_path / "ev/metrics.json").read_text())["files"]
    assert set(files) == {"metrics.json", "main.csv", "per_report.jsonl"} == {p.name for p in (tmp_path / "ev").iterdir()}


def test_unusable_chexprompt_ratings_are_reported_on_the_console(tmp_path, preds):
    from test_evaluate_chexprompt import FakeServer

    path, _ = preds
    server = FakeServer()
    server.default = (200, "I cannot rate this.", {})
    try:
        res = runner.invoke(app, ["evaluate", str(path), "--metrics", "bleu,chexprompt", "--bootstrap", "0",
                                  "--chexprompt-base-url", server.url + "/v1", "--chexprompt-rpm", "0",
                                  "--chexprompt-cache", str(tmp_path / "cache"), "--out", str(tmp_path / "ev")])
    finally:
        server.close()
    assert res.exit_code == 1, res.output  # asked for, and no value came out of it
    assert "CheXprompt: 10 of 10 report(s) got no usable rating" in " ".join(res.output.split())
    m = json.loads((tmp_path / "ev/metrics.json").read_text())
    assert m["chexprompt"]["unusable_ratings"] == 10 and "CheXprompt-significant" in m["skipped"]


def test_null_references_are_left_out_and_counted_not_scored_as_empty(tmp_path):
    rows = [{"id": "a", "prediction": "The heart is normal.", "reference": "The heart is normal."},
            {"id": "b", "prediction": "Small effusion.", "reference": None}]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = runner.invoke(app, ["evaluate", str(path), "--metrics", "rouge", "--bootstrap", "0", "--out", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "ev/metrics.json").read_text())
    assert m["n"] == 1 and m["metrics"]["ROUGE-L"]["value"] == 1.0
    assert m["left_out_no_reference"] == {"count": 1, "ids": ["b"]}
    assert "1 record(s) with a null reference left out" in " ".join(res.output.split())
    path.write_text(json.dumps(rows[1]) + "\n")
    res = runner.invoke(app, ["evaluate", str(path), "--metrics", "rouge", "--out", str(tmp_path / "ev")])
    assert res.exit_code == 2 and "none of the 1 records has a reference" in " ".join(res.output.split())


def test_a_mistyped_device_is_one_clear_line_before_scoring(tmp_path, preds):
    import chexbert_fixtures as fixtures

    path, v = preds
    fixtures.wordpiece_tokenizer(v["hyps"] + v["refs"], tmp_path / "tok", vocab_size=200)
    fixtures.random_chexbert(tmp_path / "w" / "chexbert.pth", fixtures.tiny_bert_config(200))
    res = runner.invoke(app, ["evaluate", str(path), "--metrics", "bleu,chexbert", "--bootstrap", "0",
                              "--chexbert-weights", str(tmp_path / "w"), "--chexbert-tokenizer", str(tmp_path / "tok"),
                              "--device", "gpu", "--out", str(tmp_path / "ev")])
    assert res.exit_code == 2 and "unknown device `gpu`" in res.output, res.output
    assert not (tmp_path / "ev").exists()
