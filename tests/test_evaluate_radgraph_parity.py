"""RadGraph annotations and the partial reward equal the `radgraph` package's own (its ``RadGraph`` class and
reward function), with the same random weights of the real layout (radgraph.tar.gz), on real Open-I reports.

The package's ``RadGraph`` fetches the BERT named in the archive's config from the hub. Here, in this test only,
the package's own model and tokenizer caches (``cached_transformers``) are filled beforehand for that name with
the test's small BERT (eager attention, the only BERT attention of transformers 4.31, which the paper used) and
its tokenizer, so nothing is downloaded and the package runs its own code path unchanged.
"""

import csv
import json
import tarfile
from pathlib import Path

import pytest

pytest.importorskip("radgraph.dygie.models.dygie", reason="needs the radgraph package (pip install radgraph==0.1.18)")

from radgraph_fixtures import PUBMEDBERT, tiny_radgraph  # noqa: E402

from llavarad_cli.evaluate import radgraph  # noqa: E402
from llavarad_cli.evaluate.radgraph_model import provide_tokenizer  # noqa: E402
from llavarad_cli.evaluate.radgraph_reward import reward  # noqa: E402

DATA = Path(__file__).parent / "data"


def _texts() -> list[str]:
    rows = list(csv.DictReader((DATA / "openi/indiana_reports.csv").open(encoding="utf-8")))
    texts = list(dict.fromkeys(r["findings"].strip() for r in rows[:70] if r["findings"].strip()))
    return texts + ["Left pleural effusion/atelectasis (small), likely pneumonia.", "  Heart   size\n\nnormal.  "]


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    from radgraph import radgraph as package
    from radgraph.allennlp.common import cached_transformers
    from transformers import AutoModel, BertConfig

    texts = _texts()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg")))
        folder = tiny_radgraph(tmp_path_factory.mktemp("rg"), texts, seed=2)
        ours = radgraph.package_annotator(folder / "radgraph.tar.gz", device="cpu")
        mine = {t: a for t in texts for a in ours([t])}
        batched = ours(texts)  # several reports per forward pass

        # the package's layout: <model_cache_dir>/radgraph/ holding the unpacked archive
        cache = tmp_path_factory.mktemp("pkg")
        with tarfile.open(folder / "radgraph.tar.gz") as tar:
            tar.extractall(cache / "radgraph", filter="data")
        bert_dir = folder / PUBMEDBERT.split("/")[-1]
        provide_tokenizer(bert_dir)  # the tokenizer with the two transformers 4 calls allennlp makes
        tok = cached_transformers._tokenizer_cache[(str(bert_dir), frozenset({"use_fast": True}.items()))]
        for kwargs in ({"use_fast": True}, {"use_fast": True, "cache_dir": None}):
            mp.setitem(cached_transformers._tokenizer_cache, (PUBMEDBERT, frozenset(kwargs.items())), tok)
        config = BertConfig.from_json_file(str(bert_dir / "config.json"))
        bert = AutoModel.from_config(config, attn_implementation="eager")
        mp.setitem(cached_transformers._model_cache, cached_transformers.TransformerSpec(PUBMEDBERT, None, None), bert)
        peer = package.RadGraph(model_type="radgraph", model_cache_dir=str(cache), cuda=-1)
        theirs = {t: peer([t])["0"] for t in texts}  # one report per call, as F1RadGraph runs it
    from transformers import PreTrainedModel

    berts = [m for m in ours.model.modules() if isinstance(m, PreTrainedModel)]
    assert berts and all(m.config._attn_implementation == "eager" for m in berts)  # the paper's attention
    assert batched == [mine[t] for t in texts]
    return texts, mine, theirs


def test_annotations_equal_the_radgraph_package_report_by_report(both):
    texts, mine, theirs = both
    differ = [t for t in texts if (mine[t]["text"], mine[t]["entities"]) != (theirs[t]["text"], theirs[t]["entities"])]
    assert differ == []
    entities = [e for a in mine.values() for e in a["entities"].values()]
    assert len(entities) > 50 and sum(bool(e["relations"]) for e in entities) > 5  # the random model does find things
    assert len({json.dumps(a["entities"], sort_keys=True) for a in mine.values()}) > len(texts) // 2


def test_partial_reward_equals_the_radgraph_packages(both):
    from radgraph.rewards import exact_entity_token_if_rel_exists_reward

    texts, mine, theirs = both
    pairs = list(zip(texts, texts[1:] + texts[:1])) + [(t, t) for t in texts[:3]]
    ours = [reward(mine[h], mine[r], "partial") for h, r in pairs]
    package = [exact_entity_token_if_rel_exists_reward(theirs[h], theirs[r]) for h, r in pairs]
    assert ours == package
    assert any(0 < v < 1 for v in ours) and ours[-1] == 1.0
