"""Percentile bootstrap intervals over documents.

A test set is a sample of documents, so the interval of a metric comes from resampling
documents with replacement, `resamples` times, and recomputing the metric on each
resample; the interval is the (1 - confidence) / 2 and (1 + confidence) / 2 percentiles of
those values. Resampling documents, not relations or labels, keeps what a document holds
together: a document with many relations moves all of them in or out of a resample.

The metric is a callback over the document indices of a resample, so the caller decides
how to recompute it (a task's own `score` on the already-parsed answers, in
`biogpt.report.analysis`). It returns several metrics at once, since a task's `score`
computes them together.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# indices of the documents in one resample (with repeats) -> {metric name: value}
Statistic = Callable[[Sequence[int]], Mapping[str, float]]

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """A percentile interval [low, high] of a metric's resampled values."""

    low: float
    high: float


def resample_indices(documents: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, documents) indices drawn uniformly with replacement; the same seed
    draws the same indices."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, documents, size=(resamples, documents))


def bootstrap_intervals(
    documents: int,
    statistic: Statistic,
    resamples: int = 1000,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> dict[str, Interval]:
    """{metric: Interval} of each metric `statistic` returns, over `resamples` resamples of
    `documents` documents. No documents or no resamples give no intervals ({}).

    A metric that is the same on every resample gets a zero-width interval at that value
    (the percentiles of equal numbers are that number).
    """
    if documents < 1 or resamples < 1:
        return {}
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    values: dict[str, list[float]] = {}
    for indices in resample_indices(documents, resamples, seed):
        for name, value in statistic(indices.tolist()).items():
            values.setdefault(name, []).append(float(value))
    tail = (1 - confidence) / 2 * 100
    out = {}
    for name, series in values.items():
        low, high = np.percentile(np.asarray(series), [tail, 100 - tail])
        out[name] = Interval(float(low), float(high))
    return out


def mean_of(values: Sequence[float]) -> Statistic:
    """The statistic "mean of per-document values", for metrics that are such a mean
    (accuracy, a mean of per-document F1s): {"mean": ...} of a resample."""

    def statistic(indices: Sequence[int]) -> dict[str, float]:
        return {"mean": sum(values[i] for i in indices) / len(indices)}

    return statistic
