"""Decoding many inputs with a pool of threads (audio.stream_many) gives exactly what one
thread gives: the same blocks bit for bit, the same errors, in input order."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from musicembed import load_model
from musicembed.audio import AudioError, StreamEnd, stream_audio, stream_many

from audio_fixtures import SR, chord, noise, tone

FORMATS = [("wav", "WAV", "PCM_16"), ("flac", "FLAC", "PCM_16"), ("mp3", "MP3", None), ("ogg", "OGG", "VORBIS")]


def _music(seconds: float, seed: int) -> np.ndarray:
    x = chord(seconds=seconds) + noise(seconds, seed=seed) + tone(220 + 20 * seed, seconds, amp=0.1)
    return np.stack([x, np.roll(x, 30 + seed)], axis=1) * 0.8


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("decode")
    out = []
    for k, (ext, fmt, sub) in enumerate(FORMATS):
        p = d / f"music{k}.{ext}"
        sf.write(p, _music(6.3 + k, k), SR, format=fmt, subtype=sub)
        out.append(p)
    return out


def _collect(items):
    got = []
    for i, b in items:
        if isinstance(b, AudioError):
            got.append((i, "error", str(b)))
        elif isinstance(b, StreamEnd):
            got.append((i, "end", b))
        else:
            got.append((i, "block", b))
    return got


def _assert_same(a, b):
    assert [(i, kind) for i, kind, _ in a] == [(i, kind) for i, kind, _ in b]
    for (_, kind, x), (_, _, y) in zip(a, b):
        if kind == "block":
            assert x.dtype == y.dtype == np.float32
            np.testing.assert_array_equal(x, y)
        else:
            assert x == y


@pytest.mark.parametrize("threads", [2, 3])
def test_pool_blocks_equal_one_thread(files, threads):
    """Several blocks per file (1.3-s blocks), every format, blocks of one file read by
    several threads that seek: bit-identical to the sequential decode."""
    one = _collect(stream_many(files, 16000, block_seconds=1.3, threads=1))
    many = _collect(stream_many(files, 16000, block_seconds=1.3, threads=threads))
    _assert_same(one, many)
    assert sum(k == "block" for _, k, _ in many) > 4 * len(files)
    for i, p in enumerate(files):  # and both equal stream_audio, file by file
        ref = np.concatenate(list(stream_audio(p, 16000, block_seconds=1.3)))
        np.testing.assert_array_equal(np.concatenate([b for j, k, b in many if j == i and k == "block"]), ref)


def test_pool_keeps_order_and_errors_with_mixed_inputs(files, tmp_path):
    bad = tmp_path / "bad.ogg"
    bad.write_bytes(b"OggS" + bytes(300))
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.flac"
    data = files[1].read_bytes()
    truncated.write_bytes(data[: len(data) * 2 // 3])  # the header still announces the full length
    cut_mp3 = tmp_path / "cut.mp3"
    data = files[2].read_bytes()
    cut_mp3.write_bytes(data[: len(data) // 2])
    inputs = [files[0], bad, tone(330, 2.0, channels=2), tmp_path / "missing.wav", truncated, empty, files[3],
              cut_mp3, tmp_path, files[2]]
    one = _collect(stream_many(inputs, 16000, source_rate=SR, block_seconds=1.1, threads=1))
    many = _collect(stream_many(inputs, 16000, source_rate=SR, block_seconds=1.1, threads=2))
    _assert_same(one, many)
    ends = {i for i, k, _ in many if k in ("end", "error")}
    assert ends == set(range(len(inputs)))
    assert {1, 3, 5, 8} <= {i for i, k, _ in many if k == "error"}  # broken, missing, empty, a folder


@pytest.mark.parametrize("ext,fmt", [("mp3", "MP3"), ("flac", "FLAC")])
def test_production_blocks_of_a_longer_file(tmp_path, ext, fmt):
    """The real block size (30 s) on a 65-s file: three blocks, two of them after a seek."""
    p = tmp_path / f"long.{ext}"
    sf.write(p, _music(65.0, 7), SR, format=fmt)
    one = _collect(stream_many([p, p], 16000, threads=1))
    many = _collect(stream_many([p, p], 16000, threads=2))
    _assert_same(one, many)
    assert sum(k == "block" for _, k, _ in many) == 6


def test_embed_identical_with_and_without_decode_threads(files, pemr_dir):
    model = load_model(pemr_dir, device="cpu")
    one = model.embed(files, return_timestamps=True, decode_threads=1)
    two = model.embed(files, return_timestamps=True, decode_threads=2)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a.vectors, b.vectors)
        np.testing.assert_array_equal(a.starts, b.starts)


def test_stopping_early_leaves_nothing_running(files):
    import threading

    before = threading.active_count()
    gen = stream_many(files * 3, 16000, block_seconds=0.5, threads=2)
    next(gen)
    gen.close()
    import time

    for _ in range(100):
        if threading.active_count() <= before:
            break
        time.sleep(0.05)
    assert threading.active_count() <= before


def test_streamed_file_equals_whole_file_in_memory(tmp_path):
    """The bundled PEMR model on a 75-s stereo MP3: the streamed path (30-s blocks decoded
    ahead by two threads) gives exactly the vectors of the whole file decoded at once."""
    p = tmp_path / "song.mp3"
    sf.write(p, _music(75.0, 11), SR, format="MP3")
    model = load_model("pemr", device="cpu")
    streamed = model.embed(p, return_timestamps=True)
    whole, sr = sf.read(p, dtype="float32", always_2d=True)
    ref = model.embed(whole, sample_rate=sr, return_timestamps=True)
    np.testing.assert_array_equal(streamed.starts, ref.starts)
    np.testing.assert_array_equal(streamed.vectors, ref.vectors)
    assert len(streamed.vectors) == 25


def _without_total_length(src, dst) -> None:
    """Copy a FLAC with STREAMINFO's total-samples field set to 0, which the FLAC format allows
    ("unknown", as streaming encoders write it); libsndfile then reports 2^63 - 1 frames."""
    b = bytearray(src.read_bytes())
    assert b[:4] == b"fLaC" and b[4] & 0x7F == 0  # the first metadata block is STREAMINFO
    packed = int.from_bytes(b[18:26], "big") & ~((1 << 36) - 1)  # rate, channels, bits | 36-bit total
    b[18:26] = packed.to_bytes(8, "big")
    dst.write_bytes(bytes(b))


_BOUNDED = """
import resource, sys
import numpy as np
resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))  # import torch alone maps ~3.3 GB
from musicembed.audio import stream_many
def items(threads):
    return [b if isinstance(b, np.ndarray) else str(b) for _, b in stream_many([sys.argv[1]], 16000, threads=threads)]
got, want = items(2), items(1)
assert len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got, want)), (got, want)
print(want[-1])
print(sum(len(b) for b in want if isinstance(b, np.ndarray)))
"""


def test_flac_of_unknown_length_decodes_in_bounded_memory(tmp_path):
    """A header claiming ~2^63 frames once made the decode pool list one unit per 30-s block
    before reading anything (an atheris finding: the process grew to 24 GB and was killed).
    In a process capped at 6 GB of address space, the pool now gives what the sequential
    reader gives: all 4 seconds (read without the seeks soundfile adds after each read, which
    such a FLAC cannot do), with no declared length and no warning."""
    import subprocess
    import sys

    src, odd = tmp_path / "tone.flac", tmp_path / "unknown-length.flac"
    sf.write(src, _music(4.0, 1), SR, format="FLAC", subtype="PCM_16")
    _without_total_length(src, odd)
    assert sf.info(odd).frames > 2**62
    r = subprocess.run([sys.executable, "-c", _BOUNDED, str(odd)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    end, samples = r.stdout.splitlines()
    assert end == "StreamEnd(declared_seconds=None, warning=None)" and int(samples) == 4 * 16000
