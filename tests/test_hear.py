"""The HEAR 2021 API (musicembed.hear) on the tiny models: shapes, dtypes, timestamps, consistency."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from musicembed import hear, load_model
from musicembed.windows import window_starts

SR = 16000  # the tiny models' rate


@pytest.fixture(scope="module")
def hear_pemr(pemr_dir):
    return hear.load_model(str(pemr_dir))


@pytest.fixture(scope="module")
def hear_mart(mart_dir):
    return hear.load_model(str(mart_dir))


def _audio(n_sounds: int, seconds: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n_sounds, int(seconds * SR), generator=g) * 2 - 1  # like the HEAR validator


def test_model_attributes(hear_pemr, hear_mart, pemr_dir):
    for m in (hear_pemr, hear_mart):
        assert isinstance(m, torch.nn.Module)
        assert isinstance(m.sample_rate, int) and m.sample_rate == SR
        assert isinstance(m.scene_embedding_size, int) and isinstance(m.timestamp_embedding_size, int)
        assert m.scene_embedding_size == m.timestamp_embedding_size == m.config.embedding_dim
    assert not hear_pemr.training
    # A file inside the model folder is accepted too (HEAR passes "weights files").
    assert hear.load_model(str(pemr_dir / "model.safetensors")).scene_embedding_size == hear_pemr.scene_embedding_size


def test_load_model_default_is_pemr(monkeypatch):
    seen = []
    from musicembed import model as embedder

    def fake(name, device=None):
        seen.append((name, device))
        raise RuntimeError("stop")

    monkeypatch.setattr(embedder, "load_model", fake)
    with pytest.raises(RuntimeError):
        hear.load_model()
    with pytest.raises(RuntimeError):
        hear.load_model("mart")
    assert seen == [("pemr", "cpu"), ("mart", "cpu")]


@pytest.mark.parametrize("which", ["pemr", "mart"])
def test_timestamp_embeddings_shapes_and_spacing(which, hear_pemr, hear_mart):
    model = hear_pemr if which == "pemr" else hear_mart
    audio = _audio(3, 0.77)
    emb, ts = hear.get_timestamp_embeddings(audio, model)
    n_ts = audio.shape[1] // (SR * 50 // 1000) + 1  # one per 50 ms from 0 to the end
    assert emb.dtype == torch.float32 and ts.dtype == torch.float32
    assert emb.shape == (3, n_ts, model.timestamp_embedding_size)
    assert ts.shape == (3, n_ts)
    assert torch.isfinite(emb).all()
    # Milliseconds, regular 50 ms spacing (the validator allows 1e-3 ms deviation), centres from 0.
    diff = torch.diff(ts)
    assert torch.all((diff - 50.0).abs() < 1e-3)
    assert ts[0, 0] == 0.0 and float(ts[0, -1]) <= 770.0 < float(ts[0, -1]) + 50.0
    assert torch.equal(ts[0], ts[2])
    # Embedding k is the model's vector of the window centred on sample k * hop.
    w, hop, k = model.window_samples, SR * 50 // 1000, 9
    padded = torch.nn.functional.pad(audio, (w // 2, w - w // 2))
    with torch.no_grad():
        direct = model(padded[:, k * hop : k * hop + w])
    torch.testing.assert_close(emb[:, k], direct, atol=1e-4, rtol=1e-4)
    # Each sound is independent of the others in the batch.
    alone, _ = hear.get_timestamp_embeddings(audio[1:2], model)
    torch.testing.assert_close(alone[0], emb[1], atol=1e-4, rtol=1e-4)


def test_timestamp_hop_is_adjustable_and_exact_in_ms(hear_pemr):
    hear_pemr.timestamp_hop_ms = 25.0
    try:
        emb, ts = hear.get_timestamp_embeddings(_audio(1, 0.5), hear_pemr)
    finally:
        hear_pemr.timestamp_hop_ms = hear.HOP_MS
    assert emb.shape[1] == 0.5 * SR // 400 + 1
    np.testing.assert_allclose(ts[0].numpy(), np.arange(emb.shape[1]) * 25.0)


@pytest.mark.parametrize("which", ["pemr", "mart"])
@pytest.mark.parametrize("seconds", [0.3, 2.3, 3.74])
def test_scene_embeddings_match_model_embed(which, seconds, hear_pemr, hear_mart, pemr_dir, mart_dir):
    model = hear_pemr if which == "pemr" else hear_mart
    folder = pemr_dir if which == "pemr" else mart_dir
    audio = _audio(2, seconds, seed=1)
    audio[1] *= 0.05
    scene = hear.get_scene_embeddings(audio, model)
    assert scene.dtype == torch.float32 and scene.shape == (2, model.scene_embedding_size)
    ref = load_model(folder, device="cpu").embed([a.numpy() for a in audio], sample_rate=SR)
    np.testing.assert_allclose(scene.numpy(), ref, atol=1e-4, rtol=1e-4)


def test_window_starts_follow_embed():
    assert window_starts(100, 1000) == [0]
    assert window_starts(1000, 1000) == [0]
    assert window_starts(2400, 1000) == [0, 1000]  # tail 400 < half a window: dropped
    assert window_starts(2500, 1000) == [0, 1000, 1500]  # tail 500: end-aligned window


def test_bad_inputs(hear_pemr):
    with pytest.raises(ValueError):
        hear.get_scene_embeddings(torch.zeros(16000), hear_pemr)  # 1-D
    with pytest.raises(ValueError):
        hear.get_timestamp_embeddings(torch.zeros(1, 100, dtype=torch.int16), hear_pemr)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_results_on_the_audio_device(hear_pemr):
    hear_pemr.to("cuda")
    try:
        audio = _audio(2, 1.0).to("cuda")
        emb, ts = hear.get_timestamp_embeddings(audio, hear_pemr)
        scene = hear.get_scene_embeddings(audio, hear_pemr)
        assert emb.device == ts.device == scene.device == audio.device
        cpu_scene = hear.get_scene_embeddings(audio.cpu(), hear_pemr)  # model on GPU, audio on CPU
        assert cpu_scene.device.type == "cpu"
        torch.testing.assert_close(cpu_scene, scene.cpu(), atol=1e-3, rtol=1e-3)
    finally:
        hear_pemr.to("cpu")
