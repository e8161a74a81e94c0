"""The command line, through click's runner and as a real subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from musicembed import load_model
from musicembed.cli import cli

from audio_fixtures import SR, noise, tone


@pytest.fixture()
def runner():
    return CliRunner()


def test_embed_one_file_prints_shape_and_values(runner, pemr_dir, audio_dir):
    r = runner.invoke(cli, ["embed", str(audio_dir / "tone.wav"), "--model", str(pemr_dir)])
    assert r.exit_code == 0, r.output
    assert "shape (16,)" in r.stdout and "tone.wav" in r.stdout


def test_embed_json_matches_api(runner, pemr_dir, audio_dir):
    r = runner.invoke(cli, ["embed", str(audio_dir / "chord.flac"), "-m", str(pemr_dir), "--json", "--timestamps"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    api = load_model(pemr_dir).embed(audio_dir / "chord.flac")
    np.testing.assert_allclose(doc["embedding"], api, rtol=1e-5, atol=1e-6)
    assert doc["windows"][0]["start"] == 0.0 and len(doc["windows"][0]["embedding"]) == 16


@pytest.mark.parametrize("ext", ["npz", "npy", "jsonl"])
def test_embed_folder_to_each_format(runner, pemr_dir, audio_dir, tmp_path, ext):
    out = tmp_path / f"catalog.{ext}"
    windows = [] if ext == "npy" else ["--timestamps"]  # .npy holds clip vectors only
    r = runner.invoke(cli, ["embed", str(audio_dir), "-r", "-m", str(pemr_dir), "--out", str(out), *windows])
    assert r.exit_code == 0, r.output
    names = sorted(p.name for p in audio_dir.iterdir())
    if ext == "npz":
        d = np.load(out)
        assert [os.path.basename(p) for p in d["paths"]] == names and d["embeddings"].shape == (5, 16)
        off = d["window_offsets"]
        assert off[-1] == len(d["window_vectors"]) == len(d["window_starts"])
        assert str(d["model"]) == "tiny-pemr"
    elif ext == "npy":
        d = np.load(out)
        assert d.shape == (5,) and d["embedding"].shape == (5, 16) and d["embedding"].dtype == np.float32
        assert [os.path.basename(p) for p in d["path"]] == names and (d["duration"] > 0).all()
    else:
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert [os.path.basename(r["path"]) for r in rows] == names and "windows" in rows[0]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_mart_hierarchical_npz(runner, mart_dir, audio_dir, tmp_path):
    out = tmp_path / "h.npz"
    r = runner.invoke(cli, ["embed", str(audio_dir / "tone.wav"), str(audio_dir / "noise.mp3"), "-m", str(mart_dir),
                            "--hierarchical", "--out", str(out)])
    assert r.exit_code == 0, r.output
    d = np.load(out)
    # tone 3 s -> 3 windows, noise 4 s (+ MP3 padding) -> 4 windows; level 2 has 4 parts per window
    n_windows = np.diff(d["level0_offsets"])
    assert list(n_windows) == [3, 4]
    assert len(d["level2_vectors"]) == 4 * n_windows.sum() and d["level2_offsets"][-1] == len(d["level2_vectors"])


def test_bad_files_are_reported_and_the_rest_written(runner, pemr_dir, audio_dir, tmp_path):
    bad = tmp_path / "broken.mp3"
    bad.write_text("not audio at all" * 100)
    out = tmp_path / "out.npz"
    r = runner.invoke(cli, ["embed", str(audio_dir / "tone.wav"), str(bad), str(tmp_path / "gone.flac"),
                            str(audio_dir / "noise.mp3"), "-m", str(pemr_dir), "--out", str(out)])
    assert r.exit_code == 1
    assert "2 input(s) failed" in r.stderr and "broken.mp3" in r.stderr and "gone.flac" in r.stderr
    assert "Traceback" not in r.output
    d = np.load(out)
    assert [os.path.basename(p) for p in d["paths"]] == ["tone.wav", "noise.mp3"]


def test_hierarchical_with_pemr_and_bad_out_are_usage_errors(runner, pemr_dir, audio_dir):
    r = runner.invoke(cli, ["embed", str(audio_dir / "tone.wav"), "-m", str(pemr_dir), "--hierarchical"])
    assert r.exit_code != 0 and "MART" in r.output
    r = runner.invoke(cli, ["embed", str(audio_dir / "tone.wav"), "-m", str(pemr_dir), "--out", "x.csv"])
    assert r.exit_code != 0 and ".npz" in r.output


def test_unknown_model_lists_known(runner, audio_dir):
    r = runner.invoke(cli, ["embed", str(audio_dir / "tone.wav"), "-m", "no-such-model"])
    assert r.exit_code != 0 and "Known models" in r.output


def test_info_and_models(runner, audio_dir, tmp_path):
    r = runner.invoke(cli, ["info", str(audio_dir / "stereo.ogg"), "--json"])
    assert r.exit_code == 0
    doc = json.loads(r.stdout)
    assert doc["channels"] == 2 and doc["sample_rate"] == SR and doc["format"] == "OGG"
    (tmp_path / "x.wav").write_text("nope")
    r = runner.invoke(cli, ["info", str(tmp_path / "x.wav")])
    assert r.exit_code == 1 and "x.wav" in r.stderr
    r = runner.invoke(cli, ["models"])
    assert r.exit_code == 0


def test_models_lists_a_broken_manifest_entry_instead_of_failing(runner, monkeypatch):
    from musicembed import hub

    manifest = hub.read_manifest()
    bad = dict(manifest["models"]["pemr"], bundled="../../outside")
    monkeypatch.setattr(hub, "read_manifest", lambda: {**manifest, "models": {**manifest["models"], "evil": bad}})
    r = runner.invoke(cli, ["models"])
    assert r.exit_code == 0, r.output
    line = next(x for x in r.stdout.splitlines() if x.startswith("evil"))
    assert "invalid manifest entry" in line and "refusing file name" in line
    assert any(x.startswith("pemr") and "bundled" in x for x in r.stdout.splitlines())
    doc = json.loads(runner.invoke(cli, ["models", "--json"]).stdout)
    assert doc["evil"]["offline"] is False and "refusing" in doc["evil"]["error"] and doc["pemr"]["offline"] is True


def test_download_offline_fails_clearly(runner, tmp_path, monkeypatch):
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path))
    r = runner.invoke(cli, ["download", "hf-hub:someone/absent"])
    assert r.exit_code != 0 and "not in the local Hugging Face cache" in r.output


def test_help_texts_show_examples(runner):
    for cmd in (["--help"], ["embed", "--help"], ["convert", "pemr-official", "--help"], ["models", "--help"],
                ["download", "--help"], ["info", "--help"], ["publish", "--help"], ["train", "pemr", "--help"],
                ["train", "mart", "--help"], ["train", "export", "--help"], ["eval", "tagging", "--help"],
                ["eval", "finetune", "--help"], ["eval", "covers", "--help"], ["eval", "free-music", "--help"]):
        r = runner.invoke(cli, cmd)
        assert r.exit_code == 0 and "Example" in r.output, cmd


def test_real_subprocess_on_mp3_and_ogg(pemr_dir, tmp_path):
    d = tmp_path / "music dir ü"
    d.mkdir()
    sf.write(d / "a song.mp3", tone(440, 3.0, channels=2), SR, format="MP3")
    sf.write(d / "b.ogg", noise(2.0), SR, format="OGG")
    out = tmp_path / "cat.npz"
    exe = shutil.which("musicembed", path=os.path.dirname(sys.executable)) or "musicembed"
    cmd = [exe, "embed", str(d), "-r", "--model", str(pemr_dir), "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert np.load(out)["embeddings"].shape == (2, 16)
    r = subprocess.run([sys.executable, "-m", "musicembed", "embed", str(d / "missing.mp3"), "-m", str(pemr_dir)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "missing.mp3: no such file" in r.stderr and "Traceback" not in r.stderr
