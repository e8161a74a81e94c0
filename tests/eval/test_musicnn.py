"""The musicnn baseline: its worker process, errors, and the ``--musicnn-python`` option.

musicnn needs TensorFlow, which the test environment does not have. The protocol tests run
the embedder against an interpreter whose "worker" answers like musicnn_worker.py; the test
of the real worker runs where ``MUSICEMBED_MUSICNN_PYTHON`` names an interpreter with musicnn.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from eval_helpers import SR, melody, synth

from musicembed.errors import AudioError, MusicEmbedError
from musicembed.eval.cli import eval_command
from musicembed.eval.embeddings import embed_files
from musicembed.eval.systems import MusicnnEmbedder, is_musicnn, load_system, musicnn_system

# Answers like musicnn_worker.py: a 3-d "vector" per file (its size in bytes, the layer's
# length, 1); files named bad* fail.
FAKE_WORKER = r'''
import json, os, sys
layer = sys.argv[1]
print(json.dumps({"ready": True, "dim": 3, "identity": {"model": "fake", "layer": layer}}), flush=True)
for line in sys.stdin:
    res = []
    for f in json.loads(line)["files"]:
        if os.path.basename(f).startswith("bad"):
            res.append({"error": "LibsndfileError: Format not recognised"})
        else:
            res.append({"vector": [os.path.getsize(f), len(layer), 1.0]})
    print(json.dumps({"results": res}), flush=True)
'''


@pytest.fixture(scope="module")
def fake_python(tmp_path_factory) -> Path:
    """An "interpreter" that runs the fake worker whatever script it is given."""
    d = tmp_path_factory.mktemp("fakepy")
    (d / "worker.py").write_text(FAKE_WORKER)
    exe = d / "python"
    exe.write_text(f'#!/bin/sh\nshift\nexec "{sys.executable}" "{d / "worker.py"}" "$@"\n')
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return exe


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("clips")
    paths = []
    for i, seconds in enumerate((4.0, 1.0)):
        p = d / f"clip{i}.wav"
        sf.write(p, synth(melody(i), "saw")[: int(seconds * SR)], SR)
        paths.append(p)
    (d / "bad.wav").write_bytes(b"not audio")
    return [*paths, d / "bad.wav"]


def test_specs() -> None:
    assert is_musicnn("musicnn") and is_musicnn("musicnn.penultimate") and not is_musicnn("mfcc")
    with pytest.raises(ValueError, match="--musicnn-python"):
        load_system("musicnn")
    with pytest.raises(ValueError, match="max_pool, mean_pool, penultimate"):
        MusicnnEmbedder(sys.executable, layer="taggram")


def test_protocol_vectors_errors_and_cache(fake_python: Path, clips: list[Path], tmp_path: Path) -> None:
    system = musicnn_system("musicnn.penultimate", fake_python)
    assert system.name == "musicnn.penultimate" and '"layer": "penultimate"' in system.fingerprint
    good = clips[:2]
    v = system.embedder.embed(good)
    assert v.shape == (2, 3) and v.dtype == np.float32
    assert v[:, 0].tolist() == [p.stat().st_size for p in good] and v[0, 1] == len("penultimate")
    with pytest.raises(AudioError, match=r"bad\.wav: LibsndfileError"):
        system.embedder.embed(clips)
    # the evaluation's cache isolates the bad file and keeps the others
    emb = embed_files(system, clips, cache=tmp_path / "c.npz")
    assert list(emb.failed) == [2] and "Format not recognised" in emb.failed[2]
    assert np.array_equal(emb.vectors[:2], v)
    # the default layer is max_pool, a different system
    assert '"layer": "max_pool"' in musicnn_system("musicnn", fake_python).fingerprint


def test_worker_that_cannot_start_says_why(tmp_path: Path) -> None:
    exe = tmp_path / "python"
    exe.write_text("#!/bin/sh\necho \"ModuleNotFoundError: No module named 'tensorflow'\" >&2\nexit 1\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    with pytest.raises(MusicEmbedError, match="worker exited.*No module named 'tensorflow'"):
        MusicnnEmbedder(exe, timeout_s=60)
    with pytest.raises(MusicEmbedError, match="cannot run"):
        MusicnnEmbedder(tmp_path / "missing-python")


def test_free_music_with_musicnn(free_music_dir: Path, fake_python: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(eval_command, ["free-music", "--data", str(free_music_dir), "--split", "report",
                                       "--system", "mfcc", "--baseline", "musicnn", "--out", str(tmp_path)])
    assert res.exit_code != 0 and "--musicnn-python" in res.output and "Traceback" not in res.output
    res = runner.invoke(eval_command, ["free-music", "--data", str(free_music_dir), "--split", "report",
                                       "--system", "mfcc", "--baseline", "musicnn", "--musicnn-python",
                                       str(fake_python), "--out", str(tmp_path), "--resamples", "50"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "free_music_report.json").read_text())
    assert [r["system"] for r in report["systems"]] == ["mfcc", "musicnn"]
    assert [(d["system"], d["baseline"]) for d in report["differences"]] == [("mfcc", "musicnn")]


@pytest.mark.skipif(not os.environ.get("MUSICEMBED_MUSICNN_PYTHON"),
                    reason="needs MUSICEMBED_MUSICNN_PYTHON: an interpreter with musicnn and TensorFlow")
def test_real_worker(clips: list[Path]) -> None:
    embedder = MusicnnEmbedder(os.environ["MUSICEMBED_MUSICNN_PYTHON"], layer="max_pool", threads=1)
    assert embedder.dim == 753 and embedder.identity["model"] == "MTT_musicnn"
    v = embedder.embed(clips[:2])  # 4 s (one 3-s patch) and 1 s (padded to one patch)
    assert v.shape == (2, 753) and np.isfinite(v).all()
    assert np.allclose(v, embedder.embed(clips[:2]), atol=1e-5)
    assert np.linalg.norm(v[0] - v[1]) > 1e-3
    with pytest.raises(AudioError, match="bad.wav"):
        embedder.embed(clips[2:])
