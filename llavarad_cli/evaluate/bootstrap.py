"""One bootstrap for every metric: the same resampled report sets, percentile intervals, point = full set.

The reference mixed three meanings of its reported value (corpus score, median of bootstrap means, median of the
bootstrap distribution) and three RNGs. Here every metric is computed from per-report sufficient statistics, so a
resample is a weighted sum: ``counts @ stats``, where ``counts[b, i]`` is how often report i was drawn in
resample b. Nothing is re-scored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95


def resample_counts(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """(n_resamples, n) float matrix: how many times each report appears in each resample (rows sum to n)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_resamples, n))
    # one bincount over (row offset + index) is far faster than a Python loop or np.add.at
    flat = (idx + (np.arange(n_resamples) * n)[:, None]).ravel()
    return np.bincount(flat, minlength=n_resamples * n).reshape(n_resamples, n).astype(np.float64)


@dataclass
class Interval:
    low: float
    high: float


@dataclass
class Score:
    """One reported number: the metric on the full set, and its bootstrap interval when one was drawn."""

    name: str
    value: float
    ci: Interval | None = None
    n: int = 0


def percentile_interval(samples: np.ndarray) -> Interval:
    """The 2.5th and 97.5th percentiles of the resampled values (numpy's default linear interpolation)."""
    alpha = (1.0 - CONFIDENCE) / 2.0
    low, high = np.percentile(np.asarray(samples, dtype=np.float64), [100 * alpha, 100 * (1 - alpha)])
    return Interval(float(low), float(high))

