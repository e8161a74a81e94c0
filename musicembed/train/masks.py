"""PEMR's predicting module and positive-negative mask generator (training-time part of PEMR).

One transformer serves both jobs, as in the paper (sec. 3.3-3.4) and the authors' code:

- predicting: BERT-style random frame masking, a feed-forward layer predicts the masked
  frames (Huber loss), which trains the transformer;
- mask generation: a [CLS] token is prepended to each branch; in the last layer the CLS
  queries of both branches attend to the keys of branch-2 frames (eq. 4) and the frames
  with the lowest scores are replaced by a learned MASK frame (positive sample) or are the
  only ones kept (negative sample).

Tokens are log-mel frames (one token per frame, width ``n_mels``). Frames are standardised
per example (scalar mean and std over the whole log-mel) before the transformer, so the
sinusoidal positions, the CLS token and the prediction targets live on one scale whatever
the dB level of the audio. The MASK frame is learned in that standardised space and mapped
back to each example's dB scale when it replaces frames of the encoder input.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..models.mart import CrossAttention

STD_EPS = 1e-5


def sinusoidal_positions(length: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """Transformer sinusoidal position table (length, dim): sin on even, cos on odd channels."""
    pos = torch.arange(length, dtype=torch.float32, device=device).unsqueeze(1)
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, device=device)
    table[:, 0::2] = torch.sin(pos * div)
    table[:, 1::2] = torch.cos(pos * div[: dim // 2])
    return table


class EncoderLayer(nn.Module):
    """Post-LN transformer encoder layer (self-attention, ReLU feed-forward), as in the authors' code."""

    def __init__(self, dim: int, heads: int, head_dim: int, ff_dim: int, dropout: float) -> None:
        super().__init__()
        self.attn = CrossAttention(dim, heads, head_dim, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, ff_dim), nn.ReLU(), nn.Linear(ff_dim, dim))
        self.norm2 = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, tokens, dim) -> (B, tokens, dim)."""
        h = self.norm1(x + self.drop(self.attn(x, x)))
        return self.norm2(h + self.drop(self.ff(h)))


class MaskGenerator(nn.Module):
    """Transformer over log-mel frames with a [CLS] token, a learned MASK frame and a predicting head.

    ``n_mels`` is the token width. Attention has ``heads`` heads of ``head_dim`` (default
    ``n_mels``, the authors' d_k = d_model) so any head count works with any ``n_mels``.
    """

    def __init__(
        self,
        n_mels: int,
        layers: int = 3,
        heads: int = 3,
        head_dim: int | None = None,
        ff_dim: int = 2048,
        pred_dim: int = 512,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.n_mels = n_mels
        self.head_dim = head_dim or n_mels
        self.heads = heads
        self.cls = nn.Parameter(torch.randn(1, 1, n_mels) * 0.02)
        self.mask = nn.Parameter(torch.randn(n_mels) * 0.02)  # standardised units
        self.input_drop = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            EncoderLayer(n_mels, heads, self.head_dim, ff_dim, dropout) for _ in range(layers)
        )
        self.predict = nn.Sequential(nn.Linear(n_mels, pred_dim), nn.ReLU(), nn.Linear(pred_dim, n_mels))

    @staticmethod
    def standardize(mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """mel (B, n_mels, L) dB -> frames (B, L, n_mels) standardised, mean (B, 1, 1), std (B, 1, 1)."""
        mel = mel.detach()
        mean = mel.mean(dim=(1, 2), keepdim=True)
        std = mel.std(dim=(1, 2), keepdim=True) + STD_EPS
        return ((mel - mean) / std).transpose(1, 2), mean, std

    def _tokens(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (B, L, n_mels) -> CLS + frames + sinusoidal positions, (B, L + 1, n_mels)."""
        b, length, d = frames.shape
        x = torch.cat([self.cls.expand(b, 1, d), frames], dim=1)
        return self.input_drop(x + sinusoidal_positions(length + 1, d, frames.device))

    def prediction_loss(
        self, frames: torch.Tensor, prob: float = 0.15, delta: float = 0.1, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """BERT-style frame masking and Huber loss on the masked frames (scalar).

        frames (B, L, n_mels) standardised. Each frame is selected with ``prob``; a selected
        frame is zeroed (80 %), replaced by a random frame of the same example (10 %) or kept
        (10 %), and the head must predict the original. The loss is the mean Huber(``delta``)
        over the selected frames' values; 0 when no frame was selected.
        """
        b, length, d = frames.shape
        dev = frames.device
        selected = torch.rand(b, length, device=dev, generator=generator) < prob
        action = torch.rand(b, length, device=dev, generator=generator)
        donor = torch.randint(0, length, (b, length), device=dev, generator=generator)
        random_frames = torch.gather(frames, 1, donor.unsqueeze(-1).expand(b, length, d))
        corrupted = torch.where((selected & (action < 0.8)).unsqueeze(-1), torch.zeros_like(frames), frames)
        swap = selected & (action >= 0.8) & (action < 0.9)
        corrupted = torch.where(swap.unsqueeze(-1), random_frames, corrupted)
        x = self._tokens(corrupted)
        for layer in self.layers:
            x = layer(x)
        pred = self.predict(x[:, 1:])
        loss = nn.functional.huber_loss(pred, frames, reduction="none", delta=delta).mean(dim=-1)
        count = selected.sum()
        return (loss * selected).sum() / count.clamp(min=1)

    @torch.no_grad()
    def scores(self, frames_1: torch.Tensor, frames_2: torch.Tensor) -> torch.Tensor:
        """Frame scores of branch 2 (B, L), eq. (4): s = 1/2 sum_h (softmax(CLS'_Q F''_K / sqrt(d))
        + softmax(CLS''_Q F''_K / sqrt(d))), with Q and K of the last layer applied to the
        output of the layer before it; d is the head width."""
        b = frames_1.shape[0]
        x = self._tokens(torch.cat([frames_1, frames_2]))
        for layer in self.layers[:-1]:
            x = layer(x)
        attn = self.layers[-1].attn
        q = attn.q(x[:, :1]).view(2 * b, 1, self.heads, self.head_dim).transpose(1, 2)  # (2B, H, 1, d)
        k = attn.k(x[b:, 1:]).view(b, -1, self.heads, self.head_dim).transpose(1, 2)  # (B, H, L, d)
        scale = 1.0 / math.sqrt(self.head_dim)
        s1 = torch.softmax(q[:b] @ k.transpose(-1, -2) * scale, dim=-1)
        s2 = torch.softmax(q[b:] @ k.transpose(-1, -2) * scale, dim=-1)
        return 0.5 * (s1 + s2).sum(dim=1).squeeze(1)

    def replace_frames(
        self, mel: torch.Tensor, drop: torch.Tensor, mean: torch.Tensor, std: torch.Tensor
    ) -> torch.Tensor:
        """Replace frames of mel (B, n_mels, L) where drop (B, L) is True by the MASK frame in dB."""
        mask_db = mean + std * self.mask.view(1, -1, 1)  # (B, n_mels, 1)
        return torch.where(drop.unsqueeze(1), mask_db, mel)


def lowest_frames(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """Bool (B, L), True at the ``int(ratio * L)`` lowest-scoring frames of each row (eq. 5)."""
    b, length = scores.shape
    k = int(ratio * length)
    low = torch.zeros(b, length, dtype=torch.bool, device=scores.device)
    if k > 0:
        idx = torch.topk(scores, k, dim=1, largest=False).indices
        low.scatter_(1, idx, True)
    return low
