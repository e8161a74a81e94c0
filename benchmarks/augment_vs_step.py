"""Time the CLMR augmentation of one batch against one training step (forward, backward, Adam).

    python benchmarks/augment_vs_step.py [--method pemr mart] [--batch-size 16] [--repeats 3] [--config JSON]

Uses the project's default models and objectives (``--config``: the overrides of `musicembed
train --config`, e.g. ``'{"objective": {"mask": "none"}}'``) and the default augmentation chain on random
waveforms; prints the median seconds of each, their ratio, and the step's minor page faults
and kernel (system) CPU seconds. Augmentation must stay well below the step so that it never
bounds training throughput. Run it once more under another memory allocator to compare them
(``LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 python benchmarks/augment_vs_step.py``;
docs/training.md).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from collections.abc import Callable

import torch

from musicembed.config import ModelConfig
from musicembed.train.augment import AugmentConfig, Augmenter
from musicembed.train.config import resolve
from musicembed.train.objectives import build_objective


def median_seconds(fn: Callable[[], None], repeats: int) -> float:
    """Median wall seconds of ``repeats`` calls after one warm-up call."""
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench(method: str, batch_size: int, repeats: int, config: list[str]) -> tuple[float, float, float, float, int, int]:
    """(augment seconds, step seconds, step minor page faults, step system CPU seconds, window
    samples, sample rate) for the default ``method``; faults and system time are means per step."""
    model, objective_opts, augment = resolve(method, config)
    torch.manual_seed(0)
    objective = build_objective(ModelConfig.from_dict(model), objective_opts).train()
    opt = torch.optim.Adam(objective.parameters(), lr=3e-4, weight_decay=1e-6)
    sr = objective.model.cfg.sample_rate
    window = objective.model.cfg.window_samples
    augmenter = Augmenter(AugmentConfig.from_dict(augment), sr)
    raw = torch.randn(batch_size * 2, augmenter.in_samples(window)) * 0.1
    views = augmenter(raw, window, seed=0).view(batch_size, 2, window)
    seeds = iter(range(1, 10**6))

    def augment_batch() -> None:
        augmenter(raw, window, seed=next(seeds))

    def step() -> None:
        loss = objective(views)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t_aug = median_seconds(augment_batch, repeats)
    before = resource.getrusage(resource.RUSAGE_SELF)
    t_step = median_seconds(step, repeats)
    after = resource.getrusage(resource.RUSAGE_SELF)
    steps = repeats + 1  # median_seconds warms up once
    faults = (after.ru_minflt - before.ru_minflt) / steps
    return t_aug, t_step, faults, (after.ru_stime - before.ru_stime) / steps, window, sr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", nargs="+", default=["pemr", "mart"], choices=["pemr", "mart"])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--config", action="append", default=[], help="musicembed train --config override")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size} tracks x 2 views")
    for method in args.method:
        t_aug, t_step, faults, sys_s, window, sr = bench(method, args.batch_size, args.repeats, args.config)
        print(f"{method}: window {window} samples ({window / sr:.2f} s at {sr} Hz); "
              f"augment {t_aug:.3f} s/batch, model step {t_step:.3f} s/batch, ratio {t_aug / t_step:.2f}; "
              f"step: {faults:.0f} minor page faults, {sys_s:.3f} s system CPU")


if __name__ == "__main__":
    main()
