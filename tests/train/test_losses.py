"""Losses and masks against direct, loop-based computations of the papers' formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from musicembed.train.losses import barlow_twins, mart_loss, negative_diagonal
from musicembed.train.masks import MaskGenerator, lowest_frames
from musicembed.train.objectives import build_objective

from audio_fixtures import tiny_mart_config


def _standardize(z: np.ndarray) -> np.ndarray:
    return (z - z.mean(0)) / np.sqrt(z.var(0) + 1e-5)  # biased variance, as BatchNorm1d


def test_barlow_twins_matches_direct_computation() -> None:
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    a, b = _standardize(z1.double().numpy()), _standardize(z2.double().numpy())
    lam = 0.3
    expected_pos, expected_neg = 0.0, 0.0
    for i in range(4):
        for j in range(4):
            u = sum(a[n, i] * b[n, j] for n in range(6)) / 6
            expected_pos += (1 - u) ** 2 if i == j else lam * u**2
            expected_neg += lam * u**2 if i == j else 0.0
    assert math.isclose(barlow_twins(z1, z2, lam).item(), expected_pos, rel_tol=1e-5)
    assert math.isclose(negative_diagonal(z1, z2, lam).item(), expected_neg, rel_tol=1e-5)


def test_barlow_twins_of_identical_views_has_unit_diagonal() -> None:
    z = torch.randn(32, 3, generator=torch.Generator().manual_seed(1))
    assert barlow_twins(z, z, lam=0.0).item() < 1e-6


def _cos(u: np.ndarray, v: np.ndarray) -> float:
    return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))


def _mart_reference(hat: list[np.ndarray], tilde0: np.ndarray, tau: float, parts: int, lambdas: list[float],
                    hierarchical: bool, separate: bool = False) -> float:
    """DESIGN.md's L_hc, one example and one term at a time; ``separate``: one log per positive,
    weighted by its lambda (1 for the cross-view positive)."""
    batch = tilde0.shape[0]
    total = 0.0
    for b in range(batch):
        pw_terms = []  # (lambda, lambda * exp(sim / tau))
        if hierarchical:
            for i in range(len(hat) - 1):
                for whole in range(hat[i].shape[1]):
                    for m in range(parts):
                        part = hat[i + 1][b, whole * parts + m]
                        pw_terms.append((lambdas[i], lambdas[i] * math.exp(_cos(hat[i][b, whole], part) / tau)))
        pw = sum(t for _, t in pw_terms)
        s0 = hat[0][b, 0]
        neg = sum(math.exp(_cos(s0, tilde0[u]) / tau) for u in range(batch))
        neg += sum(math.exp(_cos(s0, hat[0][u, 0]) / tau) for u in range(batch) if u != b)
        pos = math.exp(_cos(s0, tilde0[b]) / tau)
        if separate:
            terms = [(1.0, pos), *pw_terms]
            total += -sum(w * math.log(t / (pw + neg)) for w, t in terms) / sum(w for w, _ in terms)
        else:
            total += -math.log((pw + pos) / (pw + neg))
    return total / batch


def test_mart_loss_matches_loop_over_formula() -> None:
    g = torch.Generator().manual_seed(2)
    batch, parts, levels, dim, tau = 3, 2, 3, 5, 0.5
    hat = [torch.randn(batch, parts**n, dim, generator=g, dtype=torch.float64) for n in range(levels)]
    tilde0 = torch.randn(batch, dim, generator=g, dtype=torch.float64)
    lambdas = [0.5, 0.5]
    for hierarchical, separate in ((True, False), (False, False), (True, True)):
        got = mart_loss(hat, tilde0, tau, parts, lambdas, hierarchical, separate).item()
        ref = _mart_reference([h.numpy() for h in hat], tilde0.numpy(), tau, parts, lambdas, hierarchical, separate)
        assert math.isclose(got, ref, rel_tol=1e-9), (hierarchical, separate, got, ref)


def test_separate_positives_keep_the_cross_view_gradient() -> None:
    """Once parts and wholes agree, the paper's single log leaves almost no gradient to the
    cross-view positive; one log per positive keeps it."""
    g = torch.Generator().manual_seed(4)
    whole = torch.randn(8, 1, 16, generator=g, dtype=torch.float64)
    hat = [whole.expand(8, 2**n, 16).clone() for n in range(4)]  # every part equals its whole
    tilde0 = torch.randn(8, 16, generator=g, dtype=torch.float64, requires_grad=True)
    grads = []
    for separate in (False, True):
        tilde0.grad = None
        mart_loss(hat, tilde0, 0.1, 2, [0.5] * 3, separate=separate).backward()
        grads.append(tilde0.grad.norm().item())
    assert grads[1] > 100 * grads[0]


def test_mart_loss_is_stable_at_low_temperature() -> None:
    hat = [torch.randn(4, 2**n, 8) for n in range(3)]
    loss = mart_loss(hat, torch.randn(4, 8), tau=0.01, parts=2, lambdas=[0.5, 0.5])
    assert torch.isfinite(loss)


def test_lowest_frames_hand_case() -> None:
    scores = torch.tensor([[0.3, 0.1, 0.5, 0.2, 0.9], [0.9, 0.8, 0.7, 0.6, 0.5]])
    low = lowest_frames(scores, ratio=0.4)  # int(0.4 * 5) = 2 frames per row
    assert low.tolist() == [[False, True, False, True, False], [False, False, False, True, True]]
    assert not lowest_frames(scores, ratio=0.1).any()  # int(0.5) = 0


def test_positive_and_negative_masks_keep_the_expected_frames() -> None:
    torch.manual_seed(0)
    gen = MaskGenerator(n_mels=6, layers=2, heads=3, ff_dim=16).eval()
    mel = torch.randn(2, 6, 20) * 10 - 40
    frames, mean, std = gen.standardize(mel)
    low = lowest_frames(gen.scores(frames, frames), ratio=0.1)  # 2 of 20 frames
    pos = gen.replace_frames(mel, low, mean, std)
    neg = gen.replace_frames(mel, ~low, mean, std)
    kept_pos = (pos == mel).all(dim=1)
    kept_neg = (neg == mel).all(dim=1)
    assert kept_pos.sum(dim=1).tolist() == [18, 18]
    assert kept_neg.sum(dim=1).tolist() == [2, 2]
    assert torch.equal(kept_pos, ~kept_neg)
    mask_db = (mean + std * gen.mask.view(1, -1, 1)).squeeze(-1)  # (2, n_mels)
    assert torch.allclose(pos.transpose(1, 2)[low], mask_db.repeat_interleave(2, dim=0))


def test_scores_follow_equation_4() -> None:
    torch.manual_seed(1)
    gen = MaskGenerator(n_mels=8, layers=2, heads=3, head_dim=4, ff_dim=16).eval()
    f1, f2 = torch.randn(2, 7, 8), torch.randn(2, 7, 8)
    s = gen.scores(f1, f2)
    assert s.shape == (2, 7)
    assert torch.allclose(s.sum(dim=1), torch.full((2,), 3.0))  # 1/2 * sum_h (1 + 1)
    with torch.no_grad():
        x1, x2 = gen._tokens(f1), gen._tokens(f2)
        x1, x2 = gen.layers[0](x1), gen.layers[0](x2)
        attn = gen.layers[1].attn
        k = attn.k(x2[:, 1:]).view(2, 7, 3, 4)
        q1, q2 = attn.q(x1[:, 0]).view(2, 3, 4), attn.q(x2[:, 0]).view(2, 3, 4)
        expected = torch.zeros(2, 7)
        for h in range(3):
            expected += 0.5 * torch.softmax(torch.einsum("bd,bld->bl", q1[:, h], k[:, :, h]) / 2.0, dim=1)
            expected += 0.5 * torch.softmax(torch.einsum("bd,bld->bl", q2[:, h], k[:, :, h]) / 2.0, dim=1)
    assert torch.allclose(s, expected, atol=1e-6)


def test_prediction_loss_trains_the_transformer() -> None:
    torch.manual_seed(2)
    gen = MaskGenerator(n_mels=6, layers=1, heads=3, ff_dim=16)
    frames = torch.randn(3, 30, 6)
    assert gen.prediction_loss(frames, prob=0.0).item() == 0.0
    loss = gen.prediction_loss(frames, prob=0.5)
    loss.backward()
    assert loss.item() > 0
    assert gen.cls.grad is not None and gen.layers[0].attn.q.weight.grad.abs().sum() > 0


def test_mart_pw_weight_scales_the_part_whole_lambdas() -> None:
    cfg = tiny_mart_config()
    paper = build_objective(cfg, {})
    scaled = build_objective(cfg, {"pw_weight": 0.01})
    assert scaled.lambdas == pytest.approx([0.01 * x for x in paper.lambdas]) and paper.lambdas[0] == 0.5
    with pytest.raises(ValueError, match="pw_weight"):
        build_objective(cfg, {"pw_weight": 0.0})
    # A smaller part-whole weight leaves more of the loss to the contrastive term.
    g = torch.Generator().manual_seed(3)
    hat = [torch.randn(4, 2**n, 8, generator=g, dtype=torch.float64) for n in range(3)]
    tilde0 = torch.randn(4, 8, generator=g, dtype=torch.float64)
    losses = [mart_loss(hat, tilde0, 0.1, 2, [w * 0.5] * 2).item() for w in (1.0, 0.01)]
    plain = mart_loss(hat, tilde0, 0.1, 2, [0.5] * 2, hierarchical=False).item()
    assert losses[0] < losses[1] < plain
