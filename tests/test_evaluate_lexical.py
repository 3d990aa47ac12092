"""BLEU and ROUGE reproduce the reference libraries' values exactly, and the cheap bootstrap equals re-scoring."""

import json

import numpy as np
import pytest
from sacrebleu.metrics import BLEU

from llavarad_cli.evaluate import lexical
from llavarad_cli.evaluate.bootstrap import percentile_interval, resample_counts
from llavarad_cli.evaluate.records import Pair
from llavarad_cli.evaluate.runner import EvalOptions, evaluate_pairs

VECTORS = json.loads((__import__("pathlib").Path(__file__).parent / "data/metric-vectors/computed_lexical_vectors.json").read_text())
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
