"""Where windows start in a track, and how a MART window splits into levels: the one rule
of each, used by embedding, the HEAR API, pictures and fine-tuning alike.

All lengths are in samples at the model's rate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def full_window_starts(n_samples: int, window: int, hop: int) -> range:
    """Starts of the windows that lie wholly inside ``n_samples``: 0, hop, 2*hop, ..."""
    return range(0, n_samples - window + 1, hop) if n_samples >= window else range(0)


def tail_start(n_samples: int, window: int, hop: int, full_windows: int) -> int | None:
    """Start of the one extra window after ``full_windows`` full ones, or None.

    A track shorter than a window gets one window at 0 (zero-padded). Otherwise the audio
    after the last full window becomes a window aligned to the end of the track when it is
    at least half a window long; a shorter tail is left out (it is covered by no window).
    """
    if full_windows == 0:
        return 0
    covered = (full_windows - 1) * hop + window
    return n_samples - window if n_samples - covered >= window // 2 else None


def window_starts(n_samples: int, window: int, hop: int | None = None) -> list[int]:
    """Every window start for a track of ``n_samples``: the full windows, then the tail rule
    of :func:`tail_start`. ``hop`` defaults to ``window`` (non-overlapping windows)."""
    hop = window if hop is None else hop
    starts = list(full_window_starts(n_samples, window, hop))
    tail = tail_start(n_samples, window, hop, len(starts))
    return starts if tail is None else [*starts, tail]


def cut(x: np.ndarray, window: int, hop: int | None = None) -> list[tuple[int, np.ndarray]]:
    """(start, window samples) for each of :func:`window_starts` over ``x`` (1-D); a track
    shorter than a window comes back zero-padded to one window."""
    out = []
    for s in window_starts(len(x), window, hop):
        w = x[s : s + window]
        if len(w) < window:
            w = np.pad(w, (0, window - len(w)))
        out.append((s, w))
    return out


@dataclass(frozen=True)
class MartLevel:
    """One level of MART's hierarchy inside a window: ``count`` clips of ``clip`` samples, each
    turned into ``frames`` log-mel frames with an STFT hop of ``hop`` samples."""

    level: int
    count: int
    clip: int
    hop: int


def mart_levels(samples: int, levels: int, parts: int, frames: int) -> list[MartLevel]:
    """MART's level geometry for a window of ``samples``: level n cuts it into parts^n equal
    clips and uses hop clip // frames, so every level gives the same frame count (samples
    past ``count * clip`` are not used). ValueError when a level's hop would be 0."""
    out = []
    for n in range(levels):
        count = parts**n
        clip = samples // count
        hop = clip // frames
        if hop < 1:
            raise ValueError(f"MART window of {samples} samples is too short for {levels} levels of {frames} frames")
        out.append(MartLevel(n, count, clip, hop))
    return out


def level_spans(geometry: list[MartLevel]) -> list[np.ndarray]:
    """Per level, each clip's (start, end) in samples within its window: (count, 2) int64."""
    return [np.array([(i * lv.clip, (i + 1) * lv.clip) for i in range(lv.count)], np.int64) for lv in geometry]
