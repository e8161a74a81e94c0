"""The inference copy of the network (musicembed/optimize.py): BatchNorm folding and
channels_last are faithful in float32, compiled and bfloat16 stay close to it, compile failures
fall back, and device handling works without a GPU. Real audio, real forward passes."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn

from musicembed import load_model
from musicembed.audio import load_audio
from musicembed.model import _to_device
from musicembed.optimize import Prepared, fold_batchnorm, prepare

from audio_fixtures import SR, chord, noise, tone


@pytest.fixture(scope="module")
def music(tmp_path_factory):
    """8 s of chords over noise with a melody, stereo 44.1 kHz FLAC."""
    x = chord(seconds=8.0) + noise(8.0, seed=3) + tone(660, 8.0, amp=0.1)
    path = tmp_path_factory.mktemp("inference") / "music.flac"
    sf.write(path, np.stack([x, np.roll(x, 40)], axis=1), SR)
    return path


def _windows(model, path, count=6):
    mono = load_audio(path, model.sample_rate)
    w = model.config.window_samples
    n = min(len(mono) // w, count) or 1
    x = np.zeros((n, w), np.float32)
    x.reshape(-1)[: min(n * w, len(mono))] = mono[: n * w]
    return torch.from_numpy(x)


def _first(out):
    return out[0] if isinstance(out, list) else out


def _assert_faithful(ref: torch.Tensor, got: torch.Tensor) -> None:
    scale = max(1.0, ref.abs().max().item())
    assert (got - ref).abs().max().item() <= 1e-4 * scale


@pytest.mark.parametrize("name", ["pemr", "mart", "tiny-pemr", "tiny-mart"])
def test_folded_channels_last_is_faithful(name, music, pemr_dir, mart_dir):
    model = load_model({"tiny-pemr": pemr_dir, "tiny-mart": mart_dir}.get(name, name), device="cpu")
    x = _windows(model, music)
    p = prepare(model.net, torch.device("cpu"))
    assert "BN folded" in p.description and "channels_last" in p.description and not p.compiled
    assert not any(isinstance(m, nn.BatchNorm2d) for b in p.net.encoder.blocks for m in b)
    with torch.inference_mode():
        ref, got = model.net(x), p.net(x)
    if isinstance(ref, list):
        for r, g in zip(ref, got):
            _assert_faithful(r, g)
    else:
        _assert_faithful(ref, got)
    # the loaded network itself is untouched (fingerprints, export and saving use it)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.net.encoder.blocks.modules())


def test_embed_uses_the_folded_copy_and_matches_the_plain_network(pemr_dir, music):
    model = load_model(pemr_dir, device="cpu")
    before = model.fingerprint()
    e = model.embed(music, return_timestamps=True)
    assert model.inference_mode.startswith("float32, BN folded")
    plain = load_model(pemr_dir, device="cpu")
    plain._prepared[plain.device] = Prepared(plain.net, None, "plain")
    ref = plain.embed(music, return_timestamps=True)
    np.testing.assert_allclose(e.vectors, ref.vectors, rtol=1e-4, atol=1e-5)
    assert model.fingerprint() == before


def test_fast_without_native_bfloat16_on_cpu_changes_nothing(pemr_dir, music, monkeypatch):
    import musicembed.optimize as optimize

    monkeypatch.setattr(optimize, "native_bf16", lambda device: False)
    monkeypatch.setattr(torch, "compile", lambda *a, **k: pytest.fail("--fast compiled on a CPU"))
    fast = load_model(pemr_dir, device="cpu", fast=True)
    got = fast.embed(music)
    assert fast.inference_mode == "float32, BN folded, channels_last"
    np.testing.assert_array_equal(got, load_model(pemr_dir, device="cpu").embed(music))


def test_fast_is_an_alias_that_explicit_options_override(pemr_dir, monkeypatch):
    import musicembed.optimize as optimize

    monkeypatch.setattr(optimize, "native_bf16", lambda device: True)
    fast = load_model(pemr_dir, device="cpu", fast=True)
    assert (fast.compile, fast.bfloat16) == (False, True)  # compile only on CUDA
    assert load_model(pemr_dir, device="cpu", fast=True, bfloat16=False).bfloat16 is False
    assert load_model(pemr_dir, device="cpu", compile=True).compile is True


def test_compiled_close_to_float32(pemr_dir, music):
    default = load_model(pemr_dir, device="cpu")
    compiled = load_model(pemr_dir, device="cpu", compile=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # inductor's note on complex ops (the STFT stays in eager code)
        b = compiled.embed(music, return_timestamps=True, batch_size=4)
    a = default.embed(music, return_timestamps=True, batch_size=4)
    assert a.vectors.shape == b.vectors.shape  # the short last batch was padded, and the padding dropped
    cos = (a.vectors * b.vectors).sum(1) / np.linalg.norm(a.vectors, axis=1) / np.linalg.norm(b.vectors, axis=1)
    assert cos.min() >= 0.999, compiled.inference_mode
    assert "compiled" in compiled.inference_mode  # "compiled (inductor...)" or "not compiled (compiling failed)"


def test_bfloat16_autocast_close_to_float32(pemr_dir, music):
    default = load_model(pemr_dir, device="cpu")
    bf16 = load_model(pemr_dir, device="cpu", bfloat16=True)
    a, b = default.embed(music), bf16.embed(music)
    assert bf16.inference_mode.startswith("bfloat16 autocast, BN folded")
    assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) >= 0.99
    assert not np.array_equal(a, b)  # autocast did run in bfloat16


def test_compile_falls_back_when_compiling_fails(pemr_dir, music, monkeypatch):
    def broken_compile(module, **kwargs):
        def run(x):
            raise RuntimeError("no C++ compiler found")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    compiled = load_model(pemr_dir, device="cpu", compile=True)
    with pytest.warns(RuntimeWarning, match="torch.compile failed"):
        got = compiled.embed(music)
    assert compiled.inference_mode.endswith("not compiled (compiling failed)")
    np.testing.assert_allclose(got, load_model(pemr_dir, device="cpu").embed(music), rtol=1e-5, atol=1e-6)


def test_fold_keeps_the_input_and_handles_other_networks():
    net = nn.Sequential(nn.Linear(4, 4))
    folded = fold_batchnorm(net)
    assert folded is not net and isinstance(folded[0], nn.Linear)
    p = prepare(net, torch.device("cpu"))
    assert "channels_last" not in p.description  # no convolution: nothing to reorder


def test_device_handling_without_a_gpu(pemr_dir):
    model = load_model(pemr_dir, device="cpu")
    window = model.config.window_samples
    batch = [np.ones(window, np.float32), np.full(window, 2, np.float32)]
    x = _to_device(batch, 4, torch.device("cpu"), torch.empty(4, window))
    assert x.shape == (4, window) and x.dtype == torch.float32 and x.device.type == "cpu"
    assert (x[0] == 1).all() and (x[1] == 2).all() and (x[2:] == 0).all()  # padding rows are zeros
    # 'meta' tensors carry shapes and devices but no data: the prepared copy lives wholly
    # on the requested device and computes the right output shape there.
    p = prepare(model.net, torch.device("meta"))
    assert {t.device.type for t in p.net.parameters()} == {"meta"}
    out = p.net(_to_device(batch, 2, torch.device("meta"), torch.empty(2, window)))
    assert out.device.type == "meta" and out.shape == (2, model.embedding_dim)
    # moving the model rebuilds the inference copy on the new device at the next batch
    model.embed(tone(seconds=1.0), sample_rate=SR)
    first = model._prepared[torch.device("cpu")]
    model.to("cpu")
    assert model._prepared == {}
    model.embed(tone(seconds=1.0), sample_rate=SR)
    assert model._prepared[torch.device("cpu")] is not first


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu(pemr_dir, music):
    cpu = load_model(pemr_dir, device="cpu").embed(music)
    gpu = load_model(pemr_dir, device="cuda")
    np.testing.assert_allclose(gpu.embed(music), cpu, rtol=1e-3, atol=1e-4)
    assert gpu._inference().net.encoder.blocks[0][0].weight.device.type == "cuda"


def test_model_threads_lowered_while_embedding_and_restored(pemr_dir, music):
    import os

    model = load_model(pemr_dir, device="cpu")
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(os.cpu_count() or 1)
        gen = model.iter_embed([music, music], decode_threads=1)
        next(gen)
        assert torch.get_num_threads() == max(1, (os.cpu_count() or 1) - 1)  # one core left to decoding
        list(gen)
        assert torch.get_num_threads() == (os.cpu_count() or 1)
    finally:
        torch.set_num_threads(old)


def test_copy_shares_the_weights_it_does_not_change(mart_dir):
    model = load_model(mart_dir, device="cpu")
    p = prepare(model.net, torch.device("cpu"))
    assert p.net.pwt.layers[0][0].whole_from_parts.attn.q.weight is model.net.pwt.layers[0][0].whole_from_parts.attn.q.weight
    assert p.net.encoder.blocks[0][0].weight is not model.net.encoder.blocks[0][0].weight
    assert isinstance(model.net.encoder.blocks[0][1], nn.BatchNorm2d)  # the original keeps its BatchNorm


def test_cli_compile_flag(pemr_dir, music, monkeypatch):
    import json

    from click.testing import CliRunner

    from musicembed.cli import cli

    monkeypatch.setattr(torch, "compile", lambda module, **kw: (lambda x: (_ for _ in ()).throw(RuntimeError("no compiler"))))
    r = CliRunner().invoke(cli, ["embed", str(music), "-m", str(pemr_dir), "--compile", "--json"])
    assert r.exit_code == 0, r.output
    assert "torch.compile failed" in r.stderr
    got = np.asarray(json.loads(r.stdout)["embedding"], np.float32)
    np.testing.assert_allclose(got, load_model(pemr_dir, device="cpu").embed(music), rtol=1e-5, atol=1e-6)
