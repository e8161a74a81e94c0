"""The feature baselines: MFCC, the wide random FCN and key-invariant chroma."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from eval_helpers import SR, melody, synth

from musicembed.eval.systems import ChromaEmbedder, MFCCEmbedder, RandomFCNEmbedder, load_system


@pytest.fixture(scope="module")
def fcn() -> RandomFCNEmbedder:
    return load_system("randfcn").embedder


def test_randfcn_architecture(fcn: RandomFCNEmbedder) -> None:
    convs = [m for m in fcn.net if isinstance(m, torch.nn.Conv2d)]
    pools = [m for m in fcn.net if isinstance(m, torch.nn.MaxPool2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (1, 128, (3, 3)), (128, 256, (3, 3)), (256, 384, (3, 3)), (384, 512, (3, 3))]
    assert [p.kernel_size for p in pools] == [(2, 4), (4, 4), (4, 4)]
    assert (fcn.mel.n_fft, fcn.mel.hop_length, fcn.mel.mel_scale.n_mels, fcn.sample_rate) == (2048, 512, 128, 22050)
    # the weights are PyTorch's default initialisation after torch.manual_seed(0)
    torch.manual_seed(0)
    first = torch.nn.Conv2d(1, 128, 3, padding=1)
    assert torch.equal(first.weight, convs[0].weight) and torch.equal(first.bias, convs[0].bias)


def test_randfcn_embeds_clips_and_is_deterministic(fcn: RandomFCNEmbedder) -> None:
    a = synth(melody(1, n=24), "saw")
    b = synth(melody(2, n=24), "sine")
    v = fcn.embed([a, b], sample_rate=SR)
    assert v.shape == (2, 512) and v.dtype == np.float32 and np.isfinite(v).all()
    assert np.array_equal(v[0], fcn.embed(a, sample_rate=SR))
    assert np.array_equal(v, RandomFCNEmbedder().embed([a, b], sample_rate=SR))
    assert load_system("randfcn").fingerprint == load_system("randfcn").fingerprint
    assert RandomFCNEmbedder(seed=1).weights_sha256 != fcn.weights_sha256
    # per-clip standardisation: a level change leaves the input, hence the vector, unchanged
    quiet = fcn.embed(0.1 * a, sample_rate=SR)
    assert np.allclose(quiet, v[0], rtol=1e-3, atol=1e-5)
    # a clip shorter than one FFT still gives a vector
    assert fcn.embed(a[:500], sample_rate=SR).shape == (512,)


def test_randfcn_chunks_long_inputs(fcn: RandomFCNEmbedder) -> None:
    x = synth(melody(3, n=120), "square", note_seconds=0.25)  # 30 s: about 950 frames at 22.05 kHz
    whole = fcn.embed(x, sample_rate=SR)
    chunked = RandomFCNEmbedder(chunk_frames=256).embed(x, sample_rate=SR)
    cos = float(whole @ chunked / np.linalg.norm(whole) / np.linalg.norm(chunked))
    assert cos > 0.99  # only the convolutions' padding at the chunk edges differs


def test_mfcc_shape() -> None:
    m = MFCCEmbedder()
    assert m.embed([synth(melody(0), "sine")], sample_rate=SR).shape == (1, 40)


def test_chroma_is_key_invariant_and_tells_melodies_apart() -> None:
    chroma = load_system("chroma").embedder
    assert isinstance(chroma, ChromaEmbedder)

    def cos(a: np.ndarray, b: np.ndarray) -> float:
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    tune = chroma.embed(synth(melody(4, n=48), "square"), sample_rate=SR)
    assert tune.shape == (6,) and tune.dtype == np.float32 and np.isfinite(tune).all()
    # another key (3 semitones up) and another timbre: the same profile, rotated
    cover = chroma.embed(synth(melody(4, n=48, shift=3), "saw"), sample_rate=SR)
    other = chroma.embed(synth(melody(5, n=48), "square"), sample_rate=SR)
    assert cos(tune, cover) > 0.98
    assert cos(tune, other) < cos(tune, cover) - 0.02
    assert chroma.embed(synth(melody(4, n=2), "sine")[:100], sample_rate=SR).shape == (6,)
