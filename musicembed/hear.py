"""The HEAR 2021 common API (https://hearbenchmark.com/hear-api.html) for musicembed models.

    import musicembed.hear as hear
    model = hear.load_model()                                   # the bundled "pemr"
    model = hear.load_model("path/to/model-folder")             # or a manifest name, hf-hub:...
    scene = hear.get_scene_embeddings(audio, model)             # (n_sounds, D) float32
    emb, ts = hear.get_timestamp_embeddings(audio, model)       # (n_sounds, T, D), (n_sounds, T) ms

``audio`` is a float tensor (n_sounds, n_samples) of mono audio in [-1, 1] at
``model.sample_rate`` (no resampling happens here, as the spec requires). Results are float32
on ``audio``'s device; the computation runs on the model's device (move it with
``model.to("cuda")``, as the HEAR evaluation kit does).

What the embeddings are:

- Scene embedding: exactly :meth:`musicembed.Model.embed`'s clip vector: the mean of the
  vectors of non-overlapping model windows (``window_samples`` of the model's config; a tail
  of at least half a window gets one more window aligned to the end; a sound shorter than a
  window is zero-padded). ``scene_embedding_size`` = D.
- Timestamp embeddings: one model window centred on each timestamp, every
  :data:`HOP_MS` = 50 ms (the spec suggests <= 50 ms), from 0 ms to the end of the sound:
  timestamps are ``k * hop`` for ``k = 0 .. n_samples // hop_samples``, in milliseconds.
  The audio is zero-padded by half a window on both sides, so window ``k`` covers samples
  ``[k*hop - W//2, k*hop - W//2 + W)``. Each window gives the model's per-window vector
  (PEMR: the FCN output; MART: the level-0 vector after the part-whole transformer), so
  ``timestamp_embedding_size`` = D too. This costs one model window per 50 ms of audio
  (PEMR's 3-s window: 60 overlapping windows per window length); lower the cost with a
  larger ``model.timestamp_hop_ms`` if a task allows it.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from .models import window_vectors
from .windows import window_starts

__all__ = ["HOP_MS", "HearModel", "get_scene_embeddings", "get_timestamp_embeddings", "load_model"]

HOP_MS = 50.0
DEFAULT_MODEL = "pemr"
BATCH_SIZE = 64  # windows per forward pass


class HearModel(nn.Module):
    """A musicembed encoder with the attributes the HEAR API requires.

    Attributes: ``sample_rate`` (Hz), ``scene_embedding_size`` and
    ``timestamp_embedding_size`` (both D), plus ``timestamp_hop_ms`` (default
    :data:`HOP_MS`), ``batch_size`` (windows per forward pass), ``window_samples`` and
    ``config`` (the :class:`~musicembed.config.ModelConfig`). ``forward(windows)`` maps
    (batch, window_samples) audio to (batch, D) window vectors.
    """

    def __init__(self, net: nn.Module, config, source: str = "") -> None:
        super().__init__()
        self.net = net.eval()
        self.config = config
        self.source = source
        self.sample_rate = int(config.sample_rate)
        self.scene_embedding_size = int(config.embedding_dim)
        self.timestamp_embedding_size = int(config.embedding_dim)
        self.window_samples = int(config.window_samples)
        self.timestamp_hop_ms = HOP_MS
        self.batch_size = BATCH_SIZE
        self.eval()

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        return window_vectors(self.net(windows)).float()

    def embed_windows(self, windows: torch.Tensor) -> torch.Tensor:
        """(n, window_samples) on any device -> (n, D) on the model's device, in batches."""
        dev = self.device
        out = [self(windows[i : i + self.batch_size].to(dev)) for i in range(0, windows.shape[0], self.batch_size)]
        if not out:
            return torch.zeros(0, self.scene_embedding_size, device=dev)
        return torch.cat(out)

    def extra_repr(self) -> str:
        return (f"name={self.config.name!r}, method={self.config.method!r}, sample_rate={self.sample_rate}, "
                f"embedding_size={self.scene_embedding_size}, hop={self.timestamp_hop_ms:g} ms")


def load_model(model_file_path: str = "") -> HearModel:
    """Load a model for the HEAR API.

    ``model_file_path``: empty for the default bundled model ``"pemr"``; a model folder
    (``config.json`` + ``model.safetensors``, or a file inside one); a manifest name
    (``musicembed models``); or ``"hf-hub:<owner>/<repo>[@revision]"``. The model is
    returned on the CPU in eval mode; move it with ``.to(device)``.
    """
    from .model import load_model as _load

    ref = model_file_path or DEFAULT_MODEL
    if os.path.isfile(ref):  # e.g. .../model.safetensors or .../config.json: use the folder
        ref = os.path.dirname(os.path.abspath(ref))
    model = _load(ref, device="cpu")
    return HearModel(model.net, model.config, source=model.source)


def _check(audio: torch.Tensor, model: HearModel) -> None:
    if not isinstance(model, HearModel):
        raise TypeError("model must come from musicembed.hear.load_model()")
    if not isinstance(audio, torch.Tensor) or audio.ndim != 2:
        raise ValueError("audio must be a tensor of shape (n_sounds, n_samples)")
    if not audio.is_floating_point():
        raise ValueError(f"audio must be a float tensor (got {audio.dtype})")


def get_scene_embeddings(audio: torch.Tensor, model: HearModel) -> torch.Tensor:
    """audio (n_sounds, n_samples) at ``model.sample_rate`` -> (n_sounds, scene_embedding_size) float32.

    The mean of the model's vectors over non-overlapping windows: the same vector
    :meth:`musicembed.Model.embed` returns for that audio.
    """
    _check(audio, model)
    n_sounds, n_samples = audio.shape
    w = model.window_samples
    x = audio.float()
    if n_samples < w:
        x = nn.functional.pad(x, (0, w - n_samples))
    starts = window_starts(n_samples, w)
    windows = torch.stack([x[:, s : s + w] for s in starts], dim=1)  # (n_sounds, n_windows, w)
    with torch.no_grad():
        vecs = model.embed_windows(windows.reshape(-1, w))
    emb = vecs.view(n_sounds, len(starts), -1).mean(dim=1)
    return emb.to(device=audio.device, dtype=torch.float32)


def get_timestamp_embeddings(audio: torch.Tensor, model: HearModel) -> tuple[torch.Tensor, torch.Tensor]:
    """audio (n_sounds, n_samples) -> (embeddings (n_sounds, n_timestamps, D) float32,
    timestamps (n_sounds, n_timestamps) float32 in milliseconds).

    Embedding ``k`` is the model's vector of the window centred on ``k * hop``, with
    ``hop = model.timestamp_hop_ms`` (50 ms) rounded to whole samples; the timestamps are
    the exact centres in ms, ``k = 0 .. n_samples // hop_samples``.
    """
    _check(audio, model)
    n_sounds = audio.shape[0]
    w = model.window_samples
    hop = max(1, round(model.timestamp_hop_ms * model.sample_rate / 1000.0))
    padded = nn.functional.pad(audio.float(), (w // 2, w - w // 2))  # (n_sounds, n_samples + w)
    windows = padded.unfold(1, w, hop)  # view (n_sounds, n_samples // hop + 1, w)
    n_ts = windows.shape[1]
    total = n_sounds * n_ts
    dev = model.device
    out = torch.empty(total, model.timestamp_embedding_size, device=dev)
    with torch.no_grad():  # batches of windows across sounds, cut from the view: bounded memory
        for j in range(0, total, model.batch_size):
            idx = torch.arange(j, min(j + model.batch_size, total), device=audio.device)
            out[j : j + len(idx)] = model(windows[idx // n_ts, idx % n_ts].to(dev))
    out = out.view(n_sounds, n_ts, -1)
    steps = torch.arange(n_ts, dtype=torch.float64) * (hop * 1000.0 / model.sample_rate)
    timestamps = steps.to(torch.float32).expand(n_sounds, n_ts).contiguous()
    return out.to(audio.device), timestamps.to(audio.device)
