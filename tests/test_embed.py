"""The embed API contract (DESIGN.md) and its keyword options, on real audio and tiny models."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import soundfile as sf
import torch

from musicembed import AudioError, Embedding, EmbedError, load_model

from audio_fixtures import SR, chord, noise, tone


@pytest.fixture(scope="module")
def pemr(pemr_dir):
    return load_model(pemr_dir, device="cpu")


@pytest.fixture(scope="module")
def mart(mart_dir):
    return load_model(mart_dir, device="cpu")


def test_contract_path_and_list(pemr, audio_dir):
    v = pemr.embed(str(audio_dir / "tone.wav"))
    assert v.shape == (16,) and v.dtype == np.float32 and np.isfinite(v).all()
    paths = [audio_dir / n for n in ("tone.wav", "chord.flac", "stereo.ogg", "noise.mp3", "silence.wav")]
    M = pemr.embed(paths)
    assert M.shape == (5, 16) and M.dtype == np.float32 and np.isfinite(M).all()
    np.testing.assert_allclose(M[0], v, rtol=1e-5, atol=1e-6)


def test_arrays_and_tensors_match_the_file(pemr, audio_dir):
    x, sr = sf.read(audio_dir / "chord.flac", dtype="float32")
    a = pemr.embed(x, sample_rate=sr)
    b = pemr.embed(torch.from_numpy(x), sample_rate=sr)
    c = pemr.embed(audio_dir / "chord.flac")
    np.testing.assert_allclose(a, b, rtol=1e-6)
    np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-5)


def test_different_sounds_give_different_vectors(pemr):
    a = pemr.embed(tone(220, 2.0), sample_rate=SR)
    b = pemr.embed(noise(2.0), sample_rate=SR)
    assert np.linalg.norm(a - b) > 1e-3


def test_timestamps_cover_the_track(pemr):
    # window 0.5 s, 2.3 s of audio: 4 full windows + an end-aligned tail window (0.3 s >= half)
    e = pemr.embed(chord(seconds=2.3, sr=16000), sample_rate=16000, return_timestamps=True)
    assert isinstance(e, Embedding)
    np.testing.assert_allclose(e.starts, [0.0, 0.5, 1.0, 1.5, 1.8])
    np.testing.assert_allclose(e.ends, [0.5, 1.0, 1.5, 2.0, 2.3])
    assert e.vectors.shape == (5, 16) and e.duration == pytest.approx(2.3)
    np.testing.assert_allclose(e.clip, e.vectors.mean(axis=0), rtol=1e-6)


def test_window_and_hop_options(pemr):
    x = chord(seconds=2.0, sr=16000)
    e = pemr.embed(x, sample_rate=16000, return_timestamps=True, window_seconds=1.0, hop_seconds=0.25)
    np.testing.assert_allclose(e.starts, [0.0, 0.25, 0.5, 0.75, 1.0])
    assert (e.ends - e.starts == 1.0).all()


def test_short_input_is_padded_and_silence_is_finite(pemr):
    e = pemr.embed(tone(440, 0.1, 16000), sample_rate=16000, return_timestamps=True)
    assert e.vectors.shape == (1, 16) and e.ends[0] == pytest.approx(0.1)
    assert np.isfinite(pemr.embed(np.zeros(16000, np.float32), sample_rate=16000)).all()
    assert np.isfinite(pemr.embed(np.zeros(1, np.float32), sample_rate=16000)).all()


def test_batch_size_does_not_change_results(pemr, audio_dir):
    paths = sorted(audio_dir.iterdir())
    a = pemr.embed(paths, batch_size=1)
    b = pemr.embed(paths, batch_size=7)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_failing_inputs_keep_the_others(pemr, audio_dir, tmp_path):
    bad = tmp_path / "bad.ogg"
    bad.write_bytes(b"OggS" + bytes(300))
    with pytest.raises(EmbedError) as err:
        pemr.embed([audio_dir / "tone.wav", bad, audio_dir / "chord.flac"])
    e = err.value
    assert list(e.errors) == [1] and "bad.ogg" in str(e)
    assert e.results[0] is not None and e.results[2] is not None and e.results[1] is None
    with pytest.raises(AudioError, match="bad.ogg"):
        pemr.embed(bad)


def test_iter_embed_yields_in_order_with_errors(pemr, audio_dir, tmp_path):
    items = [audio_dir / "noise.mp3", tmp_path / "missing.wav", audio_dir / "tone.wav"]
    out = list(pemr.iter_embed(items))
    assert [i for i, _ in out] == [0, 1, 2]
    assert isinstance(out[1][1], AudioError) and "no such file" in str(out[1][1])


def test_mart_clip_and_hierarchy(mart):
    x = chord(seconds=2.5, sr=16000)  # window 1 s -> windows at 0, 1 and an end-aligned tail at 1.5
    v = mart.embed(x, sample_rate=16000)
    assert v.shape == (32,)
    e = mart.embed(x, sample_rate=16000, hierarchical=True)
    assert len(e.levels) == 3
    np.testing.assert_allclose(e.levels[0].vectors, e.vectors)
    lv2 = e.levels[2]
    assert lv2.vectors.shape == (3 * 4, 32)
    np.testing.assert_allclose(lv2.starts[:4], [0.0, 0.25, 0.5, 0.75])
    np.testing.assert_allclose(lv2.ends[-1], 2.5)
    np.testing.assert_allclose(e.levels[1].starts, [0.0, 0.5, 1.0, 1.5, 1.5, 2.0])


def test_hierarchical_needs_mart(pemr):
    with pytest.raises(ValueError, match="MART"):
        pemr.embed(tone(), sample_rate=SR, hierarchical=True)


def test_long_file_streamed_equals_in_memory(pemr, tmp_path):
    """A file decoded in 30-s blocks gives the same vectors as the same samples passed at once."""
    x = chord(seconds=75.0, sr=16000) + noise(75.0, sr=16000)
    sf.write(tmp_path / "long.wav", x, 16000, subtype="FLOAT")
    streamed = pemr.embed(tmp_path / "long.wav", return_timestamps=True)
    whole = pemr.embed(x, sample_rate=16000, return_timestamps=True)
    np.testing.assert_array_equal(streamed.starts, whole.starts)
    np.testing.assert_allclose(streamed.vectors, whole.vectors, rtol=1e-5, atol=1e-5)


def test_threads_share_one_model(pemr, audio_dir):
    paths = sorted(audio_dir.iterdir())
    expected = pemr.embed(paths)
    results = [None] * 4

    def work(i):
        results[i] = pemr.embed(paths)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    for r in results:
        np.testing.assert_allclose(r, expected, rtol=1e-5, atol=1e-6)


def test_device_handling(pemr):
    assert pemr.device.type == "cpu"
    m = pemr.to("cpu")
    assert next(m.net.parameters()).device.type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            pemr.embed(tone(), sample_rate=SR, device="cuda")
        pemr.to("cpu")
