"""Several reports per forward pass (as the sentences of one DyGIE document) give every report exactly the
annotation it gets alone, with tiny random weights of the real layout, on the Open-I findings. (Off by default:
at real size padding moves BERT's floats enough to flip some annotations.)"""

import csv
from pathlib import Path

import pytest

pytest.importorskip("radgraph.dygie.models.dygie", reason="needs the radgraph package (pip install radgraph==0.1.18)")

from radgraph_fixtures import tiny_radgraph  # noqa: E402

from llavarad_cli.evaluate import radgraph, radgraph_model  # noqa: E402

DATA = Path(__file__).parent / "data"


def _texts(limit: int = 240) -> list[str]:
    """The first distinct Open-I findings (one at a time costs ~0.2 s each on CPU even with the tiny model)."""
    rows = list(csv.DictReader((DATA / "openi/indiana_reports.csv").open(encoding="utf-8")))
    return list(dict.fromkeys(r["findings"].strip() for r in rows if r["findings"].strip()))[:limit]


@pytest.fixture(scope="module")
def annotator(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg")))
        folder = tiny_radgraph(tmp_path_factory.mktemp("rg"), _texts(None), seed=3)
        mp.setattr(radgraph_model, "BATCH_REPORTS", 32)
        yield radgraph.package_annotator(folder / "radgraph.tar.gz", device="cpu")


def test_batched_annotations_equal_one_at_a_time_for_every_openi_report(annotator, monkeypatch):
    texts = _texts()
    passes = []
    batch_fn = annotator.annotate_batch
    monkeypatch.setattr(annotator, "annotate_batch", lambda reports: passes.append(len(reports)) or batch_fn(reports))
    batched = annotator(texts)
    assert len(passes) < len(texts) // 4 and max(passes) > 8, passes  # really batched
    alone = [annotator.annotate_one(t) for t in texts]
    differ = [i for i, (b, a) in enumerate(zip(batched, alone)) if b != a]
    assert differ == [], f"{len(differ)} of {len(texts)} reports differ, e.g. {texts[differ[0]]!r}"
    entities = [e for a in alone for e in a["entities"].values()]
    assert len(entities) > 200 and sum(bool(e["relations"]) for e in entities) > 20  # the model does find things


def test_results_keep_the_input_order_and_batch_limits(annotator, monkeypatch):
    texts = _texts(40)
    monkeypatch.setattr(radgraph_model, "BATCH_REPORTS", 3)
    shuffled = texts[::-1]
    out = annotator(shuffled)
    assert [a["text"].split() for a in out] == [radgraph_model._tokens(t) for t in shuffled]
    assert out == [annotator.annotate_one(t) for t in shuffled]


def test_coreference_on_means_one_report_per_pass(annotator, monkeypatch):
    """With coreference (or its propagation) on, DyGIE's sentences see each other: no packing then."""
    passes = []
    batch_fn = annotator.annotate_batch
    monkeypatch.setattr(annotator, "annotate_batch", lambda reports: passes.append(len(reports)) or batch_fn(reports))
    monkeypatch.setattr(annotator, "independent", False)
    annotator(_texts(5))
    assert passes == [1] * 5
