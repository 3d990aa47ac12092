"""BLEU and ROUGE reproduce the reference libraries' values exactly, and the cheap bootstrap equals re-scoring."""

import json

import numpy as np
import pytest
from sacrebleu.metrics import BLEU

from llavarad_cli.evaluate import lexical
from llavarad_cli.evaluate.bootstrap import percentile_interval, resample_counts
from llavarad_cli.evaluate.records import Pair
from llavarad_cli.evaluate.runner import EvalOptions, evaluate_pairs

DATA = __import__("pathlib").Path(__file__).parent / "data"
VECTORS = json.loads((DATA / "metric-vectors/computed_lexical_vectors.json").read_text())
SETS = [k for k in VECTORS if not k.startswith("_")]


@pytest.mark.parametrize("name", SETS)
def test_bleu_matches_sacrebleu_vectors_exactly(name):
    v = VECTORS[name]
    stats = lexical.bleu_stats(v["hyps"], v["refs"])
    assert lexical.bleu_scores(stats, 4, None)[0] == v["expected"]["sacrebleu_bleu4_score_0_100"]
    assert lexical.bleu_scores(stats, 1, None)[0] == v["expected"]["sacrebleu_bleu1_score_0_100"]
    # the paper's non-bootstrap path (HF evaluate, 0-1) is the same number divided by 100
    assert lexical.bleu_scores(stats, 4, None)[0] / 100 == pytest.approx(v["expected"]["hf_evaluate_bleu4"], abs=1e-12)


@pytest.mark.parametrize("name", SETS)
@pytest.mark.parametrize("kind", ["rougeL", "rouge2", "rouge1"])
def test_rouge_matches_rouge_score_vectors_exactly(name, kind):
    v = VECTORS[name]
    f = lexical.rouge_f(v["hyps"], v["refs"], kind)
    assert f.tolist() == v["expected"][f"rouge_score_{kind}_f_per_sample_nostem"]
    assert float(np.mean(f)) == v["expected"][f"rouge_score_{kind}_f_mean_nostem"]


def test_bleu_bootstrap_from_counts_equals_rescoring_each_resample():
    v = VECTORS["F_iu_shared_real_findings_pairs"]
    hyps, refs = v["hyps"], v["refs"]
    stats = lexical.bleu_stats(hyps, refs)
    counts = resample_counts(len(hyps), 20, seed=7)
    _, resampled4 = lexical.bleu_scores(stats, 4, counts)
    _, resampled1 = lexical.bleu_scores(stats, 1, counts)
    for b in range(20):
        idx = np.repeat(np.arange(len(hyps)), counts[b].astype(int))
        h, r = [hyps[i] for i in idx], [refs[i] for i in idx]
        assert resampled4[b] == pytest.approx(BLEU().corpus_score(h, [r]).score, abs=1e-9)
        assert resampled1[b] == pytest.approx(BLEU(max_ngram_order=1).corpus_score(h, [r]).score, abs=1e-9)


def test_resample_counts_are_seeded_multisets_of_size_n():
    a, b = resample_counts(50, 30, seed=3), resample_counts(50, 30, seed=3)
    assert (a == b).all() and (a.sum(axis=1) == 50).all()
    assert not (a == resample_counts(50, 30, seed=4)).all()


def test_mean_metric_interval_is_the_percentile_of_re_drawn_report_means():
    """A per-report metric's interval (ROUGE-L here) equals drawing the reports again and averaging them."""
    v = VECTORS["F_iu_shared_real_findings_pairs"]
    pairs = [Pair(str(i), h, r) for i, (h, r) in enumerate(zip(v["hyps"], v["refs"]))]
    result = evaluate_pairs(pairs, EvalOptions(metrics=("rouge",), bootstrap=200, seed=5))
    score = next(s for s in result.scores if s.name == "ROUGE-L")
    values = lexical.rouge_f(v["hyps"], v["refs"])
    counts = resample_counts(len(pairs), 200, seed=5)
    means = [values[np.repeat(np.arange(len(pairs)), c.astype(int))].mean() for c in counts]
    assert score.value == pytest.approx(values.mean(), abs=1e-15)
    assert (score.ci.low, score.ci.high) == pytest.approx((np.percentile(means, 2.5), np.percentile(means, 97.5)),
                                                          abs=1e-12)
    assert percentile_interval(means).low == pytest.approx(np.percentile(means, 2.5))


def test_empty_prediction_scores_zero():
    stats = lexical.bleu_stats(["", "the heart is normal"], ["the lungs are clear", "the heart is normal"])
    assert stats[0, 0] == 0 and stats[0, 2:6].sum() == 0
    assert lexical.rouge_f([""], ["the lungs are clear"]).tolist() == [0.0]


def _openi_texts() -> list[str]:
    import csv

    rows = list(csv.DictReader((DATA / "openi/indiana_reports.csv").open(encoding="utf-8")))
    return [r[k] for r in rows for k in ("findings", "impression", "indication", "comparison") if r[k].strip()]


def _openi_pairs() -> tuple[list[str], list[str]]:
    """The benchmark's pairs: every Open-I finding against the next one (2,461 of them in the held CSV)."""
    import csv

    rows = list(csv.DictReader((DATA / "openi/indiana_reports.csv").open(encoding="utf-8")))
    findings = [r["findings"].strip() for r in rows if r["findings"].strip()]
    return findings[1:] + findings[:1], findings


ODD_TEXTS = ["", "   ", "\n\t", "Heart: NORMAL.\n\nLungs -- clear!!", "É ÉCOLE straße Σίσυφος İstanbul ǅ ﬁ",
             "x-ray 2cm/3.5 mm (AP), T12-L1", "\u00a0\u2003nbsp\u3000ideographic", "a\x00b\x1bc", "１２３ ｆｕｌｌ",
             "K\u212a kelvin", "naïve café", "end."]


def test_rouge_tokens_are_rouge_scores_tokenize_on_every_held_text():
    from rouge_score.tokenize import tokenize

    texts = _openi_texts() + ODD_TEXTS + [t for k in SETS for t in VECTORS[k]["hyps"] + VECTORS[k]["refs"]]
    assert len(texts) > 5000
    assert [lexical.rouge_tokens(t) for t in texts] == [tokenize(t, None) for t in texts]


def test_rouge_l_equals_rouge_score_on_the_open_i_pairs():
    from rouge_score import rouge_scorer

    hyps, refs = _openi_pairs()
    hyps, refs = hyps + ODD_TEXTS, refs + ODD_TEXTS[::-1]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    expected = [scorer.score(target=r, prediction=h)["rougeL"].fmeasure for h, r in zip(hyps, refs)]
    values, cut = lexical.rouge_l(hyps, refs)
    assert cut == 0 and values.tolist() == expected  # bit for bit
    assert 0 < float(np.mean(values)) < 1


def test_rouge_l_caps_tokens_and_counts_the_cut_reports():
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    hyps, refs = ["a b c d e f", "a b", "x y z"], ["b c a d", "a b c d e", "x y z"]
    values, cut = lexical.rouge_l(hyps, refs, max_tokens=4)
    assert cut == 2  # the first pair's prediction, the second pair's reference
    expected = [scorer.score(" ".join(r.split()[:4]), " ".join(h.split()[:4]))["rougeL"].fmeasure
                for h, r in zip(hyps, refs)]
    assert values.tolist() == expected


def test_megabyte_reports_are_cut_to_the_cap_counted_and_scored_in_linear_memory():
    import tracemalloc

    texts = _openi_texts()
    big_hyp = " ".join(texts)[:1_000_000]   # about 160,000 tokens
    big_ref = " ".join(texts[::-1])[:1_000_000]
    tracemalloc.start()
    values, cut = lexical.rouge_l([big_hyp, "heart size normal"], [big_ref, "heart normal"])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert cut == 1 and 0 < values[0] < 1 and values[1] > 0
    expected, _ = lexical.rouge_l([" ".join(lexical.rouge_tokens(big_hyp)[:lexical.ROUGE_L_MAX_TOKENS])],
                                  [" ".join(lexical.rouge_tokens(big_ref)[:lexical.ROUGE_L_MAX_TOKENS])])
    assert values[0] == expected[0]
    # token lists and their ids; rouge-score's LCS table for this pair would hold 10^10 Python ints
    assert peak < 100 * 2**20, peak


def test_paper_rouge_figure_is_rouge_scores_bootstrap_aggregator_mid():
    from rouge_score import rouge_scorer, scoring

    hyps, refs = _openi_pairs()
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    for n in (7, 300):
        np.random.seed(3)  # what the paper's script did at import
        agg = scoring.BootstrapAggregator(confidence_interval=0.95, n_samples=500)
        for h, r in zip(hyps[:n], refs[:n]):
            agg.add_scores(scorer.score(r, h))
        assert lexical.paper_rouge_median(lexical.rouge_l(hyps[:n], refs[:n])[0]) == agg.aggregate()["rougeL"].mid.fmeasure


def test_evaluate_reports_the_paper_figure_and_the_cap_without_importing_nltk(tmp_path):
    import subprocess
    import sys

    code = (
        "import json, sys\n"
        "from llavarad_cli.evaluate.records import Pair\n"
        "from llavarad_cli.evaluate.runner import EvalOptions, evaluate_pairs\n"
        "pairs = [Pair('a', 'heart normal lungs clear', 'heart size normal'), Pair('b', 'effusion', 'no effusion')]\n"
        "r = evaluate_pairs(pairs, EvalOptions(metrics=('bleu', 'rouge'), bootstrap=10))\n"
        "print(json.dumps({'extra': r.extra, 'nltk': 'nltk' in sys.modules, 'rouge_scorer': 'rouge_score.rouge_scorer' in sys.modules}))\n")
    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert out["nltk"] is False and out["rouge_scorer"] is False
    assert out["extra"]["rouge_l_token_cap"] == {"max_tokens": lexical.ROUGE_L_MAX_TOKENS, "reports_cut": 0}
    values = lexical.rouge_l(["heart normal lungs clear", "effusion"], ["heart size normal", "no effusion"])[0]
    assert out["extra"]["paper_figures"]["ROUGE-L"] == lexical.paper_rouge_median(values)


def test_bleu_stats_equal_sacrebleus_segment_statistics_on_the_held_pairs():
    hyps, refs = _openi_pairs()
    for k in SETS:
        hyps, refs = hyps + VECTORS[k]["hyps"], refs + VECTORS[k]["refs"]
    hyps, refs = hyps + ODD_TEXTS + ["a a a a a", "x ."], refs + ODD_TEXTS[::-1] + ["a a", "x ."]
    expected = lexical._bleu(lexical.MAX_ORDER)._extract_corpus_statistics(hyps, [refs])
    assert lexical.bleu_stats(hyps, refs).tolist() == expected
