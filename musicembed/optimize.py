"""Inference-only copies of a model's network, rearranged to run faster (never saved).

:func:`prepare` returns the module :class:`~musicembed.model.Model` runs its batches
through. The model's own ``net`` (its weights, its fingerprint, what ``save_pretrained`` and
export write) is never changed.

Always (faithful float32):

- **BatchNorm folded into the preceding convolution**: ``conv -> BN`` becomes one convolution
  with rescaled weights and a shifted bias, one pass over each feature map fewer. Exact up to
  float32 rounding (tested <= 1e-4 relative). The input BatchNorm (one channel, on the
  log-mel) stays a separate layer: folding it into the first convolution would change what
  the zero padding at the mel edges means.
- **channels_last** memory format for the convolutions (oneDNN's native layout on CPU and
  the tensor-core layout on CUDA): identical arithmetic, fewer layout conversions.

Options (``load_model(..., compile=, bfloat16=)``, CLI ``--compile``, ``--bfloat16``), off by
default because their numbers are not bit for bit those of float32 eager mode (tested:
cosine >= 0.999 on real audio):

- ``compile``: **torch.compile with freezing** (weights become constants, convolutions are
  pre-packed, the log-mel and pooling ops fused). The first batch of each shape compiles
  (tens of seconds on a small CPU; later processes reuse inductor's on-disk cache); the last
  batch of a run is padded so that the shape stays fixed. Needs a C++ compiler on CPU; when
  compiling fails the model warns and runs the folded float32 network.
- ``bfloat16``: **bfloat16 autocast**. Fast only where the hardware computes bfloat16
  natively (:func:`native_bf16`: CUDA GPUs that support it, CPUs with AVX512-BF16 or AMX);
  elsewhere it is emulated and several times slower than float32.

``fast=True`` is an alias: ``compile`` on CUDA, ``bfloat16`` where it is native
(:func:`fast_options`); on a CPU without native bfloat16 it changes nothing, since compiled
models measured slower there end to end (``benchmarks/throughput.py --ablation``).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
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


def fast_options(device: torch.device) -> tuple[bool, bool]:
    """(compile, bfloat16) that ``fast=True`` means on ``device``: compile on CUDA, bfloat16
    where it is native."""
    return device.type == "cuda", native_bf16(device)


def _has_conv(net: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in net.modules())


def prepare(net: nn.Module, device: torch.device, *, compile: bool = False, bfloat16: bool = False) -> Prepared:
    """The inference module for ``net`` on ``device``: BatchNorm folded and channels_last,
    then optionally compiled (torch.compile, freezing) and run under bfloat16 autocast."""
    out = fold_batchnorm(net).to(device)
    steps = ["bfloat16 autocast" if bfloat16 else "float32", "BN folded"]
    if _has_conv(out) and device.type in ("cpu", "cuda"):
        out = out.to(memory_format=torch.channels_last)
        steps.append("channels_last")
    autocast = torch.bfloat16 if bfloat16 else None
    if not compile:
        return Prepared(out, autocast, ", ".join(steps))
    try:
        compiled = torch.compile(out, dynamic=False, options={"freezing": True})
    except Exception as e:  # no torch.compile on this platform/version
        _warn_eager(e)
        return Prepared(out, autocast, ", ".join(steps) + ", not compiled (torch.compile unavailable)")
    prepared = Prepared(out, autocast, "")
    prepared.net = _CompiledOrEager(compiled, out, prepared, ", ".join(steps))
    prepared.description = ", ".join(steps) + ", compiled (inductor, freezing)"
    prepared.compiled = True
    return prepared


def _warn_eager(e: BaseException) -> None:
    warnings.warn(f"torch.compile failed here ({type(e).__name__}: {str(e).strip()[:300]}); "
                  "running the eager (folded) model instead", RuntimeWarning, stacklevel=4)


class _CompiledOrEager(nn.Module):
    """The compiled module, or the eager one from the first failure to compile on (no C++
    compiler, an unsupported op, ...), with a warning; ``prepared.description`` says which runs."""

    def __init__(self, compiled: Callable, eager: nn.Module, prepared: Prepared, steps: str) -> None:
        super().__init__()
        self.eager = eager
        self._compiled: Callable | None = compiled
        self._prepared = prepared
        self._steps = steps

    def forward(self, x: torch.Tensor):
        if self._compiled is not None:
            try:
                return self._compiled(x)
            except Exception as e:  # inductor/dynamo errors have no common public base class
                _warn_eager(e)
                self._compiled = None
                self._prepared.description = self._steps + ", not compiled (compiling failed)"
        return self.eager(x)
