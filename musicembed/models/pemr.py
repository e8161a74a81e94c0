"""PEMR inference model: waveform windows -> log-mel (or log-frequency) spectrogram -> FCN-4 -> vector.

Only the encoder f of the paper is kept for inference (the projection head and the
mask-generating transformer are training-time parts, see ``musicembed.train``).
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from ..frontend import LogMel
from .fcn import FCN


class PEMRModel(nn.Module):
    """forward(wave (batch, window_samples)) -> (batch, embedding_dim)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.frontend = LogMel(cfg.frontend)
        self.encoder = FCN(cfg.encoder)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.frontend(wave))
