"""Percentile bootstrap intervals over the examples of a test set.

A test set is a sample of examples (documents; sentences for a task whose examples are
sentences, see `biogpt.report.analysis.unit_of`), so the interval of a metric comes from
resampling the examples with replacement, `resamples` times, and recomputing the metric on
each resample; the interval is the (1 - confidence) / 2 and (1 + confidence) / 2
percentiles of those values. Resampling whole examples, not relations or labels, keeps
what an example holds together: a document with many relations moves all of them in or
out of a resample.

The metric is a callback over the example indices of a resample, so the caller decides
how to recompute it (a task's own `score` on the already-parsed answers, in
`biogpt.report.analysis`). It returns several metrics at once, since a task's `score`
computes them together.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# indices of the examples in one resample (with repeats) -> {metric name: value}
Statistic = Callable[[Sequence[int]], Mapping[str, float]]

CONFIDENCE = 0.95
# More resamples than this only slow the report down: the percentiles are settled long before.
MAX_RESAMPLES = 100_000


def confidence_text(confidence: float = CONFIDENCE) -> str:
    """The confidence as a percentage for the page and the figures: 0.95 -> "95%"."""
    return f"{confidence * 100:g}%"


@dataclass(frozen=True)
class Interval:
    """A percentile interval [low, high] of a metric's resampled values."""

    low: float
    high: float


def resample_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) indices of `n` examples drawn uniformly with replacement; the same
    seed draws the same indices."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, n, size=(resamples, n))


def bootstrap_intervals(
    n: int,
    statistic: Statistic,
    resamples: int = 1000,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> dict[str, Interval]:
    """{metric: Interval} of each metric `statistic` returns, over `resamples` resamples of
    `n` examples (`resample_indices`, then numpy's default linear percentiles). No examples
    or no resamples give no intervals ({}).

    A metric that is the same on every resample gets a zero-width interval at that value
    (the percentiles of equal numbers are that number).
    """
    if n < 1 or resamples < 1:
        return {}
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    values: dict[str, list[float]] = {}
    for indices in resample_indices(n, resamples, seed):
        for name, value in statistic(indices.tolist()).items():
            values.setdefault(name, []).append(float(value))
    tail = (1 - confidence) / 2 * 100
    out = {}
    for name, series in values.items():
        low, high = np.percentile(np.asarray(series), [tail, 100 - tail])
        out[name] = Interval(float(low), float(high))
    return out
