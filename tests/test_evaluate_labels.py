"""F1-CheXbert arithmetic: published classification reports from labels, sklearn parity, bootstrap parity."""

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import classification_report, precision_recall_fscore_support

from llavarad_cli.evaluate import labels as L
from llavarad_cli.evaluate.bootstrap import resample_counts

PUBLISHED = json.loads((Path(__file__).parent / "data/metric-vectors/published_vectors.json").read_text())


def _row(*names, value=L.POSITIVE):
    r = np.zeros(14, dtype=np.int64)
    for n in names:
        r[L.CONDITIONS.index(n)] = value
    return r


def _published_pair_labels():
    """CheXbert labels for the 5 published pairs, read off the published reports (supports, TP/FP counts)."""
    hyp = np.stack([_row("No Finding"), _row("No Finding"), _row("Edema", "Atelectasis"), _row("Consolidation"),
                    _row("Pleural Effusion", value=L.NEGATIVE)])
    ref = np.stack([_row("No Finding"), _row("Cardiomegaly"), _row("Cardiomegaly"), _row("Consolidation"),
                    _row("Lung Opacity", "Lung Lesion")])
    return hyp, ref


def test_published_reports_reproduced_from_labels():
    pub = PUBLISHED["f1chexbert_radeval"]
    hyp, ref = _published_pair_labels()
    values, reports = L.chexbert_scores(hyp, ref, None)
    # RadEval counts uncertain as positive: the paper's "+" columns; with no uncertain labels both agree
    expected14 = pub["expected_class_report_14"]
    for row in L.CONDITIONS + ["micro avg", "macro avg"]:
        assert reports["p"][row] == expected14[row], row
    expected5 = pub["expected_class_report_5"]
    assert values["Micro-F1-14+"][0] == expected14["micro avg"]["f1-score"] == values["Micro-F1-14"][0]
    assert values["Macro-F1-14+"][0] == expected14["macro avg"]["f1-score"]
    assert values["Micro-F1-5+"][0] == expected5["micro avg"]["f1-score"]
    assert values["Macro-F1-5+"][0] == expected5["macro avg"]["f1-score"]


def test_uncertain_mapping_changes_only_the_plus_columns():
    hyp = np.stack([_row("Edema", value=L.UNCERTAIN), _row("Cardiomegaly")])
    ref = np.stack([_row("Edema"), _row("Cardiomegaly")])
    values, reports = L.chexbert_scores(hyp, ref, None)
    assert reports["n"]["Edema"]["recall"] == 0.0 and reports["p"]["Edema"]["recall"] == 1.0
    assert values["Micro-F1-5"][0] == pytest.approx(2 / 3) and values["Micro-F1-5+"][0] == 1.0


@pytest.mark.parametrize("uncertain_positive", [False, True])
def test_matches_sklearn_on_random_labels(uncertain_positive):
    rng = np.random.default_rng(0)
    hyp, ref = rng.integers(0, 4, (200, 14)), rng.integers(0, 4, (200, 14))
    hyp[:, 13] %= 2
    ref[:, 13] %= 2
    for subset in (L.CONDITIONS, L.FIVE):
        cols = [L.CONDITIONS.index(c) for c in subset]
        yh, yr = L.binarise(hyp, uncertain_positive)[:, cols], L.binarise(ref, uncertain_positive)[:, cols]
        expected = classification_report(yr, yh, target_names=subset, output_dict=True, zero_division=0)
        tp, fp, fn = L.confusion(hyp, ref, uncertain_positive, subset)
        got = L.classification_report(tp, fp, fn, subset)
        for row in subset + ["micro avg", "macro avg"]:
            for k in ("precision", "recall", "f1-score", "support"):
                assert got[row][k] == pytest.approx(expected[row][k], abs=1e-12), (row, k)


def test_bootstrap_f1_equals_sklearn_on_each_materialised_resample():
    rng = np.random.default_rng(1)
    hyp, ref = rng.integers(0, 4, (60, 14)), rng.integers(0, 4, (60, 14))
    counts = resample_counts(60, 10, seed=3)
    values, _ = L.chexbert_scores(hyp, ref, counts)
    for b in range(10):
        idx = np.repeat(np.arange(60), counts[b].astype(int))
        for suffix, (unc, subset) in L.REPORTS.items():
            cols = [L.CONDITIONS.index(c) for c in subset]
            yh, yr = L.binarise(hyp[idx], unc)[:, cols], L.binarise(ref[idx], unc)[:, cols]
            for avg in ("micro", "macro"):
                f1 = precision_recall_fscore_support(yr, yh, average=avg, zero_division=0)[2]
                assert values[f"{avg.title()}-F1-{suffix}"][1][b] == pytest.approx(f1, abs=1e-12)
