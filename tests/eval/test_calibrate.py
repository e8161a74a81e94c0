"""Fitting and checking a similarity calibration on the synthetic free-music folder, and the
per-level MART tasks, with real audio and real (MFCC, tiny MART) embeddings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from musicembed import load_model
from musicembed.calibration import RELATIONS, Calibration
from musicembed.eval import calibrate as cal_mod
from musicembed.eval.free_music import FreeMusicConfig
from musicembed.eval.levels import evaluate_levels, markdown, variants
from musicembed.eval.probes import ProbeConfig
from musicembed.eval.systems import MFCCEmbedder, System

CFG = dict(excerpt_seconds=1.5, min_excerpt_seconds=0.5, classify_seconds=2.0, robust_seconds=2.0, resamples=50,
           folds=2, probe=ProbeConfig(max_epochs=60))


def test_pairs_cover_every_relation(free_music_dir: Path, tmp_path: Path) -> None:
    pairs = cal_mod.build_pairs(free_music_dir, tmp_path, FreeMusicConfig(**CFG))
    counts = np.bincount(pairs.relation, minlength=len(RELATIONS)).tolist()
    # 12 select tracks of 3 sources (4 each), 7 degradations, 3 renders per score
    assert counts == [12 * 7, 12, 12 * 3, 3 * 6, 66 - 18]
    assert pairs.folds == ["pkg-pulse", "pkg-saw", "pkg-sine-high"]
    assert not (pairs.a == pairs.b).any()


def test_calibrate_fits_a_monotonic_calibration_and_cross_validates(free_music_dir: Path, tmp_path: Path) -> None:
    system = System("mfcc", "mfcc-test", MFCCEmbedder(sample_rate=16000, n_fft=1024, hop_length=256, n_mels=40))
    cal, report = cal_mod.calibrate(system, "f" * 64, free_music_dir, tmp_path, cache=tmp_path / "c.npz",
                                    config=FreeMusicConfig(**CFG))
    path = cal.save(tmp_path / "calibration.json")
    back = Calibration.load(path)
    assert back.model_fingerprint == "f" * 64 and back.temperature in cal_mod.TEMPERATURES
    sims = np.linspace(-1, 1, 201)
    curves = np.array([[back.at_least(s)[r] for r in RELATIONS] for s in sims])
    assert (np.diff(curves, axis=0) >= -1e-12).all() and (np.diff(curves, axis=1) >= -1e-12).all()
    cv = report["cross_validation"]
    assert set(cv["folds"]) == {"pkg-pulse", "pkg-saw", "pkg-sine-high"}
    assert 0 <= cv["summary"]["ece"] <= 1 and cv["pairs"] == sum(d["pairs"] for d in report["distributions"].values())
    assert report["distributions"]["same_recording"]["mean"] > report["distributions"]["unrelated"]["mean"]
    table = cal_mod.markdown(report)
    assert "| same recording | 84 |" in table and "Nested leave-one-source-out" in table
    manifest = tmp_path / "weights_manifest.json"
    (tmp_path / "weights" / "m").mkdir(parents=True)
    shutil.copyfile(path, tmp_path / "weights" / "m" / "calibration.json")
    manifest.write_text(json.dumps({"models": {"m": {"files": [{"name": "config.json"}]}}}))
    item = cal_mod.register("m", tmp_path / "weights" / "m" / "calibration.json", manifest)
    files = json.loads(manifest.read_text())["models"]["m"]["files"]
    assert item["path"] == "weights/m/calibration.json" and files[-1]["sha256"] == item["sha256"]
    Calibration.load(tmp_path / "weights" / "m" / "calibration.json", item["sha256"])


def test_cli_calibrate_writes_a_calibration_the_model_loads(free_music_dir: Path, tmp_path: Path, pemr_dir) -> None:
    from musicembed.cli.main import cli

    model = tmp_path / "model"
    shutil.copytree(pemr_dir, model)
    r = CliRunner().invoke(cli, ["eval", "calibrate", "--model", str(model), "--data", str(free_music_dir),
                                 "--work-dir", str(tmp_path / "work"), "--out", str(model / "calibration.json"),
                                 "--report", str(tmp_path / "report.json"), "--excerpt-seconds", "1.5",
                                 "--min-excerpt-seconds", "0.5",
                                 "--robust-seconds", "2", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "report.md").is_file() and "same recording" in r.output
    loaded = load_model(model, device="cpu")
    assert loaded.calibration is not None and loaded.calibration.model_fingerprint == loaded.fingerprint()
    c = loaded.compare(free_music_dir / "audio" / "pkg-saw-0.wav", free_music_dir / "audio" / "pkg-saw-0.wav")
    assert c.relation == "same_recording" or c.at_least["same_track"] >= 0.5


def test_levels_table_for_a_tiny_mart(free_music_dir: Path, tmp_path: Path, mart_dir) -> None:
    model = load_model(mart_dir, device="cpu")
    report = evaluate_levels(model, free_music_dir, tmp_path, FreeMusicConfig(**CFG), cache=tmp_path / "lv.npz")
    names = list(report["variants"])
    assert names == [f"level {k}" for k in range(model.config.mart.levels)] + ["concat", "mean"]
    for v in report["variants"].values():
        assert 0 <= v["same_track.map"]["value"] <= 1 and "robustness.mean" in v
    assert "| level 0 |" in markdown(report)
    again = evaluate_levels(model, free_music_dir, tmp_path, FreeMusicConfig(**CFG), cache=tmp_path / "lv.npz")
    assert again["variants"]["level 1"]["covers.map"] == report["variants"]["level 1"]["covers.map"]


def test_variants_combine_unit_vectors() -> None:
    v = variants({Path("a"): np.array([[3.0, 4.0], [0.0, 2.0]])})
    assert np.allclose(v["concat"][Path("a")], [0.6, 0.8, 0.0, 1.0])
    assert np.allclose(v["mean"][Path("a")], [0.3, 0.9])
    assert np.allclose(v["level 1"][Path("a")], [0.0, 2.0])


@pytest.mark.parametrize("sims", [np.array([0.5]), np.array([0.2, 0.2, 0.2])])
def test_log_density_handles_tiny_samples(sims: np.ndarray) -> None:
    grid = np.linspace(-1, 1, 101)
    ld = cal_mod.log_density(sims, grid)
    assert np.isfinite(ld).all() and grid[np.argmax(ld)] == pytest.approx(sims[0], abs=0.03)


def test_cli_mart_levels(free_music_dir: Path, tmp_path: Path, mart_dir, pemr_dir) -> None:
    from musicembed.cli.main import cli

    out = tmp_path / "levels.json"
    r = CliRunner().invoke(cli, ["eval", "mart-levels", "--data", str(free_music_dir), "--model", str(mart_dir),
                                 "--work-dir", str(tmp_path / "work"), "--out", str(out), "--resamples", "20",
                                 "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "| concat |" in out.with_suffix(".md").read_text() and json.loads(out.read_text())["variants"]
    r = CliRunner().invoke(cli, ["eval", "mart-levels", "--data", str(free_music_dir), "--model", str(pemr_dir),
                                 "--work-dir", str(tmp_path / "work"), "--out", str(out), "--device", "cpu"])
    assert r.exit_code != 0 and "not a MART model" in r.output
