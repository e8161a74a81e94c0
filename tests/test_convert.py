"""Converting the PEMR authors' Lightning checkpoint: same outputs as their own forward pass."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
import torchaudio
from click.testing import CliRunner
from torch import nn

from musicembed import WeightsError, load_model
from musicembed.cli import cli
from musicembed.convert import convert_pemr_official, read_checkpoint

from audio_fixtures import chord


class AuthorsBlock(nn.Module):
    """Their Conv_2d: conv3x3 -> BN -> ReLU -> MaxPool (re-implemented from the paper's code layout)."""

    def __init__(self, cin: int, cout: int, pooling) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.bn = nn.BatchNorm2d(cout)
        self.mp = nn.MaxPool2d(pooling)

    def forward(self, x):
        return self.mp(torch.relu(self.bn(self.conv(x))))


class AuthorsEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.spec_bn = nn.BatchNorm2d(1)
        self.layer1 = AuthorsBlock(1, 64, (2, 4))
        self.layer2 = AuthorsBlock(64, 128, (2, 4))
        self.layer3 = AuthorsBlock(128, 128, (2, 4))
        self.layer4 = AuthorsBlock(128, 128, (4, 5))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        # Their preprocessing: MelSpectrogram without sample_rate, then AmplitudeToDB.
        mel = torchaudio.transforms.MelSpectrogram(hop_length=128, n_mels=128, n_fft=256)(wave)
        x = torchaudio.transforms.AmplitudeToDB()(mel).unsqueeze(1)
        x = self.spec_bn(x)
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
        return x.view(x.size(0), -1)


@pytest.fixture(scope="module")
def authors(tmp_path_factory):
    torch.manual_seed(0)
    enc = AuthorsEncoder()
    for m in enc.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    enc.spec_bn.running_mean.fill_(-40.0)
    enc.spec_bn.running_var.fill_(400.0)
    enc.eval()
    state = {f"model.encoder.{k}": v for k, v in enc.state_dict().items()}
    state["model.projector.0.weight"] = torch.randn(512, 512)
    state["model.encoder.unitedmodule.mask_embed"] = torch.randn(128)
    ckpt = {
        "pytorch-lightning_version": "1.3.8",
        "epoch": 299,
        "state_dict": state,
        "hyper_parameters": argparse.Namespace(sample_rate=22050, n_fft=256),  # not loadable with weights_only
    }
    path = tmp_path_factory.mktemp("ckpt") / "pemr.ckpt"
    torch.save(ckpt, path)
    return enc, path


@pytest.mark.filterwarnings("ignore:At least one mel filterbank")
def test_converted_encoder_matches_authors_forward(authors, tmp_path):
    enc, ckpt = authors
    out = convert_pemr_official(ckpt, tmp_path / "official")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["window_samples"] == 59049 and cfg["frontend"]["sample_rate"] == 22050
    model = load_model(out, device="cpu")
    x = chord(seconds=59049 * 3 / 22050, sr=22050)[: 59049 * 3]
    with torch.no_grad():
        ref = enc(torch.from_numpy(x).view(3, 59049)).numpy()
    e = model.embed(x, sample_rate=22050, return_timestamps=True)
    assert e.vectors.shape == (3, 512)
    np.testing.assert_allclose(e.vectors, ref, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(e.clip, ref.mean(axis=0), rtol=1e-3, atol=1e-3)


def test_restricted_reader_never_builds_foreign_objects(authors, tmp_path):
    _, ckpt = authors
    tensors = read_checkpoint(ckpt)
    assert all(isinstance(v, torch.Tensor) for v in tensors.values())
    evil = tmp_path / "evil.ckpt"

    class Boom:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": Boom()}, evil)
    read_checkpoint(evil)
    assert not (tmp_path / "pwned").exists()


def test_wrong_checkpoint_is_refused(tmp_path):
    p = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}}, p)
    with pytest.raises(WeightsError, match="not a PEMR checkpoint"):
        convert_pemr_official(p, tmp_path / "o")
    (tmp_path / "junk.ckpt").write_bytes(b"junk")
    with pytest.raises(WeightsError, match="not a PyTorch checkpoint"):
        convert_pemr_official(tmp_path / "junk.ckpt", tmp_path / "o")
    rng = np.random.default_rng(0)
    for name, head in (("pickle.ckpt", b"\x80\x02"), ("zip.ckpt", b"PK\x03\x04")):  # right magic, then garbage
        (tmp_path / name).write_bytes(head + rng.bytes(5000))
        with pytest.raises(WeightsError, match="not a readable PyTorch checkpoint"):
            convert_pemr_official(tmp_path / name, tmp_path / "o")
        r = CliRunner().invoke(cli, ["convert", "pemr-official", str(tmp_path / name), "--out", str(tmp_path / "o")])
        assert r.exit_code == 2 and "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1


def test_convert_cli(authors, tmp_path):
    _, ckpt = authors
    r = CliRunner().invoke(cli, ["convert", "pemr-official", str(ckpt), "--out", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "m" / "model.safetensors").exists()
