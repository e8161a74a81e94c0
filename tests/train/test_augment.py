"""The batched augmentation chain: reproducibility and each augmentation's effect."""

from __future__ import annotations

import math

import pytest
import torch

from musicembed.train.augment import AugmentConfig, Augmenter

SR = 16000
OFF = dict(pitch_p=0.0, tempo_p=0.0, polarity_p=0.0, noise_p=0.0, gain_p=0.0, filter_p=0.0, delay_p=0.0, reverb_p=0.0)


def sine(freq: float, samples: int, rows: int = 1) -> torch.Tensor:
    t = torch.arange(samples) / SR
    return torch.sin(2 * math.pi * freq * t).repeat(rows, 1)


def only(**on: float) -> Augmenter:
    return Augmenter(AugmentConfig(**{**OFF, **on}), SR)


def band_energy(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    spec = torch.fft.rfft(x).abs().square()
    f = torch.fft.rfftfreq(x.shape[-1], 1 / SR)
    return spec[..., (f >= lo) & (f < hi)].sum(-1)


def test_default_chain_is_reproducible_and_row_independent() -> None:
    aug = Augmenter(AugmentConfig(), SR)
    n = aug.in_samples(4000)
    x = torch.randn(6, n, generator=torch.Generator().manual_seed(0)) * 0.1
    a, b, c = aug(x, 4000, seed=1), aug(x, 4000, seed=1), aug(x, 4000, seed=2)
    assert a.shape == (6, 4000)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    same = aug(x[:1].repeat(6, 1), 4000, seed=3)
    assert len({tuple(r[:50].tolist()) for r in same}) > 1  # each row draws its own parameters


def test_all_off_is_a_plain_crop() -> None:
    x = torch.randn(3, 5000)
    assert torch.equal(only()(x, 4000, seed=0), x[:, :4000])
    assert only().in_samples(4000) == 4000


def test_polarity_gain_and_delay() -> None:
    x = torch.randn(4, 8000)
    assert torch.equal(only(polarity_p=1.0)(x, 8000, seed=0), -x)
    gained = only(gain_p=1.0)(x, 8000, seed=0)
    ratio = gained.norm(dim=1) / x.norm(dim=1)
    assert ((ratio >= 10 ** (-20 / 20) - 1e-6) & (ratio <= 10 ** (6 / 20) + 1e-6)).all()
    impulse = torch.zeros(2, 16000)
    impulse[:, 0] = 1.0
    delayed = only(delay_p=1.0)(impulse, 16000, seed=0)
    assert torch.allclose(delayed[:, 0], torch.full((2,), 0.5))
    for row in delayed:
        echo = row[1:].nonzero().flatten() + 1
        assert len(echo) == 1 and 0.2 * SR <= echo.item() <= 0.5 * SR and row[echo].item() == pytest.approx(0.25)


def test_filters_remove_the_stopband() -> None:
    x = sine(100, 16000, 8) + sine(6000, 16000, 8)
    y = only(filter_p=1.0)(x, 16000, seed=0)
    low_kept = band_energy(y, 90, 110) / band_energy(x, 90, 110)
    high_kept = band_energy(y, 5990, 6010) / band_energy(x, 5990, 6010)
    highpass = low_kept < 0.01
    assert highpass.any() and (~highpass).any()  # both kinds drawn over 8 rows
    assert (high_kept[highpass] > 0.9).all() and (high_kept[~highpass] < 0.01).all()


def test_pitch_shift_scales_frequency() -> None:
    aug = Augmenter(AugmentConfig(**{**OFF, "pitch_p": 1.0}), SR)
    n = aug.in_samples(16000)
    y = aug(sine(440, n, 6), 16000, seed=0)
    peaks = torch.fft.rfft(y).abs().argmax(dim=1).float()  # 1 Hz bins
    semis = 12 * torch.log2(peaks / 440)
    assert (semis.abs() <= AugmentConfig().pitch_semitones + 0.05).all() and semis.abs().max() > 0.5


def test_time_stretch_keeps_pitch_and_fills_the_output() -> None:
    aug = only(tempo_p=1.0)
    n = aug.in_samples(32000)
    assert n > 32000 * AugmentConfig().tempo_range[1]
    y = aug(sine(440, n, 6), 32000, seed=0)
    assert y.shape == (6, 32000) and (y[:, -100:].abs().amax(dim=1) > 0.1).all()  # no silent tail
    peaks = torch.fft.rfft(y).abs().argmax(dim=1).float() * SR / 32000
    assert torch.allclose(peaks, torch.full((6,), 440.0), atol=1.0)
    impulses = torch.zeros(6, n)
    impulses[:, ::4000] = 1.0  # a click every 0.25 s: the stretch moves the clicks, not the pitch
    clicks = only(tempo_p=1.0)(impulses, 32000, seed=0)
    assert not torch.allclose(clicks, impulses[:, :32000], atol=1e-3)


def test_noise_has_the_drawn_snr_and_colour() -> None:
    x = sine(440, 16000, 12)
    noisy = only(noise_p=1.0)(x, 16000, seed=0)
    noise = noisy - x
    snr_db = 10 * torch.log10(x.square().mean(dim=1) / noise.square().mean(dim=1))
    lo, hi = AugmentConfig().noise_snr_db
    assert ((snr_db > lo - 0.01) & (snr_db < hi + 0.01)).all()
    tilt = band_energy(noise, 50, 500) / band_energy(noise, 5000, 5450)  # equal bandwidths
    assert (tilt < 3).any() and (tilt > 30).any()  # white and coloured noise both drawn
    for color in ("white", "pink", "brown"):
        one = Augmenter(AugmentConfig(**{**OFF, "noise_p": 1.0, "noise_colors": (color,)}), SR)
        assert torch.isfinite(one(x, 16000, seed=1)).all()
    with pytest.raises(ValueError, match="noise_colors"):
        AugmentConfig(noise_colors=("blue",))


def test_reverb_changes_the_signal_mildly() -> None:
    x = sine(440, 16000, 4)
    wet = only(reverb_p=1.0)(x, 16000, seed=0)
    assert torch.isfinite(wet).all() and not torch.allclose(wet, x)
    assert torch.allclose(wet.std(dim=1), x.std(dim=1), rtol=0.6)
