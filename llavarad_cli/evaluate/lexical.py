"""BLEU-1/4 (sacrebleu corpus BLEU, 0-100) and ROUGE-L/2 (rouge-score F, no stemmer, 0-1), as the paper ran them.

Per-report sufficient statistics make the bootstrap cheap: BLEU keeps each report's n-gram match/total counts and
lengths (sacrebleu's own segment statistics), so a resample's corpus BLEU is computed from summed counts exactly as
sacrebleu would; ROUGE keeps each report's F-measure.

ROUGE-L uses rouge-score's tokenisation and F-measure, but takes the LCS length from rapidfuzz's bit-parallel
LCSseq instead of rouge-score's pure-Python table: the same integer, in linear memory and about n*m/64 word
operations (rouge-score's table is n*m Python cells: 50 KB of text took 890 MB and 52 s). Not importing
``rouge_scorer`` also skips its nltk import (for the stemmer, which the paper did not use), about 2 s of start-up.
"""

from __future__ import annotations

import re
from collections import Counter
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
    """(n, 2 + 2*4) int array per report: hyp length, ref length, matches for orders 1-4, totals for orders 1-4.

    sacrebleu's segment statistics for one reference per segment, counted the same way from the same 13a tokens
    (sacrebleu's own preprocessing), but with n-grams built by ``zip`` and each distinct text counted once: about
    2.4x faster than ``_extract_corpus_statistics``, the same integers (a test compares them on the held pairs)."""
    preprocess = _bleu(MAX_ORDER)._preprocess_segment
    counted: dict[str, tuple[int, list[Counter]]] = {}

    def ngrams(text: str) -> tuple[int, list[Counter]]:
        if text not in counted:
            tokens = preprocess(text).split()
            counted[text] = (len(tokens), [Counter(zip(*[tokens[i:] for i in range(n)]))
                                           for n in range(1, MAX_ORDER + 1)])
        return counted[text]

    out = np.zeros((len(hyps), 2 + 2 * MAX_ORDER), dtype=np.int64)
    for row, hyp, ref in zip(out, hyps, refs):
        (hyp_len, hyp_grams), (ref_len, ref_grams) = ngrams(hyp), ngrams(ref)
        row[0], row[1] = hyp_len, ref_len  # one reference: the "closest" reference length is its length
        for n, (h, r) in enumerate(zip(hyp_grams, ref_grams)):
            row[2 + n] = sum(min(count, r[g]) for g, count in h.items() if g in r)
            row[2 + MAX_ORDER + n] = max(hyp_len - n, 0)
    return out


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


#: ROUGE-L tokens kept per report. Real findings have tens to a few hundred tokens; this cap (about 600 KB of
#: text) only bounds the time a pathological file can take (two capped reports: ~1.6e8 word operations, well under
#: a second). Reports cut to it are counted in metrics.json; below it the values are rouge-score's exactly.
ROUGE_L_MAX_TOKENS = 100_000
#: The paper's script reported ROUGE-L as rouge-score's BootstrapAggregator "mid": the median of 500 bootstrap
#: means, drawn with NumPy's global legacy RNG, which that script seeded with 3 when it was imported.
PAPER_ROUGE_SAMPLES, PAPER_ROUGE_SEED = 500, 3


_TOKEN_RE = re.compile(r"[a-z0-9]+")


def rouge_tokens(text: str) -> list[str]:
    """rouge-score's default tokenisation without a stemmer, in one pass: it lower-cases, replaces every run of
    characters outside [a-z0-9] with a space, splits on whitespace and keeps the tokens matching ^[a-z0-9]+$; what
    remains are exactly the maximal runs of [a-z0-9] in the lower-cased text (a test checks it against
    ``rouge_score.tokenize`` on every held report)."""
    return _TOKEN_RE.findall(text.lower())


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists (bit-parallel, linear memory)."""
    from rapidfuzz.distance import LCSseq

    # tokens become small ints from one table, so equal tokens are equal ids and no hash can collide
    ids: dict[str, int] = {}
    return LCSseq.similarity([ids.setdefault(t, len(ids)) for t in a], [ids.setdefault(t, len(ids)) for t in b])


def rouge_l(hyps: Sequence[str], refs: Sequence[str],
            max_tokens: int = ROUGE_L_MAX_TOKENS) -> tuple[np.ndarray, int]:
    """(per-report ROUGE-L F-measure, number of reports with a side cut to ``max_tokens``)."""
    out = np.zeros(len(hyps), dtype=np.float64)
    cut = 0
    for i, (hyp, ref) in enumerate(zip(hyps, refs)):
        h, r = rouge_tokens(hyp), rouge_tokens(ref)
        if len(h) > max_tokens or len(r) > max_tokens:
            cut += 1
            h, r = h[:max_tokens], r[:max_tokens]
        if not h or not r:
            continue  # rouge-score's convention: an empty side scores 0
        lcs = lcs_length(r, h)
        precision, recall = lcs / len(h), lcs / len(r)
        # rouge-score's scoring.fmeasure, the same operations in the same order (so the same float)
        out[i] = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return out, cut


def paper_rouge_median(values: np.ndarray) -> float:
    """ROUGE-L as the paper's script printed it: the median of 500 bootstrap means (see PAPER_ROUGE_SAMPLES)."""
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.RandomState(PAPER_ROUGE_SEED)
    # one draw of shape (500, n) gives the same indices as 500 calls of np.random.choice(n, n) in a row; summing
    # down the columns of the (n, 500) transpose adds report by report, as rouge-score's mean over rows does
    # (a mean along each row would sum pairwise and differ in the last bit)
    idx = rng.choice(np.arange(len(values)), size=(PAPER_ROUGE_SAMPLES, len(values)))
    means = np.ascontiguousarray(values[idx].T).mean(axis=0)
    return float(np.percentile(means, 50))


def rouge_f(hyps: Sequence[str], refs: Sequence[str], kind: str = "rougeL") -> np.ndarray:
    """Per-report F-measure; rouge-score's default tokenizer (lower-case, alphanumeric tokens), no stemmer."""
    if kind == "rougeL":
        return rouge_l(hyps, refs)[0]
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer([kind], use_stemmer=False)
    return np.array([scorer.score(target=r, prediction=h)[kind].fmeasure for h, r in zip(hyps, refs)],
                    dtype=np.float64)
