"""Every script in examples/ runs (as a subprocess, like a user would) on generated audio with
the tiny test models, and prints what its docstring promises.

The scripts are started together (most of each one's time is importing torch, so they
overlap well on a few cores); each test then waits for its own and checks the result.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SR = 16000  # the tiny models' rate: no resampling
TIMEOUT = 300


def _tone(freq: float, seconds: float, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _noise(seconds: float, seed: int, amp: float = 0.1) -> np.ndarray:
    return (amp * np.random.default_rng(seed).standard_normal(int(seconds * SR))).astype(np.float32)


def _song(seconds: float = 2.0) -> np.ndarray:
    """A little chord progression: four chords of seconds/4 each."""
    parts = [sum(_tone(f, seconds / 4, 0.15) for f in chord)
             for chord in [(262, 330, 392), (220, 262, 330), (175, 220, 262), (196, 247, 294)]]
    return np.concatenate(parts).astype(np.float32)


@dataclass
class Run:
    name: str
    proc: subprocess.Popen
    paths: dict[str, Path]
    expect: int = 0

    def output(self) -> str:
        try:
            out, _ = self.proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
            pytest.fail(f"{self.name} ran over {TIMEOUT} s:\n{out}")
        assert self.proc.returncode == self.expect, f"{self.name} exited {self.proc.returncode}:\n{out}"
        return out


def _start(name: str, args: list, env_extra: dict[str, str], paths: dict[str, Path], expect: int = 0) -> Run:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **env_extra,
           # tiny models: one thread per process, the processes run side by side
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(EXAMPLES / name), *map(str, args)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return Run(name, proc, paths, expect)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, pemr_dir, mart_dir):
    """Write every example's input audio, start all examples, yield {script: Run}."""
    root = tmp_path_factory.mktemp("examples")
    pemr, mart = {"MUSICEMBED_MODEL": str(pemr_dir)}, {"MUSICEMBED_MART_MODEL": str(mart_dir)}

    # dataset/tones/*.wav and dataset/noise/*.flac: two clearly different classes.
    dataset = root / "dataset"
    for label in ("tones", "noise"):
        (dataset / label).mkdir(parents=True)
    for i in range(6):
        sf.write(dataset / "tones" / f"tone{i}.wav", _tone(220 * 2 ** (i / 4), 0.8), SR)
        sf.write(dataset / "noise" / f"noise{i}.flac", _noise(0.8, seed=i, amp=0.05 + 0.02 * i), SR)
    more = root / "more"  # a second input folder with an undecodable file
    more.mkdir()
    (more / "bad.mp3").write_bytes(b"not audio at all")
    sf.write(more / "ok.wav", _tone(440, 0.6), SR)
    new = root / "new_tone.wav"
    sf.write(new, _tone(300, 0.8), SR)

    dups = root / "dups"
    dups.mkdir()
    song = _song(2.0)
    sf.write(dups / "song.wav", song, SR)
    sf.write(dups / "song_copy.flac", song * 0.95 + _noise(2.0, seed=9, amp=1e-3), SR)  # re-encoded, quieter
    sf.write(dups / "other.wav", _noise(2.0, seed=1), SR)
    sf.write(dups / "third.wav", _tone(1500, 2.0), SR)

    track = root / "abab.wav"  # the tiny MART window is 1 s: sections A B A B
    a, b = _song(1.0), _noise(1.0, seed=3)
    sf.write(track, np.concatenate([a, b, a, b]), SR)

    own = root / "own"
    own.mkdir()
    for i in range(4):
        sf.write(own / f"t{i}.wav", _song(3.0) * (0.5 + 0.1 * i) + _noise(3.0, seed=i, amp=0.01), SR)

    catalog, model_out = root / "catalog.npz", root / "my-model"
    started = {
        "embed_folder.py": _start("embed_folder.py", [dataset, more, "--out", catalog, "--timestamps"], pemr,
                                  {"catalog": catalog}, expect=1),  # a file failed: exit code 1
        "linear_tagger.py": _start("linear_tagger.py", [dataset, "--predict", new], pemr, {"new": new}),
        "find_duplicates.py": _start("find_duplicates.py", [dups, "--partial"], pemr, {}),
        "mart_structure.py": _start("mart_structure.py", [track], mart, {}),
        "pretrain_own_folder.py": _start(
            "pretrain_own_folder.py", [own, "--out", model_out, "--tiny", "--steps", 2, "--batch-size", 2,
                                       "--workers", 0, "--device", "cpu", "--cache-dir", root / "cache"],
            {}, {"model": model_out}),
    }
    try:
        yield started
    finally:
        for run in started.values():
            if run.proc.poll() is None:
                run.proc.kill()
                run.proc.communicate()


def test_every_example_is_tested_and_listed():
    tested = {"embed_folder.py", "linear_tagger.py", "find_duplicates.py", "mart_structure.py",
              "pretrain_own_folder.py"}
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested
    readme = (EXAMPLES / "README.md").read_text()
    assert all(name in readme for name in tested)


def test_embed_folder(runs):
    run = runs["embed_folder.py"]
    text = run.output()
    assert "embeddings (13, 16) float32" in text
    assert "failed:" in text and "bad.mp3" in text  # reported; everything else still written
    data = np.load(run.paths["catalog"])
    assert data["embeddings"].shape == (13, 16) and len(data["paths"]) == 13
    assert data["window_offsets"][-1] == len(data["window_vectors"])


def test_linear_tagger(runs):
    run = runs["linear_tagger.py"]
    text = run.output()
    assert "embedded 12 files (16-d) in 2 classes: noise, tones" in text
    assert "held-out accuracy:" in text
    assert f"{run.paths['new']}: " in text


def test_find_duplicates(runs):
    text = runs["find_duplicates.py"].output()
    first = next(line for line in text.splitlines() if "<->" in line)
    assert "song.wav" in first and "song_copy.flac" in first, text
    assert "6 pairs" in text and len(first.split()) >= 5  # whole-track and partial scores, the pair


def test_mart_structure(runs):
    text = runs["mart_structure.py"].output()
    assert "level 0:    4 segments of 1.000 s" in text and "level 2:   16 segments of 0.250 s" in text
    assert "most alike non-touching segments at level 2" in text  # the default: the finest level
    # The repeated sections are the most alike: a quarter of A (or B) and the same quarter 2 s later.
    best = next(line.split() for line in text.splitlines() if " ~ " in line)
    score, (s1, e1), (s2, _) = float(best[0]), best[1].split("-"), best[3].split("-")
    seconds = [float(t.split(":")[1]) for t in (s1, e1, s2)]
    assert score > 0.999 and seconds[2] - seconds[0] == pytest.approx(2.0), text
    assert seconds[1] - seconds[0] == pytest.approx(0.25)
    assert "self-similarity at level 2" in text


def test_pretrain_own_folder(runs):
    run = runs["pretrain_own_folder.py"]
    text = run.output()
    assert "$ musicembed train pemr" in text and "$ musicembed train export" in text
    out = run.paths["model"]
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert "loaded Model(" in text and "embedding (" in text
