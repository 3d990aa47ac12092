"""CheXbert labels and F1 equal the `f1chexbert` package's (the labeler code the paper's scorers share), with the
same random weights of the real architecture saved in chexbert.pth's own layout, on real Open-I reports.

f1chexbert 0.0.2 was written for transformers 4 and downloads its files; three shims make it run here, in this
test only, without changing what it computes:
- ``BertTokenizer.from_pretrained('bert-base-uncased')`` returns the test's WordPiece tokenizer, with the
  transformers 4 ``encode_plus`` it calls on a list of tokens (ids of those tokens between [CLS] and [SEP]);
- ``AutoConfig.from_pretrained('bert-base-uncased')`` returns the test's small BERT config, with eager attention,
  the only BERT attention transformers 4.31 (the paper's) had;
- its cache folder is the test's folder holding chexbert.pth, so nothing is downloaded.
Its ``forward`` also computes an accuracy with a private scikit-learn helper whose signature has changed, so the
F1 reports are made as ``forward`` makes them (``classification_report`` on its "rrg" labels), not through it.
"""

import copy
import csv
from pathlib import Path

import numpy as np
import pytest

f1mod = pytest.importorskip("f1chexbert.f1chexbert", reason="needs f1chexbert (dev extra)")

import chexbert_fixtures as fixtures  # noqa: E402
from llavarad_cli.evaluate import chexbert  # noqa: E402
from llavarad_cli.evaluate.labels import CONDITIONS, FIVE, chexbert_scores  # noqa: E402

DATA = Path(__file__).parent / "data"
#: our class ids -> f1chexbert's "classification" values ('' blank, 1 positive, 0 negative, -1 uncertain)
AS_F1CHEXBERT = {0: "", 1: 1, 2: 0, 3: -1}


def _texts() -> list[str]:
    rows = list(csv.DictReader((DATA / "openi/indiana_reports.csv").open(encoding="utf-8")))
    texts = list(dict.fromkeys(r[k] for r in rows[:120] for k in ("findings", "impression") if r[k].strip()))
    # whitespace runs, an empty report and one past 512 tokens: the tokenisation edge cases
    return texts + ["  No pleural\n\n effusion.\t Heart   normal. ", "", "Stable cardiomegaly. " * 200]


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    folder = tmp_path_factory.mktemp("chexbert-parity")
    texts = _texts()
    tok = fixtures.wordpiece_tokenizer(texts, folder / "tok", vocab_size=1500)
    cfg = fixtures.tiny_bert_config(vocab_size=len(tok))
    fixtures.random_chexbert(folder / "chexbert.pth", cfg, seed=1)
    ours = chexbert.build_labeler(chexbert.labeler_config(folder / "chexbert.pth"))
    chexbert.load_state(ours, folder / "chexbert.pth")

    class V4Tokenizer(type(tok)):
        def encode_plus(self, tokens):
            return {"input_ids": [self.cls_token_id] + self.convert_tokens_to_ids(tokens) + [self.sep_token_id]}

    v4_tok = V4Tokenizer.from_pretrained(str(folder / "tok"))
    paper_cfg = copy.deepcopy(cfg)
    paper_cfg._attn_implementation = "eager"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(f1mod, "CACHE_DIR", str(folder))
        mp.setattr(f1mod.BertTokenizer, "from_pretrained", classmethod(lambda cls, *a, **k: v4_tok))
        mp.setattr(f1mod.AutoConfig, "from_pretrained", classmethod(lambda cls, *a, **k: copy.deepcopy(paper_cfg)))
        peer = f1mod.F1CheXbert(device="cpu")
    assert peer.model.bert.config._attn_implementation == "eager"
    theirs = {t: peer.get_label(t, mode="classification") for t in texts}  # one report at a time, as it does
    return texts, tok, ours, theirs


def test_labels_equal_f1chexbert_report_by_report(both):
    texts, tok, ours, by_text = both
    labels = chexbert.label_texts(ours, tok, texts, batch_size=16, device="cpu")  # sorted, padded batches
    theirs = [by_text[t] for t in texts]
    mine = [[AS_F1CHEXBERT[int(c)] for c in row] for row in labels]
    assert len(texts) > 150
    assert [i for i in range(len(texts)) if mine[i] != theirs[i]] == []
    assert len({tuple(r) for r in mine}) > 20  # the random labeler does depend on the text
    assert {v for row in mine for v in row} >= {"", 0, 1, -1}


def test_f1_scores_equal_f1chexbert_and_the_papers_uncertain_as_negative_formula(both):
    from sklearn.metrics import classification_report

    texts, tok, ours, by_text = both
    refs = texts
    hyps = texts[3:] + texts[:3]
    labels = dict(zip(texts, chexbert.label_texts(ours, tok, texts, batch_size=16, device="cpu")))
    values, reports = chexbert_scores(np.stack([labels[h] for h in hyps]), np.stack([labels[r] for r in refs]), None)

    # uncertain as positive: f1chexbert's "rrg" mapping (positive or uncertain -> 1) and forward's two reports
    rrg = {t: [1 if v in (1, -1) else 0 for v in row] for t, row in by_text.items()}
    idx5 = [CONDITIONS.index(n) for n in FIVE]
    cr = classification_report([rrg[r] for r in refs], [rrg[h] for h in hyps], target_names=CONDITIONS,
                               output_dict=True)
    cr5 = classification_report([[rrg[r][i] for i in idx5] for r in refs], [[rrg[h][i] for i in idx5] for h in hyps],
                                target_names=FIVE, output_dict=True)
    for suffix, report in (("14+", cr), ("5+", cr5)):
        assert values[f"Micro-F1-{suffix}"][0] == pytest.approx(report["micro avg"]["f1-score"], abs=1e-12)
        assert values[f"Macro-F1-{suffix}"][0] == pytest.approx(report["macro avg"]["f1-score"], abs=1e-12)
    for name in CONDITIONS:
        for key in ("precision", "recall", "f1-score", "support"):
            assert reports["p"][name][key] == pytest.approx(cr[name][key], abs=1e-12), (name, key)

    # uncertain as negative (the paper's headline columns): sklearn on f1chexbert's labels with -1 -> 0
    def binary(texts_, names):
        rows = [by_text[t] for t in texts_]
        idx = [CONDITIONS.index(n) for n in names]
        return [[1 if row[i] == 1 else 0 for i in idx] for row in rows]

    for suffix, names in (("14", CONDITIONS), ("5", FIVE)):
        report = classification_report(binary(refs, names), binary(hyps, names), target_names=names,
                                       output_dict=True, zero_division=0)
        assert values[f"Micro-F1-{suffix}"][0] == pytest.approx(report["micro avg"]["f1-score"], abs=1e-12)
        assert values[f"Macro-F1-{suffix}"][0] == pytest.approx(report["macro avg"]["f1-score"], abs=1e-12)
    assert 0 < values["Micro-F1-14"][0] < 1


def test_the_labeler_runs_the_papers_attention(both):
    _, _, ours, _ = both
    assert ours.bert.config._attn_implementation == "eager"
