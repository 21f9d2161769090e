"""Pure metric functions over sets, multisets and labels.

Nothing here knows about tasks or text: the task modules turn generated answers into
structures (triples, labels, mentions) and call these. Every function is total: empty
inputs give a defined number, never a division by zero.

Conventions, chosen to match the BioGPT release's evaluation scripts:
- Per-document precision of an empty prediction set is 1 only if the gold set is empty
  too (likewise recall of an empty gold set); see `document_prf`.
- Corpus-level (micro) scores of empty inputs: precision 0 when nothing is predicted but
  something is gold, and all three 1.0 when both sides are empty.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass


@dataclass(frozen=True)
class PRF:
    """Precision, recall and F1 (each in [0, 1])."""

    precision: float
    recall: float
    f1: float


def f1_of(precision: float, recall: float) -> float:
    """Harmonic mean of precision and recall; 0 when both are 0."""
    total = precision + recall
    return 0.0 if total == 0 else 2 * precision * recall / total


def prf_from_counts(true_positives: int, predicted: int, gold: int) -> PRF:
    """Micro P/R/F1 from counts. Both sides empty scores 1.0 (nothing to find, nothing
    wrongly found); one side empty scores 0 on the ratio whose denominator is non-zero."""
    if predicted == 0 and gold == 0:
        return PRF(1.0, 1.0, 1.0)
    precision = true_positives / predicted if predicted else 0.0
    recall = true_positives / gold if gold else 0.0
    return PRF(precision, recall, f1_of(precision, recall))


def set_prf(predicted: Iterable[Hashable], gold: Iterable[Hashable]) -> PRF:
    """Micro P/R/F1 of two collections compared as sets (duplicates count once)."""
    pred, ref = set(predicted), set(gold)
    return prf_from_counts(len(pred & ref), len(pred), len(ref))


def multiset_prf(predicted: Iterable[Hashable], gold: Iterable[Hashable]) -> PRF:
    """Micro P/R/F1 of two collections compared as multisets: an item predicted twice
    but gold once is one true positive and one false positive."""
    pred, ref = Counter(predicted), Counter(gold)
    true_positives = sum((pred & ref).values())
    return prf_from_counts(true_positives, sum(pred.values()), sum(ref.values()))


def document_prf(predicted: AbstractSet[Hashable], gold: AbstractSet[Hashable]) -> PRF:
    """One document's P/R/F1 as the KD-DTI/DDI release scores it:
    P = |P∩G|/|P| and R = |P∩G|/|G|, where a ratio over an empty set is 1 only if both
    sets are empty (an empty prediction for a non-empty gold scores P = 0, R = 0)."""
    overlap = len(predicted & gold)
    same = 1.0 if predicted == gold else 0.0
    precision = overlap / len(predicted) if predicted else same
    recall = overlap / len(gold) if gold else same
    return PRF(precision, recall, f1_of(precision, recall))


def mean_document_prf(scores: Sequence[PRF]) -> PRF:
    """Mean over documents of per-document precision, recall and F1 (the F1 is the mean of
    the per-document F1s, not the F1 of the means: that is the number KD-DTI reports)."""
    if not scores:
        return PRF(0.0, 0.0, 0.0)
    n = len(scores)
    return PRF(
        sum(s.precision for s in scores) / n,
        sum(s.recall for s in scores) / n,
        sum(s.f1 for s in scores) / n,
    )


def accuracy(predicted: Sequence[Hashable], gold: Sequence[Hashable]) -> float:
    """Fraction of positions where the prediction equals the gold label (0 when empty)."""
    if len(predicted) != len(gold):
        raise ValueError(f"accuracy: {len(predicted)} predictions for {len(gold)} labels")
    if not gold:
        return 0.0
    return sum(p == g for p, g in zip(predicted, gold, strict=True)) / len(gold)


def macro_f1(
    predicted: Sequence[Hashable | None], gold: Sequence[Hashable], labels: Sequence[Hashable]
) -> float:
    """Unweighted mean over classes of the per-class F1 of single-label predictions.

    The mean runs over the classes of `labels` that occur in the gold or the predictions
    (as scikit-learn does when it is not given a label list). A prediction outside
    `labels` (e.g. None for an unparseable answer) is wrong and belongs to no class: it
    costs its gold class a false negative and adds no false positive anywhere.
    """
    if len(predicted) != len(gold):
        raise ValueError(f"macro_f1: {len(predicted)} predictions for {len(gold)} labels")
    seen = set(gold) | set(predicted)
    present = [c for c in labels if c in seen]
    if not present:
        return 0.0
    scores = []
    for label in present:
        tp = sum(p == label and g == label for p, g in zip(predicted, gold, strict=True))
        fp = sum(p == label and g != label for p, g in zip(predicted, gold, strict=True))
        fn = sum(g == label and p != label for p, g in zip(predicted, gold, strict=True))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores)


def multilabel_micro_f1(
    predicted: Sequence[set[str]], gold: Sequence[set[str]], classes: Sequence[str]
) -> PRF:
    """Micro P/R/F1 of multi-label predictions over a fixed class list, counting each
    (example, class) decision once. Labels outside `classes` are ignored on both sides,
    as the HoC release's label binarizer ignores them."""
    if len(predicted) != len(gold):
        raise ValueError(f"multilabel_micro_f1: {len(predicted)} predictions for {len(gold)}")
    allowed = set(classes)
    tp = n_pred = n_gold = 0
    for pred, ref in zip(predicted, gold, strict=True):
        pred, ref = pred & allowed, ref & allowed
        tp += len(pred & ref)
        n_pred += len(pred)
        n_gold += len(ref)
    return prf_from_counts(tp, n_pred, n_gold)
