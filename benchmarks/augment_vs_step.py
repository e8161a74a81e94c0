"""Time the CLMR augmentation of one batch against one training step (forward, backward, Adam).

    python benchmarks/augment_vs_step.py [--method pemr mart] [--batch-size 16] [--repeats 3]

Uses the paper-size models (``--config paper``) and the default augmentation chain on random
waveforms; prints the median seconds of each and their ratio. Augmentation must stay well
below the step so that it never bounds training throughput.
"""

from __future__ import annotations

import argparse
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


def bench(method: str, batch_size: int, repeats: int) -> tuple[float, float, int, int]:
    """(augment seconds, step seconds, window samples, sample rate) for the paper-size ``method``."""
    model, objective_opts, augment = resolve(method, [])
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

    return median_seconds(augment_batch, repeats), median_seconds(step, repeats), window, sr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", nargs="+", default=["pemr", "mart"], choices=["pemr", "mart"])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size} tracks x 2 views")
    for method in args.method:
        t_aug, t_step, window, sr = bench(method, args.batch_size, args.repeats)
        print(f"{method}: window {window} samples ({window / sr:.2f} s at {sr} Hz); "
              f"augment {t_aug:.3f} s/batch, model step {t_step:.3f} s/batch, ratio {t_aug / t_step:.2f}")


if __name__ == "__main__":
    main()
