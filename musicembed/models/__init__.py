"""Inference models, built from a :class:`~musicembed.config.ModelConfig`."""

from __future__ import annotations

from torch import nn

from ..config import ModelConfig
from .mart import MARTModel
from .pemr import PEMRModel


def build_model(cfg: ModelConfig) -> nn.Module:
    """A PEMR or MART inference model with freshly initialised weights."""
    if cfg.method == "pemr":
        return PEMRModel(cfg)
    return MARTModel(cfg)


__all__ = ["MARTModel", "PEMRModel", "build_model"]
