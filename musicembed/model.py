"""The ``embed`` logic: inputs -> streamed audio blocks -> windows -> batches -> model -> pooling.

A background thread decodes (and resamples) the next blocks while the model runs, so
decoding overlaps with compute and memory stays bounded: at most a few blocks of audio
and one batch of windows are alive at a time, whatever the file length. Windows of
different files share batches.
"""

from __future__ import annotations

import numbers
import os
import queue
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from . import hub
from .audio import AudioInput, StreamEnd, _name_of, stream_many
from .config import MAX_WINDOW_SECONDS, ModelConfig
from .errors import AudioError, MusicEmbedError
from .optimize import Prepared, prepare
from .models import build_model

# Windows per forward pass on CPU (benchmarks/throughput.py --cases ablation, 2-core AVX2;
# batch 64 is 2x slower than the best for PEMR, 1.2x for MART):
# PEMR (3-s windows): 16 is fastest for the network alone but end to end no faster than 4
# (decoding bounds it) and 4 needs ~100 MiB less; MART (4.1-s windows, 15 crops each) peaks at 8.
DEFAULT_CPU_BATCH = 4
DEFAULT_CPU_BATCH_BY_METHOD = {"pemr": 4, "mart": 8}
DEFAULT_GPU_BATCH = 64
_QUEUE_BLOCKS = 4


@dataclass
class LevelEmbedding:
    """One MART level: ``vectors`` (K, D) with each clip's ``starts``/``ends`` in seconds."""

    level: int
    vectors: np.ndarray
    starts: np.ndarray
    ends: np.ndarray


@dataclass
class Embedding:
    """Everything ``embed`` computed for one input.

    ``clip`` (D,) is the clip-level vector (mean over windows); ``vectors`` (W, D) are the
    per-window vectors with ``starts``/``ends`` in seconds; ``levels`` holds MART's per-level
    vectors when ``hierarchical=True`` (level 0 = the windows themselves). ``duration`` is the
    audio that decoded (seconds), ``declared_duration`` the length the file's header declares
    (None when unknown, and for arrays); ``warning`` says why a file decoded short
    (truncated or damaged: see :mod:`musicembed.audio`), else None.
    """

    source: str
    clip: np.ndarray
    vectors: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    duration: float
    levels: list[LevelEmbedding] | None = None
    declared_duration: float | None = None
    warning: str | None = None


class TruncatedAudioWarning(UserWarning):
    """A file decoded short of its declared length or stopped at a decoding error; what decoded
    was embedded (``Embedding.warning`` says how much)."""


class EmbedError(MusicEmbedError):
    """Some inputs of a batch failed. ``errors`` maps input index -> AudioError; ``results``
    holds every input's Embedding (None where it failed), so no finished work is lost."""

    def __init__(self, errors: dict[int, AudioError], results: list[Embedding | None]) -> None:
        lines = [f"  {e}" for e in errors.values()]
        super().__init__(f"{len(errors)} of {len(results)} inputs failed:\n" + "\n".join(lines))
        self.errors = errors
        self.results = results


@dataclass
class _Track:
    """Per-input state while its windows are in flight."""

    source: str
    pending: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    offset: int = 0  # absolute sample index of pending[0]
    total: int = 0  # samples received so far
    next_start: int = 0  # absolute start of the next window
    windows: int = 0  # windows handed out
    done_windows: int = 0
    finished: bool = False
    vectors: list[np.ndarray] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    levels: list[list[np.ndarray]] | None = None
    end: StreamEnd = field(default_factory=StreamEnd)


_END = object()




class Model:
    """A loaded PEMR or MART encoder with its frontend. Create with :func:`musicembed.load_model`."""

    def __init__(self, net: nn.Module, config: ModelConfig, device: str | torch.device | None = None,
                 source: str = "", fast: bool = False) -> None:
        self.config = config
        self.source = source
        self.device = torch.device(device) if device is not None else _default_device()
        self.net = net.eval().to(self.device)
        self.fast = fast
        self._prepared: Prepared | None = None  # the inference copy of net (BN folded, ...), built on first use
        self._prepared_device: torch.device | None = None
        self._staging: tuple | None = None  # ((rows, window, device), host tensor) reused by _run
        self._lock = threading.Lock()

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
        """How batches are computed, e.g. ``"float32, BN folded, channels_last"``; in fast mode
        it also says whether the model is compiled and in which precision."""
        return self._inference().description

    def _inference(self) -> Prepared:
        """The inference copy of ``net`` for the current device (see :mod:`musicembed.inference`).
        Built once per device; ``net`` itself stays as loaded."""
        p = self._prepared
        if p is None or self._prepared_device != self.device:
            with self._lock:
                p = self._prepared = prepare(self.net, self.device, fast=self.fast)
                self._prepared_device = self.device
        return p

    def fingerprint(self) -> str:
        """sha256 (hex) over the config (description excluded) and every weight and buffer:
        two models give comparable vectors only when their fingerprints are equal."""
        import hashlib
        import json

        cfg = self.config.to_dict()
        cfg.pop("description", None)
        h = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode())
        for name, t in sorted(self.net.state_dict().items()):
            t = t.detach().to("cpu").contiguous()
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

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
        """
        if hierarchical and self.config.method != "mart":
            raise ValueError(f"hierarchical=True needs a MART model; {self.name!r} is {self.config.method}")
        single = isinstance(audio, (str, os.PathLike, np.ndarray, torch.Tensor))
        if not single and not isinstance(audio, Sequence):
            raise TypeError(f"audio must be a path, a numpy array, a torch tensor or a list of these, "
                            f"got {type(audio).__name__}")
        inputs = [audio] if single else list(audio)
        if device is not None:
            self.to(device)
        results: list[Embedding | None] = [None] * len(inputs)
        errors: dict[int, AudioError] = {}
        for i, res in self.iter_embed(inputs, sample_rate, hierarchical=hierarchical, window_seconds=window_seconds,
                                      hop_seconds=hop_seconds, batch_size=batch_size, progress=progress):
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

    def to(self, device: str | torch.device) -> "Model":
        """Move the model to ``device`` ('cpu', 'cuda', 'cuda:1', ...); ValueError if it is not usable here."""
        self.device = _check_device(device)
        self.net.to(self.device)
        self._prepared = None  # rebuilt on the new device at the next batch
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
        progress: bool | None = None,
    ) -> Iterator[tuple[int, Embedding | AudioError]]:
        """Yield (index, Embedding or AudioError) for each input, in input order, as each finishes."""
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
        bs = _check_batch_size(batch_size) or (DEFAULT_GPU_BATCH if self.device.type == "cuda"
                                               else DEFAULT_CPU_BATCH_BY_METHOD.get(self.config.method,
                                                                                    DEFAULT_CPU_BATCH))
        q: queue.Queue = queue.Queue(maxsize=_QUEUE_BLOCKS)
        stop = threading.Event()
        producer = threading.Thread(target=_produce, args=(inputs, sr, sample_rate, q, stop), daemon=True)
        producer.start()
        bar = _progress_bar(len(inputs), progress)
        # Files are decoded by threads of their own: leave them cores (arrays need no decoding).
        lowered = any(isinstance(x, (str, os.PathLike)) for x in inputs) and _lower_torch_threads(self.device)
        tracks: dict[int, _Track] = {}
        batch: list[tuple[int, int, np.ndarray]] = []  # (input index, start sample, window)
        next_out = 0
        ready: dict[int, Embedding | AudioError] = {}
        try:
            done = False
            while not done:
                item = _get(q, producer)
                if isinstance(item, _ProducerFailed):
                    raise item.error
                if item is _END:
                    done = True
                else:
                    idx, payload = item
                    track = tracks.setdefault(idx, _Track(_name_of(inputs[idx])))
                    if isinstance(payload, AudioError):
                        ready[idx] = payload
                        batch = [b for b in batch if b[0] != idx]
                        tracks.pop(idx)
                    elif isinstance(payload, StreamEnd):
                        track.finished, track.end = True, payload
                        batch += _cut_windows(idx, track, window, hop, final=True)
                    else:
                        track.pending = np.concatenate([track.pending, payload]) if track.pending.size else payload
                        track.total += len(payload)
                        batch += _cut_windows(idx, track, window, hop, final=False)
                # Full batches as they come (windows of several files share one); the rest at the end.
                while len(batch) >= bs or (done and batch):
                    self._run(batch[:bs], tracks, hierarchical, window, bs)
                    batch = batch[bs:]
                for i, t in list(tracks.items()):
                    if t.finished and t.done_windows == t.windows:
                        ready[i] = self._finish(t, hierarchical, window)
                        tracks.pop(i)
                while next_out in ready:
                    res = ready.pop(next_out)
                    if bar is not None:
                        bar.update(1)
                    yield next_out, res
                    next_out += 1
        finally:
            if lowered:
                _restore_torch_threads()
            stop.set()
            while producer.is_alive():  # unblock a producer waiting on a full queue
                try:
                    q.get_nowait()
                except queue.Empty:
                    producer.join(0.05)
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
    def _run(self, batch: list[tuple[int, int, np.ndarray]], tracks: dict[int, _Track], hierarchical: bool,
             window: int, batch_size: int) -> None:
        p = self._inference()
        # A compiled model would recompile for every new batch shape: pad a short last batch.
        rows = batch_size if p.compiled and len(batch) < batch_size else len(batch)
        with self._lock:  # one forward at a time per model: safe to share a Model across threads
            key = (rows, window, self.device)
            if self._staging is None or self._staging[0] != key:  # one reused host buffer per batch shape
                self._staging = (key, torch.empty((rows, window), dtype=torch.float32,
                                                  pin_memory=self.device.type == "cuda"))
            x = _to_device(batch, rows, window, self.device, self._staging[1])
            with torch.autocast(self.device.type, dtype=p.autocast or torch.bfloat16, enabled=p.autocast is not None):
                out = p.net(x)
            # Read back while holding the lock: on CUDA this waits for the copy from the staging
            # buffer, which the next batch (maybe another thread's) refills.
            if isinstance(out, list):  # MART: per-level (B, M^n, D); level 0 is the window vector
                levels = [o.float().cpu().numpy()[: len(batch)] for o in out]
                vecs = levels[0][:, 0]
            else:
                levels, vecs = None, out.float().cpu().numpy()[: len(batch)]
        for j, (idx, start, _) in enumerate(batch):
            t = tracks[idx]
            t.vectors.append(vecs[j])
            t.starts.append(start)
            if hierarchical and levels is not None:
                if t.levels is None:
                    t.levels = [[] for _ in levels]
                for n, lv in enumerate(levels):
                    t.levels[n].append(lv[j])
            t.done_windows += 1

    def _finish(self, t: _Track, hierarchical: bool, window: int) -> Embedding | AudioError:
        sr = self.sample_rate
        vectors = np.stack(t.vectors).astype(np.float32)
        if not np.isfinite(vectors).all():  # never hand out a NaN vector
            return AudioError(t.source, "the model produced non-finite values for this input")
        starts = np.asarray(t.starts, dtype=np.int64)
        ends = np.minimum(starts + window, max(t.total, 1))
        levels = None
        if hierarchical and t.levels is not None:
            levels = []
            spans = self.net.level_spans(window)
            for n, lv in enumerate(t.levels):
                rel = np.asarray(spans[n], dtype=np.int64)  # (M^n, 2) within a window
                abs_spans = starts[:, None, None] + rel[None]  # (W, M^n, 2)
                abs_spans = np.minimum(abs_spans, max(t.total, 1))
                levels.append(LevelEmbedding(
                    level=n,
                    vectors=np.concatenate(lv).astype(np.float32),
                    starts=abs_spans[..., 0].reshape(-1) / sr,
                    ends=abs_spans[..., 1].reshape(-1) / sr,
                ))
        return Embedding(source=t.source, clip=vectors.mean(axis=0).astype(np.float32), vectors=vectors,
                         starts=starts / sr, ends=ends / sr, duration=t.total / sr, levels=levels,
                         declared_duration=t.end.declared_seconds, warning=t.end.warning)


# While embedding on CPU, the model's intra-op threads leave the decoding threads their cores:
# torch's default (one per core) plus busy decoders oversubscribes the CPU, and OpenMP's
# spinning threads then lose more than they gain (benchmarks/throughput.py --cases ablation).
AUTO_THREADS = True
_threads_lock = threading.Lock()
_threads_users = 0
_threads_saved = 0


def _lower_torch_threads(device: torch.device) -> bool:
    """Lower torch's intra-op threads to (cores - decode threads), at least 1, for the
    duration of an embed; never raises them. Returns whether it took effect (then call
    :func:`_restore_torch_threads` once done). Shared by concurrent embeds: the last to
    finish restores the setting."""
    global _threads_users, _threads_saved
    from . import audio

    if not AUTO_THREADS or device.type != "cpu":
        return False
    with _threads_lock:
        if _threads_users == 0:
            _threads_saved = torch.get_num_threads()
            want = max(1, (os.cpu_count() or 1) - audio.DECODE_THREADS)
            if want < _threads_saved:
                torch.set_num_threads(want)
        _threads_users += 1
    return True


def _restore_torch_threads() -> None:
    global _threads_users
    with _threads_lock:
        _threads_users -= 1
        if _threads_users == 0 and torch.get_num_threads() != _threads_saved:
            torch.set_num_threads(_threads_saved)


def _to_device(batch: list[tuple[int, int, np.ndarray]], rows: int, window: int, device: torch.device,
               staging: torch.Tensor | None = None) -> torch.Tensor:
    """Stack the batch's windows into one (rows, window) float32 tensor on ``device``; rows
    past the batch are zeros. For CUDA it is assembled in pinned host memory and copied
    asynchronously (``non_blocking``), so the copy overlaps with the work already queued.
    ``staging``, a host tensor of that shape (pinned for CUDA), is reused when given: the
    caller must not refill it before the copy is done (reading the previous batch's results
    back to the host waits for it)."""
    pin = device.type == "cuda"
    x = staging if staging is not None else torch.empty((rows, window), dtype=torch.float32, pin_memory=pin)
    xn = x.numpy()
    for j, (_, _, w) in enumerate(batch):
        xn[j] = w
    xn[len(batch):] = 0
    return x.to(device, non_blocking=True) if pin else x.to(device)


def _cut_windows(idx: int, t: _Track, window: int, hop: int, final: bool) -> list[tuple[int, int, np.ndarray]]:
    """Cut every complete window out of ``t.pending``; at the end, also the tail.

    The tail (audio after the last full window) becomes one more window aligned to the end
    of the track when it is at least half a window long; a track shorter than one window
    is zero-padded to a single window.
    """
    out = []
    while t.next_start + window <= t.offset + len(t.pending):
        s = t.next_start - t.offset
        # A view, not a copy: with a small hop a 30-s block holds thousands of overlapping windows,
        # and copies of them all would cost (block / hop) x window samples.
        out.append((idx, t.next_start, t.pending[s : s + window]))
        t.next_start += hop
    if final:
        covered = t.next_start - hop + window if t.windows + len(out) else 0
        if t.windows + len(out) == 0:
            pad = np.zeros(window, np.float32)
            pad[: t.total] = t.pending[-t.total:] if t.total else 0
            out.append((idx, 0, pad))
        elif t.total - covered >= window // 2:
            start = t.total - window
            s = start - t.offset
            out.append((idx, start, t.pending[s : s + window].copy()))
        t.pending = np.zeros(0, np.float32)
    else:
        # Keep only what later windows (and a possible end-aligned tail window) can still use.
        keep_from = min(t.next_start, max(t.offset + len(t.pending) - window, t.offset))
        drop = keep_from - t.offset
        if drop > 0:
            t.pending = t.pending[drop:]
            t.offset = keep_from
    t.windows += len(out)
    return out


class _ProducerFailed:
    """Put by the decode thread instead of _END when it fails: the consumer raises ``error``."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _put(q: queue.Queue, item: object, stop: threading.Event) -> bool:
    """Put ``item`` unless the consumer has stopped (then a full queue would block forever)."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _produce(inputs: Sequence[AudioInput], sr: int, source_rate: int | None, q: queue.Queue,
             stop: threading.Event) -> None:
    """Decode inputs in order (a pool of threads reads ahead, see :func:`stream_many`), putting
    (index, block), (index, StreamEnd) at the end of an input, or (index, AudioError); then _END.
    Whatever ends this thread, the last item is _END or a :class:`_ProducerFailed`, so the
    consumer never waits for an item that will not come."""
    try:
        gen = stream_many(inputs, sr, source_rate=source_rate)
        try:
            for item in gen:
                if not _put(q, item, stop):
                    return
        finally:
            gen.close()
    except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
        _put(q, _ProducerFailed(e), stop)
        return
    _put(q, _END, stop)


def _get(q: queue.Queue, producer: threading.Thread) -> object:
    """The next item from the decode thread; should that thread be gone without its last
    item (it cannot be, see :func:`_produce`), an error rather than a wait forever."""
    while True:
        try:
            return q.get(timeout=0.5)
        except queue.Empty:
            if not producer.is_alive() and q.empty():
                return _ProducerFailed(RuntimeError("the decoding thread ended without finishing its inputs"))


def _check_batch_size(batch_size: object) -> int | None:
    """``batch_size`` as given (None: the default), refused unless a positive int."""
    if batch_size is None:
        return None
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer (windows per forward pass), got {batch_size!r}")
    return int(batch_size)


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
               force_download: bool = False, fast: bool = False) -> Model:
    """Load a model by manifest name, local directory, or ``"hf-hub:<owner>/<repo>[@revision]"``.

    The weights are checked against their sha256 and read as safetensors only. ``device``
    defaults to CUDA when available, else CPU.

    ``fast=True`` trades exactness for speed (cosine similarity to the default vectors
    >= 0.999): at the first batch the default network is timed against a ``torch.compile``
    (freezing) version and, where the hardware has native bfloat16 (Xeons with
    AVX512-BF16/AMX, most GPUs), bfloat16 autocast; the fastest is kept. The first batch
    compiles (tens of seconds on a small CPU, cached on disk for later runs); where
    compiling fails it warns and runs the default float32 model. ``Model.inference_mode``
    says what runs. Details: :mod:`musicembed.inference`.
    """
    resolved = hub.resolve(name, force_download=force_download)
    try:
        net = build_model(resolved.config)
        resolved.config.embedding_dim  # raises for an encoder that pools the mel axis away
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
    model = Model(net, resolved.config, device=_check_device(device), source=resolved.source, fast=fast)
    problem = model._window_problem(resolved.config.window_samples)  # the model's own window must fit
    if problem:
        raise hub.WeightsError(f"{resolved.source}: config.json: window_samples = "
                               f"{resolved.config.window_samples}: {problem}")
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
