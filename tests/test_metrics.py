"""Metric functions on hand-computed cases."""

import pytest

from biogpt.tasks import metrics


def test_set_prf_counts_duplicates_once():
    prf = metrics.set_prf(["a", "a", "b"], ["a", "c"])
    assert (prf.precision, prf.recall) == (0.5, 0.5)
    assert prf.f1 == pytest.approx(0.5)


def test_multiset_prf_counts_duplicates():
    # "a" predicted twice, gold once: 1 true positive, 2 false positives (a, b)
    prf = metrics.multiset_prf(["a", "a", "b"], ["a", "c"])
    assert prf.precision == pytest.approx(1 / 3)
    assert prf.recall == pytest.approx(1 / 2)
    assert prf.f1 == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))


def test_micro_empty_sides():
    assert metrics.set_prf([], []) == metrics.PRF(1.0, 1.0, 1.0)
    assert metrics.set_prf([], ["a"]) == metrics.PRF(0.0, 0.0, 0.0)
    assert metrics.set_prf(["a"], []) == metrics.PRF(0.0, 0.0, 0.0)


def test_document_prf_release_rules():
    assert metrics.document_prf(set(), set()) == metrics.PRF(1.0, 1.0, 1.0)
    assert metrics.document_prf(set(), {"a"}) == metrics.PRF(0.0, 0.0, 0.0)
    assert metrics.document_prf({"a"}, set()) == metrics.PRF(0.0, 0.0, 0.0)
    prf = metrics.document_prf({"a", "b"}, {"a", "c", "d"})
    assert (prf.precision, prf.recall) == (0.5, pytest.approx(1 / 3))


def test_mean_document_f1_is_mean_of_f1s():
    scores = [metrics.document_prf({"a"}, {"a"}), metrics.document_prf(set(), {"a"})]
    assert metrics.mean_document_prf(scores).f1 == 0.5
    assert metrics.mean_document_prf([]) == metrics.PRF(0.0, 0.0, 0.0)


def test_accuracy_and_macro_f1_with_unparseable():
    gold = ["yes", "no", "maybe", "yes"]
    pred = ["yes", None, "yes", "yes"]  # None: unparseable, wrong, no class
    assert metrics.accuracy(pred, gold) == 0.5
    # yes: tp 2, fp 1, fn 0 -> 4/5; no: tp 0 -> 0; maybe: tp 0 -> 0
    assert metrics.macro_f1(pred, gold, ("yes", "no", "maybe")) == pytest.approx(0.8 / 3)
    assert metrics.accuracy([], []) == 0.0
    with pytest.raises(ValueError):
        metrics.accuracy(["yes"], [])


def test_multilabel_micro_f1_ignores_unknown_labels():
    classes = ("empty", "x", "y")
    pred = [{"x", "bogus"}, {"empty"}]
    gold = [{"x", "y"}, {"empty"}]
    prf = metrics.multilabel_micro_f1(pred, gold, classes)
    # tp 2 (x, empty), predicted 2, gold 3
    assert (prf.precision, prf.recall) == (1.0, pytest.approx(2 / 3))
    assert prf.f1 == pytest.approx(0.8)
