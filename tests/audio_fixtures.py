"""Test helpers shared by tests/: real audio signals, tiny model configs, saved tiny models.

(Not in conftest.py: tests/eval and tests/train have conftest modules of their own, so
`from conftest import ...` would be ambiguous when the whole suite runs.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from musicembed.config import EncoderConfig, FrontendConfig, MartConfig, ModelConfig
from musicembed.hub import save_pretrained
from musicembed.models import build_model

SR = 44100


def tone(freq: float = 440.0, seconds: float = 2.0, sr: int = SR, channels: int = 1, amp: float = 0.3) -> np.ndarray:
    """A sine (samples,) or (samples, channels), float32; channels get slightly detuned copies."""
    t = np.arange(int(seconds * sr)) / sr
    cols = [amp * np.sin(2 * np.pi * freq * (1 + 0.01 * c) * t) for c in range(channels)]
    x = np.stack(cols, axis=1) if channels > 1 else cols[0]
    return x.astype(np.float32)


def chord(freqs=(261.6, 329.6, 392.0), seconds: float = 2.0, sr: int = SR) -> np.ndarray:
    return (sum(tone(f, seconds, sr, amp=0.2) for f in freqs)).astype(np.float32)


def noise(seconds: float = 2.0, sr: int = SR, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * sr))).astype(np.float32)


def tiny_pemr_config() -> ModelConfig:
    return ModelConfig(
        method="pemr", name="tiny-pemr", window_samples=8000,
        frontend=FrontendConfig(sample_rate=16000, n_fft=512, hop_length=128, n_mels=32, normalize="window"),
        encoder=EncoderConfig(channels=[8, 8], pools=[[4, 4], [4, 4]], ceil_pools=True, time_pool="mean"),
    )


def log_pemr_config(freq_pool: str) -> ModelConfig:
    """A tiny PEMR on 60 log-frequency bands (the semitones from 110 to 3520 Hz) with ``freq_pool``."""
    return ModelConfig(
        method="pemr", name=f"log-pemr-{freq_pool}", window_samples=16000,
        frontend=FrontendConfig(sample_rate=16000, n_fft=2048, hop_length=256, n_mels=60, f_min=110.0,
                                f_max=3520.0, mel_scale="log", normalize="window"),
        encoder=EncoderConfig(channels=[8, 8], pools=[[2, 2], [2, 2]], ceil_pools=True, time_pool="mean",
                              freq_pool=freq_pool),
    )


def tiny_mart_config() -> ModelConfig:
    return ModelConfig(
        method="mart", name="tiny-mart", window_samples=16000,
        frontend=FrontendConfig(sample_rate=16000, n_fft=1024, hop_length=128, n_mels=32, normalize="window"),
        encoder=EncoderConfig(arch="fcn7", channels=[8, 16], pools=[[4, 2], [4, 2]], ceil_pools=True,
                              time_pool="mean"),
        mart=MartConfig(levels=3, parts=2, frames=16, pwt_layers=2, heads=3, head_dim=8, ff_dim=32),
    )


def _randomise_bn(net: torch.nn.Module, seed: int) -> None:
    """Give BatchNorm layers non-trivial statistics so tests exercise them."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def make_model_dir(path: Path, cfg: ModelConfig, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    net = build_model(cfg)
    _randomise_bn(net, seed)
    return save_pretrained(net, path)
