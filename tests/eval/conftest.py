"""Fixtures for the evaluation tests: synthetic "music" with distinct timbres, a tiny real model."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import soundfile as sf
import torch

from musicembed.config import EncoderConfig, FrontendConfig, ModelConfig
from musicembed.hub import save_pretrained
from musicembed.models import build_model

from eval_helpers import SR, TIMBRES, melody, synth


@pytest.fixture(scope="session")
def free_music_dir(tmp_path_factory) -> Path:
    """manifest.csv + covers.csv over 4 timbre "sources": 3 train and 3 val tracks each
    (4 s), plus 2 transposed "cover" versions of every val track."""
    d = tmp_path_factory.mktemp("free_music")
    (d / "audio").mkdir()
    manifest, covers = [], []
    for si, timbre in enumerate(TIMBRES):
        for k in range(6):
            tid = f"{timbre}-{k}"
            split = "train" if k < 3 else "val"
            seed = 100 * si + k
            rel = f"audio/{tid}.wav"
            sf.write(d / rel, synth(melody(seed), timbre, seed=seed), SR, subtype="PCM_16")
            manifest.append([rel, f"pkg-{timbre}", "GPL-2+", "4.0", split, tid])
            if split == "val":
                covers.append([tid, 0, rel])
                for v, shift in ((1, 2.0), (2, -3.0)):
                    other = TIMBRES[(si + v) % len(TIMBRES)]
                    crel = f"audio/{tid}-v{v}.wav"
                    sf.write(d / crel, synth(melody(seed, shift=shift), other, note_seconds=0.27, seed=seed + v), SR)
                    covers.append([tid, v, crel])
    with open(d / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "source", "licence", "duration_s", "split", "track_id"])
        w.writerows(manifest)
    with open(d / "covers.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["track_id", "version", "path", "transpose"])
        w.writerows([c + [0] for c in covers])
    return d


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny real PEMR model (16-d) saved with save_pretrained."""
    cfg = ModelConfig(
        method="pemr", name="eval-tiny", window_samples=8000,
        frontend=FrontendConfig(sample_rate=16000, n_fft=512, hop_length=128, n_mels=32),
        encoder=EncoderConfig(channels=[8, 8], pools=[[4, 4], [4, 4]]),
    )
    torch.manual_seed(0)
    return save_pretrained(build_model(cfg), tmp_path_factory.mktemp("models") / "eval-tiny")
