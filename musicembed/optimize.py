"""Inference-only copies of a model's network, rearranged to run faster (never saved).

:func:`prepare` returns the module :class:`~musicembed.embedder.Model` runs its batches
through. The model's own ``net`` (its weights, its fingerprint, what ``save_pretrained`` and
export write) is never changed.

Default (faithful float32), every step measured on a 2-core AVX2 CPU with the bundled PEMR
model (``benchmarks/throughput.py``; the README's performance section has the figures):

- **BatchNorm folded into the preceding convolution**: ``conv -> BN`` becomes one convolution
  with rescaled weights and a shifted bias, one pass over each feature map fewer. Exact up to
  float32 rounding (largest difference of the embeddings ~1e-6; tested <= 1e-4 relative).
  The input BatchNorm (one channel, on the log-mel) stays a separate layer: folding it into
  the first convolution would change what the zero padding at the mel edges means.
- **channels_last** memory format for the convolutions (oneDNN's native layout on CPU and
  the tensor-core layout on CUDA): identical arithmetic, fewer layout conversions.

Fast mode (``load_model(..., fast=True)``, CLI ``--fast``), opt-in because its numbers are
not bit-for-bit those of float32 eager mode (tested: cosine >= 0.999 on real audio). It
*measures* rather than assumes: at the first batch of each shape it times the default
model and each candidate below on that batch, and keeps the fastest on this machine
(``Model.inference_mode`` names it; the timings are in ``Model._inference().net.timings``):

- **torch.compile with freezing** (``torch._inductor`` with ``freezing=True``: weights become
  constants, the convolutions are pre-packed for oneDNN, the log-mel and pooling ops are
  fused). The first batch of each new shape compiles (tens of seconds on a small CPU; later
  processes reuse inductor's on-disk cache). Needs a working C++ compiler on CPU; when
  compiling fails, fast mode drops that candidate with a warning and runs the default
  folded float32 model.
- **bfloat16 autocast** (eager and compiled) is a candidate only where the hardware
  computes bfloat16 natively: CPUs with AVX512-BF16 or AMX, and CUDA GPUs that support it.
  On other CPUs (AVX2 only, like the 2-core machine the figures come from) bfloat16
  convolutions are emulated and measured 10-15x *slower* than float32.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .models.fcn import FCN


@dataclass
class Prepared:
    """What :func:`prepare` built: the module to run, how (``autocast`` dtype or None), and a
    short human-readable ``description`` (e.g. ``"float32, BN folded, channels_last"``)."""

    net: nn.Module
    autocast: torch.dtype | None
    description: str
    compiled: bool = False


def fold_batchnorm(net: nn.Module) -> nn.Module:
    """A copy of ``net`` (in eval mode) whose FCN blocks have each BatchNorm folded into the
    convolution before it. Parts that are not :class:`~musicembed.models.fcn.FCN` share their
    weights with ``net``. The input is not modified."""
    # Only the FCN encoders are copied; every other weight (MART's part-whole transformer, the
    # frontend's buffers) is shared with ``net``, so the copy costs no second set of them.
    in_fcn = {id(t) for m in net.modules() if isinstance(m, FCN) for t in (*m.parameters(), *m.buffers())}
    memo = {id(t): t for t in (*net.parameters(), *net.buffers()) if id(t) not in in_fcn}
    net = copy.deepcopy(net, memo).eval()
    for m in net.modules():
        if isinstance(m, FCN):
            for block in m.blocks:
                if isinstance(block, nn.Sequential) and len(block) >= 2 and isinstance(block[0], nn.Conv2d) \
                        and isinstance(block[1], nn.BatchNorm2d) and block[1].track_running_stats:
                    block[0] = fuse_conv_bn_eval(block[0], block[1])
                    block[1] = nn.Identity()
    return net


def native_bf16(device: torch.device) -> bool:
    """True when ``device`` computes bfloat16 convolutions/matmuls natively (fast)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    cpu = getattr(torch._C, "_cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, c, lambda: False)()) for c in checks) if cpu is not None else False


# torch.compile (inductor, freezing) as a fast-mode candidate on CPU. Off: on the 2-core AVX2
# machine of the README's table the compiled models were slower end to end than the folded
# eager ones (PEMR 323x vs 590x realtime on a 10-min MP3, MART 31x vs 157x), although faster
# on the isolated first batch that the pick times: the pick cannot see the decode threads and
# thread settings of a real run. On CUDA it stays a candidate.
COMPILE_ON_CPU = False


def _has_conv(net: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in net.modules())


def prepare(net: nn.Module, device: torch.device, fast: bool = False) -> Prepared:
    """The inference module for ``net`` on ``device``: BatchNorm folded and channels_last
    (default, faithful float32); with ``fast`` also compiled with freezing and, where the
    hardware has native bfloat16, autocast to it. Falls back step by step, with a warning,
    when a fast step is unavailable."""
    out = fold_batchnorm(net).to(device)
    steps = ["float32", "BN folded"]
    if _has_conv(out) and device.type in ("cpu", "cuda"):
        out = out.to(memory_format=torch.channels_last)
        steps.append("channels_last")
    if not fast:
        return Prepared(out, None, ", ".join(steps))
    base = ", ".join(steps[1:])
    candidates = [(f"float32, {base}, not compiled", out, None)]
    if native_bf16(device):
        candidates.append((f"bfloat16 autocast, {base}, not compiled", out, torch.bfloat16))
    if device.type == "cpu" and not COMPILE_ON_CPU:
        if len(candidates) == 1:
            return Prepared(out, None, ", ".join(steps) + " (fast mode: nothing measured faster on this CPU)")
        prepared = Prepared(out, None, "")
        prepared.net = _Fastest(candidates, prepared, device)
        prepared.description = "fast: picked at the first batch among: " + "; ".join(c[0] for c in candidates)
        return prepared
    prepared = Prepared(out, None, "")
    try:
        compiled = torch.compile(out, dynamic=False, options={"freezing": True})
    except Exception as e:  # no torch.compile on this platform/version
        _warn_eager(e)
    else:
        candidates.append((f"float32, {base}, compiled (inductor, freezing)", compiled, None))
        if native_bf16(device):
            candidates.append((f"bfloat16 autocast, {base}, compiled (inductor, freezing)", compiled, torch.bfloat16))
    prepared.net = _Fastest(candidates, prepared, device)
    prepared.description = "fast: picked at the first batch among: " + "; ".join(c[0] for c in candidates)
    prepared.compiled = True  # keep batch shapes fixed (the last batch is padded): one pick, one graph per shape
    return prepared


def _warn_eager(e: BaseException) -> None:
    warnings.warn(f"fast mode: torch.compile failed here ({type(e).__name__}: {str(e).strip()[:300]}); "
                  "running the eager (folded float32) model instead", RuntimeWarning, stacklevel=4)


class _Fastest(nn.Module):
    """Fast mode's module: candidates (description, module, autocast dtype or None), the
    first being the default eager float32 model. At the first batch of each input shape,
    every candidate runs once (compiling, where it is a compiled one) and is then timed on
    that batch (best of 3); the fastest serves that shape from then on. A compiled candidate
    that fails to compile (no C++ compiler, an unsupported op, ...) is dropped with a warning."""

    def __init__(self, candidates: list, prepared: Prepared, device: torch.device) -> None:
        super().__init__()
        self.eager = candidates[0][1]
        self._candidates = candidates
        self._prepared = prepared
        self._device = device
        self._chosen: dict[tuple, int] = {}
        self.timings: dict[tuple, dict[str, float]] = {}  # shape -> description -> seconds per batch

    def _call(self, k: int, x: torch.Tensor):
        _, module, dtype = self._candidates[k]
        with torch.autocast(self._device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            return module(x)

    def _sync(self) -> None:
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)

    def _pick(self, x: torch.Tensor) -> int:
        import time

        times: dict[int, float] = {}
        failed = False
        for k, (desc, _, _) in enumerate(self._candidates):
            try:
                self._call(k, x)  # warm-up; compiles a compiled candidate for this shape
            except Exception as e:  # inductor/dynamo errors have no common public base class
                if k == 0:
                    raise
                if not failed:
                    _warn_eager(e)
                failed = True
                continue
            best = float("inf")
            for _ in range(3):
                self._sync()
                t0 = time.perf_counter()
                self._call(k, x)
                self._sync()
                best = min(best, time.perf_counter() - t0)
            times[k] = best
        self.timings[tuple(x.shape)] = {self._candidates[k][0]: t for k, t in times.items()}
        k = min(times, key=times.get)
        desc = self._candidates[k][0]
        if "not compiled" in desc:
            compiled_ran = any("compiled (" in self._candidates[j][0] for j in times)
            why = ("compiling failed" if failed else "the compiled model was not faster here" if compiled_ran
                   else "torch.compile unavailable")
            desc = desc.replace("not compiled", f"not compiled ({why})")
        self._prepared.description = desc
        return k

    def forward(self, x: torch.Tensor):
        key = tuple(x.shape)
        k = self._chosen.get(key)
        if k is None:
            k = self._chosen[key] = self._pick(x)
        return self._call(k, x)
