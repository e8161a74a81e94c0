"""``musicembed eval`` through click's CliRunner, with the MFCC baseline and a tiny real model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from eval_helpers import synth

from musicembed.eval import datasets as ds
from musicembed.eval.cli import eval_command

GTZAN_SR = 8000


@pytest.fixture(scope="module")
def gtzan_root(tmp_path_factory) -> Path:
    """The fault-filtered GTZAN file list as 0.3 s tones; each genre has its own register."""
    root = tmp_path_factory.mktemp("gtzan") / "genres"
    t = np.arange(int(0.3 * GTZAN_SR)) / GTZAN_SR
    rng = np.random.default_rng(0)
    for genre in ds.GTZAN_GENRES:
        (root / genre).mkdir(parents=True)
    for split in ds.GTZAN_SPLITS:
        for k, name in enumerate(ds.gtzan_split(split)):
            f = 110.0 * 2 ** ((3 * ds.GTZAN_GENRES.index(name.split("/")[0]) + k % 3) / 12)
            wave = 0.3 * np.sign(np.sin(2 * np.pi * f * t)) + 0.01 * rng.standard_normal(t.size)
            sf.write(root / name, wave.astype(np.float32), GTZAN_SR)
    return root.parent


@pytest.fixture(scope="module")
def covers80_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("covers80")
    for w in range(5):
        folder = root / "coversongs" / "covers32k" / f"work{w}"
        folder.mkdir(parents=True)
        for v, timbre in enumerate(("sine", "square")):
            freqs = [220.0 * 2 ** (((w * 5 + j) % 12) / 12) for j in range(4)]
            sf.write(folder / f"artist{v}+album+0{w}.wav", synth(freqs, timbre, note_seconds=0.2), 16000)
    return root


def _run(args: list[str]) -> tuple[int, str]:
    res = CliRunner().invoke(eval_command, args, catch_exceptions=False)
    return res.exit_code, res.output


def test_tagging_gtzan_with_both_probes(gtzan_root: Path, tmp_path: Path) -> None:
    args = ["tagging", "--dataset", "gtzan", "--root", str(gtzan_root), "--model", "mfcc", "--probe", "linear",
            "--probe", "mlp", "--out", str(tmp_path)]
    code, out = _run(args)
    assert code == 0, out
    result = json.loads((tmp_path / "gtzan-mfcc-tagging.json").read_text())
    assert set(result["probes"]) == {"linear", "mlp"}
    linear = result["probes"]["linear"]
    assert linear["n"] == {"train": 443, "val": 197, "test": 290}
    assert linear["test"]["accuracy"] > 0.5 and linear["test"]["n_classes"] == 10
    assert (tmp_path / "cache" / "gtzan-mfcc.npz").is_file()
    assert '"accuracy"' in out


def test_covers80_with_tiny_model_and_random_baseline(covers80_root: Path, tiny_model_dir: Path,
                                                      tmp_path: Path) -> None:
    for model in (str(tiny_model_dir), f"random:{tiny_model_dir}"):
        code, out = _run(["covers", "--dataset", "covers80", "--root", str(covers80_root), "--model", model,
                          "--out", str(tmp_path)])
        assert code == 0, out
    files = sorted(tmp_path.glob("covers80-*-covers.json"))
    assert len(files) == 2
    for f in files:
        r = json.loads(f.read_text())
        assert r["recordings"] == 10 and r["queries"] == 10 and r["skipped_queries"] == 0
        assert 0 < r["map"] <= 1 and 1 <= r["mr1"] <= 9 and 0 < r["p@10"] <= 0.1
    caches = sorted((tmp_path / "cache").glob("covers80-*.npz"))
    assert len(caches) == 2 and all(np.load(c)["vectors"].shape == (10, 16) for c in caches)


def test_user_errors_are_one_line(tmp_path: Path) -> None:
    code, out = _run(["tagging", "--dataset", "gtzan", "--root", str(tmp_path), "--model", "mfcc"])
    assert code == 1 and "Error: GTZAN: genre folders" in out and "Traceback" not in out
    code, out = _run(["covers", "--dataset", "shs100k", "--root", str(tmp_path), "--model", "mfcc"])
    assert code == 2 and "--list-file" in out
    code, out = _run(["covers", "--dataset", "shs100k-sub", "--root", str(tmp_path), "--model", "mfcc"])
    assert code == 1 and "1004 of 1004 audio files are missing" in out


def test_free_music_command(free_music_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    code, out = _run(["free-music", "--data", str(free_music_dir), "--system", str(tiny_model_dir),
                      "--baseline", "mfcc", "--out", str(tmp_path), "--excerpt-seconds", "1.5",
                      "--min-excerpt-seconds", "1", "--robust-seconds", "2", "--resamples", "100"])
    assert code == 0, out
    assert "| mfcc |" in out and f"| {tiny_model_dir} |" in out and f"| {tiny_model_dir} - mfcc |" in out
    report = json.loads((tmp_path / "free_music_select.json").read_text())  # --split defaults to select
    assert report["split"] == "select" and report["config"]["resamples"] == 100
    assert [r["system"] for r in report["systems"]] == [str(tiny_model_dir), "mfcc"]
    assert report["systems"][0]["dim"] == 16
    assert [(d["system"], d["baseline"]) for d in report["differences"]] == [(str(tiny_model_dir), "mfcc")]
    assert (tmp_path / "free_music_select.md").read_text().startswith("Split `select`: 12 tracks of 3 sources.")
    code, out = _run(["free-music", "--data", str(free_music_dir), "--split", "report", "--system", "randfcn",
                      "--out", str(tmp_path), "--excerpt-seconds", "1.5", "--min-excerpt-seconds", "1",
                      "--robust-seconds", "2", "--resamples", "50", "--folds", "2"])
    assert code == 0, out
    report = json.loads((tmp_path / "free_music_report.json").read_text())
    assert report["systems"][0]["dim"] == 512 and report["counts"]["tracks"] == 8
    assert (tmp_path / "cache" / "randfcn.npz").is_file()


def test_finetune_command(gtzan_root: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    code, out = _run(["finetune", "--dataset", "gtzan", "--root", str(gtzan_root),
                      "--model", f"random:{tiny_model_dir}", "--fraction", "0.01", "--epochs", "1",
                      "--out", str(tmp_path)])
    assert code == 0, out
    r = json.loads(next(tmp_path.glob("gtzan-*-finetune-0.01.json")).read_text())
    assert r["n_labelled"] == 10 and r["fraction"] == 0.01  # one clip per genre
    assert 0 <= r["test"]["accuracy"] <= 1 and r["model"] == f"random:{tiny_model_dir}"
