"""Systems under evaluation: trained models, the MFCC baseline, and randomly initialised models.

A system spec is one of
- ``mfcc``: MFCC mean + standard deviation over time (40-d), no learning;
- ``random:<model>``: the architecture of ``<model>`` (name or folder) with fresh weights
  drawn from a fixed seed, the "untrained encoder" baseline;
- anything :func:`musicembed.load_model` accepts (manifest name, folder, ``hf-hub:...``).
Every system has ``embed(list_of_inputs, sample_rate=None) -> (N, D)`` float32.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torchaudio

from ... import hub
from ...audio import AudioInput, load_audio
from ...embedder import Model, load_model
from ...models import build_model

RANDOM_PREFIX = "random:"
RANDOM_SEED = 0


class Embedder(Protocol):
    """What the evaluation needs from a model."""

    def embed(self, audio: Sequence[AudioInput], sample_rate: int | None = None) -> np.ndarray: ...


@dataclass
class System:
    """A named embedder; ``fingerprint`` changes whenever its weights or settings do (cache key)."""

    name: str
    fingerprint: str
    embedder: Embedder


class MFCCEmbedder:
    """MFCC baseline: ``n_mfcc`` coefficients per frame (torchaudio), mean and standard
    deviation over time concatenated -> (2 * n_mfcc,) per input."""

    def __init__(self, sample_rate: int = 22050, n_mfcc: int = 20, n_fft: int = 2048, hop_length: int = 512,
                 n_mels: int = 128) -> None:
        self.sample_rate = sample_rate
        self.n_fft = n_fft
        self.settings = {"sample_rate": sample_rate, "n_mfcc": n_mfcc, "n_fft": n_fft, "hop_length": hop_length,
                         "n_mels": n_mels}
        self.transform = torchaudio.transforms.MFCC(
            sample_rate=sample_rate, n_mfcc=n_mfcc,
            melkwargs={"n_fft": n_fft, "hop_length": hop_length, "n_mels": n_mels})

    @torch.no_grad()
    def _one(self, x: AudioInput, source_rate: int | None) -> np.ndarray:
        wave = torch.from_numpy(load_audio(x, self.sample_rate, source_rate=source_rate))
        if wave.numel() < self.n_fft:
            wave = torch.nn.functional.pad(wave, (0, self.n_fft - wave.numel()))
        m = self.transform(wave)  # (n_mfcc, frames)
        return torch.cat([m.mean(dim=1), m.std(dim=1, unbiased=False)]).numpy().astype(np.float32)

    def embed(self, audio: AudioInput | Sequence[AudioInput], sample_rate: int | None = None) -> np.ndarray:
        """One input -> (D,); a list -> (N, D). Arrays need ``sample_rate``."""
        if isinstance(audio, (str, np.ndarray, torch.Tensor)) or hasattr(audio, "__fspath__"):
            return self._one(audio, sample_rate)
        if not len(audio):
            return np.zeros((0, 2 * self.settings["n_mfcc"]), np.float32)
        return np.stack([self._one(x, sample_rate) for x in audio])


def random_model(ref: str, seed: int = RANDOM_SEED, device: str | None = None) -> tuple[Model, str]:
    """The architecture of model ``ref`` with weights drawn from ``seed``; returns the model
    and a fingerprint of its config and seed."""
    cfg = hub.resolve(ref).config
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_model(cfg)
    digest = hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:16]
    return Model(net, cfg, device=device, source=f"{RANDOM_PREFIX}{ref}"), f"random-seed{seed}-{digest}"


def load_system(spec: str, device: str | None = None) -> System:
    """Build the system a spec names (see the module docstring)."""
    if spec == "mfcc":
        mfcc = MFCCEmbedder()
        return System(spec, "mfcc-" + json.dumps(mfcc.settings, sort_keys=True), mfcc)
    if spec.startswith(RANDOM_PREFIX):
        model, fingerprint = random_model(spec[len(RANDOM_PREFIX):], device=device)
        return System(spec, fingerprint, model)
    resolved = hub.resolve(spec)
    return System(spec, hub.sha256_file(resolved.weights), load_model(spec, device=device))
