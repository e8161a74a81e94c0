"""The training loop: seeding, data, augmentation, optimiser, logs, checkpoints, resume, export.

Run folder layout::

    RUN_DIR/run.json                       the TrainConfig
    RUN_DIR/log.csv                        step, epoch, loss and its parts, lr, seconds
    RUN_DIR/checkpoints/step-00001000/     module.safetensors (all weights and buffers),
                                           optimizer.pt (Adam state, loaded with
                                           torch.load(weights_only=True)), state.json (counters)

A resumed run continues bit-for-bit: the sampler order and crop positions depend only on
(seed, epoch, index); the augmentation of step s and the global torch RNG (dropout, BERT
masking) are seeded from (seed, s, rank) at every step, so no RNG state has to be carried.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..hub import save_pretrained
from ..pipeline import default_threads, fewer_torch_threads
from . import distributed
from .augment import AugmentConfig, Augmenter
from .config import TrainConfig, init_weights
from .data import build_cache, cached_pieces, default_cache_dir, list_tracks, make_loader, version_speeds
from .objectives import build_objective

CHECKPOINTS = "checkpoints"
LOG_NAME = "log.csv"


@dataclass
class Progress:
    """Counters saved with a checkpoint: optimizer steps done, current epoch, batches done in it,
    training wall time in seconds."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    seconds: float = 0.0


@dataclass
class TrainResult:
    """What :func:`train` leaves: the trained objective (``.model`` is the inference part), the
    last step, the signal that stopped it (None when it ran to the end) and the last checkpoint."""

    objective: nn.Module
    step: int
    signal: int | None
    checkpoint: Path | None


# ----------------------------------------------------------------------------- checkpoints


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("step-*") if (p / "state.json").is_file())


def save_checkpoint(run_dir: Path, module: nn.Module, opt: torch.optim.Optimizer, progress: Progress,
                    keep: int) -> Path:
    """Write a checkpoint atomically (temporary folder, then rename); keep the newest ``keep``."""
    folder = run_dir / CHECKPOINTS
    final = folder / f"step-{progress.step:08d}"
    tmp = folder / f".tmp-step-{progress.step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(tmp / "module.safetensors"))
    torch.save(opt.state_dict(), tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps(progress.__dict__, indent=2) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, module: nn.Module, opt: torch.optim.Optimizer | None) -> Progress:
    """Restore weights (and, with ``opt``, the optimiser state) from a checkpoint folder."""
    module.load_state_dict(load_file(str(path / "module.safetensors")))
    if opt is not None:
        opt.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    return Progress(**json.loads((path / "state.json").read_text()))


# ----------------------------------------------------------------------------- logging


class CsvLog:
    """Append-only CSV of per-step values; on resume, rows after the checkpoint's step are dropped."""

    def __init__(self, path: Path, columns: list[str], keep_until_step: int) -> None:
        self.path = path
        rows: list[dict[str, str]] = []
        if path.exists() and keep_until_step > 0:
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                columns = list(reader.fieldnames or columns)
                rows = [r for r in reader if int(r["step"]) <= keep_until_step]
        self.columns = columns
        self.file = open(path, "w", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=columns, extrasaction="ignore")
        self.writer.writeheader()
        self.writer.writerows(rows)
        self.file.flush()

    def write(self, row: dict[str, float | int]) -> None:
        self.writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        self.file.flush()

    def close(self) -> None:
        self.file.close()


# ----------------------------------------------------------------------------- signals


@contextmanager
def stop_signals() -> Iterator[list[int]]:
    """While active, SIGINT/SIGTERM append their number to the yielded list instead of killing
    the process, so the loop can checkpoint and stop; a second signal interrupts at once."""
    received: list[int] = []

    def handler(signum: int, frame: object) -> None:
        if received:
            raise KeyboardInterrupt
        received.append(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# ----------------------------------------------------------------------------- training


def step_seed(seed: int, step: int, rank: int, stream: int) -> int:
    """Seed of random stream ``stream`` (0: augmentation, 1: global torch RNG) of optimizer step
    ``step`` (0-based) on ``rank``."""
    return int(np.random.SeedSequence([seed, step, rank, stream]).generate_state(1, np.uint64)[0] >> 1)


def train(cfg: TrainConfig, resume: bool = False) -> TrainResult:
    """Run (or, with ``resume``, continue from the newest checkpoint in ``cfg.out``) a training run.

    Under torchrun every process calls this; it joins the process group (gloo on CPU, NCCL
    on GPU), trains with DDP and leaves it again.
    """
    info = distributed.from_env()
    device = distributed.pick_device(cfg.device, info)
    in_workers = augment_place(cfg.augment_in, cfg.workers) == "workers"
    learning_rate(cfg, 0)  # refuses a decay without an end before any work
    threads = None  # torch's own setting, unless augmenting workers need cores of their own
    if in_workers and info.world == 1 and "OMP_NUM_THREADS" not in os.environ:
        threads = default_threads(device, cfg.workers)
    started = not torch.distributed.is_initialized()
    distributed.init(info, device)
    try:
        with fewer_torch_threads(threads):
            return _train(cfg, resume, info, device, in_workers)
    finally:
        if started:
            distributed.shutdown()


def _train(cfg: TrainConfig, resume: bool, info: distributed.DistInfo, device: torch.device,
           in_workers: bool) -> TrainResult:
    run_dir = Path(cfg.out)
    model_cfg = cfg.model_config()
    checkpoints = list_checkpoints(run_dir)
    if resume and not checkpoints:
        raise FileNotFoundError(f"{run_dir}: no checkpoint to resume from")
    if checkpoints and not resume:
        raise FileExistsError(f"{run_dir} already holds checkpoints: pass --resume to continue it, or pick a new --out")
    distributed.barrier()  # every rank has looked before rank 0 writes
    if info.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir)

    augmenter = Augmenter(AugmentConfig.from_dict(cfg.augment), model_cfg.sample_rate)
    window = model_cfg.window_samples
    pieces = list_tracks(cfg.data, cfg.split)
    files = [f for versions in pieces for f in versions]
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    if info.local_rank == 0:
        build_cache(files, cache_dir, model_cfg.sample_rate, cfg.workers, progress=cfg.progress and info.main)
    distributed.barrier()
    cache = build_cache(files, cache_dir, model_cfg.sample_rate, cfg.workers, progress=False)
    batch_augment = AugmentBatch(augmenter, window, cfg.seed, info.rank)
    speeds = version_speeds(cfg.data, cfg.split) if cfg.align_versions else {}
    if cfg.align_versions and not speeds:
        raise ValueError(f"--align-versions: {cfg.data} gives no recording a speed (it needs a CSV manifest "
                         "with a 'tempo' column)")
    loader = make_loader(cached_pieces(pieces, cache), augmenter.in_samples(window), 2, cfg.batch_size, cfg.workers,
                         cfg.seed, info.rank, info.world, pin_memory=device.type == "cuda",
                         transform=batch_augment if in_workers else None,
                         speeds={cache[p]: s for p, s in speeds.items() if p in cache})

    torch.manual_seed(cfg.seed)
    objective = build_objective(model_cfg, cfg.objective).to(device)
    opt = torch.optim.Adam(objective.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    progress = Progress()
    last_checkpoint = checkpoints[-1] if resume else None
    if last_checkpoint is not None:
        progress = load_checkpoint(last_checkpoint, objective, opt)
    elif cfg.init_from is not None:
        _init_model(objective.model, cfg.init_from)
    net: nn.Module = objective
    if info.enabled:
        net = DistributedDataParallel(objective, device_ids=[device.index] if device.type == "cuda" else None)

    per_epoch = loader.steps_per_epoch
    total = min(cfg.steps if cfg.steps is not None else math.inf, cfg.epochs * per_epoch)
    log = None
    bar = None
    if info.main:
        bar = tqdm(total=int(total), initial=progress.step, desc=f"train {model_cfg.method}", unit="step",
                   disable=not cfg.progress, dynamic_ncols=True)
    running: float | None = None
    stopped: int | None = None
    objective.train()
    last = time.perf_counter()
    try:
        with stop_signals() as received:
            batches: Iterator[torch.Tensor] | None = None
            while progress.step < total and stopped is None:
                if progress.batch_in_epoch >= per_epoch:
                    progress.epoch += 1
                    progress.batch_in_epoch = 0
                if batches is None:
                    batches = loader.stream(progress.epoch, progress.batch_in_epoch, progress.step)
                batch = next(batches).to(device, non_blocking=True)
                if not in_workers:
                    batch = batch_augment(batch, progress.step)
                torch.manual_seed(step_seed(cfg.seed, progress.step, info.rank, 1))
                for group in opt.param_groups:
                    group["lr"] = learning_rate(cfg, progress.step)
                values = _step(net, opt, batch)
                progress.step += 1
                progress.batch_in_epoch += 1
                now = time.perf_counter()
                progress.seconds += now - last  # wall time, data loading and checkpoints included
                last = now
                value = values["loss"]
                running = value if running is None else 0.95 * running + 0.05 * value
                if info.main:
                    if log is None:
                        columns = ["step", "epoch", *values, "lr", "seconds"]
                        log = CsvLog(run_dir / LOG_NAME, columns, progress.step - 1)
                    log.write({"step": progress.step, "epoch": progress.epoch, **values,
                               "lr": opt.param_groups[0]["lr"], "seconds": progress.seconds})
                    assert bar is not None
                    bar.update()
                    bar.set_postfix(loss=f"{running:.4f}", epoch=progress.epoch)
                if distributed.any_true(bool(received), device):
                    stopped = received[0] if received else signal.SIGTERM
                done = progress.step >= total
                if stopped is not None or done or progress.step % cfg.checkpoint_every == 0:
                    last_checkpoint = _checkpoint(run_dir, objective, opt, progress, cfg.keep_checkpoints, info)
    finally:
        if bar is not None:
            bar.close()
        if log is not None:
            log.close()
    distributed.broadcast_buffers(objective)
    return TrainResult(objective, progress.step, stopped, last_checkpoint)


def _init_model(model: nn.Module, init_from: dict[str, str]) -> None:
    """Load the weights of ``init_from["model"]`` into the run's inference model, after
    checking they are still the ones the run was configured with."""
    _, state, record = init_weights(init_from["model"])
    if record["sha256"] != init_from["sha256"]:
        raise ValueError(f"--init-from {init_from['model']}: its weights changed since the run was configured "
                         f"(sha256 {record['sha256'][:12]}..., run.json has {init_from['sha256'][:12]}...)")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:  # missing/unexpected keys or shape mismatches
        detail = " ".join(str(e).split(":", 1)[-1].strip().splitlines()[:3])[:300]
        raise ValueError(f"--init-from {init_from['model']}: its weights do not fit the run's model "
                         f"(a --config override changed the architecture?): {detail}") from None


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based): ``cfg.lr``, and from step
    ``cfg.lr_decay_from`` on a half cosine from ``cfg.lr`` down to 0 at step ``cfg.steps``."""
    start = cfg.lr_decay_from
    if start is None:
        return cfg.lr
    if cfg.steps is None or start >= cfg.steps:
        raise ValueError(f"lr_decay_from ({start}) needs --steps greater than it (steps: {cfg.steps})")
    if step < start:
        return cfg.lr
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(step - start, cfg.steps - start) / (cfg.steps - start)))


def augment_place(setting: str, workers: int) -> str:
    """Where a run augments its batches, checked: "device" (in the training process, on its
    device) or "workers" (in the DataLoader worker processes, on the CPU, while the training
    process runs the previous step)."""
    if setting not in ("workers", "device"):
        raise ValueError(f"augment_in must be workers or device, not {setting!r}")
    if setting == "workers" and workers == 0:
        raise ValueError("augment_in 'workers' needs --workers 1 or more")
    return setting


@dataclass
class AugmentBatch:
    """Crops (B, views, in_samples) of optimizer step ``step`` -> augmented views (B, views,
    window samples), seeded from (seed, step, rank): the same batch wherever it runs."""

    augmenter: Augmenter
    window: int
    seed: int
    rank: int

    def __call__(self, crops: torch.Tensor, step: int) -> torch.Tensor:
        b, views, n = crops.shape
        waves = self.augmenter(crops.reshape(b * views, n), self.window, step_seed(self.seed, step, self.rank, 0))
        return waves.view(b, views, self.window)


def _step(net: nn.Module, opt: torch.optim.Optimizer, batch: torch.Tensor) -> dict[str, float]:
    """One optimizer step on augmented views (B, views, window samples): loss, backward, Adam.
    Returns the loss and its parts as floats."""
    out = net(batch)
    loss = out["loss"]
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss is {loss.item()}; resume from the last checkpoint with a lower --lr")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return {"loss": loss.item(), **{k: float(v) for k, v in out.items() if k != "loss"}}


def _checkpoint(run_dir: Path, objective: nn.Module, opt: torch.optim.Optimizer, progress: Progress, keep: int,
                info: distributed.DistInfo) -> Path:
    """Rank 0 writes (with rank 0's BatchNorm statistics, which DDP gives every rank each step)."""
    distributed.broadcast_buffers(objective)
    path = run_dir / CHECKPOINTS / f"step-{progress.step:08d}"
    if info.main:
        path = save_checkpoint(run_dir, objective, opt, progress, keep)
    distributed.barrier()
    return path


# ----------------------------------------------------------------------------- export


def export(run_dir: str | Path, out: str | Path, checkpoint: str | Path | None = None) -> Path:
    """Write the inference part of a run's newest (or the given) checkpoint as ``config.json`` +
    ``model.safetensors`` that ``musicembed.load_model(out)`` loads."""
    cfg = TrainConfig.load(run_dir)
    if checkpoint is None:
        found = list_checkpoints(run_dir)
        if not found:
            raise FileNotFoundError(f"{run_dir}: no checkpoints to export")
        checkpoint = found[-1]
    model_cfg = cfg.model_config()
    objective = build_objective(model_cfg, cfg.objective)
    progress = load_checkpoint(Path(checkpoint), objective, None)
    model = objective.model
    start = f", starting from {cfg.init_from['model']}" if cfg.init_from else ""
    model.cfg.description = (
        f"{model_cfg.method.upper()} pre-trained with musicembed.train for {progress.step} steps "
        f"({progress.epoch + 1} epochs started) on {cfg.data}{start}"
    )
    return save_pretrained(model.eval(), out)
