"""The embedding pipeline: decoded blocks -> windows -> batches -> network -> pooled results.

One decode pool (:func:`musicembed.audio.stream_many`) reads files ahead in its own
threads, and one more thread resamples its blocks in order, while this thread cuts windows
and runs the network; decoding overlaps with compute and memory stays bounded: a few blocks
of audio and one batch of windows are alive at a time, whatever the file length. Windows
of different files share batches.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .audio import AudioInput, StreamEnd, _name_of, stream_many
from .errors import AudioError
from .results import Embedding, LevelEmbedding
from .windows import MartLevel, full_window_starts, level_spans, tail_start

# A forward pass: the batch's windows (each (window,) float32) -> (window vectors (B, D),
# per-level vectors [(B, M^n, D)] for MART or None).
Forward = Callable[[list[np.ndarray]], tuple[np.ndarray, list[np.ndarray] | None]]


def default_batch_size(method: str, device: torch.device) -> int:
    """Windows per forward pass when none is given: 64 on a GPU; on CPU 4 for PEMR's 3-s
    windows and 8 for MART's 4.1-s windows (measured fastest end to end on a 2-core CPU,
    ``benchmarks/throughput.py --ablation``)."""
    if device.type != "cpu":
        return 64
    return 8 if method == "mart" else 4


def default_threads(device: torch.device, decode_threads: int) -> int | None:
    """Intra-op threads for the network on CPU: the cores the decode threads leave, at
    least 1 (torch's one thread per core plus busy decoders oversubscribes the CPU); None
    (torch's own setting) on other devices."""
    if device.type != "cpu":
        return None
    return max(1, (os.cpu_count() or 1) - decode_threads)


@contextlib.contextmanager
def fewer_torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with at most ``threads`` intra-op threads (None: torch's setting).
    torch's setting is process-wide: it is restored afterwards unless someone changed it
    meanwhile, and it is never raised."""
    before = torch.get_num_threads()
    if threads is None or threads >= before:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() == threads:
            torch.set_num_threads(before)


def _read_ahead(items: Generator, depth: int = 4) -> Generator:
    """``items`` consumed by a thread of its own, up to ``depth`` items ahead: the decode pool's
    last step (resampling, which is sequential within a file) then runs while the network
    computes. Errors reach the caller at the item where they happened; closing this
    generator stops the thread and closes ``items``."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((end, None))
        except BaseException as e:  # noqa: BLE001 - raised in the caller's thread
            put((end, e))
        finally:
            items.close()

    thread = threading.Thread(target=work, name="musicembed-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            try:
                item, error = q.get(timeout=0.5)
            except queue.Empty:
                if not thread.is_alive() and q.empty():
                    raise RuntimeError("the decoding thread ended without finishing its inputs") from None
                continue
            if error is not None:
                raise error
            if item is end:
                return
            yield item
    finally:
        stop.set()
        thread.join()


@dataclass
class _Track:
    """Per-input state while its windows are in flight (positions in samples)."""

    source: str
    pending: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    offset: int = 0  # absolute sample index of pending[0]
    total: int = 0  # samples received so far
    windows: int = 0  # windows handed out
    done_windows: int = 0
    finished: bool = False
    vectors: list[np.ndarray] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    levels: list[list[np.ndarray]] | None = None
    end: StreamEnd = field(default_factory=StreamEnd)


def _cut_windows(idx: int, t: _Track, window: int, hop: int, final: bool) -> list[tuple[int, int, np.ndarray]]:
    """(input index, start, samples) for every window of ``t`` that the audio received so far
    completes (:func:`musicembed.windows.full_window_starts`); at the end, also the tail
    window of :func:`musicembed.windows.tail_start`. Drops audio no later window needs."""
    out = []
    for start in full_window_starts(t.total, window, hop)[t.windows:]:
        s = start - t.offset
        # A view, not a copy: with a small hop a 30-s block holds thousands of overlapping windows,
        # and copies of them all would cost (block / hop) x window samples.
        out.append((idx, start, t.pending[s : s + window]))
    t.windows += len(out)
    if final:
        tail = tail_start(t.total, window, hop, t.windows)
        if tail is not None:
            w = np.zeros(window, np.float32)
            got = t.pending[tail - t.offset : tail - t.offset + window]
            w[: len(got)] = got
            out.append((idx, tail, w))
            t.windows += 1
        t.pending = np.zeros(0, np.float32)
    else:
        # Keep only what later windows (and a possible end-aligned tail window) can still use.
        next_start = t.windows * hop
        keep_from = min(next_start, max(t.total - window, t.offset))
        drop = keep_from - t.offset
        if drop > 0:
            t.pending = t.pending[drop:]
            t.offset = keep_from
    return out


def _add(t: _Track, vector: np.ndarray, start: int, levels: list[np.ndarray] | None) -> None:
    t.vectors.append(vector)
    t.starts.append(start)
    if levels is not None:
        if t.levels is None:
            t.levels = [[] for _ in levels]
        for n, lv in enumerate(levels):
            t.levels[n].append(lv)
    t.done_windows += 1


def _finish(t: _Track, sample_rate: int, window: int, geometry: list[MartLevel] | None) -> Embedding | AudioError:
    """Pool a finished track: the clip vector is the mean of its window vectors."""
    sr = sample_rate
    vectors = np.stack(t.vectors).astype(np.float32)
    if not np.isfinite(vectors).all():  # never hand out a NaN vector
        return AudioError(t.source, "the model produced non-finite values for this input")
    starts = np.asarray(t.starts, dtype=np.int64)
    end_of_audio = max(t.total, 1)
    ends = np.minimum(starts + window, end_of_audio)
    levels = None
    if geometry is not None and t.levels is not None:
        levels = []
        for n, (lv, rel) in enumerate(zip(t.levels, level_spans(geometry))):
            spans = np.minimum(starts[:, None, None] + rel[None], end_of_audio)  # (W, M^n, 2)
            levels.append(LevelEmbedding(level=n, vectors=np.concatenate(lv).astype(np.float32),
                                         starts=spans[..., 0].reshape(-1) / sr, ends=spans[..., 1].reshape(-1) / sr))
    return Embedding(source=t.source, clip=vectors.mean(axis=0).astype(np.float32), vectors=vectors,
                     starts=starts / sr, ends=ends / sr, duration=t.total / sr, levels=levels,
                     declared_duration=t.end.declared_seconds, warning=t.end.warning)


def run(
    inputs: Sequence[AudioInput],
    forward: Forward,
    *,
    sample_rate: int,
    source_rate: int | None,
    window: int,
    hop: int,
    batch_size: int,
    decode_threads: int,
    geometry: list[MartLevel] | None = None,
) -> Generator[tuple[int, Embedding | AudioError], None, None]:
    """Yield (index, Embedding or AudioError) for each input, in input order, as each finishes.

    ``window``/``hop`` in samples at ``sample_rate`` (Hz); ``forward`` runs one batch of at
    most ``batch_size`` windows; ``geometry`` (MART's levels) asks for per-level results.
    A failing input costs only itself.
    """
    tracks: dict[int, _Track] = {}
    batch: list[tuple[int, int, np.ndarray]] = []  # (input index, start sample, window)
    ready: dict[int, Embedding | AudioError] = {}
    next_out = 0
    blocks = _read_ahead(stream_many(inputs, sample_rate, source_rate=source_rate, threads=decode_threads))
    try:
        done = False
        while not done:
            item = next(blocks, None)
            if item is None:
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
            while len(batch) >= batch_size or (done and batch):
                part, batch = batch[:batch_size], batch[batch_size:]
                vecs, levels = forward([w for _, _, w in part])
                for j, (i, start, _) in enumerate(part):
                    _add(tracks[i], vecs[j], start, [lv[j] for lv in levels] if geometry and levels else None)
            for i, t in list(tracks.items()):
                if t.finished and t.done_windows == t.windows:
                    ready[i] = _finish(t, sample_rate, window, geometry)
                    tracks.pop(i)
            while next_out in ready:
                yield next_out, ready.pop(next_out)
                next_out += 1
    finally:
        blocks.close()  # stops the decode pool
