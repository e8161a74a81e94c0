"""Bootstrap intervals over tracks and paired differences."""

from __future__ import annotations

import numpy as np
import pytest

from musicembed.eval.bootstrap import (
    TrackMetric,
    bootstrap_interval,
    mean_metric,
    paired_difference,
    resample_indices,
)


def accuracy_metric(ids: list[str], correct: np.ndarray) -> TrackMetric:
    return mean_metric(ids, ids, correct.astype(float))


def test_interval_brackets_the_value_and_is_seeded() -> None:
    rng = np.random.default_rng(0)
    ids = [f"t{i}" for i in range(200)]
    m = accuracy_metric(ids, rng.random(200) < 0.7)
    a = bootstrap_interval(m, resamples=500, seed=1)
    assert a == bootstrap_interval(m, resamples=500, seed=1)
    lo, hi = a["ci"]
    assert lo < a["value"] < hi
    # the binomial standard error sqrt(p (1 - p) / n) = 0.032: a 95 % interval about 0.13 wide
    assert 0.09 < hi - lo < 0.17
    assert bootstrap_interval(m, resamples=500, seed=2)["ci"] != a["ci"]


def test_identical_systems_differ_by_exactly_zero() -> None:
    ids = [f"t{i}" for i in range(50)]
    values = np.random.default_rng(0).random(50)
    a, b = mean_metric(ids, ids, values), mean_metric(ids, ids, values.copy())
    d = paired_difference(a, b, resamples=300)
    assert d == {"value": 0.0, "ci": [0.0, 0.0], "tracks": 50}


def test_clearly_better_system_has_its_difference_above_zero() -> None:
    rng = np.random.default_rng(0)
    ids = [f"t{i}" for i in range(100)]
    hardness = rng.random(100)
    worse = accuracy_metric(ids, hardness < 0.5)
    better = accuracy_metric(ids, hardness < 0.6)  # right on every track the other gets right, and on 10 more
    d = paired_difference(better, worse, resamples=1000)
    assert d["value"] == pytest.approx(better.full() - worse.full())
    assert d["ci"][0] > 0
    # pairing: the unpaired intervals of the two overlap, the paired difference still excludes 0
    assert bootstrap_interval(better)["ci"][0] < bootstrap_interval(worse)["ci"][1]
    assert paired_difference(worse, better)["ci"][1] < 0


def test_units_are_resampled_with_their_track() -> None:
    # two queries of track "a" (AP 1 and 0), one of "b" (AP 1): the mean is over queries
    m = mean_metric(["a", "b", "c"], ["a", "a", "b"], np.array([1.0, 0.0, 1.0]))
    assert m.track_ids == ["a", "b"]  # "c" has no query
    assert m.full() == pytest.approx(2 / 3)
    assert m.value(np.array([0, 0])) == pytest.approx(0.5) and m.value(np.array([1])) == 1.0


def test_paired_difference_uses_the_common_tracks() -> None:
    a = mean_metric(["x", "y", "z"], ["x", "y", "z"], np.array([1.0, 1.0, 0.0]))
    b = mean_metric(["y", "z", "w"], ["y", "z", "w"], np.array([0.0, 0.0, 1.0]))
    d = paired_difference(a, b, resamples=200)
    assert d["tracks"] == 2 and d["value"] == pytest.approx(0.5)
    assert paired_difference(a, TrackMetric([], lambda idx: 0.0))["tracks"] == 0


def test_resample_indices_shape_and_range() -> None:
    idx = resample_indices(7, 20, seed=0)
    assert idx.shape == (20, 7) and idx.min() >= 0 and idx.max() < 7
    assert np.array_equal(idx, resample_indices(7, 20, seed=0))
