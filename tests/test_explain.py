"""Explanation figures and catalog maps: the numbers behind them, and valid PNGs of the asked size."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from musicembed import load_model
from musicembed.cli import cli
from musicembed.viz import folder_labels, load_mask_generator, mart_structure, pemr_importance, project

from audio_fixtures import SR, chord, noise, tiny_pemr_config, tone


def png_size(path: Path) -> tuple[int, int]:
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "not a PNG"
    assert data.endswith(b"IEND\xaeB`\x82"), "truncated PNG"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def song_file(tmp_path_factory) -> Path:
    """2.3 s: a tone, then a chord, then noise."""
    x = np.concatenate([tone(440, 0.7), chord(seconds=0.8), noise(0.8, seed=3)])
    path = tmp_path_factory.mktemp("explain") / "song.flac"
    sf.write(path, x, SR)
    return path


@pytest.fixture(scope="module")
def pemr(pemr_dir):
    return load_model(pemr_dir, device="cpu")


@pytest.fixture(scope="module")
def mask_run(tmp_path_factory) -> Path:
    """A `musicembed train` run folder of the tiny PEMR with one checkpoint (random weights)."""
    from musicembed.train.config import TrainConfig
    from musicembed.train.objectives import PEMRObjective, PEMRObjectiveConfig

    run = tmp_path_factory.mktemp("run")
    objective = {"layers": 2, "heads": 3, "head_dim": 8, "ff_dim": 32, "ratio": 0.2}
    cfg = TrainConfig(method="pemr", data="-", out=str(run), model=tiny_pemr_config().to_dict(), objective=objective)
    cfg.save(run)
    torch.manual_seed(0)
    module = PEMRObjective(cfg.model_config(), PEMRObjectiveConfig(**objective))
    ckpt = run / "checkpoints" / "step-00000010"
    ckpt.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(ckpt / "module.safetensors"))
    return run


def test_occlusion_importance(pemr, song_file):
    imp = pemr_importance(pemr, str(song_file), segment_seconds=0.1)
    assert imp.method == "occlusion" and imp.masked is None
    hop = pemr.config.frontend.hop_length / pemr.sample_rate
    assert imp.times[0] == 0.0 and 2.3 - hop <= imp.times[-1] <= 2.3
    step = np.diff(imp.times)
    assert np.all(step > 0) and np.all(step <= hop + 1e-9)  # every frame once, no gap, tail window included
    assert np.isfinite(imp.values).all() and np.abs(imp.values).max() > 0
    np.testing.assert_allclose(imp.window_starts, [0.0, 0.5, 1.0, 1.5, 1.8])  # 0.5-s windows, end-aligned tail
    part = pemr_importance(pemr, str(song_file), start=1.0, duration=0.5)
    assert part.times[0] == 1.0 and part.times[-1] < 1.5 and len(part.window_starts) == 1


def test_mask_generator_importance(pemr, song_file, mask_run):
    gen, ratio = load_mask_generator(mask_run, pemr)
    assert ratio == 0.2
    imp = pemr_importance(pemr, str(song_file), masks=gen, ratio=ratio)
    assert imp.method == "mask-generator" and imp.masked is not None
    frames_per_window = pemr.config.window_samples // pemr.config.frontend.hop_length + 1
    assert abs(imp.masked[:frames_per_window - 1].mean() - 0.2) < 0.05
    assert imp.values.min() > 0 and abs(imp.values[:frames_per_window - 1].mean() - 1.0) < 0.1
    same, _ = load_mask_generator(mask_run / "checkpoints" / "step-00000010", pemr)
    torch.testing.assert_close(same.cls, gen.cls)


def test_mart_structure(mart_dir, song_file):
    mart = load_model(mart_dir, device="cpu")
    st = mart_structure(mart, str(song_file))
    assert [len(s) for s in st.similarity] == [2, 4, 8]  # 2 one-second clips, halves, quarters
    assert np.all(st.similarity[0] <= 1.0 + 1e-6) and np.all(st.similarity[2] > -1)
    np.testing.assert_allclose(st.ends[1] - st.starts[1], 0.5)


def test_projection_and_labels():
    rng = np.random.default_rng(0)
    v = np.concatenate([rng.normal(3, 1, (10, 8)), rng.normal(-3, 1, (10, 8))])
    xy, xl, _ = project(v)
    assert xy.shape == (20, 2) and xl.startswith("PC1 (")
    assert np.sign(xy[:10, 0]).std() == 0 and np.sign(xy[:10, 0])[0] != np.sign(xy[10:, 0])[0]
    labels = folder_labels(["/m/rock/a.mp3", "/m/jazz/x/b.mp3", "/m/c.mp3"], "/m")
    assert labels == ["rock", "jazz/x", "(top folder)"]
    many = [f"/m/g{i}/s/a.mp3" for i in range(30)]
    assert len(set(folder_labels(many, "/m", max_groups=5))) == 5


def test_explain_and_map_figures(pemr_dir, mart_dir, song_file, mask_run, tmp_path):
    pytest.importorskip("matplotlib")
    runner = CliRunner()
    out = tmp_path / "pemr.png"
    r = runner.invoke(cli, ["explain", str(song_file), "--out", str(out), "--model", str(pemr_dir)])
    assert r.exit_code == 0, r.output
    assert png_size(out) == (1400, 800)
    out = tmp_path / "pemr-masks.png"
    r = runner.invoke(cli, ["explain", str(song_file), "--out", str(out), "--model", str(pemr_dir),
                            "--masks", str(mask_run), "--size", "1000x600"])
    assert r.exit_code == 0, r.output
    assert png_size(out) == (1000, 600)
    out = tmp_path / "mart.png"
    r = runner.invoke(cli, ["explain", str(song_file), "--out", str(out), "--model", str(mart_dir)])
    assert r.exit_code == 0, r.output
    assert png_size(out) == (1400, 800)
    r = runner.invoke(cli, ["explain", str(song_file), "--out", str(out), "--model", str(mart_dir),
                            "--masks", str(mask_run)])
    assert r.exit_code != 0 and "--masks is for PEMR" in r.output
    r = runner.invoke(cli, ["explain", str(song_file), "--out", str(out), "--model", str(pemr_dir), "--start", "9"])
    assert r.exit_code != 0 and "past the end" in r.output

    cat = tmp_path / "cat"
    for i, folder in enumerate(["rock", "rock", "jazz", "jazz", "ambient"]):
        (cat / folder).mkdir(parents=True, exist_ok=True)
        sf.write(cat / folder / f"t{i}.wav", tone(200 + 90 * i, 0.6) if i % 2 else chord(seconds=0.6), SR)
    out = tmp_path / "map.png"
    r = runner.invoke(cli, ["map", str(cat), "--out", str(out), "--model", str(pemr_dir), "--size", "900x700"])
    assert r.exit_code == 0, r.output
    assert png_size(out) == (900, 700) and "5 files" in r.output
    idx = tmp_path / "cat.index.npz"
    assert runner.invoke(cli, ["index", str(cat), "--out", str(idx), "--model", str(pemr_dir)]).exit_code == 0
    r = runner.invoke(cli, ["map", str(cat / "rock"), "--index", str(idx), "--out", str(out)])
    assert r.exit_code == 0 and "2 files" in r.output, r.output
    assert png_size(out) == (1000, 800)
