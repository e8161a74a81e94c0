"""The model facade: a loaded encoder with its config, and :func:`load_model`.

:meth:`Model.embed` checks its arguments and hands the work to :mod:`musicembed.pipeline`;
batches run through the inference copy of the network that :mod:`musicembed.optimize`
builds, once per device.
"""

from __future__ import annotations

import copy
import hashlib
import json
import numbers
import os
import threading
import warnings
from collections.abc import Generator, Sequence

import numpy as np
import torch
from torch import nn

from . import hub, pipeline
from .audio import AudioInput, default_decode_threads
from .calibration import CALIBRATION_NAME, RELATIONS, Calibration, find_calibration
from .config import MAX_WINDOW_SECONDS, ModelConfig
from .errors import AudioError
from .models import build_model
from .optimize import Prepared, fast_options, prepare
from .results import Comparison, Embedding, EmbedError, LevelEmbedding, SpanMatch, TruncatedAudioWarning

__all__ = ["Comparison", "Embedding", "EmbedError", "LevelEmbedding", "Model", "SpanMatch", "TruncatedAudioWarning",
           "load_model"]


class Model:
    """A loaded PEMR or MART encoder with its frontend. Create with :func:`musicembed.load_model`."""

    def __init__(self, net: nn.Module, config: ModelConfig, device: str | torch.device | None = None,
                 source: str = "", compile: bool = False, bfloat16: bool = False) -> None:
        self.config = config
        self.source = source
        self.device = torch.device(device) if device is not None else _default_device()
        self.net = net.eval().to(self.device)
        self.compile, self.bfloat16 = compile, bfloat16
        self._prepared: dict[torch.device, Prepared] = {}  # inference copies of net (BN folded, ...), per device
        self._staging: tuple | None = None  # ((rows, window, device), host tensor) reused by _forward
        self._fingerprint: str | None = None
        self._lock = threading.Lock()
        self.calibration: Calibration | None = None  # set by load_model when calibration.json is beside the weights
        self.provenance: dict = {}  # the manifest's licence, training data, model card and figures (manifest models)

    # -- facts
    @property
    def name(self) -> str:
        return self.config.name

    @property
    def embedding_dim(self) -> int:
        """Size D of every vector this model returns."""
        return self.config.embedding_dim

    @property
    def sample_rate(self) -> int:
        """Rate (Hz) audio is resampled to before the frontend."""
        return self.config.sample_rate

    @property
    def inference_mode(self) -> str:
        """How batches are computed, e.g. ``"float32, BN folded, channels_last"``, and whether
        the network is compiled."""
        return self._inference().description

    def _inference(self, device: torch.device | None = None) -> Prepared:
        """The inference copy of ``net`` for ``device`` (default: the model's; see
        :mod:`musicembed.optimize`), built once per device; ``net`` itself stays as loaded."""
        device = self.device if device is None else device
        p = self._prepared.get(device)
        if p is None:
            with self._lock:
                p = self._prepared.get(device)
                if p is None:  # not built by another thread meanwhile
                    # On another device, a full copy: prepare() shares weights with the net it is given.
                    net = self.net if device == self.device else copy.deepcopy(self.net).to(device)
                    p = self._prepared[device] = prepare(net, device, compile=self.compile, bfloat16=self.bfloat16)
        return p

    def fingerprint(self) -> str:
        """sha256 (hex) over the config (description excluded) and every weight and buffer:
        two models give comparable vectors only when their fingerprints are equal. Computed
        once (the weights of a loaded model do not change)."""
        if self._fingerprint is None:
            cfg = self.config.to_dict()
            cfg.pop("description", None)
            h = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode())
            for name, t in sorted(self.net.state_dict().items()):
                t = t.detach().to("cpu").contiguous()
                h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    @property
    def card(self) -> dict:
        """What a user should know before relying on this model: name, version, method, fingerprint,
        the licence of its weights, its training data, its model card and where its figures come
        from (manifest models), and its calibration (None when it has none)."""
        cal = self.calibration
        return {
            "name": self.name, "version": self.config.version, "method": self.config.method,
            "description": self.config.description, "fingerprint": self.fingerprint(), "source": self.source,
            "license": self.provenance.get("license"), "training_data": self.provenance.get("training_data"),
            "model_card": self.provenance.get("model_card"), "figures": self.provenance.get("figures"),
            "calibration": None if cal is None else {
                "source": cal.source, "data": cal.doc.get("data"), "default_prior": cal.prior,
                "thresholds": {r: cal.threshold(r) for r in RELATIONS[:-1]},
                "cross_validation": cal.doc.get("cross_validation", {}).get("summary")},
            "recommendations": self.provenance.get("recommendations"),
        }

    def compare(self, a: AudioInput, b: AudioInput, sample_rate: int | None = None, *,
                prior: dict[str, float] | None = None, span_level: int = 0,
                batch_size: int | None = None, device: str | torch.device | None = None) -> Comparison:
        """How close two recordings are: the cosine similarity of their clip vectors (each the
        mean over its windows, as :meth:`embed` returns), and with a calibration the most
        specific likely relation and its probability under ``prior`` (default: the
        calibration's, every relation equally likely; see :mod:`musicembed.calibration`).
        For MART also the best-matching pair of segments at ``span_level`` (0: the 4-s
        clips). ``a``/``b`` are paths or arrays (then ``sample_rate`` in Hz). A file that
        cannot be decoded raises :class:`~musicembed.errors.AudioError`."""
        mart = self.config.method == "mart"
        if mart and not 0 <= span_level < self.config.mart.levels:  # type: ignore[union-attr]
            raise ValueError(f"span_level must be in 0..{self.config.mart.levels - 1}")  # type: ignore[union-attr]
        try:
            ea, eb = self.embed([a, b], sample_rate, return_timestamps=True, hierarchical=mart,  # type: ignore[misc]
                                batch_size=batch_size, device=device, progress=False)
        except EmbedError as e:
            raise next(iter(e.errors.values())) from None
        sim = _cosine(ea.clip, eb.clip)
        span = _best_span(ea.levels[span_level], eb.levels[span_level]) if mart and ea.levels and eb.levels else None
        rel = None if self.calibration is None else self.calibration.relation(sim, prior)
        used = None if self.calibration is None else (dict(prior) if prior is not None else self.calibration.prior)
        return Comparison(a=_name(a), b=_name(b), similarity=sim, relation=rel.relation if rel else None,
                          probability=rel.probability if rel else None, at_least=rel.at_least if rel else None,
                          prior=used, span=span, model=self.identity_summary())

    def identity_summary(self) -> dict:
        """The model's name, version, fingerprint and the licence of its weights, as outputs record them."""
        return {"name": self.name, "version": self.config.version, "fingerprint": self.fingerprint(),
                "license": self.provenance.get("license")}

    def __repr__(self) -> str:
        return (f"Model(name={self.name!r}, method={self.config.method!r}, dim={self.embedding_dim}, "
                f"sample_rate={self.sample_rate}, window={self.config.window_seconds:g}s, device={self.device})")

    # -- saving
    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write config.json + model.safetensors so that ``load_model(directory)`` loads this model."""
        hub.save_pretrained(self.net, directory, self.config)

    def push_to_hub(self, repo_id: str, **kwargs) -> str:
        """Upload config.json + model.safetensors to a Hugging Face Hub repo (needs a token)."""
        return hub.push_to_hub(self.net, repo_id, **kwargs)

    # -- embedding
    def embed(
        self,
        audio: AudioInput | Sequence[AudioInput],
        sample_rate: int | None = None,
        *,
        return_timestamps: bool = False,
        hierarchical: bool = False,
        window_seconds: float | None = None,
        hop_seconds: float | None = None,
        batch_size: int | None = None,
        device: str | torch.device | None = None,
        progress: bool | None = None,
        decode_threads: int | None = None,
        threads: int | None = None,
    ) -> np.ndarray | Embedding | list[Embedding]:
        """Embed one input or a list of inputs.

        ``audio`` is a path (WAV/FLAC/OGG/MP3/...), a numpy array or torch tensor (then
        ``sample_rate`` in Hz is required; 1-D, or 2-D with the shorter axis as channels),
        or a list of these. Returns float32 numpy: (D,) for one input, (N, D) for a list.
        With ``return_timestamps=True`` (or ``hierarchical=True``, MART only) it returns an
        :class:`Embedding` per input instead (a list for a list input).

        ``window_seconds``/``hop_seconds`` set the analysis window and its step (default: the
        model's trained window, non-overlapping). Inputs shorter than a window are zero-padded.
        Failing inputs of a list raise :class:`EmbedError` after all others are done.

        Speed settings, none of which changes the vectors beyond float rounding:
        ``batch_size`` windows per forward pass (default: 64 on a GPU; on CPU 4 for PEMR, 8
        for MART); ``device`` runs this call there ('cpu', 'cuda', 'cuda:1'; default: the
        model's device; the model itself is not moved); ``decode_threads`` threads decoding
        files ahead of the network (default 2, 1 on a single core); ``threads`` torch
        intra-op threads while the call runs on CPU (default: the cores the decoders leave,
        at least 1; torch's setting is process-wide and restored afterwards).
        """
        if hierarchical and self.config.method != "mart":
            raise ValueError(f"hierarchical=True needs a MART model; {self.name!r} is {self.config.method}")
        single = isinstance(audio, (str, os.PathLike, np.ndarray, torch.Tensor))
        if not single and not isinstance(audio, Sequence):
            raise TypeError(f"audio must be a path, a numpy array, a torch tensor or a list of these, "
                            f"got {type(audio).__name__}")
        inputs: list[AudioInput] = [audio] if single else list(audio)  # type: ignore[list-item,arg-type]
        results: list[Embedding | None] = [None] * len(inputs)
        errors: dict[int, AudioError] = {}
        for i, res in self.iter_embed(inputs, sample_rate, hierarchical=hierarchical, window_seconds=window_seconds,
                                      hop_seconds=hop_seconds, batch_size=batch_size, device=device,
                                      progress=progress, decode_threads=decode_threads, threads=threads):
            if isinstance(res, AudioError):
                errors[i] = res
            else:
                results[i] = res
                if res.warning:
                    warnings.warn(f"{res.source}: {res.warning}", TruncatedAudioWarning, stacklevel=2)
        if single and errors:
            raise errors[0]
        if errors:
            raise EmbedError(errors, results)
        if return_timestamps or hierarchical:
            return results[0] if single else results  # type: ignore[return-value]
        if single:
            return results[0].clip  # type: ignore[union-attr]
        if not results:
            return np.zeros((0, self.embedding_dim), np.float32)
        return np.stack([r.clip for r in results])  # type: ignore[union-attr]

    def to(self, device: str | torch.device) -> Model:
        """Move the model to ``device`` ('cpu', 'cuda', 'cuda:1', ...); ValueError if it is not
        usable here. Not while another thread embeds with it (pass ``device=`` to ``embed`` instead)."""
        self.device = _check_device(device) or self.device
        self.net.to(self.device)
        self._prepared.clear()  # rebuilt on the new device at the next batch
        return self

    def iter_embed(
        self,
        inputs: Sequence[AudioInput],
        sample_rate: int | None = None,
        *,
        hierarchical: bool = False,
        window_seconds: float | None = None,
        hop_seconds: float | None = None,
        batch_size: int | None = None,
        device: str | torch.device | None = None,
        progress: bool | None = None,
        decode_threads: int | None = None,
        threads: int | None = None,
    ) -> Generator[tuple[int, Embedding | AudioError], None, None]:
        """Yield (index, Embedding or AudioError) for each input, in input order, as each
        finishes. The options are those of :meth:`embed`."""
        sr = self.sample_rate
        for what, v in (("window_seconds", window_seconds), ("hop_seconds", hop_seconds)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Real)
                                  or not 0 < v <= MAX_WINDOW_SECONDS):  # NaN fails too
                raise ValueError(f"{what} must be between 0 and {MAX_WINDOW_SECONDS:g} s, got {v}")
        window = int(round((window_seconds or self.config.window_seconds) * sr))
        hop = int(round(hop_seconds * sr)) if hop_seconds else window
        if window != self.config.window_samples:
            self._check_window(window)
        if hop < self._frame_samples(window):
            raise ValueError(f"hop_seconds={hop_seconds:g} is shorter than one frame of this model "
                             f"({self._frame_samples(window) / sr:g} s at this window): windows that close "
                             "would repeat each other; use at least one frame")
        dev = _check_device(device) or self.device
        bs = _positive_int(batch_size, "batch_size", "windows per forward pass") \
            or pipeline.default_batch_size(self.config.method, dev)
        files = any(isinstance(x, (str, os.PathLike)) for x in inputs)
        decoders = _positive_int(decode_threads, "decode_threads", "threads decoding files") \
            or default_decode_threads()
        torch_threads = _positive_int(threads, "threads", "torch intra-op threads") \
            or (pipeline.default_threads(dev, decoders) if files else None)
        geometry = self.config.mart_levels(window) if hierarchical else None
        results = pipeline.run(inputs, lambda batch: self._forward(batch, window, bs, dev), sample_rate=sr,
                               source_rate=sample_rate, window=window, hop=hop, batch_size=bs,
                               decode_threads=decoders, geometry=geometry)
        bar = _progress_bar(len(inputs), progress)
        try:
            with pipeline.fewer_torch_threads(torch_threads):
                for item in results:
                    if bar is not None:
                        bar.update(1)
                    yield item
        finally:
            results.close()
            if bar is not None:
                bar.close()

    def _frame_samples(self, window: int) -> int:
        """Samples between two frames of the finest log-mel the model computes for ``window``:
        the smallest useful hop between windows. MART scales its hop with the clip length."""
        if self.config.method == "mart":
            return self.config.mart_levels(window)[-1].hop
        return self.config.frontend.hop_length

    @torch.inference_mode()
    def _fits(self, window: int) -> bool:
        """Whether a window of ``window`` samples fits the frontend and encoder: one dry run."""
        try:
            with self._lock:
                self.net(torch.zeros(1, window, device=self.device))
        except (RuntimeError, ValueError):  # too few frames for the pools, reflect padding, MART hops
            return False
        return True

    def _window_problem(self, window: int) -> str | None:
        """None when a window of ``window`` samples fits the model, else what is wrong with it,
        naming the smallest window that fits (found by dry runs: fitting grows with length)."""
        if window >= 1 and self._fits(window):
            return None
        hi, limit = self.config.window_samples, 64 * self.config.window_samples
        while not self._fits(hi):  # the trained window fits, unless the config is broken
            if hi >= limit:
                return f"does not fit this model (nor does any window up to {limit} samples)"
            hi = min(2 * hi, limit)
        lo = 0
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if self._fits(mid) else (mid, hi)
        if window < hi:
            return f"too short for this model: its encoder needs at least {hi / self.sample_rate:.4g} s ({hi} samples)"
        return "does not fit this model"

    def _check_window(self, window: int) -> None:
        """A window other than the trained one must still fit the frontend and encoder."""
        problem = self._window_problem(window)
        if problem:
            raise ValueError(f"a window of {window / self.sample_rate:g} s is {problem}")

    @torch.inference_mode()
    def _forward(self, batch: list[np.ndarray], window: int, batch_size: int,
                 device: torch.device) -> tuple[np.ndarray, list[np.ndarray] | None]:
        """One batch of windows -> (window vectors (B, D), MART's per-level (B, M^n, D) or None)."""
        p = self._inference(device)
        # A compiled model would recompile for every new batch shape: pad a short last batch.
        rows = batch_size if p.compiled and len(batch) < batch_size else len(batch)
        with self._lock:  # one forward at a time per model: safe to share a Model across threads
            key = (rows, window, device)
            if self._staging is None or self._staging[0] != key:  # one reused host buffer per batch shape
                self._staging = (key, torch.empty((rows, window), dtype=torch.float32,
                                                  pin_memory=device.type == "cuda"))
            x = _to_device(batch, rows, device, self._staging[1])
            with torch.autocast(device.type, dtype=p.autocast or torch.bfloat16, enabled=p.autocast is not None):
                out = p.net(x)
            # Read back while holding the lock: on CUDA this waits for the copy from the staging
            # buffer, which the next batch (maybe another thread's) refills.
            if isinstance(out, list):  # MART: per-level (B, M^n, D); level 0 is the window vector
                levels = [o.float().cpu().numpy()[: len(batch)] for o in out]
                return levels[0][:, 0], levels
            return out.float().cpu().numpy()[: len(batch)], None


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two vectors (0 when either is zero)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    n = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / n) if n > 0 else 0.0


def _best_span(a: LevelEmbedding, b: LevelEmbedding) -> SpanMatch | None:
    """The pair of segments (one of ``a``, one of ``b``, same level) with the highest cosine."""
    if not len(a.vectors) or not len(b.vectors):
        return None

    def unit(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float64)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    s = unit(a.vectors) @ unit(b.vectors).T
    i, j = np.unravel_index(int(np.argmax(s)), s.shape)
    return SpanMatch(level=a.level, a_start=float(a.starts[i]), a_end=float(a.ends[i]), b_start=float(b.starts[j]),
                     b_end=float(b.ends[j]), score=float(s[i, j]))


def _name(x: object) -> str:
    return os.fspath(x) if isinstance(x, (str, os.PathLike)) else "<array>"


def _to_device(batch: list[np.ndarray], rows: int, device: torch.device, staging: torch.Tensor) -> torch.Tensor:
    """Stack the batch's windows into ``staging``, a (rows, window) float32 host tensor
    (pinned for CUDA), rows past the batch zeroed, and move it to ``device``. For CUDA the
    copy is asynchronous (``non_blocking``), so it overlaps with the work already queued: the
    caller must not refill ``staging`` before the copy is done (reading the previous batch's
    results back to the host waits for it)."""
    xn = staging.numpy()
    for j, w in enumerate(batch):
        xn[j] = w
    xn[len(batch):] = 0
    return staging.to(device, non_blocking=True) if device.type == "cuda" else staging.to(device)


def _positive_int(value: object, name: str, what: str) -> int | None:
    """``value`` as given (None: the default), refused unless a positive int."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer ({what}), got {value!r}")
    return int(value)


def _progress_bar(total: int, progress: bool | None):
    if progress is None:
        progress = total > 1 and os.isatty(2)
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="file", desc="embedding")


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(name: str | os.PathLike = "pemr", device: str | torch.device | None = None,
               force_download: bool = False, fast: bool = False, *, compile: bool | None = None,
               bfloat16: bool | None = None) -> Model:
    """Load a model by manifest name, local directory, or ``"hf-hub:<owner>/<repo>[@revision]"``.

    The weights are checked against their sha256 and read as safetensors only. ``device``
    defaults to CUDA when available, else CPU.

    ``compile`` (torch.compile with freezing; the first batch compiles) and ``bfloat16``
    (autocast; fast only on hardware with native bfloat16) trade exactness for speed: vectors
    within cosine 0.999 of the default float32 ones. ``fast=True`` sets both to what suits
    the device (:func:`musicembed.optimize.fast_options`); ``compile``/``bfloat16`` given
    explicitly win. ``Model.inference_mode`` says what runs.
    """
    resolved = hub.resolve(name, force_download=force_download)
    try:
        net = build_model(resolved.config)
        _ = resolved.config.embedding_dim  # raises for an encoder that pools the mel axis away
    except (TypeError, ValueError, RuntimeError, AttributeError, IndexError, KeyError) as e:  # odd config values
        raise hub.WeightsError(f"{resolved.source}: config.json describes no model that can be built "
                               f"({type(e).__name__}: {e})") from None
    state = hub.load_state_dict(resolved)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:  # missing/unexpected keys or shape mismatches
        detail = str(e).split(":", 1)[-1].strip().splitlines()
        raise hub.WeightsError(
            f"{resolved.source}: weights do not match the config's architecture: {' '.join(detail[:3])[:300]}"
        ) from None
    dev = _check_device(device) or _default_device()
    fast_compile, fast_bf16 = fast_options(dev) if fast else (False, False)
    model = Model(net, resolved.config, device=dev, source=resolved.source,
                  compile=fast_compile if compile is None else compile,
                  bfloat16=fast_bf16 if bfloat16 is None else bfloat16)
    problem = model._window_problem(resolved.config.window_samples)  # the model's own window must fit
    if problem:
        raise hub.WeightsError(f"{resolved.source}: config.json: window_samples = "
                               f"{resolved.config.window_samples}: {problem}")
    model.provenance = dict(resolved.provenance or {})
    folder = resolved.weights.parent
    if resolved.calibration_sha256 and not (folder / CALIBRATION_NAME).is_file():
        raise hub.WeightsError(f"{resolved.source}: the manifest lists {CALIBRATION_NAME}, but it is missing from {folder}")
    model.calibration = find_calibration(folder, resolved.calibration_sha256, model.fingerprint(), resolved.source) \
        if (folder / CALIBRATION_NAME).is_file() else None
    return model


def _check_device(device: str | torch.device | None) -> torch.device | None:
    """``device`` as a torch.device, refused with one clear line when it is not usable here."""
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"unknown device {device!r}: use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: CUDA is not available on this machine (use cpu)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"device {device!r}: MPS is not available on this machine (use cpu)")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {device!r}: embedding runs on cpu, cuda or mps, not {dev.type}")
    return dev
