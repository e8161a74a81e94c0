"""Probes on frozen embeddings: a linear layer or an MLP with one hidden layer.

Features are standardised with the mean and standard deviation of the training split
only. Training uses Adam on mini-batches with a seeded shuffle and keeps the weights of
the epoch with the lowest validation loss (early stopping with ``patience``). The loss is
binary cross-entropy for multi-label tasks (``y`` is an (N, C) 0/1 matrix) and
cross-entropy for single-label tasks (``y`` is an (N,) vector of class indices).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from .metrics import classification_metrics, tagging_metrics

Task = Literal["multilabel", "multiclass"]
TASKS = ("multilabel", "multiclass")
PROBES = ("linear", "mlp")


@dataclass
class ProbeConfig:
    """Probe architecture and optimisation settings (defaults suit 10^2..10^5 examples)."""

    kind: str = "linear"  # "linear" or "mlp"
    hidden: int = 512  # MLP hidden units
    dropout: float = 0.0  # MLP dropout after the hidden layer
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 256
    max_epochs: int = 200
    patience: int = 10
    seed: int = 0
    device: str = "cpu"


class Probe:
    """A trained probe: standardisation + network. ``scores(x)`` gives class probabilities."""

    def __init__(self, net: nn.Module, mean: np.ndarray, std: np.ndarray, task: Task, epochs: int,
                 best_val_loss: float, config: ProbeConfig) -> None:
        self.net = net
        self.mean = mean
        self.std = std
        self.task = task
        self.epochs = epochs
        self.best_val_loss = best_val_loss
        self.config = config

    @torch.no_grad()
    def scores(self, x: np.ndarray) -> np.ndarray:
        """(N, D) embeddings -> (N, C) probabilities (sigmoid for multi-label, softmax otherwise)."""
        self.net.eval()
        z = torch.from_numpy(((np.asarray(x, np.float32) - self.mean) / self.std).astype(np.float32))
        logits = self.net(z.to(self.config.device)).cpu()
        probs = torch.sigmoid(logits) if self.task == "multilabel" else torch.softmax(logits, dim=1)
        return probs.numpy()

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        """Tagging metrics (multi-label) or accuracy + macro ROC-AUC (single-label)."""
        s = self.scores(x)
        return tagging_metrics(y, s) if self.task == "multilabel" else classification_metrics(y, s)


def _check(x: np.ndarray, y: np.ndarray, task: str, n_classes: int | None, name: str) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y)
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if x.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"{name}: expected x (N, D) and y with N rows, got {x.shape} and {y.shape}")
    if task == "multilabel" and (y.ndim != 2 or (n_classes is not None and y.shape[1] != n_classes)):
        raise ValueError(f"{name}: multi-label y must be (N, C), got {y.shape}")
    if task == "multiclass" and y.ndim != 1:
        raise ValueError(f"{name}: single-label y must be (N,) class indices, got {y.shape}")
    return x, y


def _build(kind: str, dim: int, n_classes: int, cfg: ProbeConfig) -> nn.Module:
    if kind == "linear":
        return nn.Linear(dim, n_classes)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(dim, cfg.hidden), nn.ReLU(), nn.Dropout(cfg.dropout),
                             nn.Linear(cfg.hidden, n_classes))
    raise ValueError(f"probe kind must be one of {PROBES}, got {kind!r}")


def _targets(y: np.ndarray, task: str) -> torch.Tensor:
    return torch.from_numpy(y.astype(np.float32)) if task == "multilabel" else torch.from_numpy(y.astype(np.int64))


def fit_probe(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    task: Task,
    config: ProbeConfig | None = None,
    n_classes: int | None = None,
) -> Probe:
    """Train a probe on (x_train, y_train), early-stopped on the loss over (x_val, y_val).

    ``n_classes`` defaults to y's width (multi-label) or max label + 1 (single-label).
    Deterministic for a given ``config.seed`` on CPU.
    """
    cfg = config or ProbeConfig()
    x_train, y_train = _check(x_train, y_train, task, n_classes, "train")
    x_val, y_val = _check(x_val, y_val, task, n_classes, "val")
    if n_classes is None:
        n_classes = y_train.shape[1] if task == "multilabel" else int(max(y_train.max(), y_val.max())) + 1
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std = np.where(std > 1e-8, std, 1.0).astype(np.float32)
    dev = torch.device(cfg.device)
    xt = torch.from_numpy((x_train - mean) / std).to(dev)
    xv = torch.from_numpy((x_val - mean) / std).to(dev)
    yt, yv = _targets(y_train, task).to(dev), _targets(y_val, task).to(dev)
    loss_fn: nn.Module = nn.BCEWithLogitsLoss() if task == "multilabel" else nn.CrossEntropyLoss()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        net = _build(cfg.kind, x_train.shape[1], n_classes, cfg).to(dev)
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        gen = torch.Generator().manual_seed(cfg.seed)
        best, best_state, best_epoch, bad = float("inf"), copy.deepcopy(net.state_dict()), 0, 0
        for epoch in range(1, cfg.max_epochs + 1):
            net.train()
            for idx in torch.randperm(xt.shape[0], generator=gen).split(cfg.batch_size):
                idx = idx.to(dev)
                opt.zero_grad()
                loss_fn(net(xt[idx]), yt[idx]).backward()
                opt.step()
            net.eval()
            with torch.no_grad():
                val_loss = float(loss_fn(net(xv), yv))
            if val_loss < best - 1e-6:
                best, best_state, best_epoch, bad = val_loss, copy.deepcopy(net.state_dict()), epoch, 0
            else:
                bad += 1
                if bad >= cfg.patience:
                    break
    net.load_state_dict(best_state)
    return Probe(net.eval(), mean.astype(np.float32), std, task, best_epoch, best, cfg)


def probe_evaluation(
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    task: Task,
    config: ProbeConfig | None = None,
) -> dict[str, Any]:
    """Fit on ``splits['train']``, early-stop on ``splits['val']``, and report the metrics of
    every split other than train (e.g. ``val`` and ``test``), plus the probe settings."""
    missing = {"train", "val"} - set(splits)
    if missing:
        raise ValueError(f"probe_evaluation needs splits {sorted(missing)}")
    cfg = config or ProbeConfig()
    y_all = [np.asarray(y) for _, y in splits.values()]
    n_classes = y_all[0].shape[1] if task == "multilabel" else int(max(int(y.max()) for y in y_all)) + 1
    probe = fit_probe(*splits["train"], *splits["val"], task=task, config=cfg, n_classes=n_classes)
    out: dict[str, Any] = {name: probe.evaluate(x, y) for name, (x, y) in splits.items() if name != "train"}
    out["probe"] = asdict(cfg)
    out["best_epoch"] = probe.epochs
    out["n"] = {name: int(len(y)) for name, (_, y) in splits.items()}
    return out
