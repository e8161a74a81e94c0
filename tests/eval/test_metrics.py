"""Metrics on hand-computed cases and against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from musicembed.eval.metrics import (
    accuracy,
    average_precision,
    classification_metrics,
    retrieval_metrics,
    roc_auc,
    tagging_metrics,
)


def test_binary_metrics_by_hand() -> None:
    y = np.array([0, 0, 1, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8])
    # positives beat negatives in 3 of 4 pairs
    assert roc_auc(y, s) == pytest.approx(0.75)
    # ranking 0.8(+) 0.4(-) 0.35(+) 0.1(-): precision 1/1 and 2/3 at the hits
    assert average_precision(y, s) == pytest.approx((1 + 2 / 3) / 2)
    # a tie between a positive and a negative counts half
    assert roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)


def test_binary_metrics_need_both_classes() -> None:
    with pytest.raises(ValueError):
        roc_auc([1, 1], [0.2, 0.3])
    with pytest.raises(ValueError):
        average_precision([0, 0], [0.2, 0.3])


@pytest.mark.parametrize("ties", [False, True])
def test_binary_metrics_match_sklearn(ties: bool) -> None:
    rng = np.random.default_rng(1)
    for _ in range(100):
        n = int(rng.integers(3, 80))
        y = rng.integers(0, 2, n)
        y[:2] = [0, 1]
        s = rng.integers(0, 4, n).astype(float) if ties else rng.normal(size=n)
        assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        assert average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_tagging_metrics_match_sklearn_macro() -> None:
    rng = np.random.default_rng(2)
    y = (rng.random((200, 7)) < 0.3).astype(int)
    s = y * 0.5 + rng.random((200, 7))
    m = tagging_metrics(y, s)
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, s, average="macro"), abs=1e-12)
    assert m["pr_auc"] == pytest.approx(average_precision_score(y, s, average="macro"), abs=1e-12)
    assert m["n_classes"] == 7 and m["skipped_classes"] == []


def test_tagging_metrics_skip_single_class_columns() -> None:
    y = np.array([[1, 0, 1], [0, 0, 1], [1, 0, 1], [0, 0, 1]])
    s = np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.5], [0.8, 0.2, 0.5], [0.1, 0.4, 0.5]])
    m = tagging_metrics(y, s)
    assert m["skipped_classes"] == [1, 2]
    assert m["roc_auc"] == 1.0 and m["pr_auc"] == 1.0


def test_accuracy_and_classification_metrics() -> None:
    y = np.array([0, 1, 2, 2])
    s = np.array([[0.7, 0.2, 0.1], [0.5, 0.4, 0.1], [0.1, 0.1, 0.8], [0.2, 0.3, 0.5]])
    assert accuracy(y, s) == 0.75
    m = classification_metrics(y, s)
    assert m["accuracy"] == 0.75
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, s, multi_class="ovr", average="macro"))
    assert m["n_classes"] == 3


def _square() -> np.ndarray:
    # cosines: 0-1 .8, 0-2 .6, 0-3 0, 1-2 .96, 1-3 .6, 2-3 .8
    return np.array([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]])


def test_retrieval_by_hand() -> None:
    m = retrieval_metrics(_square(), ["A", "A", "B", "B"], ks=(1, 2, 10))
    # q0: A-version first (AP 1, rank 1); q1: 2(B) then 0(A) -> AP 1/2, rank 2;
    # q2: 1(A) then 3(B) -> AP 1/2, rank 2; q3: 2(B) first -> AP 1, rank 1
    assert m["map"] == pytest.approx(0.75)
    assert m["mr1"] == pytest.approx(1.5)
    assert m["p@1"] == pytest.approx(0.5)
    assert m["p@2"] == pytest.approx(0.5)
    assert m["p@10"] == pytest.approx(0.1)  # one version among the top 10, divided by 10
    assert (m["queries"], m["skipped_queries"]) == (4, 0)


def test_retrieval_skips_queries_without_versions_and_scale_invariance() -> None:
    x = np.vstack([_square() * [[1], [3], [0.5], [2]], [[-1.0, 0.0]]])
    m = retrieval_metrics(x, [1, 1, 2, 2, 3], ks=(1,), block_size=2)
    assert (m["queries"], m["skipped_queries"]) == (4, 1)
    assert m["map"] == pytest.approx(0.75) and m["mr1"] == pytest.approx(1.5)


def test_retrieval_ties_never_flatter() -> None:
    m = retrieval_metrics(np.ones((4, 3)), ["A", "A", "B", "B"])
    # every candidate ties: the one version is ranked after both non-versions
    assert m["mr1"] == 3.0 and m["map"] == pytest.approx(1 / 3)


def test_retrieval_map_matches_sklearn_per_query() -> None:
    rng = np.random.default_rng(3)
    works = rng.integers(0, 12, 60)
    x = rng.normal(size=(60, 8)) + 0.8 * rng.normal(size=(12, 8))[works]
    m = retrieval_metrics(x, works, ks=(10,), block_size=7)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = xn @ xn.T
    aps, p10, r1 = [], [], []
    for q in range(60):
        others = np.arange(60) != q
        rel = works[others] == works[q]
        if not rel.any():
            continue
        aps.append(average_precision_score(rel, sims[q, others]))
        order = np.argsort(-sims[q, others])
        p10.append(rel[order][:10].sum() / 10)
        r1.append(np.argmax(rel[order]) + 1)
    assert m["queries"] == len(aps)
    assert m["map"] == pytest.approx(np.mean(aps), abs=1e-12)
    assert m["p@10"] == pytest.approx(np.mean(p10))
    assert m["mr1"] == pytest.approx(np.mean(r1))


def test_retrieval_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="no work"):
        retrieval_metrics(np.eye(3), ["a", "b", "c"])
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(np.array([[np.nan, 1.0], [1.0, 0.0]]), ["a", "a"])
