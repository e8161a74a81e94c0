"""The free-music protocol on generated data: timbres as sources, transposed melodies as covers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from musicembed.train.eval.datasets import DatasetError
from musicembed.train.eval.embeddings import embed_files
from musicembed.train.eval.free_music import (
    FreeMusicConfig,
    covariance_spectrum,
    evaluate_free_music,
    excerpt_bounds,
    markdown_table,
    probe_tracks,
    read_manifest,
    write_report,
)
from musicembed.train.eval.probes import ProbeConfig
from musicembed.train.eval.systems import MFCCEmbedder, System


class Collapsed:
    """Every input maps to the same vector: the worst case for every task."""

    def embed(self, audio, sample_rate=None) -> np.ndarray:
        return np.ones((len(audio), 8), np.float32)


def test_excerpt_bounds() -> None:
    assert excerpt_bounds(100.0, 10.0, (0.25, 0.75)) == [(20.0, 30.0), (70.0, 80.0)]
    # a 12 s track: excerpts shrink to 6 s and tile the track without overlap
    assert excerpt_bounds(12.0, 10.0, (0.25, 0.75)) == [(0.0, 6.0), (6.0, 12.0)]


def test_covariance_spectrum_detects_collapse() -> None:
    rng = np.random.default_rng(0)
    iso = covariance_spectrum(rng.normal(size=(2000, 16)))
    assert iso["effective_rank"] > 15 and iso["dims_99"] >= 15
    assert sum(iso["eigenvalues"]) == pytest.approx(1.0)
    line = covariance_spectrum(rng.normal(size=(500, 1)) * np.ones((1, 16)) + 1e-4 * rng.normal(size=(500, 16)))
    assert line["effective_rank"] < 1.1 and line["top1"] > 0.99 and line["dims_90"] == 1
    const = covariance_spectrum(np.ones((10, 4)))
    assert const["effective_rank"] == 0.0


def test_probe_tracks_sample_per_source(free_music_dir: Path) -> None:
    tracks = read_manifest(free_music_dir)
    train = [t for t in tracks if t.split == "train"]
    fit, hold = probe_tracks(train, {"pkg-sine", "pkg-saw"}, FreeMusicConfig(max_train_per_source=2))
    assert len(fit) == 2 and len(hold) == 2
    assert {t.source for t in fit} == {t.source for t in hold} == {"pkg-sine", "pkg-saw"}
    assert probe_tracks(train, {"pkg-sine"}, FreeMusicConfig(max_train_per_source=2)) == probe_tracks(
        train, {"pkg-sine"}, FreeMusicConfig(max_train_per_source=2))


def test_free_music_report(free_music_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    systems = [System("mfcc", "mfcc-test", MFCCEmbedder(sample_rate=16000, n_fft=1024, hop_length=256, n_mels=40)),
               System("collapsed", "collapsed", Collapsed())]
    cfg = FreeMusicConfig(excerpt_seconds=1.5, min_excerpt_seconds=0.5, classify_seconds=2.0,
                          probe=ProbeConfig(max_epochs=60))
    monkeypatch.chdir(free_music_dir.parent)
    report = evaluate_free_music(free_music_dir.name, systems, tmp_path, config=cfg)
    assert report["data_dir"] == free_music_dir.name  # as given, not resolved to this machine's path
    c = report["counts"]
    assert (c["val_tracks"], c["excerpt_tracks"], c["cover_recordings"], c["cover_works"], c["sources"]) == (
        12, 12, 36, 12, 4)
    assert c["probe_fit_tracks"] + c["probe_holdout_tracks"] == 12
    mfcc, flat = report["systems"]
    assert mfcc["dim"] == 40 and mfcc["failed_files"] == []
    assert mfcc["same_track"]["queries"] == 24 and mfcc["covers"]["queries"] == 36
    # MFCC sees timbre: it finds the other excerpt and names the source; a collapsed
    # embedding gets the worst possible ranks
    assert mfcc["same_track"]["map"] > 0.25 and mfcc["source"]["accuracy"] >= 0.5  # chance: 0.16, 0.25
    assert flat["same_track"]["mr1"] == 23.0 and flat["covers"]["mr1"] == 34.0
    assert mfcc["same_track"]["map"] > flat["same_track"]["map"]
    assert mfcc["spectrum"]["effective_rank"] > 2 and flat["spectrum"]["effective_rank"] == 0.0
    js, md = write_report(report, tmp_path)
    assert json.loads(js.read_text())["systems"][0]["system"] == "mfcc"
    table = md.read_text()
    assert table == markdown_table(report)
    assert table.count("\n| ") == 3 and "| collapsed |" in table
    assert len(list((tmp_path / "excerpts" / "1.5s").glob("*.flac"))) == 24
    assert len(list((tmp_path / "excerpts" / "central-2s").glob("*.flac"))) == 24  # 12 val + 12 probe tracks
    assert "its central 2 s" in table
    assert (tmp_path / "cache" / "mfcc.npz").is_file()
    whole = FreeMusicConfig(excerpt_seconds=1.5, min_excerpt_seconds=0.5, classify_seconds=None)
    report = evaluate_free_music(free_music_dir, systems[1:], tmp_path / "whole", config=whole)
    assert report["systems"][0]["source"]["n_test"] == 12 and "the whole track" in markdown_table(report)


def test_embedding_cache_resumes_and_checks_fingerprint(free_music_dir: Path, tmp_path: Path) -> None:
    files = sorted((free_music_dir / "audio").glob("*.wav"))[:4] + [free_music_dir / "manifest.csv"]
    calls: list[int] = []

    class Counting(MFCCEmbedder):
        def embed(self, audio, sample_rate=None):
            calls.append(len(audio))
            return super().embed(audio, sample_rate)

    system = System("m", "fp1", Counting(sample_rate=16000, n_fft=512, hop_length=256, n_mels=40))
    cache = tmp_path / "c.npz"
    first = embed_files(system, files, cache=cache, chunk_size=10)
    assert list(first.failed) == [4] and "manifest.csv" in first.failed[4]  # not audio: reported, not cached
    assert np.isnan(first.vectors[4]).all() and first.ok.tolist() == [True] * 4 + [False]
    calls.clear()
    again = embed_files(system, files[:4], cache=cache)
    assert calls == [] and np.array_equal(again.vectors, first.vectors[:4])
    other = System("m", "fp2", system.embedder)
    embed_files(other, files[:4], cache=cache)
    assert calls == [4]  # another fingerprint: the cache is not reused


def test_free_music_needs_validation_tracks(tmp_path: Path) -> None:
    (tmp_path / "manifest.csv").write_text("path,source,licence,duration_s,split,track_id\na.wav,x,y,1,train,a\n")
    (tmp_path / "covers.csv").write_text("track_id,version,path\n")
    with pytest.raises(DatasetError, match="no validation tracks"):
        evaluate_free_music(tmp_path, [], tmp_path / "out")
    (tmp_path / "manifest.csv").write_text("path,source\n")
    with pytest.raises(DatasetError, match="lacks columns"):
        read_manifest(tmp_path)
