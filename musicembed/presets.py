"""The project's model presets: the default PEMR and MART inference configs, and the tiny
sizes of smoke tests and CI runs (``musicembed train --config tiny``)."""

from __future__ import annotations

import dataclasses
from typing import Any

from .config import EncoderConfig, FrontendConfig, MartConfig, ModelConfig

# CI / smoke-test sizes: a 16-d encoder, seconds per step on one CPU core.
TINY: dict[str, dict[str, Any]] = {
    "pemr": {
        "window_samples": 8000,
        # a plain mel scale: 256 FFT points cannot resolve the default's semitone bands at 110 Hz
        "frontend": {"n_mels": 32, "n_fft": 256, "hop_length": 128, "mel_scale": "htk", "f_min": 0.0, "f_max": None},
        "encoder": {"channels": [8, 8], "pools": [[4, 4], [4, 4]]},
        "objective": {"layers": 2, "head_dim": 8, "ff_dim": 32, "projection_dim": 16},
    },
    "mart": {
        "window_samples": 8192,
        "frontend": {"n_mels": 32, "n_fft": 512, "hop_length": 128},
        "encoder": {"arch": "fcn7", "channels": [8, 8, 16], "pools": [[2, 2], [2, 2], [8, 1]]},
        "mart": {"levels": 3, "frames": 16, "pwt_layers": 1, "head_dim": 8, "ff_dim": 32},
        "objective": {"head_hidden": 16, "projection_dim": 16},
    },
}


def pemr_config(**overrides: Any) -> ModelConfig:
    """The project's PEMR inference config: FCN-4 on 3-s windows at 16 kHz, 1536-d output.

    72 log-frequency bands (one per semitone, 110-7040 Hz) from a 4096-point FFT at a 48-ms hop
    (63 frames per window), clipped 40 dB below each window's peak and standardised per window;
    64/128/256/512 channels; ceil-mode pools, the last one a max over groups of three frequency
    rows (about two octaves each), and a mean over the remaining time steps, so every frame of a
    window reaches its vector: 512 channels x 3 rows. The bundled weights' architecture:
    ``musicembed train pemr`` starts from it.
    """
    cfg = ModelConfig(
        method="pemr",
        name="pemr",
        window_samples=48000,
        frontend=FrontendConfig(
            n_fft=4096, hop_length=768, n_mels=72, f_min=110.0, f_max=7040.0, mel_scale="log", top_db=40.0,
            normalize="window",
        ),
        encoder=EncoderConfig(
            channels=[64, 128, 256, 512], pools=[[2, 4], [2, 2], [2, 2], [3, 1]], ceil_pools=True, time_pool="mean"
        ),
    )
    return dataclasses.replace(cfg, **overrides)


def mart_config(**overrides: Any) -> ModelConfig:
    """The project's MART inference config: FCN-7 on a 4.096-s clip, 4 levels of 2 parts, 512-d.

    Every clip of every level becomes a 64-band x 32-frame log-mel, clipped 40 dB below its
    peak and standardised on its own; the 2048-point FFT is as long as the longest hop (2048
    samples at level 0), so no level's frames skip samples. The bundled weights' architecture:
    ``musicembed train mart`` starts from it.
    """
    cfg = ModelConfig(
        method="mart",
        name="mart",
        window_samples=65536,
        frontend=FrontendConfig(n_fft=2048, hop_length=512, n_mels=64, top_db=40.0, normalize="window"),
        encoder=EncoderConfig(
            arch="fcn7",
            channels=[16, 32, 64, 128, 128, 256, 512],
            pools=[[2, 2], [2, 2], [2, 2], [2, 2], [2, 2], [2, 1], [2, 1]],
            ceil_pools=True,
            time_pool="mean",
        ),
        mart=MartConfig(frames=32),
    )
    return dataclasses.replace(cfg, **overrides)
