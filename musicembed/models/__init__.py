"""Inference models, built from a :class:`~musicembed.config.ModelConfig`."""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from .mart import MARTModel
from .pemr import PEMRModel


def build_model(cfg: ModelConfig) -> nn.Module:
    """A PEMR or MART inference model with freshly initialised weights."""
    if cfg.method == "pemr":
        return PEMRModel(cfg)
    return MARTModel(cfg)


def window_vectors(out: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """(B, D) window vectors from a network's output: PEMR's output itself; for MART's
    per-level list [(B, M^n, D), ...], level 0 (one clip per window)."""
    return out[0][:, 0] if isinstance(out, list) else out


__all__ = ["MARTModel", "PEMRModel", "build_model", "window_vectors"]
