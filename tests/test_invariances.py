"""Invariances the default architectures promise, on real audio: every part of a window reaches
its vectors, no MART level skips samples, and the clip vector ignores the input level."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from musicembed import load_model
from musicembed.audio import load_audio
from musicembed.config import ModelConfig
from musicembed.models import build_model
from musicembed.presets import mart_config, pemr_config
from musicembed.train.config import resolve
from musicembed.windows import level_spans

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "audio" / "supertuxkart-bay-excerpt.ogg"
PART_S = 0.25


def _window(cfg: ModelConfig) -> torch.Tensor:
    """One window of the example track (from 5 s in), (1, window_samples)."""
    wave = load_audio(EXAMPLE, cfg.sample_rate)
    start = 5 * cfg.sample_rate
    return torch.from_numpy(wave[start : start + cfg.window_samples].copy())[None]


def _net(cfg: ModelConfig) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(cfg).eval()


def _rel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Relative change of each vector (..., D)."""
    return (a - b).norm(dim=-1) / b.norm(dim=-1).clamp(min=1e-12)


def _with_noise(wave: torch.Tensor, start: int, length: int) -> torch.Tensor:
    out = wave.clone()
    length = min(length, wave.shape[1] - start)
    out[:, start : start + length] = torch.randn(1, length, generator=torch.Generator().manual_seed(start))
    return out


def test_every_quarter_second_of_a_pemr_window_reaches_its_vector() -> None:
    cfg = pemr_config()
    net, wave = _net(cfg), _window(cfg)
    part = int(PART_S * cfg.sample_rate)
    with torch.no_grad():
        ref = net(wave)
        for start in range(0, cfg.window_samples, part):
            assert _rel(net(_with_noise(wave, start, part)), ref).item() > 1e-4, f"part at {start} samples"


def test_every_quarter_second_reaches_each_mart_level_vector_covering_it() -> None:
    cfg = mart_config()
    net, wave = _net(cfg), _window(cfg)
    net.pwt = None  # the encoder's own vectors: with the transformer every level sees everything
    part = int(PART_S * cfg.sample_rate)
    with torch.no_grad():
        ref = net(wave)
        spans = level_spans(cfg.mart_levels())
        for start in range(0, cfg.window_samples, part):
            out = net(_with_noise(wave, start, part))
            for level, (vecs, ref_vecs) in enumerate(zip(out, ref)):
                change = _rel(vecs[0], ref_vecs[0])
                for i, (lo, hi) in enumerate(spans[level]):
                    if lo < start + part and start < hi:
                        assert change[i].item() > 1e-4, f"level {level} clip {i}, part at {start} samples"


@pytest.mark.parametrize("cfg", [mart_config()], ids=["mart"])
def test_no_mart_level_skips_samples(cfg: ModelConfig) -> None:
    for lv in cfg.mart_levels():
        assert cfg.frontend.n_fft >= lv.hop, f"level {lv.level}"


def test_a_training_config_whose_frames_would_skip_samples_is_refused() -> None:
    with pytest.raises(ValueError, match="skip samples"):
        resolve("mart", ['{"frontend": {"n_fft": 1024}}'])


@pytest.mark.parametrize("name", ["pemr", "mart"])
def test_bundled_clip_vector_ignores_the_input_level(name: str) -> None:
    model = load_model(name, device="cpu")
    assert model.config.frontend.normalize == "window"
    wave = load_audio(EXAMPLE, model.sample_rate)
    ref = model.embed(wave, sample_rate=model.sample_rate)
    for db in (-20, -10, -3, 3, 6):
        v = model.embed(wave * 10 ** (db / 20), sample_rate=model.sample_rate)
        cos = float(v @ ref / np.linalg.norm(v) / np.linalg.norm(ref))
        assert cos >= 0.99, f"{db:+d} dB: cosine {cos:.4f}"
