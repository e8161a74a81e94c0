"""The free-music protocol on generated data: timbres/registers as sources, transposed
melodies as covers, held-out sources in the select and report splits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from musicembed.eval.datasets import DatasetError
from musicembed.eval.degrade import DEGRADATIONS
from musicembed.eval.embeddings import embed_files
from musicembed.eval.free_music import (
    METRICS,
    FreeMusicConfig,
    Track,
    covariance_spectrum,
    evaluate_free_music,
    excerpt_bounds,
    markdown_table,
    read_manifest,
    split_tracks,
    stratified_folds,
    write_report,
)
from musicembed.eval.probes import ProbeConfig
from musicembed.eval.systems import MFCCEmbedder, System


class Collapsed:
    """Every input maps to the same vector: the worst case for every task."""

    def embed(self, audio, sample_rate=None) -> np.ndarray:
        return np.ones((len(audio), 8), np.float32)


def mfcc_system(name: str = "mfcc") -> System:
    return System(name, "mfcc-test", MFCCEmbedder(sample_rate=16000, n_fft=1024, hop_length=256, n_mels=40))


CFG = dict(excerpt_seconds=1.5, min_excerpt_seconds=0.5, classify_seconds=2.0, robust_seconds=2.0, resamples=200,
           probe=ProbeConfig(max_epochs=60))


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


def test_split_tracks(free_music_dir: Path) -> None:
    tracks = read_manifest(free_music_dir)
    sizes = {s: len(split_tracks(tracks, s)) for s in ("select", "report", "val")}
    assert sizes == {"select": 12, "report": 8, "val": 4}
    assert {t.source for t in split_tracks(tracks, "report")} == {"pkg-square-high", "pkg-saw-high"}
    with pytest.raises(ValueError, match="split must be one of"):
        split_tracks(tracks, "train")


def test_stratified_folds_by_track() -> None:
    tracks = [Track(f"{s}-{i}", Path("x"), s, 1.0, "select") for s, n in (("a", 7), ("b", 5), ("c", 3))
              for i in range(n)]
    folds = stratified_folds(tracks, 5, seed=0)
    assert sorted(folds) == sorted(t.track_id for t in tracks)  # every track in exactly one fold
    sizes = np.bincount(list(folds.values()), minlength=5)
    assert sizes.max() - sizes.min() <= 1
    for source, n in (("a", 7), ("b", 5), ("c", 3)):
        per = np.bincount([folds[t.track_id] for t in tracks if t.source == source], minlength=5)
        assert per.max() - per.min() <= 1 and per.sum() == n  # stratified: each fold its share of each source
    assert folds == stratified_folds(list(reversed(tracks)), 5, seed=0)  # deterministic, order-free
    assert folds != stratified_folds(tracks, 5, seed=1)


def test_free_music_report(free_music_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    systems = [mfcc_system(), System("collapsed", "collapsed", Collapsed())]
    cfg = FreeMusicConfig(split="select", **CFG)
    monkeypatch.chdir(free_music_dir.parent)
    report = evaluate_free_music(free_music_dir.name, systems, tmp_path, config=cfg, baselines=["collapsed"])
    assert report["data_dir"] == free_music_dir.name  # as given, not resolved to this machine's path
    assert report["split"] == "select"
    c = report["counts"]
    assert (c["tracks"], c["sources"], c["excerpt_tracks"], c["cover_recordings"], c["cover_groups"],
            c["robust_tracks"]) == (12, 3, 12, 36, 12, 12)
    mfcc, flat = report["systems"]
    assert mfcc["dim"] == 40 and mfcc["failed_files"] == []
    assert mfcc["same_track"]["queries"] == 24 and mfcc["covers"]["queries"] == 36
    # MFCC sees timbre: it finds the other excerpt and names the source; a collapsed
    # embedding gets the worst possible ranks
    assert mfcc["same_track"]["map"] > 0.25 and mfcc["source"]["accuracy"] >= 0.5  # chance: 0.16, 0.33
    assert flat["same_track"]["mr1"] == 23.0 and flat["covers"]["mr1"] == 34.0
    assert mfcc["spectrum"]["effective_rank"] > 2 and flat["spectrum"]["effective_rank"] == 0.0
    # source classification: 5-fold CV over the 12 tracks of the split, stratified by source
    src = mfcc["source"]
    assert src["n_tracks"] == 12 and src["classes"] == ["pkg-pulse", "pkg-saw", "pkg-sine-high"]
    assert sorted(src["track_folds"].values()) == sorted([0, 1, 2, 3, 4] * 2 + [0, 1])
    # robustness: seven degradations and their mean; a collapsed embedding never ranks its own excerpt first
    rob = mfcc["robustness"]
    assert set(rob) == {d.name for d in DEGRADATIONS} | {"mean", "n_tracks"} and rob["n_tracks"] == 12
    assert rob["mean"] == pytest.approx(np.mean([rob[d.name] for d in DEGRADATIONS]))
    assert rob["mp3-64k"] > 0.5 and flat["robustness"]["mean"] == 0.0
    # every metric carries its interval, which brackets the value (the effective rank: none)
    assert mfcc["metrics"]["spectrum.effective_rank"] == {"value": mfcc["spectrum"]["effective_rank"], "ci": None}
    for key in (s.key for s in METRICS if s.bootstrap):
        entry = mfcc["metrics"][key]
        assert entry["ci"][0] <= entry["value"] + 1e-12 and entry["value"] <= entry["ci"][1] + 1e-12, key
    assert mfcc["metrics"]["same_track.map"]["value"] == mfcc["same_track"]["map"]
    # the difference from the collapsed baseline is clearly above 0 (MR1: below)
    (diff,) = report["differences"]
    assert (diff["system"], diff["baseline"]) == ("mfcc", "collapsed")
    assert diff["metrics"]["same_track.map"]["better"] and diff["metrics"]["same_track.map"]["ci"][0] > 0
    assert diff["metrics"]["covers.mr1"]["better"] and diff["metrics"]["covers.mr1"]["ci"][1] < 0
    assert "spectrum.effective_rank" not in diff["metrics"]
    js, md = write_report(report, tmp_path)
    assert js.name == "free_music_select.json" and md.name == "free_music_select.md"
    assert json.loads(js.read_text())["systems"][0]["system"] == "mfcc"
    table = md.read_text()
    assert table == markdown_table(report)
    assert "| mfcc | " in table and "| collapsed | " in table and "| mfcc - collapsed | " in table
    assert "**+" in table  # a difference marked as better
    assert "its central 2 s" in table and "5-fold" in table
    assert len(list((tmp_path / "excerpts" / "1.5s").glob("*.flac"))) == 24
    assert len(list((tmp_path / "excerpts" / "central-2s").glob("*.flac"))) == 12
    robust = tmp_path / "robustness" / "2s"
    assert len(list((robust / "clean").glob("*.flac"))) == 12
    assert all(len(list((robust / d.name).iterdir())) == 12 for d in DEGRADATIONS)
    assert (tmp_path / "cache" / "mfcc.npz").is_file()
    # a second run reuses the degraded copies and gives the same report
    stamps = {p: p.stat().st_mtime_ns for p in robust.rglob("*") if p.is_file()}
    again = evaluate_free_music(free_music_dir.name, systems, tmp_path, config=cfg, baselines=["collapsed"])
    assert {p: p.stat().st_mtime_ns for p in robust.rglob("*") if p.is_file()} == stamps
    assert again["systems"][0]["metrics"] == mfcc["metrics"]


def test_identical_systems_differ_by_zero_and_baseline_is_added(free_music_dir: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # "mfcc" as a baseline spec: loaded by name and added to the systems; a copy of the
    # same features under another name differs from it by exactly 0 everywhere
    import musicembed.eval.free_music as fm

    monkeypatch.setattr(fm, "load_system", lambda spec, device=None: mfcc_system(spec))
    cfg = FreeMusicConfig(split="report", **CFG)
    report = evaluate_free_music(free_music_dir, [mfcc_system("copy")], tmp_path, config=cfg, baselines=["mfcc"])
    assert [r["system"] for r in report["systems"]] == ["copy", "mfcc"]
    assert report["counts"]["tracks"] == 8 and report["systems"][0]["source"]["n_tracks"] == 8
    (diff,) = report["differences"]
    for key, d in diff["metrics"].items():
        assert d["value"] == 0.0 and d["ci"] == [0.0, 0.0] and d["better"] in (False, None), key
    assert "**" not in markdown_table(report).split("Differences")[1]


def test_val_split_and_whole_tracks(free_music_dir: Path, tmp_path: Path) -> None:
    cfg = FreeMusicConfig(split="val", **{**CFG, "classify_seconds": None})
    report = evaluate_free_music(free_music_dir, [mfcc_system()], tmp_path, config=cfg)
    row = report["systems"][0]
    assert report["counts"]["tracks"] == 4 and row["source"]["n_tracks"] == 4  # 2 sources x 2 tracks
    assert row["source"]["classes"] == ["pkg-sine", "pkg-square"]
    assert report["differences"] == [] and "Differences" not in markdown_table(report)
    assert "the whole track" in markdown_table(report)


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


def test_free_music_needs_tracks_of_the_split(tmp_path: Path) -> None:
    (tmp_path / "manifest.csv").write_text("path,source,licence,duration_s,split,track_id\na.wav,x,y,1,train,a\n")
    (tmp_path / "covers.csv").write_text("track_id,version,path\n")
    with pytest.raises(DatasetError, match="no 'select' tracks"):
        evaluate_free_music(tmp_path, [], tmp_path / "out")
    (tmp_path / "manifest.csv").write_text("path,source\n")
    with pytest.raises(DatasetError, match="lacks columns"):
        read_manifest(tmp_path)
