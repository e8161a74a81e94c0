"""Evaluation metrics: tagging (macro ROC-AUC / PR-AUC), classification accuracy, and
cover-song retrieval (MAP, P@k, MR1) as ``DESIGN.md`` defines them.

ROC-AUC and average precision follow scikit-learn's definitions exactly (ties in the
scores get half credit in ROC-AUC; average precision steps over distinct score values),
so results agree with ``sklearn.metrics`` to rounding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` ascending; tied values share the mean of their positions."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    new = np.r_[True, xs[1:] != xs[:-1]]
    starts = np.flatnonzero(new)
    ends = np.r_[starts[1:], x.size]
    ranks = np.empty(x.size)
    ranks[order] = ((starts + ends + 1) / 2.0)[np.cumsum(new) - 1]
    return ranks


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Binary ROC-AUC (Mann-Whitney statistic, average ranks for ties).

    Raises ValueError when ``y_true`` has no positive or no negative example.
    """
    y = np.asarray(y_true).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC-AUC is undefined when only one class is present")
    ranks = _average_ranks(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Average precision (area under the precision-recall curve, step-wise):
    sum over distinct thresholds of (R_t - R_{t-1}) * P_t, as scikit-learn computes it.

    Raises ValueError when ``y_true`` has no positive example.
    """
    y = np.asarray(y_true).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if not y.any():
        raise ValueError("average precision is undefined without a positive example")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]
    tps = np.cumsum(y)[last_of_tie]
    precision = tps / (last_of_tie + 1)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def tagging_metrics(y_true: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    """Macro ROC-AUC and PR-AUC (average precision) over the columns of (N, C) arrays.

    Columns where every example is positive or every example is negative have no defined
    ROC-AUC; they are left out of both means and listed under ``skipped_classes``.
    """
    y = np.asarray(y_true)
    s = np.asarray(scores)
    if y.ndim != 2 or y.shape != s.shape:
        raise ValueError(f"expected matching (N, C) arrays, got {y.shape} and {s.shape}")
    aucs, aps, skipped = [], [], []
    for c in range(y.shape[1]):
        pos = int(y[:, c].astype(bool).sum())
        if pos == 0 or pos == y.shape[0]:
            skipped.append(c)
            continue
        aucs.append(roc_auc(y[:, c], s[:, c]))
        aps.append(average_precision(y[:, c], s[:, c]))
    if not aucs:
        raise ValueError("no class has both positive and negative examples")
    return {
        "roc_auc": float(np.mean(aucs)),
        "pr_auc": float(np.mean(aps)),
        "n_classes": len(aucs),
        "skipped_classes": skipped,
    }


def accuracy(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Fraction of examples whose highest-scoring class (ties: the lowest index) is the label."""
    y = np.asarray(y_true).ravel()
    s = np.asarray(scores)
    if s.ndim != 2 or s.shape[0] != y.size:
        raise ValueError(f"expected (N, C) scores for N={y.size} labels, got {s.shape}")
    return float(np.mean(np.argmax(s, axis=1) == y))


def classification_metrics(y_true: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    """Single-label metrics: accuracy and one-vs-rest macro ROC-AUC over the classes that
    occur among the labels (classes absent from ``y_true`` are left out of the mean)."""
    y = np.asarray(y_true).ravel().astype(int)
    s = np.asarray(scores)
    onehot = np.zeros(s.shape, dtype=np.int8)
    onehot[np.arange(y.size), y] = 1
    out: dict[str, Any] = {"accuracy": accuracy(y, s)}
    present = sorted(set(y.tolist()))
    if len(present) > 1:
        out["roc_auc"] = float(np.mean([roc_auc(onehot[:, c], s[:, c]) for c in present]))
    out["n_classes"] = len(present)
    return out


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"expected (N, D) embeddings, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or infinite values")
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def retrieval_per_query(
    embeddings: np.ndarray,
    work_ids: Sequence[Any],
    ks: Sequence[int] = (10,),
    block_size: int = 512,
) -> dict[str, np.ndarray]:
    """Per-query retrieval values over one collection (the units that
    :func:`retrieval_metrics` averages and the bootstrap resamples).

    Each recording is a query; all OTHER recordings are ranked by cosine similarity. A
    candidate is relevant when it has the query's work id. Returns arrays over the queries
    (recordings whose work has another recording, in input order): ``query`` (their input
    indices), ``ap`` (average precision over the query's versions), ``p@k`` (relevant among
    the top k, divided by k) and ``rank1`` (1-based rank of the first relevant candidate).
    Equal similarities rank non-versions first, so ties (e.g. a collapsed embedding) can
    never flatter a model.
    """
    x = _normalise(embeddings)
    ids = np.unique(np.asarray([str(w) for w in work_ids]), return_inverse=True)[1]
    n = x.shape[0]
    if ids.size != n:
        raise ValueError(f"{n} embeddings but {ids.size} work ids")
    counts = np.bincount(ids)
    queries = np.flatnonzero(counts[ids] > 1)
    if queries.size == 0:
        raise ValueError("no work has two or more recordings: nothing to retrieve")
    ks = [int(k) for k in ks]
    ap, first = np.empty(queries.size), np.empty(queries.size)
    prec = {k: np.empty(queries.size) for k in ks}
    for start in range(0, queries.size, block_size):
        q = queries[start : start + block_size]
        sims = x[q] @ x.T
        rel = ids[None, :] == ids[q][:, None]
        rows = np.arange(q.size)
        sims[rows, q] = -np.inf  # the query itself ranks last and is then dropped
        rel[rows, q] = False
        order = np.lexsort((rel, -sims), axis=-1)[:, : n - 1]
        hits = np.take_along_axis(rel, order, axis=1)
        cum = np.cumsum(hits, axis=1)
        rank = np.arange(1, n)
        block = slice(start, start + q.size)
        ap[block] = (cum * hits / rank).sum(axis=1) / hits.sum(axis=1)
        first[block] = hits.argmax(axis=1) + 1
        for k in ks:
            prec[k][block] = cum[:, min(k, n - 1) - 1] / k
    out = {"query": queries, "ap": ap, "rank1": first}
    out.update({f"p@{k}": prec[k] for k in ks})
    return out


def retrieval_metrics(
    embeddings: np.ndarray,
    work_ids: Sequence[Any],
    ks: Sequence[int] = (10,),
    block_size: int = 512,
) -> dict[str, Any]:
    """Cover-song / same-work retrieval over one collection: the means over queries of
    :func:`retrieval_per_query` (``map``, ``p@k``, ``mr1``). Queries whose work has no
    other recording are skipped and counted in ``skipped_queries``."""
    per = retrieval_per_query(embeddings, work_ids, ks, block_size)
    nq = per["query"].size
    out: dict[str, Any] = {"map": float(per["ap"].mean())}
    out.update({f"p@{int(k)}": float(per[f"p@{int(k)}"].mean()) for k in ks})
    out["mr1"] = float(per["rank1"].mean())
    out["queries"] = int(nq)
    out["skipped_queries"] = int(len(work_ids) - nq)
    return out
