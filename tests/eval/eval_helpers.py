"""Synthetic test music for the evaluation tests: melodies with distinct timbres."""

from __future__ import annotations

import numpy as np

SR = 16000
TIMBRES = ("sine", "square", "saw", "pulse")


def synth(freqs: list[float], timbre: str, note_seconds: float = 0.25, sr: int = SR, seed: int = 0) -> np.ndarray:
    """A melody: one note per frequency, with the timbre's harmonic recipe and a little noise."""
    t = np.arange(int(note_seconds * sr)) / sr
    env = np.minimum(1.0, 20 * t) * np.exp(-3 * t)
    notes = []
    for f in freqs:
        if timbre == "sine":
            x = np.sin(2 * np.pi * f * t)
        elif timbre == "square":
            x = sum(np.sin(2 * np.pi * k * f * t) / k for k in range(1, 12, 2))
        elif timbre == "saw":
            x = sum(np.sin(2 * np.pi * k * f * t) / k for k in range(1, 12))
        else:
            x = sum(np.sin(2 * np.pi * k * f * t) * (k % 3 == 1) for k in range(1, 12))
        notes.append(env * x)
    y = np.concatenate(notes)
    y = y + 0.01 * np.random.default_rng(seed).standard_normal(y.size)
    return (0.3 * y / np.abs(y).max()).astype(np.float32)


def melody(seed: int, n: int = 16, shift: float = 0.0) -> list[float]:
    rng = np.random.default_rng(seed)
    return [float(220 * 2 ** ((s + shift) / 12)) for s in rng.integers(0, 24, n)]
