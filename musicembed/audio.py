"""Audio input: decode (soundfile), downmix to mono, resample (soxr), in bounded blocks.

Everything here produces float32 mono at the requested rate. Files are read block by
block into a reused buffer and resampled with a streaming resampler, so a long file never
sits in memory at its source rate; :func:`stream_audio` yields the blocks, and
:func:`load_audio` concatenates them (the same samples, bit for bit).

soxr is used rather than torchaudio's resampler because it streams (block boundaries do
not change the output) and is 2-3x faster on CPU (see docs/paper-notes.md, "Audio").
"""

from __future__ import annotations

import errno
import math
import numbers
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import soundfile as sf
import soxr
import torch

from .errors import AudioError

PathLike = Union[str, os.PathLike]
AudioInput = Union[PathLike, np.ndarray, torch.Tensor]

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
    """What a file holds: duration in seconds, native rate in Hz, channels, container and codec."""

    path: str
    duration: float
    sample_rate: int
    channels: int
    frames: int
    format: str
    subtype: str


def _open(path: PathLike) -> sf.SoundFile:
    name = os.fspath(path)
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
        if "does not exist or is not a regular file" in reason:  # libsndfile's words when its MP3 decoder gives up
            reason = "not a valid audio file (no decodable audio data found)"
        raise AudioError(name, f"cannot decode: {reason}") from None


def info(path: PathLike) -> AudioInfo:
    """Header facts of an audio file (no full decode)."""
    with _open(path) as f:
        return AudioInfo(
            path=os.fspath(path),
            duration=f.frames / f.samplerate if f.samplerate else 0.0,
            sample_rate=f.samplerate,
            channels=f.channels,
            frames=f.frames,
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


def _blocks_from_array(x: np.ndarray, in_rate: int, sample_rate: int, block: int) -> Iterator[np.ndarray]:
    rs = _Resampler(in_rate, sample_rate)
    n = len(x)
    for start in range(0, n, block):
        out = rs(x[start : start + block], last=start + block >= n)
        if out.size:
            yield out


def _blocks_from_file(path: PathLike, sample_rate: int, block_seconds: float) -> Iterator[np.ndarray]:
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
        rs = _Resampler(f.samplerate, sample_rate)
        total = 0
        while True:
            try:
                got = f.read(block, dtype="float32", always_2d=True, out=buf)
            except (sf.LibsndfileError, RuntimeError) as e:
                raise AudioError(name, f"decoding failed after {total / f.samplerate:.2f} s: {e}") from None
            n = len(got)
            total += n
            last = n < block
            with np.errstate(over="ignore", invalid="ignore"):  # absurd levels overflow: caught just below
                mono = _downmix(got, mono_buf) if n else mono_buf[:0]
            if not np.isfinite(mono).all():
                raise AudioError(name, "decoded samples contain NaN or infinite values")
            out = rs(mono, last=last)
            if out.size:
                yield out
            if last:
                break
        if total == 0:
            raise AudioError(name, "no audio samples could be decoded")


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
    if isinstance(source, (np.ndarray, torch.Tensor)):
        if source_rate is None:
            raise AudioError("<array>", "arrays and tensors need sample_rate= (their rate in Hz)")
        if isinstance(source_rate, bool) or not isinstance(source_rate, numbers.Real):
            raise AudioError("<array>", f"sample_rate must be a number in Hz, got {source_rate!r}")
        if not source_rate >= MIN_SAMPLE_RATE or not math.isfinite(source_rate):  # NaN fails both
            raise AudioError("<array>", f"sample_rate must be at least {MIN_SAMPLE_RATE} Hz, got {source_rate}")
        x = _array_to_mono(source, "<array>")
        yield from _blocks_from_array(x, int(source_rate), sample_rate, max(1, int(block_seconds * source_rate)))
        return
    if not isinstance(source, (str, os.PathLike)):
        raise AudioError(repr(source)[:80], "expected a file path, numpy array or torch tensor")
    yield from _blocks_from_file(source, sample_rate, block_seconds)


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

    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            if not recursive:
                problems.append((str(p), "is a directory (use -r/--recursive to embed a folder)"))
                continue
            found = []
            visited: set[str] = set()

            def unlistable(e: OSError) -> None:  # os.walk would skip an unreadable folder without a word
                problems.append((str(e.filename), f"cannot list this folder: {e.strerror or e}"))

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
