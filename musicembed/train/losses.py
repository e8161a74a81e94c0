"""Loss functions of PEMR and MART as pure tensor functions (no parameters, no state).

Shapes: B = batch, P = projection width. All losses return scalars averaged as stated.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

BN_EPS = 1e-5


def batch_standardize(z: torch.Tensor) -> torch.Tensor:
    """BatchNorm1d without affine parameters in training mode: z (B, P) -> (z - mean) / sqrt(var + eps),
    mean and biased variance over the batch."""
    return F.batch_norm(z, None, None, training=True, momentum=0.0, eps=BN_EPS)


def cross_correlation(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Barlow Twins cross-correlation (P, P) of batch-standardised z1, z2 (B, P)."""
    return batch_standardize(z1).T @ batch_standardize(z2) / z1.shape[0]


def barlow_twins(z1: torch.Tensor, z2: torch.Tensor, lam: float) -> torch.Tensor:
    """PEMR's L_pos (eq. 8): sum_i (1 - U_ii)^2 + lam * sum_{i != j} U_ij^2, U = cross_correlation(z1, z2)."""
    c = cross_correlation(z1, z2)
    on = torch.diagonal(c)
    off = c.square().sum() - on.square().sum()
    return (1 - on).square().sum() + lam * off


def negative_diagonal(z1: torch.Tensor, z_neg: torch.Tensor, lam: float) -> torch.Tensor:
    """PEMR's L_neg (eq. 9): lam * sum_i V_ii^2, V = cross_correlation(z1, z_neg)."""
    return lam * torch.diagonal(cross_correlation(z1, z_neg)).square().sum()


def part_whole_log_weights(levels: list[torch.Tensor], parts: int, lambdas: list[float], tau: float) -> torch.Tensor:
    """log(lambda_i * exp(sim(s^i_b, s^{i+1}_b) / tau)) for every whole/part pair, (B, sum_i M^{i+1}).

    ``levels[i]`` is (B, M^i, P); the parts of whole m of level i are rows m*M .. m*M+M-1 of
    level i+1. ``lambdas[i]`` = len(part) / len(whole) between levels i and i+1.
    """
    out = []
    for i in range(len(levels) - 1):
        whole = F.normalize(levels[i], dim=-1)  # (B, K, P)
        b, k, p = whole.shape
        part = F.normalize(levels[i + 1], dim=-1).view(b, k, parts, p)
        sim = (whole.unsqueeze(2) * part).sum(-1).reshape(b, k * parts)
        out.append(sim / tau + math.log(lambdas[i]))
    return torch.cat(out, dim=1)


def mart_loss(
    hat: list[torch.Tensor],
    tilde0: torch.Tensor,
    tau: float,
    parts: int,
    lambdas: list[float],
    hierarchical: bool = True,
    separate: bool = False,
) -> torch.Tensor:
    """MART's hierarchical contrastive loss (eqs. 3-6), mean over the batch.

    hat: per level the projected part-whole outputs s^ (B, M^n, P); tilde0: projected
    encoder outputs s~ of level 0 (B, P), row b the positive of hat[0][b].
    L_hc(b) = -log[(L_pw(b) + exp(sim(s^0_b, s~0_b)/tau)) / (L_pw(b) + L_neg(b))] with
    L_neg(b) = sum_u exp(sim(s^0_b, s~0_u)/tau) + sum_{u != b} exp(sim(s^0_b, s^0_u)/tau).
    ``hierarchical=False`` drops L_pw (the "w/o HCL" ablation). ``separate=True`` keeps the
    same denominator but gives every positive its own log term (SupCon's L_out):
    L(b) = -sum_p w_p log(w_p exp(s_p/tau) / D_b) / sum_p w_p over the cross-view positive
    (w = 1) and the part-whole pairs (w = lambda_i), so that the easy part-whole pairs cannot
    swamp the cross-view positive's gradient as they do inside the paper's single log.
    Computed in log space.
    """
    h0 = F.normalize(hat[0].squeeze(1), dim=-1)
    t0 = F.normalize(tilde0, dim=-1)
    b = h0.shape[0]
    to_tilde = h0 @ t0.T / tau  # (B, B), diagonal = positives
    to_hat = (h0 @ h0.T / tau).masked_fill(torch.eye(b, dtype=torch.bool, device=h0.device), float("-inf"))
    positive = torch.diagonal(to_tilde).unsqueeze(1)
    if hierarchical and len(hat) > 1:
        pw = part_whole_log_weights(hat, parts, lambdas, tau)
        numerator = torch.cat([pw, positive], dim=1)
        denominator = torch.cat([pw, to_tilde, to_hat], dim=1)
        if separate:  # weights in the numerator's column order: the part-whole pairs, then the positive
            w = torch.tensor([lam for i, lam in enumerate(lambdas) for _ in range(parts ** (i + 1))] + [1.0],
                             dtype=numerator.dtype, device=numerator.device)
            return ((torch.logsumexp(denominator, dim=1, keepdim=True) - numerator) @ (w / w.sum())).mean()
    else:
        numerator = positive
        denominator = torch.cat([to_tilde, to_hat], dim=1)
    return (torch.logsumexp(denominator, dim=1) - torch.logsumexp(numerator, dim=1)).mean()
