"""Label subsets and fine-tuning an encoder + head on a tiny synthetic task."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from eval_helpers import SR, synth
from torch import nn

from musicembed.eval.finetune import (
    FinetuneConfig,
    WaveformDataset,
    finetune,
    label_subset,
    model_encoder_factory,
)


def test_label_subset_single_label_is_stratified_and_seeded() -> None:
    y = np.repeat(np.arange(4), [100, 50, 20, 3])
    idx = label_subset(y, 0.1, seed=0)
    assert np.bincount(y[idx]).tolist() == [10, 5, 2, 1]  # every class keeps at least one
    np.testing.assert_array_equal(idx, label_subset(y, 0.1, seed=0))
    assert not np.array_equal(idx, label_subset(y, 0.1, seed=1))
    assert np.all(np.diff(idx) > 0)


def test_label_subset_multi_label_covers_every_tag() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random((1000, 20)) < np.linspace(0.002, 0.3, 20)).astype(np.int8)
    idx = label_subset(y, 0.01, seed=0)
    assert idx.size == 10
    present = y.any(axis=0)
    assert np.all(y[idx].any(axis=0)[present])
    with pytest.raises(ValueError):
        label_subset(y, 0.0)


class TinyEncoder(nn.Module):
    """Log band energies of a waveform: (B, T) -> (B, 16)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(64, 16)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(wave, 256, 128, window=torch.hann_window(256), return_complex=True).abs()
        bands = spec[:, :128].reshape(wave.shape[0], 64, 2, -1).mean(dim=(2, 3))
        return torch.relu(self.proj(torch.log1p(10 * bands)))


def _items(n: int, seed: int) -> list[tuple[np.ndarray, int]]:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        label = k % 2
        base = 220.0 if label == 0 else 880.0
        freqs = list(base * 2 ** (rng.integers(0, 5, 4) / 12))
        out.append((synth(freqs, "saw", note_seconds=0.2, sr=8000, seed=seed * 100 + k), label))
    return out


def test_finetune_learns_a_tiny_task_from_a_label_fraction() -> None:
    train = WaveformDataset(_items(40, 0), 8000, 2048, windows=False, seed=0)
    val = WaveformDataset(_items(8, 1), 8000, 2048, windows=True)
    test = WaveformDataset(_items(12, 2), 8000, 2048, windows=True)
    cfg = FinetuneConfig(lr=1e-2, head_lr=1e-2, batch_size=4, max_epochs=15, patience=4, seed=0)
    res = finetune(TinyEncoder, train, val, "multiclass", 2, fraction=0.25, config=cfg, test=test)
    assert res["n_labelled"] == 10
    assert res["test"]["accuracy"] >= 0.9
    assert isinstance(res["model"], nn.Module) and 1 <= res["best_epoch"] <= 15


def test_waveform_dataset_crops_and_windows(tmp_path: Path) -> None:
    wave = synth([440.0] * 10, "sine", note_seconds=0.25)
    sf.write(tmp_path / "a.wav", wave, SR)
    short = np.zeros(100, np.float32)
    train = WaveformDataset([(tmp_path / "a.wav", 1), (short, 0)], SR, 4000, seed=5, preload=True)
    x0, y0 = train[0]
    assert x0.shape == (4000,) and int(y0) == 1
    train.set_epoch(1)
    assert not torch.equal(train[0][0], x0)  # a new crop each epoch
    assert train[1][0].shape == (4000,)  # short clips are zero-padded
    wins, _ = WaveformDataset([(wave, 1)], SR, 16000, windows=True)[0]
    assert wins.shape == (3, 16000)  # 40000 samples: two full windows + an end-aligned one
    np.testing.assert_array_equal(wins[2].numpy(), wave[-16000:])


def test_model_encoder_factory(tiny_model_dir: Path) -> None:
    make, rate, window = model_encoder_factory(str(tiny_model_dir))
    assert (rate, window) == (16000, 8000)
    a, b = make(), make()
    x = torch.randn(2, window)
    a.eval()
    b.eval()
    torch.testing.assert_close(a(x), b(x))  # both start from the trained weights
    scratch, _, _ = model_encoder_factory(f"random:{tiny_model_dir}")
    assert scratch()(x).shape == a(x).shape
