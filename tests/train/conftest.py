"""Fixtures for training tests: a folder of short generated tracks (tones + noise, several
formats and sample rates), a shared decoded-audio cache, and one intra-op thread: the models
here are tiny, and on a shared 2-core machine thread hand-offs cost more than the maths."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from train_helpers import write_tracks


@pytest.fixture(scope="session")
def audio_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("train_audio")
    write_tracks(folder, 8)
    return folder


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("train_cache")


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
