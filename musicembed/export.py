"""Export a model's frontend + encoder to ONNX or TorchScript for deployment without musicembed.

The exported graph takes mono audio at the model's sample rate and returns embeddings:

- PEMR: ``wave`` (batch, samples) float32 -> ``embedding`` (batch, D). Batch and length are
  dynamic; the length must be at least :func:`min_samples` (stored in the file as
  ``min_samples``): shorter inputs leave the encoder's pools no time step, which PyTorch
  rejects but onnxruntime answers with meaningless numbers. With ``samples ==
  window_samples`` (the model's window, see its ``config.json``) the output is exactly the
  per-window vector of ``Model.embed``; longer inputs are max-pooled over time by the FCN
  like one long window (which is *not* what ``Model.embed`` does: it averages
  non-overlapping windows, so cut windows yourself and average the outputs to reproduce the
  clip vector).
- MART: ``wave`` (batch, window_samples) float32 -> ``embedding`` (batch, D), the level-0
  (whole-clip) vector; with ``levels="all"`` also ``level1`` ... ``level{N-1}``, each
  (batch, M^n, D), the part vectors of level n in time order. Batch is dynamic; the length is
  fixed to ``window_samples`` because the hierarchical crops and their hop lengths are
  derived from it.

ONNX has no complex STFT, so the ONNX graph computes the spectrogram as a strided
convolution with a windowed real DFT basis (cos and sin rows), which is the same sum the
FFT computes; ``verify_export`` checks the exported embeddings against PyTorch. The
TorchScript graph is traced from the same wrappers and keeps ``torch.stft``. Both files store
the model's facts (name, method, sample_rate, window_samples, min_samples, the config):
ONNX ``metadata_props``, TorchScript extra file ``musicembed.json``; see :func:`read_metadata`.

ONNX export uses PyTorch's TorchScript-based exporter (``torch.onnx.export(dynamo=False)``,
opset 18): it exports in about a second and needs only the ``onnx`` package, where the
``torch.export``-based one needs ``onnxscript`` and takes tens of seconds.

Needs: ``onnx`` for ONNX export and ``onnxruntime`` to run or verify the file
(``pip install "musicembed[onnx]"``). TorchScript needs nothing extra.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .config import FrontendConfig
from .frontend import LogMel, finish_db
from .models import window_vectors

FORMATS = ("onnx", "torchscript")
ONNX_OPSET = 18


class RealLogMel(nn.Module):
    """:class:`~musicembed.frontend.LogMel` with the STFT written as real-valued ops.

    The frame-wise DFT is a ``conv1d`` of the (reflect-padded) wave with ``2 * (n_fft//2 + 1)``
    kernels, the Hann-windowed cosines and sines, at stride ``hop_length``: the same sums
    ``torch.stft`` evaluates with an FFT, expressible in ONNX (Pad, Conv, Mul, MatMul, Log).
    """

    def __init__(self, cfg: FrontendConfig, hop_length: int | None = None) -> None:
        super().__init__()
        ref = LogMel(cfg)
        self.n_fft = cfg.n_fft
        self.hop = hop_length or cfg.hop_length
        self.center = cfg.center
        self.cfg = cfg
        n_freq = cfg.n_fft // 2 + 1
        self.n_freq = n_freq
        # Basis in float64, rounded once to float32: cos/sin(2 pi k n / N) * window[n].
        n = torch.arange(cfg.n_fft, dtype=torch.float64)
        k = torch.arange(n_freq, dtype=torch.float64)
        phase = 2.0 * math.pi * torch.outer(k, n) / cfg.n_fft
        win = ref.window.double()
        basis = torch.cat([torch.cos(phase) * win, -torch.sin(phase) * win]).float().unsqueeze(1)
        self.register_buffer("basis", basis)  # (2F, 1, n_fft); persistent: one ONNX initializer
        self.register_buffer("fb", ref.fb.clone())  # (n_mels, F)

    def forward(self, wave: torch.Tensor, hop_length: int | None = None) -> torch.Tensor:
        """wave (batch, samples) -> log-mel (batch, n_mels, frames) in dB; ``hop_length`` overrides the config's."""
        x = wave.float().unsqueeze(1)
        if self.center:
            pad = self.n_fft // 2
            x = nn.functional.pad(x, (pad, pad), mode="reflect")
        spec = nn.functional.conv1d(x, self.basis, stride=hop_length or self.hop)  # (B, 2F, frames)
        re, im = spec[:, : self.n_freq], spec[:, self.n_freq :]
        power = re * re + im * im
        mel = torch.matmul(self.fb, power)
        return finish_db((10.0 / math.log(10.0)) * torch.log(torch.clamp(mel, min=self.cfg.amin)), self.cfg)


class PEMRExport(nn.Module):
    """wave (batch, samples) -> embedding (batch, D): frontend + FCN encoder of a PEMR model."""

    def __init__(self, net: nn.Module, real_stft: bool = True) -> None:
        super().__init__()
        self.frontend = RealLogMel(net.cfg.frontend) if real_stft else net.frontend
        self.encoder = net.encoder

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.frontend(wave))


class MARTExport(nn.Module):
    """wave (batch, window_samples) -> level-0 embedding (batch, D) [, level n (batch, M^n, D) ...].

    The model's own forward pass, with the real-valued log-mel as its frontend; the input
    length is fixed to the model's window, so every level's hop is a constant of the graph.
    """

    def __init__(self, net: nn.Module, all_levels: bool = False, real_stft: bool = True) -> None:
        super().__init__()
        self.net = net
        self.all_levels = all_levels
        self.frontend = RealLogMel(net.cfg.frontend) if real_stft else net.frontend  # one DFT basis for all levels

    def forward(self, wave: torch.Tensor):
        levels = self.net(wave, frontend=self.frontend)
        first = window_vectors(levels)
        if not self.all_levels:
            return first
        return (first, *levels[1:])


def export_module(net: nn.Module, fmt: str, levels: str = "0") -> nn.Module:
    """The wrapper that gets exported (real-valued STFT for ONNX, ``torch.stft`` for TorchScript)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r} (expected one of {', '.join(FORMATS)})")
    real = fmt == "onnx"
    if net.cfg.method == "pemr":
        if levels != "0":
            raise ValueError("levels='all' is for MART models; PEMR has one vector per window")
        mod = PEMRExport(net, real_stft=real)
    else:
        if levels not in ("0", "all"):
            raise ValueError(f"levels must be '0' or 'all' (got {levels!r})")
        mod = MARTExport(net, all_levels=levels == "all", real_stft=real)
    return mod.eval()


def output_shapes(net: nn.Module, levels: str = "0") -> dict[str, list[int]]:
    """Output name -> its sizes after the batch axis, in the exported graph's output order."""
    cfg = net.cfg
    shapes = {"embedding": [cfg.embedding_dim]}
    if cfg.method == "mart" and levels == "all":
        for n in range(1, cfg.mart.levels):
            shapes[f"level{n}"] = [cfg.mart.parts**n, cfg.embedding_dim]
    return shapes


def min_samples(net: nn.Module) -> int:
    """Shortest input the exported PEMR graph accepts: enough frames for every time pool."""
    cfg = net.cfg
    frames = 1
    for _, pt in cfg.encoder.pools:
        frames *= pt
    hop = cfg.frontend.hop_length
    need = (frames - 1) * hop if cfg.frontend.center else (frames - 1) * hop + cfg.frontend.n_fft
    return max(need, cfg.frontend.n_fft // 2 + 1)


@dataclass
class ExportResult:
    path: Path
    format: str
    inputs: list[str]
    outputs: list[str]
    dynamic: str  # which input axes are dynamic, in words
    max_abs_diff: float | None = None  # against PyTorch, when verified
    max_abs_reference: float | None = None  # largest |value| PyTorch gave on the verification audio


def _atomic_target(out: Path) -> str:
    """A temporary file beside ``out`` (renamed into place when complete), with the usual
    permissions (mkstemp's are owner-only)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=out.suffix, dir=out.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return tmp


def _finish_onnx(path: str, shapes: dict[str, list[int]], metadata: dict[str, str]) -> None:
    """Write the known static sizes of the outputs (all but the batch axis) and the model's
    facts (``metadata_props``: name, method, sample_rate, window_samples, config) into the file."""
    import onnx

    proto = onnx.load(path)
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    for out in proto.graph.output:
        if out.name in shapes:
            dims = out.type.tensor_type.shape.dim
            for d, size in zip(list(dims)[1:], shapes[out.name]):
                d.Clear()
                d.dim_value = size
    onnx.save(proto, path)


def _export_onnx(mod: nn.Module, example: torch.Tensor, path: str, outputs: list[str], dynamic_length: bool,
                 shapes: dict[str, list[int]], metadata: dict[str, str]) -> None:
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise RuntimeError('ONNX export needs the onnx package: pip install "musicembed[onnx]"') from None
    axes = {0: "batch", 1: "samples"} if dynamic_length else {0: "batch"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
        torch.onnx.export(
            mod, (example,), path, dynamo=False, opset_version=ONNX_OPSET,
            input_names=["wave"], output_names=outputs,
            dynamic_axes={"wave": axes, **{name: {0: "batch"} for name in outputs}},
        )
    _finish_onnx(path, shapes, metadata)


def _export_torchscript(mod: nn.Module, example: torch.Tensor, path: str, metadata: dict[str, str]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notices and trace warnings on shape arithmetic
        traced = torch.jit.trace(mod, (example,), check_trace=False)
        torch.jit.save(traced, path, _extra_files={"musicembed.json": json.dumps(metadata)})


def export(model, out: str | os.PathLike, fmt: str = "onnx", levels: str = "0", verify: bool = True,
           tolerance: float = 1e-4) -> ExportResult:
    """Export ``model`` (a :class:`~musicembed.Model`, a model name or folder) to ``out``.

    ``fmt`` is ``"onnx"`` or ``"torchscript"``; ``levels`` ``"0"`` (the clip vector) or
    ``"all"`` (MART: every level). With ``verify`` the exported graph is run on
    :func:`probe_inputs` and compared with the PyTorch model; the largest absolute difference
    is returned in the result. It must not exceed ``tolerance * max(1, largest |output|)``
    (absolute for embeddings of order 1, relative for larger ones: the vectors of silent
    audio reach values near 100), else ``RuntimeError`` is raised and nothing is written. ONNX verification
    needs onnxruntime and is skipped
    (``max_abs_diff=None``) without it. The file is written atomically.
    """
    from .model import Model, load_model

    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r} (expected one of {', '.join(FORMATS)})")
    if not isinstance(model, Model):
        model = load_model(model, device="cpu")
    net = model.net
    prev_device = next(net.parameters()).device
    net.to("cpu").eval()
    out = Path(out)
    tmp = None
    try:
        mod = export_module(net, fmt, levels)
        shapes = output_shapes(net, levels)
        outputs = list(shapes)
        cfg = model.config
        example = torch.randn(2, cfg.window_samples, generator=torch.Generator().manual_seed(0)) * 0.1
        dynamic_length = cfg.method == "pemr"
        tmp = _atomic_target(out)
        if fmt == "onnx":
            _export_onnx(mod, example, tmp, outputs, dynamic_length, shapes, _metadata(model, levels))
        else:
            _export_torchscript(mod, example, tmp, _metadata(model, levels))
        dynamic = "batch and length" if dynamic_length else f"batch (length fixed to {cfg.window_samples} samples)"
        result = ExportResult(out, fmt, ["wave"], outputs, dynamic)
        if verify:
            check = verify_export(tmp, net, fmt, levels)
            if check is not None:
                result.max_abs_diff, result.max_abs_reference = check
                if result.max_abs_diff > tolerance * max(1.0, result.max_abs_reference):
                    raise RuntimeError(
                        f"the exported {fmt} model differs from PyTorch by {result.max_abs_diff:.3g} (outputs up to "
                        f"{result.max_abs_reference:.3g}; tolerance {tolerance:g}); {out} not written")
        os.replace(tmp, out)
        return result
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        net.to(prev_device)


def _metadata(model, levels: str) -> dict[str, str]:
    from . import __version__

    cfg = model.config
    return {
        "musicembed_version": __version__, "name": cfg.name, "method": cfg.method, "levels": levels,
        "sample_rate": str(cfg.sample_rate), "window_samples": str(cfg.window_samples),
        "embedding_dim": str(cfg.embedding_dim), "source": str(model.source),
        "min_samples": str(min_samples(model.net) if cfg.method == "pemr" else cfg.window_samples),
        "config": json.dumps(cfg.to_dict()),
    }


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The facts :func:`export` stored in an exported file (ONNX needs the onnx package)."""
    path = Path(path)
    if zipfile.is_zipfile(path):  # TorchScript archives are zip files
        extra = {"musicembed.json": ""}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        return json.loads(extra["musicembed.json"] or "{}")
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def reference_outputs(net: nn.Module, wave: torch.Tensor, levels: str = "0") -> list[np.ndarray]:
    """What the PyTorch model gives for ``wave``, in the exported graph's output order."""
    with torch.no_grad():
        y = net(wave)
    if isinstance(y, list):  # MART
        outs = [window_vectors(y)] + (list(y[1:]) if levels == "all" else [])
    else:
        outs = [y]
    return [o.float().numpy() for o in outs]


def run_exported(path: str | os.PathLike, fmt: str, wave: np.ndarray) -> list[np.ndarray] | None:
    """Run an exported file on ``wave`` (batch, samples) float32; None if onnxruntime is missing."""
    if fmt == "onnx":
        try:
            import onnxruntime as ort
        except ImportError:
            return None
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return [np.asarray(o) for o in sess.run(None, {"wave": wave.astype(np.float32)})]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
        mod = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        y = mod(torch.from_numpy(wave.astype(np.float32)))
    return [t.numpy() for t in (y if isinstance(y, tuple) else (y,))]


def probe_inputs(cfg, seed: int = 0) -> list[np.ndarray]:
    """Audio-like verification inputs: tones over noise at ordinary, quiet (-60 dB) and zero
    level, in batches of 1 and 3 (PEMR: also a longer input, its length being dynamic)."""
    rng = np.random.default_rng(seed)
    sr, n = cfg.sample_rate, cfg.window_samples

    def row(length: int, gain: float) -> np.ndarray:
        t = np.arange(length) / sr
        f = 110.0 * 2 ** (rng.integers(0, 36) / 12)
        return gain * (0.3 * np.sin(2 * np.pi * f * t) + 0.05 * rng.standard_normal(length))

    inputs = [np.stack([row(n, 1.0)]), np.stack([row(n, 1.0), row(n, 1e-3), np.zeros(n)])]
    if cfg.method == "pemr":
        longer = n + n // 2 + 17
        inputs.append(np.stack([row(longer, 1.0), row(longer, 0.5)]))
    return [x.astype(np.float32) for x in inputs]


def verify_export(path: str | os.PathLike, net: nn.Module, fmt: str, levels: str = "0") -> tuple[float, float] | None:
    """(largest absolute difference, largest absolute reference value) between the exported
    file and ``net`` over :func:`probe_inputs`; None when onnxruntime is missing."""
    worst, scale = 0.0, 0.0
    for wave in probe_inputs(net.cfg):
        got = run_exported(path, fmt, wave)
        if got is None:
            return None
        want = reference_outputs(net, torch.from_numpy(wave), levels)
        if len(got) != len(want):
            raise RuntimeError(f"{path}: {len(got)} outputs, expected {len(want)}")
        for g, w in zip(got, want):
            if g.shape != w.shape:
                raise RuntimeError(f"{path}: output shape {g.shape}, expected {w.shape}")
            worst = max(worst, float(np.abs(g - w).max()))
            scale = max(scale, float(np.abs(w).max()))
    return worst, scale
