"""Log-mel frontend: mono waveforms (batch, samples) -> log-mel (batch, n_mels, frames) in dB
(or, with ``normalize="window"``, standardised per log-mel).

Runs on whatever device the module is on. Its buffers (window, mel filterbank) are
rebuilt from the config and never stored in the weights file.
"""

from __future__ import annotations

import math
import warnings

import torch
import torchaudio.functional as AF
from torch import nn

from .config import FrontendConfig


def log_filterbank(n_freqs: int, f_min: float, f_max: float, n_bands: int, sample_rate: int) -> torch.Tensor:
    """Triangular filters (n_freqs, n_bands) evenly spaced in log frequency: band k peaks at
    f_min * 2**(k * s) Hz, s = log2(f_max / f_min) / n_bands octaves, and falls linearly in
    log2(frequency) to 0 at the centres of its neighbours; peak 1. The bands tile f_min..f_max:
    72 bands from 110 to 7040 Hz are the semitones A2..G#8."""
    freqs = torch.linspace(0, sample_rate / 2, n_freqs, dtype=torch.float64)
    octaves = torch.log2(freqs.clamp(min=f_min / 4) / f_min)
    step = math.log2(f_max / f_min) / n_bands
    centres = torch.arange(n_bands, dtype=torch.float64) * step
    dist = (octaves[:, None] - centres[None, :]).abs() / step
    return (1 - dist).clamp(min=0).float()


def mel_filterbank(cfg: FrontendConfig) -> torch.Tensor:
    """Mel (or, ``mel_scale="log"``, log-frequency) filterbank (n_fft // 2 + 1, n_mels), validated
    to have no all-zero filter."""
    fb_rate = cfg.filterbank_sample_rate or cfg.sample_rate
    f_max = cfg.f_max if cfg.f_max is not None else fb_rate / 2
    if cfg.mel_scale == "log":
        fb = log_filterbank(cfg.n_fft // 2 + 1, cfg.f_min, f_max, cfg.n_mels, fb_rate)
    else:
        with warnings.catch_warnings():  # empty filters are reported below, with a remedy
            warnings.simplefilter("ignore", UserWarning)
            fb = AF.melscale_fbanks(
                n_freqs=cfg.n_fft // 2 + 1,
                f_min=cfg.f_min,
                f_max=f_max,
                n_mels=cfg.n_mels,
                sample_rate=fb_rate,
                norm=cfg.mel_norm,
                mel_scale=cfg.mel_scale,
            )
    empty = (fb.max(dim=0).values <= 0).nonzero().flatten().tolist()
    if empty and not cfg.allow_empty_filters:
        raise ValueError(
            f"mel filterbank has {len(empty)} all-zero filters (bands {empty[:8]}...): "
            f"n_fft={cfg.n_fft} is too small for {cfg.n_mels} mel bands at {fb_rate} Hz; "
            "raise n_fft or lower n_mels"
        )
    return fb


# dB; the smallest standard deviation a window's log-mel is divided by. Below it (silence,
# near-constant windows) the deviations are only scaled down: dividing by a vanishing
# deviation would blow float rounding up to unit-size values, differently in every runtime.
MIN_STD_DB = 1.0


def finish_db(db: torch.Tensor, cfg: FrontendConfig) -> torch.Tensor:
    """The steps after 10*log10 shared by every log-mel implementation: the ``top_db`` clip, then
    (``normalize="window"``) zero mean and unit variance over each (n_mels, frames) log-mel, or
    (``"center"``) zero mean only, which keeps the log-mel's dynamic range."""
    if cfg.top_db is not None:
        peak = db.amax(dim=(-2, -1), keepdim=True)
        db = torch.maximum(db, peak - cfg.top_db)
    if cfg.normalize == "center":
        return db - db.mean(dim=(-2, -1), keepdim=True)
    if cfg.normalize == "window":
        mean = db.mean(dim=(-2, -1), keepdim=True)
        std = (db - mean).square().mean(dim=(-2, -1), keepdim=True).sqrt()
        db = (db - mean) / std.clamp(min=MIN_STD_DB)
    return db


class LogMel(nn.Module):
    """STFT power -> mel -> 10*log10(max(power, amin)), then :func:`finish_db`."""

    def __init__(self, cfg: FrontendConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("window", torch.hann_window(cfg.n_fft), persistent=False)
        self.register_buffer("fb", mel_filterbank(cfg).T.contiguous(), persistent=False)

    def forward(self, wave: torch.Tensor, hop_length: int | None = None) -> torch.Tensor:
        """wave (batch, samples) float -> (batch, n_mels, frames); ``hop_length`` overrides the config's."""
        cfg = self.cfg
        spec = torch.stft(
            wave.float(),
            n_fft=cfg.n_fft,
            hop_length=hop_length or cfg.hop_length,
            window=self.window,  # type: ignore[arg-type]  # a registered buffer
            center=cfg.center,
            pad_mode="reflect",
            return_complex=True,
        )
        power = spec.real.square() + spec.imag.square()
        mel = torch.matmul(self.fb, power)  # type: ignore[arg-type]
        return finish_db(10.0 * torch.log10(torch.clamp(mel, min=cfg.amin)), cfg)

    def num_frames(self, samples: int, hop_length: int | None = None) -> int:
        hop = hop_length or self.cfg.hop_length
        if self.cfg.center:
            return samples // hop + 1
        return 1 + (samples - self.cfg.n_fft) // hop
