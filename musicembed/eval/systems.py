"""Systems under evaluation: trained models, the MFCC and random-FCN baselines, and randomly
initialised models.

A system spec is one of
- ``mfcc``: MFCC mean + standard deviation over time (40-d), no learning;
- ``randfcn``: the wide random FCN (:class:`RandomFCNEmbedder`, 512-d), no learning;
- ``chroma``: a key-invariant pitch-class profile (:class:`ChromaEmbedder`, 6-d), no learning;
- ``random:<model>``: the architecture of ``<model>`` (name or folder) with fresh weights
  drawn from a fixed seed, the "untrained encoder" baseline;
- ``musicnn`` or ``musicnn.<layer>``: musicnn's MTT_musicnn (supervised on MagnaTagATune),
  run by another interpreter (:func:`musicnn_system`);
- anything :func:`musicembed.load_model` accepts (manifest name, folder, ``hf-hub:...``).
Every system has ``embed(list_of_inputs, sample_rate=None) -> (N, D)`` float32.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import select
import subprocess
import tempfile
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torchaudio

from .. import hub
from ..audio import AudioInput, load_audio
from ..errors import AudioError, MusicEmbedError
from ..model import Model, load_model
from ..models import build_model

RANDOM_PREFIX = "random:"
MUSICNN = "musicnn"
MUSICNN_LAYERS = ("max_pool", "mean_pool", "penultimate")
RANDOM_SEED = 0
TOP_DB = 80.0  # the random FCN's log-mel floor below the clip's maximum, in dB


class Embedder(Protocol):
    """What the evaluation needs from a model."""

    def embed(self, audio: Sequence[AudioInput], sample_rate: int | None = None) -> np.ndarray: ...


@dataclass
class System:
    """A named embedder; ``fingerprint`` changes whenever its weights or settings do (cache key)."""

    name: str
    fingerprint: str
    embedder: Embedder


class _ClipEmbedder:
    """A clip-level feature: ``_one(waveform at sample_rate) -> (D,)`` for every input."""

    sample_rate: int
    dim: int

    def _one(self, wave: torch.Tensor) -> np.ndarray:
        raise NotImplementedError

    def embed(self, audio: AudioInput | Sequence[AudioInput], sample_rate: int | None = None) -> np.ndarray:
        """One input -> (D,); a list -> (N, D). Arrays need ``sample_rate``."""
        def one(x: AudioInput) -> np.ndarray:
            return self._one(torch.from_numpy(load_audio(x, self.sample_rate, source_rate=sample_rate)))

        if isinstance(audio, (str, np.ndarray, torch.Tensor)) or hasattr(audio, "__fspath__"):
            return one(audio)
        if not len(audio):
            return np.zeros((0, self.dim), np.float32)
        return np.stack([one(x) for x in audio])


class MFCCEmbedder(_ClipEmbedder):
    """MFCC baseline: ``n_mfcc`` coefficients per frame (torchaudio), mean and standard
    deviation over time concatenated -> (2 * n_mfcc,) per input."""

    def __init__(self, sample_rate: int = 22050, n_mfcc: int = 20, n_fft: int = 2048, hop_length: int = 512,
                 n_mels: int = 128) -> None:
        self.sample_rate = sample_rate
        self.n_fft = n_fft
        self.dim = 2 * n_mfcc
        self.settings = {"sample_rate": sample_rate, "n_mfcc": n_mfcc, "n_fft": n_fft, "hop_length": hop_length,
                         "n_mels": n_mels}
        self.transform = torchaudio.transforms.MFCC(
            sample_rate=sample_rate, n_mfcc=n_mfcc,
            melkwargs={"n_fft": n_fft, "hop_length": hop_length, "n_mels": n_mels})

    @torch.no_grad()
    def _one(self, wave: torch.Tensor) -> np.ndarray:
        if wave.numel() < self.n_fft:
            wave = torch.nn.functional.pad(wave, (0, self.n_fft - wave.numel()))
        m = self.transform(wave)  # (n_mfcc, frames)
        return torch.cat([m.mean(dim=1), m.std(dim=1, unbiased=False)]).numpy().astype(np.float32)


class RandomFCNEmbedder(_ClipEmbedder):
    """The wide random FCN baseline (issue 17): a randomly initialised, never trained
    fully convolutional network.

    Input: 128-band log-mel (power mel spectrogram of a 2048-point STFT, hop 512, at 22.05
    kHz, in dB, floored at 80 dB below the clip's maximum), standardised per clip (zero
    mean, unit variance over all bands and frames of the whole input). The relative floor
    and the standardisation make the vector independent of the input's level. Network: four
    blocks conv3x3 (padding 1) + ReLU + max-pool, 1 -> 128 -> 256 -> 384 -> 512 channels,
    pools (2, 4), (4, 4), (4, 4) and none (pools round up, so the last frames of a clip
    count too); global average over the last block's frequency and time positions -> 512-d.
    Weights: PyTorch's default initialisation after ``torch.manual_seed(seed)``. Inputs
    longer than ``chunk_frames`` frames go through the network in chunks of that many frames
    (a multiple of the 64-frame time pooling, so pooling cells never straddle chunks; only
    the convolutions' zero padding at chunk edges differs from one pass), their outputs
    averaged with weights equal to their number of positions; this bounds memory for whole
    songs.
    """

    channels = (128, 256, 384, 512)
    pools = ((2, 4), (4, 4), (4, 4), None)

    def __init__(self, seed: int = RANDOM_SEED, sample_rate: int = 22050, n_fft: int = 2048, hop_length: int = 512,
                 n_mels: int = 128, chunk_frames: int = 2048, device: str | None = None) -> None:
        self.sample_rate = sample_rate
        self.n_fft = n_fft
        self.dim = self.channels[-1]
        time_pool = math.prod(p[1] for p in self.pools if p)
        if chunk_frames % time_pool:
            raise ValueError(f"chunk_frames must be a multiple of the network's time pooling ({time_pool})")
        self.chunk_frames = chunk_frames
        self.device = torch.device(device or "cpu")
        self.settings = {"seed": seed, "sample_rate": sample_rate, "n_fft": n_fft, "hop_length": hop_length,
                         "n_mels": n_mels, "top_db": TOP_DB, "channels": list(self.channels),
                         "pools": [list(p or []) for p in self.pools]}
        self.mel = torchaudio.transforms.MelSpectrogram(sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length,
                                                        n_mels=n_mels).to(self.device)
        layers: list[torch.nn.Module] = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for c_in, c_out, pool in zip((1, *self.channels[:-1]), self.channels, self.pools, strict=True):
                layers += [torch.nn.Conv2d(c_in, c_out, 3, padding=1), torch.nn.ReLU(inplace=True)]
                if pool:
                    layers.append(torch.nn.MaxPool2d(pool, ceil_mode=True))
        self.net = torch.nn.Sequential(*layers).to(self.device).eval()
        digest = hashlib.sha256()
        for tensor in self.net.state_dict().values():
            digest.update(tensor.detach().cpu().numpy().tobytes())
        self.weights_sha256 = digest.hexdigest()

    @torch.no_grad()
    def _one(self, wave: torch.Tensor) -> np.ndarray:
        if wave.numel() < self.n_fft:
            wave = torch.nn.functional.pad(wave, (0, self.n_fft - wave.numel()))
        db = 10 * torch.log10(self.mel(wave.to(self.device)).clamp_min(1e-10))  # (mels, frames)
        db = db.clamp_min(db.max() - TOP_DB)
        x = (db - db.mean()) / db.std(unbiased=False).clamp_min(1e-8)
        total, weight = torch.zeros(self.dim, dtype=torch.float64, device=self.device), 0
        for start in range(0, x.shape[1], self.chunk_frames):
            out = self.net(x[None, None, :, start : start + self.chunk_frames])  # (1, 512, F', T')
            total += out.sum(dim=(0, 2, 3)).double()
            weight += out.shape[2] * out.shape[3]
        return (total / weight).float().cpu().numpy()


class MusicnnEmbedder:
    """The musicnn baseline: MTT_musicnn (Pons & Serra 2019, supervised on MagnaTagATune),
    its shipped weights, one vector per file = the mean of ``layer``'s activations over the
    file's non-overlapping 3-s patches (``max_pool``: 753-d, ``mean_pool``: 753-d,
    ``penultimate``: 200-d).

    musicnn needs TensorFlow with Keras 2, so it runs in a worker process under ``python``,
    an interpreter of another environment (``musicnn_worker.py``; install in
    ``benchmarks/README.md``), started once and kept until this object is collected. Only
    file paths can be embedded. ``threads``: TensorFlow's intra-op threads (default: torch's
    thread count). ``timeout_s``: the longest wait for the worker to start or to answer one
    call.
    """

    def __init__(self, python: str | os.PathLike, layer: str = "max_pool", threads: int | None = None,
                 timeout_s: float = 3600.0) -> None:
        if layer not in MUSICNN_LAYERS:
            raise ValueError(f"musicnn layer {layer!r}: expected one of {', '.join(MUSICNN_LAYERS)}")
        self.layer = layer
        self.timeout_s = timeout_s
        self._stderr = tempfile.TemporaryFile()
        worker = Path(__file__).with_name("musicnn_worker.py")
        try:
            self._proc = subprocess.Popen([os.fspath(python), os.fspath(worker), layer, str(threads or torch.get_num_threads())],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True)
        except OSError as e:
            raise MusicEmbedError(f"musicnn: cannot run {python}: {e}") from None
        weakref.finalize(self, _stop_worker, self._proc)
        hello = self._read()
        self.dim = int(hello["dim"])
        self.identity = hello["identity"]

    def _read(self) -> dict:
        out = self._proc.stdout
        assert out is not None
        ready, _, _ = select.select([out], [], [], self.timeout_s)
        line = out.readline() if ready else ""
        if not line:
            _stop_worker(self._proc)
            self._stderr.seek(0)
            tail = self._stderr.read().decode(errors="replace").strip().splitlines()[-3:]
            reason = "no answer" if not ready else "the worker exited"
            raise MusicEmbedError(f"musicnn: {reason} ({' / '.join(tail) or 'no message'})")
        return json.loads(line)

    def embed(self, audio: Sequence[AudioInput], sample_rate: int | None = None) -> np.ndarray:
        """Files -> (N, D) float32; a file that fails raises :class:`AudioError` naming it."""
        files = [os.fspath(Path(a).resolve()) for a in audio]  # type: ignore[arg-type]
        if not files:
            return np.zeros((0, self.dim), np.float32)
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps({"files": files}) + "\n")
        self._proc.stdin.flush()
        results = self._read()["results"]
        for f, r in zip(files, results, strict=True):
            if "error" in r:
                raise AudioError(f, r["error"])
        return np.asarray([r["vector"] for r in results], dtype=np.float32)


def _stop_worker(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def musicnn_system(spec: str, python: str | os.PathLike, threads: int | None = None) -> System:
    """The system ``musicnn`` (layer ``max_pool``) or ``musicnn.<layer>``, run by ``python``."""
    name, _, layer = spec.partition(".")
    if name != MUSICNN:
        raise ValueError(f"not a musicnn system: {spec!r}")
    embedder = MusicnnEmbedder(python, layer or "max_pool", threads=threads)
    return System(spec, "musicnn-" + json.dumps(embedder.identity, sort_keys=True), embedder)


class ChromaEmbedder(_ClipEmbedder):
    """Key-invariant chroma baseline, a reference for cover retrieval.

    Power STFT (``n_fft``-point Hann, hop ``hop_length``, at ``sample_rate``) whose bins from
    ``fmin`` to ``fmax`` Hz are summed into the 12 pitch classes of their nearest equal-tempered
    pitch (A4 = 440 Hz); each frame is scaled to sum 1 and compressed as log(1 + 100 c), and the
    frames are averaged. A transposition rotates that 12-bin profile, which changes only the
    phases of its discrete Fourier transform: the vector is the magnitudes of DFT coefficients
    1-6 (6-d), unchanged by a change of key.
    """

    def __init__(self, sample_rate: int = 22050, n_fft: int = 8192, hop_length: int = 2048, fmin: float = 55.0,
                 fmax: float = 2000.0) -> None:
        self.sample_rate = sample_rate
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.dim = 6
        self.settings = {"sample_rate": sample_rate, "n_fft": n_fft, "hop_length": hop_length, "fmin": fmin,
                         "fmax": fmax}
        freqs = torch.arange(n_fft // 2 + 1) * sample_rate / n_fft
        self.bins = torch.nonzero((freqs >= fmin) & (freqs <= fmax)).squeeze(1)
        self.pitch_class = torch.round(12 * torch.log2(freqs[self.bins] / 440.0)).long() % 12
        self.window = torch.hann_window(n_fft)

    @torch.no_grad()
    def _one(self, wave: torch.Tensor) -> np.ndarray:
        if wave.numel() < self.n_fft:
            wave = torch.nn.functional.pad(wave, (0, self.n_fft - wave.numel()))
        power = torch.stft(wave, self.n_fft, self.hop_length, window=self.window, return_complex=True).abs() ** 2
        chroma = torch.zeros(12, power.shape[1]).index_add_(0, self.pitch_class, power[self.bins])
        chroma = torch.log1p(100 * chroma / chroma.sum(dim=0, keepdim=True).clamp_min(1e-12))
        return torch.fft.rfft(chroma.mean(dim=1)).abs()[1:].numpy().astype(np.float32)


def is_musicnn(spec: str) -> bool:
    """Whether ``spec`` names the musicnn baseline."""
    return spec.partition(".")[0] == MUSICNN


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
    if spec == "chroma":
        chroma = ChromaEmbedder()
        return System(spec, "chroma-" + json.dumps(chroma.settings, sort_keys=True), chroma)
    if spec == "randfcn":
        fcn = RandomFCNEmbedder(device=device)
        return System(spec, f"randfcn-{fcn.weights_sha256[:16]}-" + json.dumps(fcn.settings, sort_keys=True), fcn)
    if spec.startswith(RANDOM_PREFIX):
        model, fingerprint = random_model(spec[len(RANDOM_PREFIX):], device=device)
        return System(spec, fingerprint, model)
    if is_musicnn(spec):
        raise ValueError(f"{spec}: the musicnn baseline runs in another Python environment; give its interpreter "
                         "(--musicnn-python)")
    resolved = hub.resolve(spec)
    return System(spec, hub.sha256_file(resolved.weights), load_model(spec, device=device))
