"""Log-mel frontend and the PEMR / MART inference models on tiny configs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio

from musicembed import hub
from musicembed.config import FrontendConfig, ModelConfig
from musicembed.frontend import LogMel, mel_filterbank
from musicembed.models import MARTModel, PEMRModel, build_model
from musicembed.presets import mart_config, pemr_config
from musicembed.windows import level_spans

from audio_fixtures import chord, log_pemr_config, noise, tiny_mart_config, tiny_pemr_config, tone


def test_default_frontends_have_no_empty_filters():
    for cfg in (pemr_config(), mart_config()):
        fb = mel_filterbank(cfg.frontend)
        assert fb.shape == (cfg.frontend.n_fft // 2 + 1, cfg.frontend.n_mels)
        assert (fb.max(dim=0).values > 0).all()


def test_papers_256_point_fft_is_refused_with_remedy():
    with pytest.raises(ValueError, match="all-zero filters.*raise n_fft"):
        mel_filterbank(FrontendConfig(sample_rate=22050, n_fft=256, hop_length=128, n_mels=128))


def test_logmel_matches_torchaudio_reference():
    cfg = FrontendConfig(sample_rate=16000, n_fft=1024, hop_length=256, n_mels=128)
    x = torch.from_numpy(tone(440, 1.0, 16000))[None]
    ref = torchaudio.transforms.AmplitudeToDB()(
        torchaudio.transforms.MelSpectrogram(sample_rate=16000, n_fft=1024, hop_length=256, n_mels=128)(x)
    )
    ours = LogMel(cfg)(x)
    assert ours.shape == ref.shape == (1, 128, 16000 // 256 + 1)
    torch.testing.assert_close(ours, ref, atol=1e-3, rtol=1e-4)


def test_tone_energy_lands_in_the_right_band():
    cfg = pemr_config().frontend
    mel = LogMel(cfg)(torch.from_numpy(tone(2000, 1.0, 16000))[None])[0]
    fb = mel_filterbank(cfg)
    bin_2k = round(2000 / (16000 / cfg.n_fft))
    assert mel.mean(dim=1).argmax().item() == fb[bin_2k].argmax().item()


def test_log_bands_are_semitones_and_tile_their_range():
    cfg = FrontendConfig(sample_rate=16000, n_fft=4096, hop_length=768, n_mels=72, f_min=110.0, f_max=7040.0,
                         mel_scale="log")
    cfg.validate()
    fb = mel_filterbank(cfg)
    hz = torch.linspace(0, 8000, fb.shape[0])
    centres = 110.0 * 2 ** (torch.arange(72) / 12)  # A2 .. G#8
    assert (hz[fb.argmax(dim=0)] - centres).abs().max() <= 8000 / 2048 / 2 + 1e-6
    inside = (hz >= centres[0]) & (hz <= centres[-1])
    torch.testing.assert_close(fb[inside].sum(dim=1), torch.ones(int(inside.sum())))
    assert fb[hz < 100].sum() == 0 and fb[hz > 7040].sum() == 0
    mel = LogMel(cfg)(torch.from_numpy(tone(440, 1.0, 16000))[None])[0]
    assert mel.mean(dim=1).argmax().item() == 24  # A4, two octaves above A2


def test_log_scale_needs_a_positive_f_min():
    with pytest.raises(ValueError, match=r"frontend\.f_min = 0: must be above 0 for mel_scale \"log\""):
        FrontendConfig(f_min=0.0, mel_scale="log").validate()
    with pytest.raises(ValueError, match=r"frontend\.mel_norm = 'slaney': must be null"):
        FrontendConfig(f_min=55.0, mel_scale="log", mel_norm="slaney").validate()


def _harmonic_chord(semitones: float, sr: int = 16000, seconds: float = 2.0) -> torch.Tensor:
    """A major triad on A3 with 5 harmonics per note, transposed by ``semitones``; (1, samples)."""
    t = np.arange(int(sr * seconds)) / sr
    notes = [220.0 * 2 ** ((n + semitones) / 12) for n in (0, 4, 7)]
    x = sum(0.1 / h * np.sin(2 * np.pi * f * h * t) for f in notes for h in range(1, 6))
    return torch.from_numpy(x.astype(np.float32))[None]


def test_frequency_pooling_sizes_and_transposition():
    """Max or mean over the rows of a log-frequency encoder: one value per channel, and a
    transposition (by 4 semitones, a multiple of the 4-row frequency pooling) moves the vector
    far less than with flattened rows."""
    change = {}
    for pool in ("flatten", "max", "mean"):
        cfg = log_pemr_config(pool)
        assert cfg.embedding_dim == (8 * 15 if pool == "flatten" else 8)
        torch.manual_seed(0)
        net = build_model(cfg).eval()
        with torch.no_grad():
            a, b = net(_harmonic_chord(0))[0], net(_harmonic_chord(4))[0]
        assert a.shape == (cfg.embedding_dim,)
        change[pool] = ((a - b).norm() / a.norm()).item()
    assert change["max"] < 0.5 * change["flatten"] and change["mean"] < 0.5 * change["flatten"], change


def test_top_db_clips_dynamic_range():
    cfg = dataclasses.replace(FrontendConfig(), top_db=40.0)
    mel = LogMel(cfg)(torch.from_numpy(tone(440, 0.5, 16000))[None])
    assert (mel.amax() - mel.amin()).item() <= 40.0 + 1e-4


def test_pemr_shapes_and_variable_length():
    cfg = tiny_pemr_config()
    net = build_model(cfg).eval()
    assert isinstance(net, PEMRModel) and cfg.embedding_dim == 16
    with torch.no_grad():
        assert net(torch.randn(3, cfg.window_samples)).shape == (3, 16)
        assert net(torch.randn(2, 2 * cfg.window_samples)).shape == (2, 16)


def test_default_configs_build_with_the_documented_sizes():
    for cfg, dim in ((pemr_config(), 1536), (mart_config(), 512)):
        net = build_model(cfg).eval()
        with torch.no_grad():
            out = net(torch.randn(1, cfg.window_samples))
        z = out[0] if isinstance(out, list) else out
        assert z.shape[-1] == cfg.embedding_dim == dim


@pytest.mark.parametrize("name,preset", [("pemr", pemr_config), ("mart", mart_config)])
def test_presets_are_the_bundled_architectures(name, preset):
    """``musicembed train`` from scratch starts from the frontend and encoder it ships with."""
    bundled = json.loads((Path(hub.bundled_dir(hub.model_entry(name))) / "config.json").read_text())
    ours = preset().to_dict()
    for key in ("window_samples", "frontend", "encoder", "mart"):
        assert ours[key] == bundled[key], key


def test_mart_levels_have_equal_mel_size_and_spans():
    cfg = tiny_mart_config()
    net = build_model(cfg).eval()
    assert isinstance(net, MARTModel)
    wave = torch.randn(2, cfg.window_samples)
    mels = net.level_mels(wave)
    assert [m.shape for m in mels] == [(2 * 2**n, 32, 16) for n in range(3)]
    with torch.no_grad():
        levels = net(wave)
    assert [tuple(lv.shape) for lv in levels] == [(2, 1, 32), (2, 2, 32), (2, 4, 32)]
    spans = level_spans(cfg.mart_levels())
    assert spans[2].tolist() == [[0, 4000], [4000, 8000], [8000, 12000], [12000, 16000]]


def test_mart_part_clip_is_the_same_audio_as_its_crop():
    """Level-n clip i is exactly samples [i*L_n, (i+1)*L_n) of the window."""
    cfg = tiny_mart_config()
    net = build_model(cfg).eval()
    wave = torch.randn(1, cfg.window_samples)
    second_half = wave[:, 8000:]
    hop = 8000 // cfg.mart.frames
    expect = net.frontend(second_half, hop_length=hop)[..., : cfg.mart.frames]
    torch.testing.assert_close(net.level_mels(wave)[1][1:2], expect)


@pytest.mark.parametrize("use_pwt,share", [(False, True), (True, False)])
def test_mart_ablation_and_unshared_variants(use_pwt, share):
    base = tiny_mart_config()
    cfg = dataclasses.replace(base, mart=dataclasses.replace(base.mart, use_pwt=use_pwt, share_levels=share))
    net = build_model(cfg).eval()
    wave = torch.randn(2, cfg.window_samples)
    with torch.no_grad():
        out = net(wave)
        enc = net.encode_levels(wave)
    if not use_pwt:
        assert net.pwt is None
        for a, b in zip(out, enc):
            torch.testing.assert_close(a, b)
    else:
        assert len(net.pwt.layers[0]) == cfg.mart.levels - 1
        assert not torch.allclose(out[0], enc[0])


def test_pwt_mixes_information_across_levels():
    """Changing only the last part clip changes the level-0 vector through the PWT."""
    cfg = tiny_mart_config()
    torch.manual_seed(0)
    net = build_model(cfg).eval()
    wave = torch.randn(1, cfg.window_samples)
    other = wave.clone()
    other[:, -4000:] = torch.randn(1, 4000)
    with torch.no_grad():
        a, b = net(wave), net(other)
    assert not torch.allclose(a[0], b[0])
    assert not torch.allclose(a[2][:, :3], b[2][:, :3])  # untouched parts see the changed whole


def test_config_round_trip_and_unknown_keys(tmp_path):
    cfg = tiny_mart_config()
    cfg.save(tmp_path / "c.json")
    assert ModelConfig.load(tmp_path / "c.json") == cfg
    with pytest.raises(ValueError, match="unknown config keys"):
        ModelConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="newer"):
        ModelConfig.from_dict({**cfg.to_dict(), "format_version": 99})
    pooled = log_pemr_config("max")
    pooled.save(tmp_path / "p.json")
    assert ModelConfig.load(tmp_path / "p.json") == pooled
    assert "freq_pool" not in cfg.to_dict()["encoder"]  # the default is not written


@pytest.mark.parametrize("mode", ["window", "center"])
def test_normalised_log_mel_ignores_gain_and_silence_stays_finite(mode):
    """Both normalisations remove a gain change (a constant in dB); "center" keeps the
    dynamic range in dB, "window" scales it to unit deviation; silence gives zeros."""
    cfg = FrontendConfig(n_fft=512, hop_length=256, n_mels=32, top_db=60.0, normalize=mode)
    lm = LogMel(cfg)
    x = torch.from_numpy(chord(seconds=1.0)[None] + 0.01 * noise(1.0)[None]).float()
    a, b = lm(x), lm(x * 10 ** (-20 / 20))
    assert (a - b).abs().max().item() < 1e-3
    assert abs(a.mean().item()) < 1e-4
    std = a.std().item()
    assert (abs(std - 1.0) < 1e-2) if mode == "window" else std > 3.0  # dB spread of real audio
    silent = lm(torch.zeros(1, 16000))
    assert torch.isfinite(silent).all() and silent.abs().max().item() == 0.0
