"""Fine-tuning with a fraction of the training labels: encoder + linear head trained end to end.

The encoder comes from a factory (a fresh ``nn.Module`` per call mapping waveforms
(B, T) to vectors (B, D)), so any encoder can be fine-tuned: :func:`model_encoder_factory`
builds one from a musicembed model. The labelled subset is drawn by
:func:`label_subset` (stratified, seeded). Training uses random crops; evaluation
averages the head's logits over all non-overlapping windows of each clip. Early stopping
keeps the epoch with the lowest validation loss.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .. import hub
from ..audio import AudioInput, load_audio
from ..model import load_model
from ..models import build_model, window_vectors
from ..windows import cut
from .metrics import classification_metrics, tagging_metrics
from .probes import TASKS, Task
from .systems import RANDOM_PREFIX


def label_subset(labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Sorted indices of a seeded, stratified subset holding ``fraction`` of the examples.

    Single-label (N,): ``max(1, round(fraction * n_c))`` examples of every class c.
    Multi-label (N, C): ``max(1, round(fraction * N))`` examples, chosen so that every tag
    with a positive example gets at least one (rarest tags first), the rest at random.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    y = np.asarray(labels)
    rng = np.random.default_rng(seed)
    if y.ndim == 1:
        chosen = [rng.choice(np.flatnonzero(y == c), size=max(1, round(fraction * int(np.sum(y == c)))),
                             replace=False) for c in np.unique(y)]
        return np.sort(np.concatenate(chosen))
    target = max(1, round(fraction * len(y)))
    picked: set[int] = set()
    pos = y.astype(bool)
    for c in np.argsort(pos.sum(axis=0), kind="stable"):
        members = np.flatnonzero(pos[:, c])
        if members.size and not picked.intersection(members.tolist()):
            picked.add(int(rng.choice(members)))
    rest = np.setdiff1d(np.arange(len(y)), np.fromiter(picked, dtype=int))
    extra = max(0, target - len(picked))
    picked.update(rng.choice(rest, size=min(extra, rest.size), replace=False).tolist())
    return np.sort(np.fromiter(picked, dtype=int))


class WaveformDataset(Dataset):
    """(audio, label) items -> (crop (crop_samples,), label) at ``sample_rate``.

    Audio is a path or a 1-D array already at ``sample_rate``. ``windows=False`` (training)
    gives one random crop per access (seeded per item and epoch via :meth:`set_epoch`);
    ``windows=True`` gives all non-overlapping windows (W, crop_samples), the last one
    end-aligned, short clips zero-padded. ``preload=True`` decodes everything once.
    """

    def __init__(self, items: Sequence[tuple[AudioInput, Any]], sample_rate: int, crop_samples: int,
                 windows: bool = False, seed: int = 0, preload: bool = False) -> None:
        self.items = list(items)
        self.sample_rate = sample_rate
        self.crop = crop_samples
        self.windows = windows
        self.seed = seed
        self.epoch = 0
        self._audio = [self._decode(a) for a, _ in self.items] if preload else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _decode(self, audio: AudioInput) -> np.ndarray:
        if isinstance(audio, np.ndarray):
            return audio.astype(np.float32, copy=False)
        return load_audio(audio, self.sample_rate)

    def labels(self) -> np.ndarray:
        return np.stack([np.asarray(lab) for _, lab in self.items])

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        wave = self._audio[i] if self._audio is not None else self._decode(self.items[i][0])
        if wave.size < self.crop:
            wave = np.pad(wave, (0, self.crop - wave.size))
        label = torch.as_tensor(np.asarray(self.items[i][1]))
        if self.windows:
            return torch.from_numpy(np.stack([w for _, w in cut(wave, self.crop)])), label
        rng = np.random.default_rng((self.seed, self.epoch, i))
        s = int(rng.integers(0, wave.size - self.crop + 1))
        return torch.from_numpy(np.ascontiguousarray(wave[s : s + self.crop])), label


class Classifier(nn.Module):
    """Encoder followed by a linear head: waveforms (B, T) -> logits (B, C)."""

    def __init__(self, encoder: nn.Module, dim: int, n_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(dim, n_classes)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(wave))


class ClipEncoder(nn.Module):
    """A musicembed inference network as a (B, T) -> (B, D) encoder (MART: the level-0 vector)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        out = self.net(wave)
        return window_vectors(out)


def model_encoder_factory(ref: str) -> tuple[Callable[[], nn.Module], int, int]:
    """(factory, sample_rate, window_samples) for fine-tuning the musicembed model ``ref``;
    ``random:<ref>`` gives its architecture with fresh weights (training from scratch)."""
    scratch = ref.startswith(RANDOM_PREFIX)
    base = ref[len(RANDOM_PREFIX):] if scratch else ref
    cfg = hub.resolve(base).config

    def make() -> nn.Module:
        return ClipEncoder(build_model(cfg) if scratch else load_model(base, device="cpu").net)

    return make, cfg.sample_rate, cfg.window_samples


@dataclass
class FinetuneConfig:
    """Optimisation settings for :func:`finetune`."""

    lr: float = 1e-4  # encoder
    head_lr: float = 1e-3
    weight_decay: float = 1e-6
    batch_size: int = 16
    max_epochs: int = 100
    patience: int = 5
    seed: int = 0
    device: str = "cpu"
    num_workers: int = 0


def _loss_fn(task: str) -> nn.Module:
    return nn.BCEWithLogitsLoss() if task == "multilabel" else nn.CrossEntropyLoss()


def _target(label: torch.Tensor, task: str) -> torch.Tensor:
    return label.float() if task == "multilabel" else label.long()


@torch.no_grad()
def predict(model: nn.Module, dataset: WaveformDataset, task: Task, device: str = "cpu",
            batch_size: int = 16) -> np.ndarray:
    """Clip-level probabilities: logits averaged over each clip's windows, then sigmoid/softmax."""
    if not dataset.windows:
        raise ValueError("predict needs a dataset with windows=True")
    model.eval()
    out = []
    for i in range(len(dataset)):
        wins, _ = dataset[i]
        logits = torch.cat([model(w.to(device)) for w in wins.split(batch_size)]).mean(dim=0)
        out.append(torch.sigmoid(logits) if task == "multilabel" else torch.softmax(logits, dim=0))
    return torch.stack(out).cpu().numpy()


def _metrics(probs: np.ndarray, labels: np.ndarray, task: str) -> dict[str, Any]:
    return tagging_metrics(labels, probs) if task == "multilabel" else classification_metrics(labels, probs)


def _val_loss(model: nn.Module, dataset: WaveformDataset, task: str, device: str) -> float:
    probs = torch.from_numpy(predict(model, dataset, task, device)).clamp(1e-7, 1 - 1e-7)
    y = torch.from_numpy(dataset.labels())
    if task == "multilabel":
        return float(nn.functional.binary_cross_entropy(probs, y.float()))
    return float(nn.functional.nll_loss(probs.log(), y.long()))


def finetune(
    encoder_factory: Callable[[], nn.Module],
    train: WaveformDataset,
    val: WaveformDataset,
    task: Task,
    n_classes: int,
    fraction: float = 1.0,
    config: FinetuneConfig | None = None,
    test: WaveformDataset | None = None,
) -> dict[str, Any]:
    """Fine-tune a fresh encoder + linear head on ``fraction`` of ``train``'s labels.

    ``train`` gives random crops (``windows=False``); ``val``/``test`` give windows
    (``windows=True``). Returns the metrics on val (and test), the subset size, the best
    epoch and the trained model (key ``model``).
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    cfg = config or FinetuneConfig()
    subset = label_subset(train.labels(), fraction, seed=cfg.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        encoder = encoder_factory()
        with torch.no_grad():
            encoder.eval()
            dim = encoder(torch.zeros(1, train.crop)).shape[-1]
        model = Classifier(encoder, dim, n_classes).to(cfg.device)
        opt = torch.optim.Adam([
            {"params": model.encoder.parameters(), "lr": cfg.lr},
            {"params": model.head.parameters(), "lr": cfg.head_lr},
        ], weight_decay=cfg.weight_decay)
        loader = DataLoader(torch.utils.data.Subset(train, subset.tolist()), batch_size=cfg.batch_size,
                            shuffle=True, num_workers=cfg.num_workers,
                            generator=torch.Generator().manual_seed(cfg.seed), drop_last=len(subset) > cfg.batch_size)
        loss_fn = _loss_fn(task)
        best, best_state, best_epoch, bad = float("inf"), copy.deepcopy(model.state_dict()), 0, 0
        for epoch in range(1, cfg.max_epochs + 1):
            train.set_epoch(epoch)
            model.train()
            for wave, label in loader:
                opt.zero_grad()
                loss_fn(model(wave.to(cfg.device)), _target(label, task).to(cfg.device)).backward()
                opt.step()
            loss = _val_loss(model, val, task, cfg.device)
            if loss < best - 1e-6:
                best, best_state, best_epoch, bad = loss, copy.deepcopy(model.state_dict()), epoch, 0
            else:
                bad += 1
                if bad >= cfg.patience:
                    break
    model.load_state_dict(best_state)
    out: dict[str, Any] = {
        "val": _metrics(predict(model, val, task, cfg.device), val.labels(), task),
        "fraction": fraction,
        "n_labelled": int(subset.size),
        "best_epoch": best_epoch,
        "config": asdict(cfg),
        "model": model,
    }
    if test is not None:
        out["test"] = _metrics(predict(model, test, task, cfg.device), test.labels(), task)
    return out
