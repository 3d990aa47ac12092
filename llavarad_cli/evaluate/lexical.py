"""BLEU-1/4 (sacrebleu corpus BLEU, 0-100) and ROUGE-L/2 (rouge-score F, no stemmer, 0-1), as the paper ran them.

Per-report sufficient statistics make the bootstrap cheap: BLEU keeps each report's n-gram match/total counts and
lengths (sacrebleu's own segment statistics), so a resample's corpus BLEU is computed from summed counts exactly as
sacrebleu would; ROUGE keeps each report's F-measure.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np

MAX_ORDER = 4


@lru_cache(maxsize=None)
def _bleu(order: int):
    from sacrebleu.metrics import BLEU

    # library defaults, as in the paper: 13a tokenizer, case-sensitive, exp smoothing
    return BLEU(max_ngram_order=order)


def bleu_stats(hyps: Sequence[str], refs: Sequence[str]) -> np.ndarray:
    """(n, 2 + 2*4) int array per report: hyp length, ref length, matches for orders 1-4, totals for orders 1-4."""
    stats = _bleu(MAX_ORDER)._extract_corpus_statistics(list(hyps), [list(refs)])
    return np.asarray(stats, dtype=np.int64).reshape(len(hyps), 2 + 2 * MAX_ORDER)


def stats_for_order(stats: np.ndarray, order: int) -> np.ndarray:
    """Slice 4-gram statistics down to order n: the lengths and unigram counts do not depend on the max order."""
    cols = [0, 1] + list(range(2, 2 + order)) + list(range(2 + MAX_ORDER, 2 + MAX_ORDER + order))
    return stats[..., cols]


def bleu_from_stats(summed: np.ndarray, order: int) -> float:
    """Corpus BLEU (0-100) from summed segment statistics of one order."""
    return float(_bleu(order)._compute_score_from_stats([int(x) for x in summed]).score)


def bleu_scores(stats: np.ndarray, order: int, counts: np.ndarray | None) -> tuple[float, np.ndarray | None]:
    """Point value on the full set, and one value per bootstrap resample (``counts`` from bootstrap)."""
    sub = stats_for_order(stats, order)
    point = bleu_from_stats(sub.sum(axis=0), order)
    if counts is None:
        return point, None
    # integer counts times integer stats: exact in float64 far beyond any test set size
    summed = np.rint(counts @ sub.astype(np.float64)).astype(np.int64)
    return point, np.array([bleu_from_stats(row, order) for row in summed])


def rouge_f(hyps: Sequence[str], refs: Sequence[str], kind: str = "rougeL") -> np.ndarray:
    """Per-report F-measure; rouge-score's default tokenizer (lower-case, alphanumeric tokens), no stemmer."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer([kind], use_stemmer=False)
    return np.array([scorer.score(target=r, prediction=h)[kind].fmeasure for h, r in zip(hyps, refs)],
                    dtype=np.float64)
