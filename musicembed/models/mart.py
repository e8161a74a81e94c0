"""MART inference model: hierarchical crops -> equal-size log-mels -> FCN-7 -> part-whole transformer.

A level-0 clip of ``window_samples`` is split into ``parts`` equal parts, recursively, for
``levels`` levels (1, M, M^2, ... clips). Each clip's log-mel uses a hop scaled with the clip
length so that every level gives the same ``frames`` x ``n_mels`` input to the shared encoder.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import MartConfig, ModelConfig
from ..frontend import LogMel
from .fcn import FCN


class CrossAttention(nn.Module):
    """Multi-head attention of queries (n, q, D) over keys/values (n, k, D); any head count."""

    def __init__(self, dim: int, heads: int, head_dim: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.q = nn.Linear(dim, inner)
        self.k = nn.Linear(dim, inner)
        self.v = nn.Linear(dim, inner)
        self.out = nn.Linear(inner, dim)
        self.dropout = dropout

    def forward(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        n, q_len, _ = query.shape
        k_len = context.shape[1]
        q = self.q(query).view(n, q_len, self.heads, self.head_dim).transpose(1, 2)
        k = self.k(context).view(n, k_len, self.heads, self.head_dim).transpose(1, 2)
        v = self.v(context).view(n, k_len, self.heads, self.head_dim).transpose(1, 2)
        drop = self.dropout if self.training else 0.0
        y = nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        return self.out(y.transpose(1, 2).reshape(n, q_len, self.heads * self.head_dim))


class CrossTransformer(nn.Module):
    """The paper's Transformer(Q, K, V): a post-LN transformer encoder layer whose
    attention takes queries from one level and keys/values from the adjacent level."""

    def __init__(self, dim: int, cfg: MartConfig) -> None:
        super().__init__()
        head_dim = cfg.head_dim or dim // cfg.heads
        self.attn = CrossAttention(dim, cfg.heads, head_dim, cfg.dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(
            nn.Linear(dim, cfg.ff_dim), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.ff_dim, dim)
        )
        self.norm2 = nn.LayerNorm(dim)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        h = self.norm1(query + self.drop(self.attn(query, context)))
        return self.norm2(h + self.drop(self.ff(h)))


class InteractionUnit(nn.Module):
    """Part-whole interaction between level n (wholes) and level n+1 (their parts), eqs. (1)-(2).

    All whole/part pairs of the two levels run in parallel (one batch row per pair).
    """

    def __init__(self, dim: int, cfg: MartConfig) -> None:
        super().__init__()
        self.parts = cfg.parts
        self.lambda_whole, self.lambda_part = cfg.lambda_whole, cfg.lambda_part
        self.whole_from_parts = CrossTransformer(dim, cfg)
        self.part_from_whole = CrossTransformer(dim, cfg)

    def forward(self, whole: torch.Tensor, part: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """whole (B, K, D), part (B, K*M, D) -> updated (whole, part), same shapes."""
        b, k, d = whole.shape
        m = self.parts
        w_q = whole.reshape(b * k, 1, d)
        p_kv = part.reshape(b * k, m, d)
        new_whole = whole + self.lambda_whole * self.whole_from_parts(w_q, p_kv).view(b, k, d)
        p_q = part.reshape(b * k * m, 1, d)
        w_kv = whole.repeat_interleave(m, dim=1).reshape(b * k * m, 1, d)
        new_part = part + self.lambda_part * self.part_from_whole(p_q, w_kv).view(b, k * m, d)
        return new_whole, new_part


class PartWholeTransformer(nn.Module):
    """``pwt_layers`` stacked part-whole transformers; each runs an interaction unit on every
    pair of adjacent levels, from the finest pair up to level 0, so information climbs the
    hierarchy within one layer and flows back down in the next. With ``share_levels`` one
    unit per layer serves all level pairs (fewer weights); otherwise each pair has its own."""

    def __init__(self, dim: int, cfg: MartConfig) -> None:
        super().__init__()
        self.pairs = cfg.levels - 1
        per_layer = 1 if cfg.share_levels else self.pairs
        self.layers = nn.ModuleList(
            nn.ModuleList(InteractionUnit(dim, cfg) for _ in range(per_layer)) for _ in range(cfg.pwt_layers)
        )

    def forward(self, levels: list[torch.Tensor]) -> list[torch.Tensor]:
        levels = list(levels)
        for units in self.layers:
            for n in reversed(range(self.pairs)):
                unit = units[0] if len(units) == 1 else units[n]
                levels[n], levels[n + 1] = unit(levels[n], levels[n + 1])
        return levels


class MARTModel(nn.Module):
    """forward(wave (batch, window_samples)) -> per-level vectors [(batch, M^n, D) for n < levels].

    ``encode_levels`` gives the encoder's vectors s~ before the part-whole transformer.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        assert cfg.mart is not None
        self.cfg = cfg
        self.frontend = LogMel(cfg.frontend)
        self.encoder = FCN(cfg.encoder)
        self.pwt = PartWholeTransformer(cfg.embedding_dim, cfg.mart) if cfg.mart.use_pwt else None

    def level_mels(self, wave: torch.Tensor, frontend: nn.Module | None = None) -> list[torch.Tensor]:
        """wave (B, samples) -> per level n, (B * M^n, n_mels, frames) log-mels
        (geometry: :func:`musicembed.windows.mart_levels`; the first ``frames`` frames of
        each clip are kept). ``frontend`` replaces the model's log-mel (export uses a real-valued one)."""
        frontend = self.frontend if frontend is None else frontend
        frames = self.cfg.mart.frames
        out = []
        for lv in self.cfg.mart_levels(wave.shape[-1]):
            crops = wave[:, : lv.clip * lv.count].reshape(-1, lv.clip)  # -1: the batch stays dynamic in exports
            out.append(frontend(crops, hop_length=lv.hop)[..., :frames])
        return out

    def encode_levels(self, wave: torch.Tensor, frontend: nn.Module | None = None) -> list[torch.Tensor]:
        """wave (B, samples) -> the encoder's vectors per level, (B, M^n, D), before the part-whole transformer."""
        mels = self.level_mels(wave, frontend)
        # One encoder call for all levels: every level's log-mel has the same size.
        z = self.encoder(torch.cat(mels, dim=0))
        out, start = [], 0
        for lv, mel in zip(self.cfg.mart_levels(wave.shape[-1]), mels):
            n = mel.shape[0]
            out.append(z[start : start + n].reshape(-1, lv.count, z.shape[-1]))
            start += n
        return out

    def forward(self, wave: torch.Tensor, frontend: nn.Module | None = None) -> list[torch.Tensor]:
        levels = self.encode_levels(wave, frontend)
        return self.pwt(levels) if self.pwt is not None else levels
