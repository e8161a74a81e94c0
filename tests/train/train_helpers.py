"""Generated audio for training tests (importable from test modules, unlike conftest)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

RATES = (16000, 22050, 44100)


def write_tracks(folder: Path, count: int, seconds: float = 1.5, seed: int = 0) -> list[Path]:
    """``count`` mono tracks of tones over noise; WAV and FLAC, mixed sample rates."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        sr = RATES[i % len(RATES)]
        t = np.arange(int(sr * (seconds + 0.25 * (i % 3)))) / sr
        freq = 110.0 * 2 ** (i / 3)
        x = 0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(len(t))
        path = folder / (f"track{i:02d}.wav" if i % 2 else f"track{i:02d}.flac")
        sf.write(path, x.astype(np.float32), sr)
        paths.append(path)
    return paths
