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
not bit-for-bit those of float32 eager mode (tested: cosine >= 0.999 on real audio):

- **torch.compile with freezing** (``torch._inductor`` with ``freezing=True``: weights become
  constants, the convolutions are pre-packed for oneDNN, the log-mel and pooling ops are
  fused). The first batch of each new shape compiles (tens of seconds on a small CPU; later
  processes reuse inductor's on-disk cache). Needs a working C++ compiler on CPU; when
  compiling fails, fast mode falls back to the default folded float32 model and says so
  (a warning, and ``Model.inference_mode`` names what runs).
- **bfloat16 autocast** only where the hardware computes bfloat16 natively: CPUs with
  AVX512-BF16 or AMX, and CUDA GPUs that support it. On other CPUs (AVX2 only, like the
  2-core machine the figures come from) bfloat16 convolutions are emulated and measured
  10-15x *slower* than float32, so fast mode leaves them in float32.
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
    dtype = torch.bfloat16 if native_bf16(device) else None
    if dtype is not None:
        steps[0] = "bfloat16 autocast"
    prepared = Prepared(out, dtype, ", ".join(steps + ["not compiled (torch.compile unavailable)"]))
    try:
        compiled = torch.compile(out, dynamic=False, options={"freezing": True})
    except Exception as e:  # no torch.compile on this platform/version
        _warn_eager(e)
        return prepared
    prepared.net = _CompiledOrEager(compiled, out, prepared, ", ".join(steps + ["compiled (inductor, freezing)"]))
    prepared.description = prepared.net.description
    prepared.compiled = True
    return prepared


def _warn_eager(e: BaseException) -> None:
    warnings.warn(f"fast mode: torch.compile failed here ({type(e).__name__}: {str(e).strip()[:300]}); "
                  "running the eager (folded float32) model instead", RuntimeWarning, stacklevel=4)


class _CompiledOrEager(nn.Module):
    """Runs the compiled module; if compiling fails (it happens at the first call of each
    new input shape: no C++ compiler, an unsupported op, ...), warns once and runs the
    eager module from then on."""

    def __init__(self, compiled: nn.Module, eager: nn.Module, prepared: Prepared, description: str) -> None:
        super().__init__()
        self.compiled, self.eager, self._prepared, self.description = compiled, eager, prepared, description
        self.failed = False

    def forward(self, x: torch.Tensor):
        if not self.failed:
            try:
                return self.compiled(x)
            except Exception as e:  # inductor/dynamo errors have no common public base class
                self.failed = True
                self._prepared.compiled = False
                self._prepared.description = self._prepared.description.replace(
                    "compiled (inductor, freezing)", "not compiled (compiling failed)")
                _warn_eager(e)
        return self.eager(x)
