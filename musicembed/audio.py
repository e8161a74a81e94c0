"""Audio input: decode (soundfile), downmix to mono, resample (soxr), in bounded blocks.

Everything here produces float32 mono at the requested rate. Files are read block by
block into a reused buffer and resampled with a streaming resampler, so a long file never
sits in memory at its source rate; :func:`stream_audio` yields the blocks, and
:func:`load_audio` concatenates them (the same samples, bit for bit).

soxr is used rather than torchaudio's resampler because it streams (block boundaries do
not change the output) and is 2-3x faster on CPU (see docs/paper-notes.md, "Audio").

Truncated and damaged files, one policy for every format: a file is decoded up to its end
or up to the first decoding error, and what decoded is used. When decoding stops with an
error, or well before the length the header declares (:func:`declared_frames`), the end of
the stream (:class:`StreamEnd`) carries a warning naming both durations. A file of which
nothing decodes is an :class:`AudioError`, and so is a read error of the operating system
(EIO): the file may be fine and the disk or network not, so it is not embedded in part.
"""

from __future__ import annotations

import errno
import math
import numbers
import os
import re
import stat
import threading
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

from .errors import AudioError

PathLike = str | os.PathLike
AudioInput = PathLike | np.ndarray | torch.Tensor

BLOCK_SECONDS = 30.0
MAX_CHANNELS = 64  # a 2-D array whose shorter axis is longer than this is not audio
MIN_SAMPLE_RATE = 1000  # Hz; below it a few samples would stand for hours of audio to resample and embed
_MAX_BLOCK_SAMPLES = 1 << 23  # frames x channels decoded at once (32 MB), whatever the header claims
AUDIO_EXTENSIONS = frozenset(
    {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".au", ".w64", ".caf"}
)
# Audio that libsndfile cannot decode: reported when found in a folder, rather than skipped unseen.
UNSUPPORTED_AUDIO_EXTENSIONS = frozenset(
    {".m4a", ".m4b", ".aac", ".mp4", ".wma", ".ape", ".wv", ".mka", ".webm", ".ac3", ".amr", ".dsf", ".dff",
     ".mpc", ".tta", ".ra"}
)


@dataclass(frozen=True)
class AudioInfo:
    """What a file's header declares: duration in seconds and frames (None when the header
    gives no length, e.g. a streamed FLAC), native rate in Hz, channels, container and codec."""

    path: str
    duration: float | None
    sample_rate: int
    channels: int
    frames: int | None
    format: str
    subtype: str


@dataclass(frozen=True)
class StreamEnd:
    """The end of one input's blocks: the length its header declares (seconds, None when
    unknown or for arrays) and a warning when decoding stopped early (see the module docstring)."""

    declared_seconds: float | None = None
    warning: str | None = None


_SF_COUNT_MAX = 2**63 - 1  # libsndfile's frame count for "length unknown"
_SHORT_SECONDS, _SHORT_FRACTION = 0.1, 0.01  # decoded this much short of the declared length: warn


def declared_frames(f: sf.SoundFile) -> int | None:
    """Frames the header declares, or None. libsndfile sizes a WAV/AIFF whose data chunk runs
    past the end of the file by the file size; its log keeps the size the chunk declared."""
    if f.frames >= _SF_COUNT_MAX or f.frames < 0 or stream_damage(f):
        return None  # unknown, or (an Ogg cut short) only what the damaged stream shows
    if f.format in _EXACT_SEEK and f.format not in ("FLAC", "MPEG"):
        log = f.extra_info
        data = re.search(r"^data\s*:\s*(\d+) \(should be \d+\)", log, re.M)
        align = re.search(r"Block Align\s*:\s*(\d+)", log)
        if data and align and int(align.group(1)) > 0:
            size = int(data.group(1))
            if size == 0 or size >= 0xFFFFFF00:  # what streaming writers put there: "length unknown"
                return None
            return max(f.frames, size // int(align.group(1)))
    return f.frames


def stream_damage(f: sf.SoundFile) -> str | None:
    """Damage libsndfile notes while opening a file that it can still decode (an Ogg stream
    cut short has no end-of-stream mark), or None."""
    if f.format == "OGG" and "lacks an end-of-stream bit" in f.extra_info:
        return "the Ogg stream ends without its end-of-stream mark"
    return None


def _end(name: str, rate: int, decoded: int, declared: int | None, stopped: str | None) -> StreamEnd:
    """The :class:`StreamEnd` of a file of which ``decoded`` frames decoded (the one place of the policy)."""
    if decoded == 0:
        raise AudioError(name, "no audio samples could be decoded" + (f" ({stopped})" if stopped else ""))
    short = declared is not None and declared - decoded > max(_SHORT_SECONDS * rate, _SHORT_FRACTION * declared)
    warning = None
    if stopped or short:
        of = f" of the {declared / rate:.2f} s its header declares" if declared is not None else ""
        why = f": {stopped}" if stopped else ""
        warning = f"truncated or damaged: decoded {decoded / rate:.2f} s{of}{why}; embedded what decodes"
    return StreamEnd(declared / rate if declared is not None else None, warning)


def _read(f: sf.SoundFile, out: np.ndarray) -> tuple[int, str | None]:
    """Read up to ``len(out)`` frames into ``out`` (float32, C order): (frames read, libsndfile's
    error or None). Unlike ``SoundFile.read`` the frames decoded before an error are kept, and no
    seek follows the read (a FLAC of unknown length cannot seek)."""
    ffi, snd = getattr(sf, "_ffi", None), getattr(sf, "_snd", None)
    if ffi is None or snd is None:  # pragma: no cover - a soundfile without these internals
        try:
            return len(f.read(len(out), dtype="float32", always_2d=True, out=out)), None
        except (sf.LibsndfileError, RuntimeError) as e:
            return 0, str(e)
    n = int(snd.sf_readf_float(f._file, ffi.cast("float *", ffi.from_buffer(out)), len(out)))
    if snd.sf_error(f._file):
        return n, ffi.string(snd.sf_strerror(f._file)).decode("utf-8", "replace").strip()
    return n, None


def _read_error(message: str) -> str | None:
    """The OS error in libsndfile's words for a failed read() (EIO, ...), or None for bad data."""
    if not message.startswith("System error"):
        return None
    return message.split(":", 1)[-1].strip().rstrip(".") or message


def _check_name(name: str) -> None:
    """Refuse a file name no file system can hold (the OS calls would raise ValueError or
    UnicodeEncodeError, not an OSError)."""
    if "\x00" in name:
        raise AudioError(name, "file name contains a NUL byte (no file can have this name)")
    try:
        os.fsencode(name)
    except UnicodeEncodeError:
        raise AudioError(name, "file name holds characters that cannot be encoded for the file system "
                               "(a lone surrogate?)") from None


def _open(path: PathLike) -> sf.SoundFile:
    name = os.fspath(path)
    _check_name(name)
    try:
        st = os.stat(name)
    except FileNotFoundError:
        if os.path.islink(name):
            raise AudioError(name, f"broken symbolic link (its target {os.readlink(name)!r} does not exist)") from None
        raise AudioError(name, "no such file") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise AudioError(name, "symbolic link loop (too many levels of symbolic links)") from None
        if e.errno == errno.EACCES:
            raise AudioError(name, "permission denied (a folder on its path cannot be entered)") from None
        raise AudioError(name, f"cannot access: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise AudioError(name, "is a directory, not an audio file (use -r/--recursive to embed a folder)")
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block the decoder forever, a device never ends
        raise AudioError(name, "not a regular file (a pipe, socket or device); only audio files can be embedded")
    if not os.access(name, os.R_OK):
        raise AudioError(name, "permission denied")
    if st.st_size == 0:
        raise AudioError(name, "file is empty (0 bytes)")
    try:
        # bytes: file names that are not valid UTF-8 (surrogate-escaped by Python) open too
        return sf.SoundFile(os.fsencode(name))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        reason = str(e).split(": ", 1)[-1] if ": " in str(e) else str(e)
        reason = reason.strip() or type(e).__name__
        if "Permission denied" in reason:
            raise AudioError(name, "permission denied") from None
        failed = _read_fails(name)  # libsndfile words a failed read like bad data (MP3: "not a regular file")
        if failed:
            raise AudioError(name, f"read error: {failed} (the disk or network failed, not the file's data: "
                                   "try again)") from None
        if "does not exist or is not a regular file" in reason:  # libsndfile's words when its MP3 decoder gives up
            reason = "not a valid audio file (no decodable audio data found)"
        raise AudioError(name, f"cannot decode: {reason}") from None


_PROBE_BYTES = 256 << 20


def _read_fails(name: str) -> str | None:
    """The OS error reading the file's first :data:`_PROBE_BYTES` gives (EIO, ...), or None."""
    try:
        with open(os.fsencode(name), "rb", buffering=0) as f:
            left = _PROBE_BYTES
            while left > 0:
                chunk = f.read(min(1 << 20, left))
                if not chunk:
                    break
                left -= len(chunk)
    except OSError as e:
        return e.strerror or str(e)
    return None


def info(path: PathLike) -> AudioInfo:
    """Header facts of an audio file (no full decode)."""
    with _open(path) as f:
        frames = declared_frames(f)
        return AudioInfo(
            path=os.fspath(path),
            duration=frames / f.samplerate if f.samplerate and frames is not None else None,
            sample_rate=f.samplerate,
            channels=f.channels,
            frames=frames,
            format=f.format,
            subtype=f.subtype,
        )


def _downmix(block: np.ndarray, out: np.ndarray) -> np.ndarray:
    """(frames, channels) -> mono into ``out[:frames]``; column sums, far faster than mean(axis=1)."""
    n, c = block.shape
    mono = out[:n]
    np.copyto(mono, block[:, 0])
    for ch in range(1, c):
        mono += block[:, ch]
    if c > 1:
        mono *= 1.0 / c
    return mono


def _to_float(x: np.ndarray) -> np.ndarray:
    """Integer PCM -> float32 in [-1, 1); floats -> float32."""
    if x.dtype.kind == "f":
        return x.astype(np.float32, copy=False)
    if x.dtype.kind == "i":
        return (x.astype(np.float32) / float(2 ** (8 * x.dtype.itemsize - 1))).astype(np.float32, copy=False)
    if x.dtype.kind == "u":
        half = float(2 ** (8 * x.dtype.itemsize - 1))
        return ((x.astype(np.float32) - half) / half).astype(np.float32, copy=False)
    if x.dtype.kind == "b":
        return x.astype(np.float32)
    raise AudioError("<array>", f"unsupported dtype {x.dtype}")


def _array_to_mono(x: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    """1-D (samples,) or 2-D (channels, samples) / (samples, channels) -> float32 mono.

    For 2-D input the shorter axis is taken as channels.
    """
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = x.float().numpy() if x.dtype in (torch.bfloat16, torch.float16) else x.numpy()
    x = np.asarray(x)
    if x.ndim == 2:
        if x.shape[0] < x.shape[1]:
            x = x.T
        if x.shape[1] > MAX_CHANNELS:
            raise AudioError(name, f"array of shape {x.T.shape} does not look like audio (too many channels)")
    elif x.ndim != 1:
        raise AudioError(name, f"expected a 1-D or 2-D array (samples[, channels]), got {x.ndim}-D {x.shape}")
    with np.errstate(over="ignore", invalid="ignore"):  # float64 beyond float32's range: caught just below
        x = _to_float(x)
    if x.size == 0:
        raise AudioError(name, "no audio samples (length 0)")
    if not np.isfinite(x).all():
        raise AudioError(name, "contains NaN or infinite samples")
    if x.ndim == 2:
        with np.errstate(over="ignore", invalid="ignore"):
            x = _downmix(np.ascontiguousarray(x), np.empty(x.shape[0], np.float32)).copy()
        if not np.isfinite(x).all():
            raise AudioError(name, "samples too large to mix down (beyond the float32 range)")
    return np.ascontiguousarray(x)


class _Resampler:
    """Streaming resampler from ``in_rate`` to ``out_rate`` Hz (identity when equal)."""

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self.stream = None if in_rate == out_rate else soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32")

    def __call__(self, block: np.ndarray, last: bool) -> np.ndarray:
        if self.stream is None:
            return block.copy()
        return self.stream.resample_chunk(block, last=last)


def _blocks_from_array(x: np.ndarray, in_rate: int, sample_rate: int, block: int) -> Generator[np.ndarray, None, StreamEnd]:
    rs = _Resampler(in_rate, sample_rate)
    n = len(x)
    produced = 0
    for start in range(0, n, block):
        out = rs(x[start : start + block], last=start + block >= n)
        produced += out.size
        if out.size:
            yield out
    if produced == 0:
        raise AudioError("<array>", f"{n} samples at {in_rate:g} Hz resample to no sample at {sample_rate} Hz")
    return StreamEnd()


def _blocks_from_file(path: PathLike, sample_rate: int, block_seconds: float, *, skip: int = 0,
                      resampler: _Resampler | None = None, produced: int = 0):
    """Blocks of a file, read sequentially; returns its :class:`StreamEnd`. ``skip`` frames
    already handled elsewhere (with ``resampler``, the stream that resampled them into
    ``produced`` samples) are read again but not yielded."""
    name = os.fspath(path)
    with _open(path) as f:
        if f.frames == 0:
            raise AudioError(name, "no audio samples (length 0)")
        if f.samplerate < MIN_SAMPLE_RATE or f.channels < 1:
            raise AudioError(name, f"header claims {f.samplerate} Hz and {f.channels} channel(s): not playable audio "
                                   f"(needs at least {MIN_SAMPLE_RATE} Hz and one channel)")
        block = max(1, min(int(block_seconds * f.samplerate), _MAX_BLOCK_SAMPLES // f.channels))
        buf = np.empty((block, f.channels), dtype=np.float32)
        mono_buf = np.empty(block, dtype=np.float32)
        rs = resampler or _Resampler(f.samplerate, sample_rate)
        total, stopped = 0, None
        while True:  # reading, not seeking: the same frames (and errors) as one pass from the start
            want = min(block, skip - total) if total < skip else block
            n, error = _read(f, buf[:want])
            if error and _read_error(error):
                raise AudioError(name, f"read error after {(total + n) / f.samplerate:.2f} s: {_read_error(error)} "
                                       "(the disk or network failed, not the file's data: try again)")
            skipped = min(n, max(skip - total, 0))
            total += n
            last = n < want or error is not None
            if n > skipped:
                with np.errstate(over="ignore", invalid="ignore"):  # absurd levels overflow: caught just below
                    mono = _downmix(buf[skipped:n], mono_buf)
                if not np.isfinite(mono).all():
                    raise AudioError(name, "decoded samples contain NaN or infinite values")
            else:
                mono = mono_buf[:0]
            if mono.size or last:
                out = rs(mono, last=last)
                produced += out.size
                if out.size:
                    yield out
            if error:
                stopped = f"decoding stopped at {total / f.samplerate:.2f} s ({error})"
            if last:
                break
        end = _end(name, f.samplerate, total, declared_frames(f), stopped or stream_damage(f))
        if produced == 0:
            raise AudioError(name, f"{total} frames at {f.samplerate} Hz resample to no sample at {sample_rate} Hz")
        return end


def stream_audio(
    source: AudioInput,
    sample_rate: int,
    *,
    source_rate: int | None = None,
    block_seconds: float = BLOCK_SECONDS,
) -> Iterator[np.ndarray]:
    """Yield float32 mono blocks at ``sample_rate`` Hz, each about ``block_seconds`` long.

    ``source`` is a path (any format libsndfile reads: WAV, FLAC, OGG/Vorbis/Opus, MP3, ...)
    or an array/tensor, which needs ``source_rate`` (its rate in Hz). Raises
    :class:`AudioError` naming the file and the reason when the input cannot be decoded.
    """
    return (yield from _stream(source, sample_rate, source_rate=source_rate, block_seconds=block_seconds))


def _stream(source: AudioInput, sample_rate: int, *, source_rate: int | None, block_seconds: float):
    """:func:`stream_audio`, returning the input's :class:`StreamEnd` when its blocks are done."""
    if isinstance(source, (np.ndarray, torch.Tensor)):
        if source_rate is None:
            raise AudioError("<array>", "arrays and tensors need sample_rate= (their rate in Hz)")
        if isinstance(source_rate, bool) or not isinstance(source_rate, numbers.Real):
            raise AudioError("<array>", f"sample_rate must be a number in Hz, got {source_rate!r}")
        if not source_rate >= MIN_SAMPLE_RATE or not math.isfinite(source_rate):  # NaN fails both
            raise AudioError("<array>", f"sample_rate must be at least {MIN_SAMPLE_RATE} Hz, got {source_rate}")
        x = _array_to_mono(source, "<array>")
        return (yield from _blocks_from_array(x, int(source_rate), sample_rate,
                                               max(1, int(block_seconds * source_rate))))
    if not isinstance(source, (str, os.PathLike)):
        raise AudioError(_name_of(source), "expected a file path, numpy array or torch tensor")
    return (yield from _blocks_from_file(source, sample_rate, block_seconds))


def default_decode_threads() -> int:
    """Threads decoding files ahead of the network: 2, or 1 on a single core."""
    return min(2, os.cpu_count() or 1)


def stream_many(
    inputs: Sequence[AudioInput],
    sample_rate: int,
    *,
    source_rate: int | None = None,
    block_seconds: float = BLOCK_SECONDS,
    threads: int | None = None,
) -> Generator[tuple[int, np.ndarray | StreamEnd | AudioError], None, None]:
    """Decode many inputs in order: yield ``(i, block)`` for each block of input ``i`` (float32
    mono at ``sample_rate`` Hz, the same blocks :func:`stream_audio` yields), then
    ``(i, StreamEnd)`` at its end, or ``(i, AudioError)`` when it fails (blocks already
    yielded stay valid).

    With ``threads`` > 1 (default :func:`default_decode_threads`) files are decoded by a pool of
    threads, up to ``2 * threads`` blocks ahead: the 30-s blocks of one long file are read
    by several threads at once (each with its own handle, seeking to its block), and short
    files are decoded side by side. libsndfile releases the GIL, so this uses more cores;
    the output is identical, bit for bit (tests/test_decode.py), and memory stays bounded.
    Anything unusual in a file (a read error, a short read before the end the header
    announced, audio beyond it) makes the rest of that file be read sequentially by the
    same code as :func:`stream_audio`, so the errors and their messages are the same.
    """
    threads = default_decode_threads() if threads is None else max(1, int(threads))
    if threads == 1:
        for i, x in enumerate(inputs):
            yield from _one_input(i, x, sample_rate, source_rate, block_seconds)
        return
    yield from _DecodePool(threads, sample_rate, block_seconds).run(inputs, source_rate)


def _one_input(i: int, x: AudioInput, sample_rate: int, source_rate: int | None,
               block_seconds: float) -> Iterator[tuple[int, np.ndarray | StreamEnd | AudioError]]:
    try:
        end = yield from _tagged(i, _stream(x, sample_rate, source_rate=source_rate, block_seconds=block_seconds))
        yield i, end
    except AudioError as e:
        yield i, e
    except Exception as e:  # a decoder bug must cost this input only, never the run
        yield i, AudioError(_name_of(x), f"{type(e).__name__}: {e}")


def _tagged(i: int, blocks):
    """(i, block) for each block; returns the blocks' own return value (their StreamEnd)."""
    while True:
        try:
            block = next(blocks)
        except StopIteration as stop:
            return stop.value
        yield i, block


def _name_of(x: object) -> str:
    """How an input is named in messages: its path, ``<array>``, or (not an input) its repr."""
    if isinstance(x, (np.ndarray, torch.Tensor)):
        return "<array>"
    try:
        return os.fspath(x) if isinstance(x, (str, os.PathLike)) else repr(x)[:80]
    except Exception:  # a PathLike whose __fspath__ fails
        return f"<{type(x).__name__}>"


# Containers whose seeks land on the exact sample, so a block read after a seek equals the
# same block read in one pass (PCM, FLAC, MP3: tests/test_decode.py). libsndfile's Ogg
# (Vorbis/Opus) seeks are not: blocks after a seek can differ in the last bits.
_EXACT_SEEK = frozenset({"WAV", "WAVEX", "RF64", "W64", "AIFF", "AU", "CAF", "FLAC", "MPEG"})


class _Fallback(Exception):
    """A block could not be decoded the fast way: read the rest of the file sequentially."""


class _DecodePool:
    """Blocks of files decoded by a thread pool, consumed (downmixed, resampled) in order."""

    def __init__(self, threads: int, sample_rate: int, block_seconds: float) -> None:
        self.threads, self.sample_rate, self.block_seconds = threads, sample_rate, block_seconds
        self.local = threading.local()

    # -- worker side
    def _decode(self, name: str, start: int, count: int, channels: int, blocks: int = 1) -> list[np.ndarray]:
        """``blocks`` reads of ``count`` frames from ``start`` (stopping after a short one),
        each downmixed to a new mono array."""
        loc = self.local
        f = getattr(loc, "file", None)
        if f is None or loc.name != name:  # one handle per thread, kept while it reads this file
            if f is not None:
                f.close()
            f = loc.file = sf.SoundFile(os.fsencode(name))
            loc.name = name
        buf = getattr(loc, "buf", None)
        if buf is None or buf.shape[0] < count or buf.shape[1] != channels:
            buf = loc.buf = np.empty((count, channels), np.float32)
        if f.tell() != start:
            f.seek(start)
        out = []
        for _ in range(blocks):
            got = f.read(count, dtype="float32", always_2d=True, out=buf[:count])
            with np.errstate(over="ignore", invalid="ignore"):
                mono = _downmix(got, np.empty(len(got), np.float32))
            if not np.isfinite(mono).all():
                raise _Fallback
            out.append(mono)
            if len(got) < count:
                break
        return out

    # -- consumer side
    def run(self, inputs: Sequence[AudioInput], source_rate: int | None):
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(self.threads, thread_name_prefix="musicembed-decode")
        ahead = 2 * self.threads
        plans: deque = deque()  # [i, x, _Plan | AudioError | None (arrays, odd files), units submitted]
        futures: deque = deque()  # (i, unit index, future), in input and block order
        it = iter(enumerate(inputs))

        def fill() -> None:
            while len(futures) < ahead:
                last = plans[-1] if plans else None
                if last is not None and isinstance(last[2], _Plan) and last[3] < len(last[2]):
                    start, blocks = last[2][last[3]]
                    futures.append((last[0], last[3], pool.submit(self._decode, last[2].name, start, last[2].block,
                                                                  last[2].channels, blocks)))
                    last[3] += 1
                    continue
                if len(plans) > ahead:  # files opened ahead without blocks to decode (arrays, errors)
                    return
                nxt = next(it, None)
                if nxt is None:
                    return
                plans.append([nxt[0], nxt[1], self._plan(nxt[1]), 0])

        try:
            fill()
            while plans:
                i, x, plan, _ = plans[0]
                if plan is None or isinstance(plan, AudioError):  # arrays, unplannable files: in this thread
                    plans.popleft()
                    if isinstance(plan, AudioError):
                        yield i, plan
                    else:
                        yield from _one_input(i, x, self.sample_rate, source_rate, self.block_seconds)
                    fill()
                    continue
                yield from self._consume(i, plan, futures, fill)
                plans.popleft()
                while futures and futures[0][0] == i:  # units after a short read or a fallback
                    futures.popleft()[2].cancel()
                fill()
        finally:
            for _, _, fut in futures:
                fut.cancel()
            pool.shutdown(wait=False, cancel_futures=True)  # the workers' handles close with their threads

    def _plan(self, x: AudioInput):
        if not isinstance(x, (str, os.PathLike)):
            return None
        name = os.fspath(x)
        try:
            with _open(x) as f:
                frames, rate, channels, seekable, fmt = f.frames, f.samplerate, f.channels, f.seekable(), f.format
                declared, damage = declared_frames(f), stream_damage(f)
        except AudioError as e:
            return e
        except Exception as e:  # a decoder bug must cost this input only, never the run
            return AudioError(name, f"{type(e).__name__}: {e}")
        if not seekable or frames <= 0 or declared is None or rate < MIN_SAMPLE_RATE or channels < 1:
            return None  # the sequential path reads it (a length the header does not give) or reports it
        block = max(1, min(int(self.block_seconds * rate), _MAX_BLOCK_SAMPLES // channels))
        if fmt in _EXACT_SEEK:  # each block by whichever thread is free, seeking to it
            return _Plan(name, rate, channels, block, range(0, frames, block), 1, declared, damage)
        if frames <= 2 * block:  # a short file: read from the start by one thread (no seek)
            return _Plan(name, rate, channels, block, range(1), 2, declared, damage)
        return None  # long Ogg: its seeks are not sample-exact in libsndfile; read in order here

    def _consume(self, i: int, plan: _Plan, futures, fill):
        rs = _Resampler(plan.rate, self.sample_rate)
        total = produced = 0
        for k in range(len(plan)):
            fill()
            if not futures or futures[0][0] != i or futures[0][1] != k:
                break  # cannot happen; read the rest sequentially to be safe
            fut = futures.popleft()[2]
            try:
                monos = fut.result()
            except Exception:  # read error, seek error, non-finite samples: the sequential path decides
                break
            for mono in monos:
                total += len(mono)
                last = len(mono) < plan.block
                out = rs(mono, last=last)
                produced += out.size
                if out.size:
                    yield i, out
                if last:
                    end: StreamEnd | AudioError
                    try:
                        end = _end(plan.name, plan.rate, total, plan.declared, plan.damage)
                        if produced == 0:
                            raise AudioError(plan.name, f"{total} frames at {plan.rate} Hz resample to no sample "
                                                        f"at {self.sample_rate} Hz")
                    except AudioError as e:
                        end = e
                    yield i, end
                    return
        # Audio beyond the header's length, or a block that failed: continue sequentially.
        try:
            end = yield from _tagged(i, _blocks_from_file(plan.name, self.sample_rate, self.block_seconds, skip=total,
                                                          resampler=rs, produced=produced))
            yield i, end
        except AudioError as e:
            yield i, e
        except Exception as e:
            yield i, AudioError(plan.name, f"{type(e).__name__}: {e}")


class _Plan:
    """A file's blocks, unit k = (start frame, reads): computed when asked for, since a broken
    header can claim ~2^63 frames (a list of its units would not fit in memory)."""

    def __init__(self, name: str, rate: int, channels: int, block: int, starts: range, reads: int,
                 declared: int | None, damage: str | None) -> None:
        self.name, self.rate, self.channels, self.block = name, rate, channels, block
        self.starts, self.reads, self.declared, self.damage = starts, reads, declared, damage

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, k: int) -> tuple[int, int]:
        return self.starts[k], self.reads


def load_audio(source: AudioInput, sample_rate: int, *, source_rate: int | None = None) -> np.ndarray:
    """Decode a whole input to float32 mono (samples,) at ``sample_rate`` Hz."""
    blocks = list(stream_audio(source, sample_rate, source_rate=source_rate))
    if not blocks:
        name = "<array>" if isinstance(source, (np.ndarray, torch.Tensor)) else os.fspath(source)
        raise AudioError(name, "too short to resample to a single sample")
    return np.concatenate(blocks) if len(blocks) > 1 else blocks[0]


def find_audio_files(paths: list[PathLike], recursive: bool = False, *,
                     report_unsupported: bool = False) -> tuple[list[Path], list[tuple[str, str]]]:
    """Expand files and folders into audio files (sorted per folder, duplicates dropped).

    Returns (files, problems): a problem is (path, reason) for an input that is missing or
    a folder given without ``recursive`` or holding no audio, for a folder that cannot be
    listed, and (with ``report_unsupported``) for each file found in a folder whose audio
    format libsndfile cannot read (.m4a, .wma, ...). Symlink loops are not followed.
    """
    files: list[Path] = []
    problems: list[tuple[str, str]] = []
    seen: set[str] = set()

    def add(p: Path) -> None:
        key = os.path.realpath(p)
        if key not in seen:
            seen.add(key)
            files.append(p)

    def unlistable(e: OSError) -> None:  # os.walk would skip an unreadable folder without a word
        problems.append((str(e.filename), f"cannot list this folder: {e.strerror or e}"))

    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            if not recursive:
                problems.append((str(p), "is a directory (use -r/--recursive to embed a folder)"))
                continue
            found = []
            visited: set[str] = set()

            for root, dirs, names in os.walk(p, followlinks=True, onerror=unlistable):
                real = os.path.realpath(root)
                if real in visited:  # symlink loop or a folder reached twice
                    dirs[:] = []
                    continue
                visited.add(real)
                dirs.sort()
                found += [Path(root) / n for n in sorted(names) if Path(n).suffix.lower() in AUDIO_EXTENSIONS]
                problems += [(str(Path(root) / n), f"{Path(n).suffix.lower()} files are not supported (libsndfile "
                              "cannot decode them); convert to FLAC or WAV, e.g. `ffmpeg -i IN OUT.flac`")
                             for n in sorted(names) if report_unsupported
                             and Path(n).suffix.lower() in UNSUPPORTED_AUDIO_EXTENSIONS]
            if not found:
                problems.append((str(p), "folder contains no audio files (" + ", ".join(sorted(AUDIO_EXTENSIONS)) + ")"))
            for f in found:
                add(f)
        elif p.exists() or p.is_symlink():
            add(p)
        else:
            problems.append((str(p), "no such file or directory"))
    return files, problems
