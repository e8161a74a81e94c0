"""The robustness task's degradations on sines and noise: level, duration, pitch, spectrum, codec."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from musicembed.audio import load_audio
from musicembed.eval.degrade import (
    DEGRADATIONS,
    add_noise,
    file_seed,
    gain,
    lowpass,
    mp3_compression_level,
    pitch_shift,
    time_stretch,
    write_degraded,
    write_mp3,
)

SR = 22050


def sine(freq: float, seconds: float = 3.0, sr: int = SR, amp: float = 0.3) -> np.ndarray:
    return amp * np.sin(2 * np.pi * freq * np.arange(int(seconds * sr)) / sr)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x))))


def peak_frequency(x: np.ndarray, sr: int = SR) -> float:
    """Frequency of the strongest component (Hann window, 8x zero padding: 0.1 Hz bins over 1.5 s)."""
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size), 8 * x.size))
    return float(np.argmax(spec) * sr / (8 * x.size))


def middle(x: np.ndarray, sr: int = SR) -> np.ndarray:
    """Without the first and last 0.5 s (the vocoder's edges)."""
    return x[sr // 2 : -sr // 2]


@pytest.mark.parametrize("snr", [10.0, 20.0])
def test_noise_has_the_stated_snr_and_is_seeded(snr: float) -> None:
    x = sine(440.0) + 0.1 * sine(1250.0)
    noisy = add_noise(x, snr, np.random.default_rng(3))
    assert 10 * np.log10(np.mean(x**2) / np.mean((noisy - x) ** 2)) == pytest.approx(snr, abs=0.1)
    assert np.array_equal(noisy, add_noise(x, snr, np.random.default_rng(3)))
    a, b = (add_noise(x, snr, file_seed(0, "noise/track")) for _ in range(2))
    assert np.array_equal(a, b) and not np.array_equal(a, add_noise(x, snr, file_seed(0, "noise/other")))


def test_gain_minus_20_db_scales_rms_by_a_tenth() -> None:
    x = sine(440.0)
    assert rms(gain(x, -20.0)) == pytest.approx(0.1 * rms(x), rel=1e-9)


def test_lowpass_keeps_1k_and_removes_5k() -> None:
    for sr in (16000, 22050, 44100):
        low, high = sine(1000.0, sr=sr), sine(5000.0, sr=sr)
        assert 20 * np.log10(rms(lowpass(low, sr, 3000.0)) / rms(low)) == pytest.approx(0.0, abs=0.05)
        # away from the abrupt start and end of the test tone (their clicks are broadband)
        assert 20 * np.log10(rms(middle(lowpass(high, sr, 3000.0), sr)) / rms(high)) < -60
        assert lowpass(low, sr, 3000.0).size == low.size
    # no delay: the filtered 1 kHz sine lines up with the input
    x = sine(1000.0)
    assert np.max(np.abs(lowpass(x, SR, 3000.0) - x)[SR // 10 : -SR // 10]) < 1e-3


@pytest.mark.parametrize("freq", [440.0, 1234.5])
def test_tempo_changes_duration_and_keeps_pitch(freq: float) -> None:
    x = sine(freq)
    y = time_stretch(x, 1.06)
    assert y.size == round(x.size / 1.06)
    assert peak_frequency(middle(y)) == pytest.approx(freq, rel=2e-3)
    assert rms(middle(y)) == pytest.approx(rms(x), rel=0.02)
    slower = time_stretch(x, 1 / 1.06)
    assert slower.size == round(x.size * 1.06) and peak_frequency(middle(slower)) == pytest.approx(freq, rel=2e-3)
    assert rms(middle(slower)) == pytest.approx(rms(x), rel=0.02)


def test_tempo_stretches_the_time_between_onsets() -> None:
    clicks = np.zeros(3 * SR)
    for k in range(1, 6):
        clicks[k * SR // 2 : k * SR // 2 + 200] = sine(2000.0, seconds=200 / SR)
    y = time_stretch(clicks, 1.06)
    onsets = [np.argmax(np.abs(y[int((k * 0.5 - 0.2) * SR / 1.06):]) > 0.1) + int((k * 0.5 - 0.2) * SR / 1.06)
              for k in range(1, 6)]
    assert np.diff(onsets) / SR == pytest.approx(0.5 / 1.06, abs=0.03)


@pytest.mark.parametrize("freq", [440.0, 987.0])
def test_pitch_up_one_semitone_keeps_duration(freq: float) -> None:
    x = sine(freq)
    y = pitch_shift(x, SR, 1.0)
    assert y.size == x.size
    assert peak_frequency(middle(y)) == pytest.approx(freq * 2 ** (1 / 12), rel=2e-3)
    assert rms(middle(y)) == pytest.approx(rms(x), rel=0.02)


@pytest.mark.parametrize("sr", [16000, 22050, 44100])
def test_mp3_is_64_kbps_and_decodes_to_the_same_audio(sr: int, tmp_path: Path) -> None:
    x = sine(440.0, seconds=5.0, sr=sr) + 0.05 * np.random.default_rng(0).standard_normal(5 * sr)
    path = tmp_path / "x.mp3"
    write_mp3(path, x, sr)
    assert os.path.getsize(path) * 8 / 5.0 / 1000 == pytest.approx(64, rel=0.05)
    y = load_audio(path, sr)
    assert abs(y.size - x.size) < 0.1 * sr  # the codec's padding only
    lag = int(np.argmax(np.correlate(y[: sr], x[: sr // 2], mode="valid")))
    seg = y[lag : lag + 3 * sr]
    assert np.corrcoef(seg, x[: seg.size])[0, 1] > 0.9


def test_mp3_compression_level_range() -> None:
    assert mp3_compression_level(44100) == pytest.approx((320 - 64) / (320 - 32))
    assert mp3_compression_level(22050) == pytest.approx((160 - 64) / (160 - 8))
    assert mp3_compression_level(8000) == 0.0
    with pytest.raises(ValueError, match="outside"):
        mp3_compression_level(8000, 128)


def test_degraded_copies_are_written_once(tmp_path: Path) -> None:
    clean = tmp_path / "clean" / "t1.flac"
    clean.parent.mkdir()
    sf.write(clean, (0.9 * np.sign(sine(440.0, seconds=2.0))).astype(np.float32), SR, subtype="PCM_16")
    paths = {d.name: write_degraded(clean, tmp_path / d.name, d, seed=0) for d in DEGRADATIONS}
    assert paths["mp3-64k"].suffix == ".mp3" and paths["gain-20dB"].suffix == ".flac"
    assert paths["noise-10dB"].suffix == ".wav"  # a square wave at 0.9 plus noise peaks above 1: float WAV
    x = sf.read(clean)[0]
    noisy = sf.read(paths["noise-10dB"])[0]
    assert 10 * np.log10(np.mean(x**2) / np.mean((noisy - x) ** 2)) == pytest.approx(10.0, abs=0.1)
    assert sf.info(paths["tempo1.06"]).frames == round(x.size / 1.06)
    stamps = {n: p.stat().st_mtime_ns for n, p in paths.items()}
    again = {d.name: write_degraded(clean, tmp_path / d.name, d, seed=0) for d in DEGRADATIONS}
    assert again == paths and {n: p.stat().st_mtime_ns for n, p in again.items()} == stamps
