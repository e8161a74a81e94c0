"""Degradations of the robustness task: MP3, white noise, low-pass, pitch, tempo, gain.

Every degradation maps a mono float waveform at ``rate`` Hz to its degraded copy (MP3 is
a codec round trip, applied when the copy is written; see :func:`write_degraded`).

- MP3 at 64 kbit/s constant bitrate, encoded by libsndfile (>= 1.1, through soundfile),
  which wraps LAME; decoded again like any MP3 file when the copy is embedded.
- white Gaussian noise at a given SNR: noise power = signal power / 10^(SNR/10), the
  signal power being the mean square of the whole clean excerpt; seeded per file.
- low-pass: linear-phase windowed-sinc FIR (Blackman window, 500 Hz transition band,
  about -74 dB stop band) centred on ``cutoff`` Hz, applied without delay.
- tempo: :func:`time_stretch`, a phase vocoder with identity phase locking (periodic
  Hann, 2048-point FFT, hop 512): duration / speed, pitch unchanged.
- pitch: :func:`pitch_shift`, time-stretch by 2^(semitones/12) then resample (soxr) back
  to the original duration: every frequency scaled by 2^(semitones/12).
- gain: multiply by 10^(dB/20).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from ..errors import MusicEmbedError

MP3_KBPS = 64
LOWPASS_TRANSITION_HZ = 500.0
PV_N_FFT = 2048
PV_HOP = 512


def add_noise(x: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """``x`` plus white Gaussian noise whose power is the signal's mean square / 10^(snr_db/10)."""
    x = np.asarray(x, dtype=np.float64)
    power = float(np.mean(x**2)) if x.size else 0.0
    return x + rng.standard_normal(x.size) * math.sqrt(power / 10 ** (snr_db / 10))


def gain(x: np.ndarray, db: float) -> np.ndarray:
    """``x`` scaled by ``db`` decibels (amplitude factor 10^(db/20))."""
    return np.asarray(x, dtype=np.float64) * 10 ** (db / 20)


def lowpass_kernel(rate: int, cutoff: float, transition: float = LOWPASS_TRANSITION_HZ) -> np.ndarray:
    """Blackman-windowed sinc low-pass taps (odd length, unit DC gain); ``cutoff`` and
    ``transition`` in Hz. The Blackman window's main lobe sets the length: 5.5 / (transition / rate)."""
    taps = int(math.ceil(5.5 * rate / transition)) | 1
    n = np.arange(taps) - taps // 2
    h = np.sinc(2 * cutoff / rate * n) * np.blackman(taps)
    return h / h.sum()


def lowpass(x: np.ndarray, rate: int, cutoff: float) -> np.ndarray:
    """``x`` through :func:`lowpass_kernel`, convolved by FFT with the kernel centred (no delay,
    same length)."""
    x = np.asarray(x, dtype=np.float64)
    h = lowpass_kernel(rate, cutoff)
    size = 1 << (x.size + h.size - 2).bit_length()  # a power of two >= the full convolution's length
    y = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(h, size), size)
    return y[h.size // 2 : h.size // 2 + x.size]


def _peak_owner(mag: np.ndarray) -> np.ndarray:
    """For every bin of a magnitude spectrum, the index of the nearest local maximum (its
    region of influence; boundaries half-way between neighbouring peaks)."""
    inner = (mag[1:-1] > mag[:-2]) & (mag[1:-1] >= mag[2:])
    peaks = np.flatnonzero(np.r_[mag[0] > mag[1], inner, mag[-1] > mag[-2]])
    if peaks.size == 0:
        return np.full(mag.size, int(np.argmax(mag)))
    edges = (peaks[:-1] + peaks[1:]) / 2
    return peaks[np.searchsorted(edges, np.arange(mag.size), side="right")]


def time_stretch(x: np.ndarray, speed: float, n_fft: int = PV_N_FFT, hop: int = PV_HOP) -> np.ndarray:
    """Play ``x`` ``speed`` times faster without changing its pitch (output length
    round(len(x) / speed)), with a phase vocoder with identity phase locking.

    Analysis: STFT with a periodic Hann window, frames ``hop`` apart, centred (the signal is
    padded by n_fft / 2). Output frame j reads the analysis spectrum at fractional frame
    j * speed: magnitudes interpolated linearly between the two neighbouring frames. Phase:
    at each spectral peak, the previous output phase plus the peak bin's measured phase
    advance over one hop (expected advance 2 pi k hop / n_fft plus the wrapped deviation),
    so the peak keeps its instantaneous frequency; every other bin keeps its analysis phase
    relative to the peak whose region it lies in (Laroche and Dolson's identity phase
    locking), which keeps the bins of one partial coherent. Synthesis: inverse FFT, the
    same window, overlap-add ``hop`` apart, divided by the summed squared window.
    """
    if speed <= 0:
        raise ValueError(f"speed must be positive, got {speed}")
    x = np.asarray(x, dtype=np.float64)
    n_out = int(round(x.size / speed))
    window = np.hanning(n_fft + 1)[:-1]
    padded = np.pad(x, (n_fft // 2, n_fft))
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]
    spec = np.fft.rfft(frames * window, axis=1)
    angle = np.angle(spec)
    steps = np.arange(0.0, len(spec) - 1, speed)
    left = steps.astype(int)
    frac = (steps - left)[:, None]
    mag = (1 - frac) * np.abs(spec[left]) + frac * np.abs(spec[left + 1])
    expected = 2 * np.pi * hop * np.arange(spec.shape[1]) / n_fft
    advance = expected + (angle[left + 1] - angle[left] - expected + np.pi) % (2 * np.pi) - np.pi
    y = np.zeros(hop * (len(steps) - 1) + n_fft)
    norm = np.zeros_like(y)
    phase = angle[left[0]]
    for j in range(len(steps)):
        owner = _peak_owner(mag[j])
        if j:
            peak_phase = phase[owner] + advance[j - 1, owner]
            phase = peak_phase + angle[left[j]] - angle[left[j], owner]
        y[j * hop : j * hop + n_fft] += np.fft.irfft(mag[j] * np.exp(1j * phase), n_fft) * window
        norm[j * hop : j * hop + n_fft] += window**2
    y = np.divide(y, norm, out=np.zeros_like(y), where=norm > 1e-8)[n_fft // 2 : n_fft // 2 + n_out]
    return np.pad(y, (0, n_out - y.size))


def pitch_shift(x: np.ndarray, rate: int, semitones: float) -> np.ndarray:
    """``x`` with every frequency scaled by 2^(semitones/12), same length: stretched
    2^(semitones/12) times longer by :func:`time_stretch`, then resampled (soxr) by the same
    factor back to the original duration."""
    x = np.asarray(x, dtype=np.float64)
    factor = 2 ** (semitones / 12)
    longer = time_stretch(x, 1 / factor)
    y = soxr.resample(longer, rate * factor, rate)
    return np.pad(y[: x.size], (0, max(0, x.size - y.size)))


Transform = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class Degradation:
    """A named degradation: ``apply(x, rate, rng)``; ``codec`` is how its copy is stored."""

    name: str
    description: str
    apply: Transform
    codec: str = "pcm"  # "pcm": lossless (FLAC, or float WAV when it peaks above 1); "mp3"


DEGRADATIONS: tuple[Degradation, ...] = (
    Degradation("mp3-64k", f"MP3 {MP3_KBPS} kbit/s CBR", lambda x, r, g: x, codec="mp3"),
    Degradation("noise-10dB", "white noise at 10 dB SNR", lambda x, r, g: add_noise(x, 10.0, g)),
    Degradation("noise-20dB", "white noise at 20 dB SNR", lambda x, r, g: add_noise(x, 20.0, g)),
    Degradation("lowpass-3k", "low-pass at 3 kHz", lambda x, r, g: lowpass(x, r, 3000.0)),
    Degradation("pitch+1", "pitch +1 semitone (same tempo)", lambda x, r, g: pitch_shift(x, r, 1.0)),
    Degradation("tempo1.06", "tempo x1.06 (same pitch)", lambda x, r, g: time_stretch(x, 1.06)),
    Degradation("gain-20dB", "gain -20 dB", lambda x, r, g: gain(x, -20.0)),
)


def mp3_compression_level(rate: int, kbps: int = MP3_KBPS) -> float:
    """The libsndfile compression level that makes its constant-bitrate MP3 encoder write
    ``kbps`` kbit/s at ``rate`` Hz. libsndfile maps the level c in [0, 1) linearly onto
    [max, min] kbit/s: 320..32 from 32 kHz up (MPEG-1), 160..8 from 16 kHz (MPEG-2),
    64..8 below (MPEG-2.5); LAME rounds to the nearest legal bitrate (checked in the tests)."""
    top, bottom = (320, 32) if rate >= 32000 else (160, 8) if rate >= 16000 else (64, 8)
    if not bottom <= kbps <= top:
        raise ValueError(f"{kbps} kbit/s is outside the MP3 range {bottom}..{top} at {rate} Hz")
    return (top - kbps) / (top - bottom)


def write_mp3(path: str | os.PathLike, x: np.ndarray, rate: int, kbps: int = MP3_KBPS) -> None:
    """Encode ``x`` as a constant-bitrate MP3 file (libsndfile >= 1.1 with MP3 support)."""
    if "MP3" not in sf.available_formats():
        raise MusicEmbedError(f"this libsndfile ({sf.__libsndfile_version__}) cannot write MP3: the robustness "
                           "task needs libsndfile >= 1.1.0 built with LAME and mpg123 (soundfile's wheels are)")
    sf.write(path, np.clip(x, -1.0, 1.0).astype(np.float32), rate, format="MP3", subtype="MPEG_LAYER_III",
             bitrate_mode="CONSTANT", compression_level=mp3_compression_level(rate, kbps))


def file_seed(seed: int, key: str) -> np.random.Generator:
    """A generator seeded by ``seed`` and a string (a file's name): the same noise on every run."""
    return np.random.default_rng([seed, int(hashlib.sha1(key.encode()).hexdigest()[:12], 16)])


def write_degraded(clean: Path, folder: Path, degradation: Degradation, seed: int) -> Path:
    """Write the degraded copy of the clean file ``clean`` into ``folder`` (once: an existing
    copy is reused) and return its path. Lossless copies are FLAC (24 bit) unless they peak
    above full scale, then float WAV, so that no copy is clipped."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = clean.stem
    for ext in (".mp3",) if degradation.codec == "mp3" else (".flac", ".wav"):
        if (folder / (stem + ext)).is_file():
            return folder / (stem + ext)
    x, rate = sf.read(clean, dtype="float64", always_2d=True)
    y = degradation.apply(x.mean(axis=1), rate, file_seed(seed, f"{degradation.name}/{stem}"))
    if degradation.codec == "mp3":
        target = folder / (stem + ".mp3")
        tmp = folder / (stem + ".tmp.mp3")
        write_mp3(tmp, y, rate)
    elif np.max(np.abs(y), initial=0.0) <= 1.0:
        target, tmp = folder / (stem + ".flac"), folder / (stem + ".tmp.flac")
        sf.write(tmp, y.astype(np.float32), rate, subtype="PCM_24")
    else:
        target, tmp = folder / (stem + ".wav"), folder / (stem + ".tmp.wav")
        sf.write(tmp, y.astype(np.float32), rate, subtype="FLOAT")
    os.replace(tmp, target)
    return target
