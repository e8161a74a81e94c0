"""Training objectives: an inference model (``.model``, what gets exported) plus the
training-only parts (projection heads, PEMR's mask generator) and the loss.

``forward(views)`` takes augmented waveforms (B, 2, window_samples) and returns a dict of
scalar tensors: ``loss`` (to minimise) and its parts for logging.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..config import ModelConfig
from ..models import MARTModel, PEMRModel, build_model
from . import distributed
from .losses import barlow_twins, mart_loss, negative_diagonal
from .masks import MaskGenerator, lowest_frames

MASK_MODES = ("none", "pos", "posneg")


@dataclass
class PEMRObjectiveConfig:
    """PEMR's loss: mask mode 'none' (plain Barlow Twins) | 'pos' | 'posneg', ratio r, BT lambda,
    prediction-loss weight (authors' code: 0.01), BERT masking probability, Huber delta and
    the transformer's size."""

    mask: str = "posneg"
    ratio: float = 0.1
    bt_lambda: float = 5e-3
    pred_weight: float = 0.01
    pred_prob: float = 0.15
    huber_delta: float = 0.1
    projection_dim: int = 256
    layers: int = 3
    heads: int = 3
    head_dim: int | None = None
    ff_dim: int = 2048
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.mask not in MASK_MODES:
            raise ValueError(f"mask must be one of {MASK_MODES}, got {self.mask!r}")
        if not 0.0 <= self.ratio < 1.0:
            raise ValueError(f"ratio must be in [0, 1), got {self.ratio}")


@dataclass
class MARTObjectiveConfig:
    """MART's loss: temperature tau, hierarchical part-whole term on/off ('w/o HCL' sets it off),
    ``pw_weight`` scaling every lambda_i of the part-whole term (1 = the paper), ``positives``
    'joint' (the paper: one log over the summed positives) or 'separate' (one log per
    positive, see ``losses.mart_loss``), head hidden/output widths. The 'w/o PWT' switch is
    ``ModelConfig.mart.use_pwt``."""

    tau: float = 0.1
    hierarchical: bool = True
    pw_weight: float = 1.0
    positives: str = "joint"
    head_hidden: int = 512
    projection_dim: int = 256

    def __post_init__(self) -> None:
        if not self.pw_weight > 0:
            raise ValueError(f"pw_weight must be > 0 (use hierarchical: false to drop the term), got {self.pw_weight}")
        if self.positives not in ("joint", "separate"):
            raise ValueError(f"positives must be 'joint' or 'separate', got {self.positives!r}")


def projector(dim: int, hidden: int, out: int, bias: bool) -> nn.Sequential:
    """Linear(dim, hidden)-ReLU-Linear(hidden, out)."""
    return nn.Sequential(nn.Linear(dim, hidden, bias=bias), nn.ReLU(), nn.Linear(hidden, out, bias=bias))


class PEMRObjective(nn.Module):
    """PEMR pre-training: L = w * L_pred + L_pos + L_neg (terms present per mask mode)."""

    def __init__(self, cfg: ModelConfig, obj: PEMRObjectiveConfig) -> None:
        super().__init__()
        self.obj = obj
        self.model: PEMRModel = build_model(cfg)  # type: ignore[assignment]
        d = cfg.embedding_dim
        self.projector = projector(d, d, obj.projection_dim, bias=False)
        self.masks = None
        if obj.mask != "none":
            self.masks = MaskGenerator(cfg.frontend.n_mels, obj.layers, obj.heads, obj.head_dim, obj.ff_dim,
                                       dropout=obj.dropout)

    def embed(self, mel: torch.Tensor) -> torch.Tensor:
        """log-mel (B, n_mels, L) -> projected z (B, P), gathered over all ranks."""
        return distributed.gather(self.projector(self.model.encoder(mel)))

    def forward(self, views: torch.Tensor) -> dict[str, torch.Tensor]:
        o = self.obj
        mel1 = self.model.frontend(views[:, 0])
        mel2 = self.model.frontend(views[:, 1])
        z1 = self.embed(mel1)
        if self.masks is None:
            pos = barlow_twins(z1, self.embed(mel2), o.bt_lambda)
            return {"loss": pos, "pos": pos.detach()}
        frames1, _, _ = self.masks.standardize(mel1)
        frames2, mean2, std2 = self.masks.standardize(mel2)
        pred = self.masks.prediction_loss(torch.cat([frames1, frames2]), o.pred_prob, o.huber_delta)
        low = lowest_frames(self.masks.scores(frames1, frames2), o.ratio)
        pos = barlow_twins(z1, self.embed(self.masks.replace_frames(mel2, low, mean2, std2)), o.bt_lambda)
        out = {"pred": pred.detach(), "pos": pos.detach()}
        loss = o.pred_weight * pred + pos
        if o.mask == "posneg":
            neg = negative_diagonal(z1, self.embed(self.masks.replace_frames(mel2, ~low, mean2, std2)), o.bt_lambda)
            out["neg"] = neg.detach()
            loss = loss + neg
        out["loss"] = loss
        return out


class MARTObjective(nn.Module):
    """MART pre-training on two augmented crops a, b of each track, symmetrised:
    L = (L_hc(s^_a, s~0_b) + L_hc(s^_b, s~0_a)) / 2, all vectors through one shared head."""

    def __init__(self, cfg: ModelConfig, obj: MARTObjectiveConfig) -> None:
        super().__init__()
        assert cfg.mart is not None
        self.obj = obj
        self.model: MARTModel = build_model(cfg)  # type: ignore[assignment]
        self.head = projector(cfg.embedding_dim, obj.head_hidden, obj.projection_dim, bias=True)
        self.parts = cfg.mart.parts
        lengths = [lv.clip for lv in cfg.mart_levels()]
        self.lambdas = [obj.pw_weight * lengths[i + 1] / lengths[i] for i in range(len(lengths) - 1)]

    def forward(self, views: torch.Tensor) -> dict[str, torch.Tensor]:
        b = views.shape[0]
        tilde = self.model.encode_levels(torch.cat([views[:, 0], views[:, 1]]))  # one encoder call, 2B rows
        hat = self.model.pwt(tilde) if self.model.pwt is not None else tilde
        z_hat = [distributed.gather(self.head(level)) for level in hat]
        z_tilde0 = distributed.gather(self.head(tilde[0][:, 0]))
        world = z_tilde0.shape[0] // (2 * b)  # gathered rows: [a_rank0, b_rank0, a_rank1, b_rank1, ...]
        a_rows = torch.cat([torch.arange(r * 2 * b, r * 2 * b + b) for r in range(world)]).to(views.device)
        b_rows = a_rows + b
        o = self.obj
        sep = o.positives == "separate"
        ab = mart_loss([z[a_rows] for z in z_hat], z_tilde0[b_rows], o.tau, self.parts, self.lambdas, o.hierarchical, sep)
        ba = mart_loss([z[b_rows] for z in z_hat], z_tilde0[a_rows], o.tau, self.parts, self.lambdas, o.hierarchical, sep)
        return {"loss": (ab + ba) / 2}


def build_objective(cfg: ModelConfig, objective: dict) -> nn.Module:
    """The training objective of ``cfg.method`` with options ``objective`` (a config dict)."""
    if cfg.method == "pemr":
        return PEMRObjective(cfg, PEMRObjectiveConfig(**objective))
    return MARTObjective(cfg, MARTObjectiveConfig(**objective))


def objective_defaults(method: str) -> dict:
    return asdict(PEMRObjectiveConfig() if method == "pemr" else MARTObjectiveConfig())
