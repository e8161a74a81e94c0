"""Decode, downmix and resample real files and arrays; errors name the file and the reason."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from musicembed.audio import find_audio_files, info, load_audio, stream_audio
from musicembed.errors import AudioError

from audio_fixtures import SR, chord, noise, tone


@pytest.mark.parametrize("fmt,subtype,ext", [
    ("WAV", "PCM_16", "wav"), ("FLAC", "PCM_24", "flac"), ("OGG", "VORBIS", "ogg"), ("MP3", "MPEG_LAYER_III", "mp3"),
])
def test_round_trip_formats_keep_the_tone(tmp_path, fmt, subtype, ext):
    path = tmp_path / f"a.{ext}"
    sf.write(path, tone(1000, 2.0, channels=2), SR, format=fmt, subtype=subtype)
    x = load_audio(path, 16000)
    assert x.dtype == np.float32 and x.ndim == 1
    assert abs(len(x) - 32000) <= 1200  # MP3/OGG add encoder padding
    spec = np.abs(np.fft.rfft(x[4000:20000]))
    peak_hz = np.argmax(spec) * 16000 / 16000
    assert abs(peak_hz - 1000) < 15


def test_downmix_any_channel_count(tmp_path):
    x = np.zeros((SR, 8), np.float32)
    x[:, 3] = 0.8
    sf.write(tmp_path / "eight.wav", x, SR, subtype="FLOAT")
    y = load_audio(tmp_path / "eight.wav", SR)
    np.testing.assert_allclose(y, 0.1, atol=1e-6)


@pytest.mark.parametrize("rate", [8000, 22050, 48000, 96000])
def test_resample_preserves_frequency_and_length(rate):
    x = tone(500, 1.0, sr=rate)
    y = load_audio(x, 16000, source_rate=rate)
    assert abs(len(y) - 16000) <= 1
    peak = np.argmax(np.abs(np.fft.rfft(y)))  # 1 s of audio: bin index == Hz
    assert abs(peak - 500) <= 1


def test_streamed_blocks_equal_whole_decode(tmp_path):
    sf.write(tmp_path / "long.flac", chord(seconds=7.0), SR)
    whole = load_audio(tmp_path / "long.flac", 16000)
    blocks = list(stream_audio(tmp_path / "long.flac", 16000, block_seconds=0.37))
    assert len(blocks) > 10
    np.testing.assert_allclose(np.concatenate(blocks), whole, atol=1e-5)


@pytest.mark.parametrize("dtype,scale", [(np.int16, 2**15), (np.int32, 2**31), (np.float64, 1.0), (np.uint8, None)])
def test_integer_and_float_arrays(dtype, scale):
    ref = tone(440, 0.5, sr=16000)
    if dtype is np.uint8:
        arr = np.round(ref * 127 + 128).astype(np.uint8)
    else:
        arr = (ref * scale).astype(dtype) if scale != 1.0 else ref.astype(dtype)
    y = load_audio(arr, 16000, source_rate=16000)
    np.testing.assert_allclose(y, ref, atol=1e-2)


def test_tensor_channels_first_and_noncontiguous():
    x = torch.from_numpy(np.stack([tone(440, 0.5, 16000), tone(440, 0.5, 16000)]))  # (2, samples)
    y = load_audio(x, 16000, source_rate=16000)
    np.testing.assert_allclose(y, tone(440, 0.5, 16000), atol=1e-6)
    nc = np.asfortranarray(np.stack([tone(440, 0.5, 16000)] * 2, axis=1))[::1, :]
    np.testing.assert_allclose(load_audio(nc, 16000, source_rate=16000), y, atol=1e-6)


@pytest.mark.parametrize("bad,reason", [
    (np.zeros(0, np.float32), "length 0"),
    (np.array(0.5), "1-D or 2-D"),
    (np.zeros((2, 3, 4)), "1-D or 2-D"),
    (np.array([0.1, np.nan, 0.2], np.float32), "NaN"),
    (np.array([0.1, np.inf], np.float32), "NaN or infinite"),
])
def test_bad_arrays_raise_clear_errors(bad, reason):
    with pytest.raises(AudioError, match=reason):
        load_audio(bad, 16000, source_rate=16000)


def test_array_without_rate_is_refused():
    with pytest.raises(AudioError, match="sample_rate"):
        load_audio(np.zeros(100, np.float32), 16000)


def test_undecodable_files_name_file_and_reason(tmp_path):
    text = tmp_path / "notes.mp3"
    text.write_text("this is not audio\n" * 50)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    for path, reason in [(text, "cannot decode"), (empty, "empty"), (tmp_path / "missing.flac", "no such file"),
                         (tmp_path, "directory")]:
        with pytest.raises(AudioError) as err:
            load_audio(path, 16000)
        assert str(path) in str(err.value) and reason in str(err.value)


def test_extension_that_lies_is_decoded_by_content(tmp_path):
    sf.write(tmp_path / "really_flac.mp3", noise(1.0), SR, format="FLAC")
    assert info(tmp_path / "really_flac.mp3").format == "FLAC"
    assert len(load_audio(tmp_path / "really_flac.mp3", 16000)) == 16000


def test_info_reports_header(audio_dir):
    i = info(audio_dir / "stereo.ogg")
    assert (i.sample_rate, i.channels, i.format) == (SR, 2, "OGG")
    assert abs(i.duration - 2.0) < 0.05


def test_find_audio_files_recursive_and_problems(tmp_path, audio_dir):
    (tmp_path / "sub").mkdir()
    sf.write(tmp_path / "sub" / "x.wav", noise(0.2), SR)
    (tmp_path / "sub" / "readme.txt").write_text("hi")
    (tmp_path / "empty").mkdir()
    (tmp_path / "sub" / "loop").symlink_to(tmp_path, target_is_directory=True)
    files, problems = find_audio_files([tmp_path, tmp_path / "empty", tmp_path / "nope.wav"], recursive=True)
    assert [f.name for f in files] == ["x.wav"]
    assert any("no audio files" in r for _, r in problems) and any("nope.wav" in p for p, _ in problems)
    files, problems = find_audio_files([audio_dir], recursive=False)
    assert not files and "recursive" in problems[0][1]
