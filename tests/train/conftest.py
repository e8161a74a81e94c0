"""Fixtures for training tests: a folder of short generated tracks (tones + noise, several
formats and sample rates) and a shared decoded-audio cache. (tests/conftest.py sets one
intra-op thread for the whole suite.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from train_helpers import write_tracks


@pytest.fixture(scope="session")
def audio_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("train_audio")
    write_tracks(folder, 8)
    return folder


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("train_cache")
