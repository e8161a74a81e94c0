"""Shared fixtures: real audio written to disk, tiny real models saved with save_pretrained."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from audio_fixtures import SR, chord, make_model_dir, noise, tiny_mart_config, tiny_pemr_config, tone

# The models under test are tiny: one thread avoids oversubscribing small CI machines (3x faster on 2 cores).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def pemr_dir(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("models") / "tiny-pemr", tiny_pemr_config())


@pytest.fixture(scope="session")
def mart_dir(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("models") / "tiny-mart", tiny_mart_config())


@pytest.fixture(scope="session")
def audio_dir(tmp_path_factory) -> Path:
    """WAV, FLAC, OGG and MP3 files of tones, chords, noise and silence."""
    d = tmp_path_factory.mktemp("audio")
    sf.write(d / "tone.wav", tone(440, 3.0), SR, subtype="PCM_16")
    sf.write(d / "chord.flac", chord(seconds=2.5), SR)
    sf.write(d / "stereo.ogg", tone(330, 2.0, channels=2), SR, format="OGG", subtype="VORBIS")
    sf.write(d / "noise.mp3", noise(4.0), SR, format="MP3")
    sf.write(d / "silence.wav", np.zeros(SR, np.float32), SR)
    return d
