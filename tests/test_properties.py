"""Property-based tests (issue 5): whatever the waveform's length, channel count, layout, sample
rate, dtype and content, ``embed`` returns a finite float32 vector of the model's size (or,
for content no audio can hold, an AudioError naming the reason) and a duration that matches
the input. Also: threads sharing one model agree with sequential use."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from musicembed import AudioError, load_model
from musicembed.audio import MIN_SAMPLE_RATE

RATES = [MIN_SAMPLE_RATE, 8000, 11025, 16000, 22050, 44100, 48000, 96000, 192000]
DTYPES = ["float32", "float64", "int16", "int32", "uint8", "float16"]
# CI runs a fixed, modest sample; MUSICEMBED_HYPOTHESIS_EXAMPLES=500 (say) searches longer, at random.
_LONG = int(os.environ.get("MUSICEMBED_HYPOTHESIS_EXAMPLES", "0"))


def _settings(n: int) -> settings:
    return settings(max_examples=_LONG or n, deadline=None, derandomize=not _LONG,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def pemr(pemr_dir):
    return load_model(pemr_dir, device="cpu")


@pytest.fixture(scope="module")
def mart(mart_dir):
    return load_model(mart_dir, device="cpu")


@st.composite
def waveforms(draw):
    """(array, sample_rate, frames) of any shape audio comes in."""
    sr = draw(st.one_of(st.sampled_from(RATES), st.integers(MIN_SAMPLE_RATE, 200_000)))
    frames = draw(st.one_of(st.integers(1, 64), st.integers(1, int(1.6 * sr))))
    channels = draw(st.integers(1, 8))
    kind = draw(st.sampled_from(["noise", "tone", "silence", "dc", "clipped", "impulse"]))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    amp = draw(st.sampled_from([1e-6, 0.01, 0.5, 1.0]))
    t = np.arange(frames) / sr
    if kind == "noise":
        x = amp * rng.standard_normal((frames, channels))
    elif kind == "tone":
        x = amp * np.sin(2 * np.pi * rng.uniform(20, sr / 2) * t)[:, None].repeat(channels, 1)
    elif kind == "silence":
        x = np.zeros((frames, channels))
    elif kind == "dc":
        x = np.full((frames, channels), amp)
    elif kind == "clipped":
        x = np.clip(10 * rng.standard_normal((frames, channels)), -1, 1)
    else:
        x = np.zeros((frames, channels))
        x[rng.integers(frames)] = 1.0
    dtype = draw(st.sampled_from(DTYPES))
    if dtype.startswith("int"):
        scale = np.iinfo(dtype).max
        x = np.clip(np.round(x * scale), np.iinfo(dtype).min, scale).astype(dtype)
    elif dtype == "uint8":
        x = np.clip(np.round(x * 127 + 128), 0, 255).astype(np.uint8)
    else:
        x = x.astype(dtype)
    layout = draw(st.sampled_from(["frames_channels", "channels_frames", "mono", "strided"]))
    if layout == "channels_frames":
        x = np.ascontiguousarray(x.T)
    elif layout == "mono" or channels == 1:
        x = x[:, 0].copy()
    else:  # a non-contiguous view
        x = np.repeat(x, 2, axis=0)[::2]
    # The documented rule for 2-D input: the shorter axis is the channels (so 1 frame of 5 channels
    # reads as 5 samples of mono).
    return x, sr, max(x.shape)


def _assert_embedding(model, e, frames: int, sr: float) -> None:
    assert e.clip.shape == (model.embedding_dim,) and e.clip.dtype == np.float32
    assert np.isfinite(e.clip).all() and np.isfinite(e.vectors).all()
    assert e.vectors.shape[1] == model.embedding_dim and len(e.starts) == len(e.vectors) >= 1
    # duration: the resampled length, within a couple of samples of the input's
    assert abs(e.duration - frames / sr) <= 3 / model.sample_rate + 3 / sr
    assert (np.diff(e.starts) >= 0).all() and (e.ends > e.starts).all()


@_settings(30)
@given(w=waveforms(), torch_input=st.booleans())
def test_any_waveform_gives_a_finite_vector(pemr, w, torch_input):
    x, sr, frames = w
    if torch_input:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(x))
    try:
        e = pemr.embed(x, sample_rate=sr, return_timestamps=True)
    except AudioError as err:  # a sample or two that resample to nothing: an error, not silence
        assert "resample to no sample" in err.reason and frames * pemr.sample_rate / sr < 2, err
        return
    _assert_embedding(pemr, e, frames, sr)


@_settings(6)
@given(w=waveforms())
def test_any_waveform_through_mart_levels(mart, w):
    x, sr, frames = w
    try:
        e = mart.embed(x, sample_rate=sr, hierarchical=True)
    except AudioError as err:  # a sample or two that resample to nothing: an error, not silence
        assert "resample to no sample" in err.reason and frames * mart.sample_rate / sr < 2, err
        return
    _assert_embedding(mart, e, frames, sr)
    for lv in e.levels:
        assert lv.vectors.shape[1] == mart.embedding_dim and np.isfinite(lv.vectors).all()


FILE_FORMATS = [("WAV", "PCM_16", ".wav"), ("WAV", "PCM_24", ".wav"), ("WAV", "FLOAT", ".wav"),
                ("WAV", "DOUBLE", ".wav"), ("FLAC", "PCM_16", ".flac"), ("OGG", "VORBIS", ".ogg"),
                ("AIFF", "PCM_16", ".aiff"), ("MP3", "MPEG_LAYER_III", ".mp3")]


@_settings(12)
@given(fmt=st.sampled_from(FILE_FORMATS), sr=st.sampled_from([8000, 16000, 22050, 44100, 48000]),
       channels=st.integers(1, 8), seconds=st.floats(0.01, 1.5), seed=st.integers(0, 1000))
def test_any_file_gives_a_finite_vector_or_names_the_problem(pemr, tmp_path_factory, fmt, sr, channels, seconds,
                                                             seed):
    container, subtype, ext = fmt
    if container in ("OGG", "MP3") and channels > 2:
        channels = 2  # the encoders libsndfile ships take at most stereo
    frames = max(1, int(seconds * sr))
    x = (0.3 * np.random.default_rng(seed).standard_normal((frames, channels))).clip(-1, 1)
    path = tmp_path_factory.mktemp("prop") / f"x{ext}"
    try:
        sf.write(path, x, sr, format=container, subtype=subtype)
    except (sf.LibsndfileError, RuntimeError, ValueError):
        return  # libsndfile cannot write this combination; nothing to read back
    try:
        e = pemr.embed(path, return_timestamps=True)
    except AudioError as err:  # a lossy codec may hold nothing for very short input
        assert err.source == str(path) and err.reason
        assert container in ("OGG", "MP3"), err
        return
    assert e.clip.shape == (pemr.embedding_dim,) and np.isfinite(e.clip).all()
    if container not in ("OGG", "MP3"):  # lossy codecs pad or trim a few ms
        assert abs(e.duration - frames / sr) <= 3 / pemr.sample_rate + 3 / sr


@_settings(4)
@given(ws=st.lists(waveforms(), min_size=4, max_size=4), hop=st.sampled_from([None, 0.25]))
def test_threads_sharing_a_model_match_sequential_use(pemr, ws, hop):
    """Four threads each embedding their own inputs (different lengths, rates and options) at
    once give what one thread gives running them one after the other."""
    assume(all(frames * pemr.sample_rate / sr >= 2 for _, sr, frames in ws))  # fewer resample to nothing
    jobs = [([x], sr) for x, sr, _ in ws]
    sequential = [pemr.embed(xs, sample_rate=sr, hop_seconds=hop) for xs, sr in jobs]
    out: list = [None] * len(jobs)
    start = threading.Barrier(len(jobs))

    def work(i):
        start.wait()
        xs, sr = jobs[i]
        out[i] = pemr.embed(xs * 3, sample_rate=sr, hop_seconds=hop, batch_size=1 + i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    [t.start() for t in threads]
    [t.join(120) for t in threads]
    for i, (got, want) in enumerate(zip(out, sequential)):
        assert got is not None, f"thread {i} did not finish"
        for row in got:
            np.testing.assert_allclose(row, want[0], rtol=1e-4, atol=1e-4)


def test_fuzz_harness_bounded_run(tmp_path):
    """The atheris harness (fuzz/fuzz_decode_embed.py) for a bounded time: no finding allowed."""
    pytest.importorskip("atheris", reason="atheris is not installed (pip install atheris: wheels for "
                                          "Linux x86-64, CPython 3.10-3.13; see fuzz/README.md)")
    harness = Path(__file__).resolve().parents[1] / "fuzz" / "fuzz_decode_embed.py"
    (tmp_path / "corpus").mkdir()
    cmd = [sys.executable, str(harness), "--make-seeds", str(tmp_path / "seeds"), "-max_total_time=15",
           "-max_len=65536", "-timeout=60", "-rss_limit_mb=4096", f"-artifact_prefix={tmp_path}/",
           str(tmp_path / "corpus"), str(tmp_path / "seeds")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=400, cwd=tmp_path)
    findings = [p.name for p in tmp_path.iterdir() if p.name.split("-")[0] in ("crash", "timeout", "oom", "leak")]
    assert r.returncode == 0 and not findings, f"fuzzing found {findings}:\n{r.stderr[-4000:]}"
    assert "Done" in r.stderr
