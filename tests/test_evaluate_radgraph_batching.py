"""Shared BERT passes (several reports' encodings in one forward pass, everything after BERT per report) give
every report exactly the annotation it gets alone through the package's own path, with tiny random weights of the
real layout, on the Open-I findings. benchmarks/bench_evaluate.py checks the same at real size."""

import csv
from pathlib import Path

import pytest

pytest.importorskip("radgraph.dygie.models.dygie", reason="needs the radgraph package (pip install radgraph==0.1.18)")

from radgraph_fixtures import tiny_radgraph  # noqa: E402

from llavarad_cli.evaluate import radgraph, radgraph_model  # noqa: E402

DATA = Path(__file__).parent / "data"


def _texts(limit: int | None = 240) -> list[str]:
    """The first distinct Open-I findings (one at a time costs ~0.2 s each on CPU even with the tiny model)."""
    rows = list(csv.DictReader((DATA / "openi/indiana_reports.csv").open(encoding="utf-8")))
    return list(dict.fromkeys(r["findings"].strip() for r in rows if r["findings"].strip()))[:limit]


@pytest.fixture(scope="module")
def annotator(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg")))
        folder = tiny_radgraph(tmp_path_factory.mktemp("rg"), _texts(None), seed=3)
        yield radgraph.package_annotator(folder / "radgraph.tar.gz", device="cpu")


def _count_bert_passes(annotator, monkeypatch) -> list[int]:
    """The number of reports in each BERT pass (1 for a report that runs BERT itself)."""
    passes: list[int] = []
    forward = annotator.model._embedder.forward

    def counting(text, num_wrapping_dims=0):
        passes.append(text["bert"]["token_ids"].shape[1])
        return forward(text, num_wrapping_dims=num_wrapping_dims)

    monkeypatch.setattr(annotator.model._embedder, "forward", counting)
    return passes


def test_shared_bert_passes_give_every_openi_report_its_one_at_a_time_annotation(annotator, monkeypatch):
    texts = _texts()
    passes = _count_bert_passes(annotator, monkeypatch)
    shared = annotator(texts)
    assert sum(n for n in passes if n > 1) > 0.7 * len(texts) and max(passes) > 8, passes  # really shared
    monkeypatch.undo()
    alone = [annotator.annotate_one(t) for t in texts]
    differ = [i for i, (b, a) in enumerate(zip(shared, alone)) if b != a]
    assert differ == [], f"{len(differ)} of {len(texts)} reports differ, e.g. {texts[differ[0]]!r}"
    entities = [e for a in alone for e in a["entities"].values()]
    assert len(entities) > 200 and sum(bool(e["relations"]) for e in entities) > 20  # the model does find things


def test_results_keep_the_input_order_and_batch_limits(annotator, monkeypatch):
    texts = _texts(40)
    monkeypatch.setattr(radgraph_model, "BATCH_REPORTS", 3)
    passes = _count_bert_passes(annotator, monkeypatch)
    shuffled = texts[::-1]
    out = annotator(shuffled)
    assert max(passes) == 3
    assert [a["text"].split() for a in out] == [radgraph_model._tokens(t) for t in shuffled]
    monkeypatch.undo()
    assert out == [annotator.annotate_one(t) for t in shuffled]


def test_reports_past_berts_window_run_bert_alone_and_keep_their_annotation(annotator, monkeypatch):
    """Past BERT's window (512 wordpieces) allennlp folds a row into segments: such reports are not shared. The
    window is made small here, so that ordinary reports cross it (a real 600-word report is slow to annotate)."""
    texts = _texts(2) * 2
    wordpieces = [annotator._batch(radgraph_model._tokens(t))["text"]["bert"]["token_ids"].shape[-1] for t in texts]
    passes = _count_bert_passes(annotator, monkeypatch)
    monkeypatch.setattr(annotator, "max_wordpieces", min(wordpieces))
    out = annotator(texts)
    assert sorted(passes) == ([1, 1, 2] if wordpieces[0] != wordpieces[1] else [1, 1, 1, 1])
    monkeypatch.undo()
    assert out == [annotator.annotate_one(t) for t in texts]
