"""Bootstrap confidence intervals over tracks, for one system and for paired differences.

A metric is held as a :class:`TrackMetric`: the tracks it was measured on and a function
that recomputes it on any multiset of them (an array of indices, repeats allowed). A
resample draws as many tracks as there are, with replacement, from a generator seeded by
``seed``; the interval is the 2.5th and 97.5th percentile of the metric over the
resamples (percentile bootstrap). A paired difference resamples the tracks that both
systems were measured on and recomputes both metrics on the same resample, so the
variation shared by the two systems (easy and hard tracks) cancels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_RESAMPLES = 1000
LEVEL = 0.95


@dataclass
class TrackMetric:
    """A metric over tracks: ``value(indices)`` recomputes it on the tracks
    ``track_ids[indices]`` (repeats count as often as they occur)."""

    track_ids: list[str]
    value: Callable[[np.ndarray], float]

    def full(self) -> float:
        """The metric on all its tracks (each once)."""
        return float(self.value(np.arange(len(self.track_ids))))


def mean_metric(track_ids: Sequence[str], unit_tracks: Sequence[str], unit_values: np.ndarray) -> TrackMetric:
    """The mean of per-unit values (e.g. the average precision of every query), resampled
    by track: a track's units all come along with it. Tracks without units are left out."""
    present = set(unit_tracks)
    order = list(dict.fromkeys(t for t in track_ids if t in present))
    pos = {t: i for i, t in enumerate(order)}
    which = np.array([pos[t] for t in unit_tracks], dtype=np.int64)
    values = np.asarray(unit_values, dtype=np.float64)
    sums = np.bincount(which, weights=values, minlength=len(order))
    counts = np.bincount(which, minlength=len(order)).astype(np.float64)

    def value(idx: np.ndarray) -> float:
        return float(sums[idx].sum() / counts[idx].sum())

    return TrackMetric(order, value)


def resample_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) indices drawn with replacement from range(n), seeded."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def _interval(stats: np.ndarray, level: float) -> list[float]:
    tail = 100 * (1 - level) / 2
    if not np.isfinite(stats).any():
        return [float("nan"), float("nan")]
    lo, hi = np.nanpercentile(stats, [tail, 100 - tail])
    return [float(lo), float(hi)]


def bootstrap_interval(metric: TrackMetric, resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                       level: float = LEVEL) -> dict[str, float | list[float]]:
    """{"value": the metric on all tracks, "ci": [low, high]} (percentile interval at
    ``level``; resamples where the metric is undefined, NaN, are left out)."""
    n = len(metric.track_ids)
    stats = np.array([metric.value(idx) for idx in resample_indices(n, resamples, seed)])
    return {"value": metric.full(), "ci": _interval(stats, level)}


def paired_difference(a: TrackMetric, b: TrackMetric, resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                      level: float = LEVEL) -> dict[str, float | int | list[float]]:
    """The difference a - b on the tracks both were measured on, with its paired bootstrap
    interval: {"value", "ci": [low, high], "tracks": number of common tracks}."""
    b_pos = {t: i for i, t in enumerate(b.track_ids)}
    common = [(i, b_pos[t]) for i, t in enumerate(a.track_ids) if t in b_pos]
    if not common:
        return {"value": float("nan"), "ci": [float("nan"), float("nan")], "tracks": 0}
    ia, ib = (np.array(c, dtype=np.int64) for c in zip(*common, strict=True))
    value = a.value(ia) - b.value(ib)
    stats = np.array([a.value(ia[idx]) - b.value(ib[idx]) for idx in resample_indices(len(ia), resamples, seed)])
    return {"value": float(value), "ci": _interval(stats, level), "tracks": len(ia)}
