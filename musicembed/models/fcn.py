"""FCN-4 / FCN-7 encoders (Choi et al. 2016): log-mel (batch, n_mels, frames) -> (batch, D)."""

from __future__ import annotations

import torch
from torch import nn

from ..config import EncoderConfig


class FCN(nn.Module):
    """Optional BatchNorm on the input, then conv3x3-BN-ReLU-MaxPool blocks.

    Time steps left after the last block are max- or mean-pooled (``time_pool``), frequency
    rows are flattened (channel-major; ``freq_pool="flatten"``) or max- or mean-pooled. With
    flattened rows, a floor-mode max-pool model whose pools reduce time to exactly one step
    computes the same function as the fixed-length FCN of the PEMR authors.
    """

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.input_bn = nn.BatchNorm2d(1) if cfg.input_bn else nn.Identity()
        blocks = []
        c_in = 1
        for c_out, (pf, pt) in zip(cfg.channels, cfg.pools):
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(c_in, c_out, kernel_size=3, padding=1),
                    nn.BatchNorm2d(c_out),
                    nn.ReLU(inplace=True),
                    nn.MaxPool2d((pf, pt), ceil_mode=cfg.ceil_pools),
                )
            )
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.time_pool = cfg.time_pool
        self.freq_pool = cfg.freq_pool

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.input_bn(mel.unsqueeze(1))
        x = self.blocks(x)  # (batch, channels, freq, time)
        x = x.mean(dim=-1) if self.time_pool == "mean" else x.amax(dim=-1)
        if self.freq_pool == "max":
            return x.amax(dim=-1)
        if self.freq_pool == "mean":
            return x.mean(dim=-1)
        return x.flatten(1)
