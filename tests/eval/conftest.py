"""Fixtures for the evaluation tests: synthetic "music" with distinct timbres, a tiny real model."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import soundfile as sf
import torch
from eval_helpers import SR, TIMBRES, melody, synth

from musicembed.config import EncoderConfig, FrontendConfig, ModelConfig
from musicembed.hub import save_pretrained
from musicembed.models import build_model

# (timbre, transposition in semitones, split of its tracks): two training sources with
# held-out "val" tracks, three "select" and two "report" sources held out whole
FREE_MUSIC_SOURCES = (("sine", 0, "train"), ("square", 0, "train"), ("saw", 0, "select"), ("pulse", 0, "select"),
                      ("sine", 12, "select"), ("square", 12, "report"), ("saw", 12, "report"))
TRACKS_PER_SOURCE = 4


@pytest.fixture(scope="session")
def free_music_dir(tmp_path_factory) -> Path:
    """manifest.csv + covers.csv over 7 timbre/register "sources" of 4 tracks (4 s) each:
    splits train (2 + 2 val tracks in each training source), select (12 tracks) and
    report (8 tracks); every track outside train has 2 transposed "cover" versions in
    other timbres."""
    d = tmp_path_factory.mktemp("free_music")
    (d / "audio").mkdir()
    manifest, covers = [], []
    for si, (timbre, shift, split_of_source) in enumerate(FREE_MUSIC_SOURCES):
        source = f"pkg-{timbre}{'-high' if shift else ''}"
        for k in range(TRACKS_PER_SOURCE):
            tid = f"{source}-{k}"
            split = ("train" if k < 2 else "val") if split_of_source == "train" else split_of_source
            seed = 100 * si + k
            rel = f"audio/{tid}.wav"
            sf.write(d / rel, synth(melody(seed, shift=shift), timbre, seed=seed), SR, subtype="PCM_16")
            manifest.append([rel, source, "GPL-2+", "4.0", split, tid])
            if split != "train":
                covers.append([tid, 0, rel])
                for v, step in ((1, 2.0), (2, -3.0)):
                    other = TIMBRES[(TIMBRES.index(timbre) + v) % len(TIMBRES)]
                    crel = f"audio/{tid}-v{v}.wav"
                    sf.write(d / crel, synth(melody(seed, shift=shift + step), other, note_seconds=0.27, seed=seed + v),
                             SR)
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
