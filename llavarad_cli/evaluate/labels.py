"""F1-CheXbert arithmetic from per-report labels: the paper's four reports, per-observation breakdowns, bootstrap.

Labels are CheXbert class ids per report and observation: 0 blank, 1 positive, 2 negative, 3 uncertain (the
"No Finding" head only gives 0 or 1). Binarised two ways: uncertain as negative (the paper's headline columns) and
uncertain as positive (the "+" columns). Values equal scikit-learn's ``classification_report(..., zero_division=0)``
on the indicator matrices; the bootstrap re-sums per-report TP/FP/FN, it never re-labels.
"""

from __future__ import annotations

import numpy as np

#: Head order of the CheXbert labeler (and of chexbert.pth).
CONDITIONS = [
    "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema", "Consolidation",
    "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
    "Support Devices", "No Finding",
]
#: The paper's 5-observation subset, in head order.
FIVE = ["Cardiomegaly", "Edema", "Consolidation", "Atelectasis", "Pleural Effusion"]
CLASS_NAMES = {0: "blank", 1: "positive", 2: "negative", 3: "uncertain"}
BLANK, POSITIVE, NEGATIVE, UNCERTAIN = 0, 1, 2, 3

#: metric name suffix -> (uncertain counts as positive?, observation subset)
REPORTS = {
    "14": (False, CONDITIONS),
    "5": (False, FIVE),
    "14+": (True, CONDITIONS),
    "5+": (True, FIVE),
}


def binarise(labels: np.ndarray, uncertain_positive: bool) -> np.ndarray:
    labels = np.asarray(labels)
    positive = labels == POSITIVE
    if uncertain_positive:
        positive |= labels == UNCERTAIN
    return positive.astype(np.int64)


def confusion(hyp_labels: np.ndarray, ref_labels: np.ndarray, uncertain_positive: bool,
              subset: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-report, per-observation TP, FP, FN indicators, each (n, len(subset))."""
    cols = [CONDITIONS.index(c) for c in subset]
    hyp = binarise(hyp_labels, uncertain_positive)[:, cols]
    ref = binarise(ref_labels, uncertain_positive)[:, cols]
    return hyp & ref, hyp & (1 - ref), (1 - hyp) & ref


def _f1(tp, fp, fn):
    tp, fp, fn = (np.asarray(x, dtype=np.float64) for x in (tp, fp, fn))
    denom = 2 * tp + fp + fn
    return np.divide(2 * tp, denom, out=np.zeros_like(denom), where=denom > 0)


def _ratio(num, den):
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(den), where=den > 0)


def micro_macro(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Micro and macro F1 from per-observation totals; the last axis is the observation (works batched)."""
    micro = _f1(tp.sum(-1), fp.sum(-1), fn.sum(-1))
    macro = _f1(tp, fp, fn).mean(-1)  # every observation counts, even one with no support (sklearn's macro)
    return micro, macro


def classification_report(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, names: list[str]) -> dict:
    """The per-observation rows plus micro and macro averages, like sklearn's report (``zero_division=0``)."""
    tp, fp, fn = tp.sum(0), fp.sum(0), fn.sum(0)
    support = tp + fn
    report = {}
    for i, name in enumerate(names):
        report[name] = {"precision": float(_ratio(tp[i], tp[i] + fp[i])), "recall": float(_ratio(tp[i], support[i])),
                        "f1-score": float(_f1(tp[i], fp[i], fn[i])), "support": float(support[i])}
    report["micro avg"] = {"precision": float(_ratio(tp.sum(), tp.sum() + fp.sum())),
                           "recall": float(_ratio(tp.sum(), support.sum())),
                           "f1-score": float(_f1(tp.sum(), fp.sum(), fn.sum())), "support": float(support.sum())}
    report["macro avg"] = {"precision": float(np.mean(_ratio(tp, tp + fp))), "recall": float(np.mean(_ratio(tp, support))),
                           "f1-score": float(np.mean(_f1(tp, fp, fn))), "support": float(support.sum())}
    return report


def chexbert_scores(hyp_labels: np.ndarray, ref_labels: np.ndarray, counts: np.ndarray | None):
    """{metric name: (point, resampled values or None)} for Micro/Macro-F1-14/5 and their "+" variants,
    plus the 14-observation classification reports for both mappings ("n" and "p")."""
    values, reports = {}, {}
    for suffix, (unc_pos, subset) in REPORTS.items():
        tp, fp, fn = confusion(hyp_labels, ref_labels, unc_pos, subset)
        micro, macro = micro_macro(tp.sum(0), fp.sum(0), fn.sum(0))
        boot_micro = boot_macro = None
        if counts is not None:
            boot_micro, boot_macro = micro_macro(counts @ tp, counts @ fp, counts @ fn)
        values[f"Micro-F1-{suffix}"] = (float(micro), boot_micro)
        values[f"Macro-F1-{suffix}"] = (float(macro), boot_macro)
        if subset is CONDITIONS:
            reports["p" if unc_pos else "n"] = classification_report(tp, fp, fn, subset)
    return values, reports
