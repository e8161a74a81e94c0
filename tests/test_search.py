"""Catalog search: index build/save/load/update, exact and FAISS backends, model checks, CLI.

The "true neighbours" test uses generated songs whose re-encoded (MP3, OGG), gain-changed and
noisy copies must rank above every other song. Tiny *random* encoders cannot promise that
(their clip vectors all share one dominant direction: cosine ~0.99 between unrelated songs,
and a 20 dB noise floor moves a vector further than another song does), so that test embeds
with a deterministic MFCC-statistics encoder wrapped in a real ``Model``; the random tiny
PEMR/MART models test everything else (ranking of exact duplicates, spans, updates, CLI).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner
from torch import nn

from musicembed import load_model
from musicembed.catalog.index import FaissBackend, Index, IndexMismatchError, NumpyBackend, model_identity
from musicembed.cli import cli
from musicembed.config import EncoderConfig, FrontendConfig, ModelConfig
from musicembed.frontend import LogMel
from musicembed.model import Model

from audio_fixtures import make_model_dir, tiny_pemr_config

SR = 16000  # the tiny models' rate: no resampling, so excerpts match sample for sample
COPIES = ("copy.mp3", "copy.ogg", "gain.flac", "noisy.wav")


def song(seed: int, seconds: float = 3.0, sr: int = SR) -> np.ndarray:
    """A generated 'song': notes of a random scale, timbre (harmonics), tempo and decay, maybe drums."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    x = np.zeros(n)
    base = 110 * 2 ** (rng.integers(0, 24) / 12)
    scale = np.array([0, 2, 4, 5, 7, 9, 11, 12])
    harmonics = int(rng.integers(1, 8))
    step = 60 / rng.uniform(70, 180) / rng.choice([1, 2])
    decay = rng.uniform(2, 12)
    pos = 0.0
    while pos < seconds:
        f = base * 2 ** (rng.choice(scale) / 12) * rng.choice([1, 2])
        i0 = int(pos * sr)
        t = np.arange(min(n - i0, int(step * sr))) / sr
        x[i0:i0 + len(t)] += np.exp(-decay * t) * sum(0.6**h * np.sin(2 * np.pi * f * (h + 1) * t)
                                                      for h in range(harmonics))
        pos += step
    if rng.random() < 0.6:
        for hit in np.arange(0, seconds, step * rng.choice([0.5, 1, 2])):
            i0 = int(hit * sr)
            m = min(n - i0, int(0.08 * sr))
            x[i0:i0 + m] += rng.uniform(0.2, 0.8) * rng.standard_normal(m) * np.exp(-40 * np.arange(m) / sr)
    return (0.5 * x / np.abs(x).max()).astype(np.float32)


def write_copies(folder: Path, name: str, x: np.ndarray, seed: int) -> None:
    sf.write(folder / f"{name}_copy.mp3", x, SR, format="MP3")
    sf.write(folder / f"{name}_copy.ogg", x, SR, format="OGG", subtype="VORBIS")
    sf.write(folder / f"{name}_gain.flac", 0.4 * x, SR)  # -8 dB
    rms = np.sqrt((x**2).mean())
    noisy = x + rms / 10 * np.random.default_rng(seed).standard_normal(len(x)).astype(np.float32)  # 20 dB SNR
    sf.write(folder / f"{name}_noisy.wav", noisy.astype(np.float32), SR)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Path:
    """8 generated songs in two folders; songs 0-2 also as MP3, OGG, gain-changed and noisy copies."""
    d = tmp_path_factory.mktemp("catalog")
    for s in range(8):
        sub = d / ("a" if s % 2 else "b")
        sub.mkdir(exist_ok=True)
        x = song(s)
        sf.write(sub / f"song{s}.wav", x, SR)
        if s < 3:
            write_copies(sub, f"song{s}", x, 100 + s)
    return d


class MFCCStats(nn.Module):
    """Deterministic 'encoder': mean and std over time of MFCCs 1..19 (c0, the level, dropped)."""

    def __init__(self, cfg: ModelConfig, n_coef: int = 20) -> None:
        super().__init__()
        self.frontend = LogMel(cfg.frontend)
        m = cfg.frontend.n_mels
        k = torch.arange(m).float()
        dct = torch.cos(torch.pi / m * (k[None, :] + 0.5) * torch.arange(n_coef).float()[:, None])
        self.register_buffer("dct", dct[1:].contiguous())

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        mel = self.frontend(wave)
        mel = torch.maximum(mel, mel.amax(dim=(1, 2), keepdim=True) - 40)  # 40 dB below the peak
        c = torch.einsum("cm,bmt->bct", self.dct, mel)
        return torch.cat([c.mean(-1), c.std(-1)], 1) / 10


@pytest.fixture(scope="module")
def mfcc_model() -> Model:
    cfg = ModelConfig(method="pemr", name="mfcc-stats", window_samples=32000,
                      frontend=FrontendConfig(sample_rate=SR, n_fft=1024, hop_length=256, n_mels=40),
                      encoder=EncoderConfig(channels=[38], pools=[[40, 1]]))  # embedding_dim 38
    return Model(MFCCStats(cfg), cfg, device="cpu")


@pytest.fixture(scope="module")
def pemr(pemr_dir):
    return load_model(pemr_dir, device="cpu")


@pytest.fixture(scope="module")
def mfcc_index(mfcc_model, catalog) -> Index:
    return Index.build(mfcc_model, [catalog])


def _family(path: str) -> str:
    return Path(path).name.split("_")[0].split(".")[0]


def test_copies_rank_above_every_other_song(mfcc_index, mfcc_model, catalog):
    assert len(mfcc_index) == 8 + 3 * len(COPIES) and not mfcc_index.failures
    for s in range(3):
        query = catalog / ("a" if s % 2 else "b") / f"song{s}.wav"
        hits = mfcc_index.search(str(query), k=len(mfcc_index), model=mfcc_model)
        top = hits[: 1 + len(COPIES)]
        assert {_family(h.path) for h in top} == {f"song{s}"}, [(Path(h.path).name, h.score) for h in hits[:7]]
        assert hits[0].score == pytest.approx(1.0, abs=1e-5)
        worst_copy = min(h.score for h in top)
        best_other = max(h.score for h in hits if _family(h.path) != f"song{s}")
        assert worst_copy - best_other > 0.02  # a clear margin, not a tie-break
        assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
        assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))


def test_save_load_roundtrip_and_query_forms(pemr, catalog, tmp_path):
    index = Index.build(pemr, [catalog / "a"])
    out = index.save(tmp_path / "a.index.npz")
    again = Index.load(out)
    assert again.paths == index.paths and again.hashes == index.hashes and len(again) == 4 + 4
    np.testing.assert_array_equal(again.embeddings, index.embeddings)
    assert again.model == index.model and again.model["name"] == "tiny-pemr" and again.levels is None
    q = index.paths[3]
    by_path = again.search(q, k=3, model=pemr)
    assert by_path[0].path == q and by_path[0].score == pytest.approx(1.0, abs=1e-5)
    by_vec = again.search(again.embeddings[3], k=3)
    assert [h.path for h in by_vec] == [h.path for h in by_path]
    by_emb = again.search(pemr.embed(q, return_timestamps=True), k=3, model=pemr)
    assert [h.path for h in by_emb] == [h.path for h in by_path]
    assert len(again.search(q, k=100, model=pemr)) == len(again)  # k above the catalog size
    d = np.load(out)
    assert d["embeddings"].shape == (8, 16) and str(d["model"]) == "tiny-pemr" and len(d["hashes"][0]) == 64


def test_update_adds_changes_moves_and_drops(pemr, catalog, tmp_path):
    root = tmp_path / "music"
    shutil.copytree(catalog / "a", root)
    index = Index.build(pemr, [root])
    before = dict(zip(index.paths, index.embeddings))
    gone = root / "song1_gain.flac"
    gone.unlink()
    (root / "song3.wav").rename(root / "renamed.wav")  # same content, new path: vectors reused
    changed = root / "song5.wav"
    sf.write(changed, song(42), SR)  # new content at the same path
    new = root / "new" / "song9.ogg"
    new.parent.mkdir()
    sf.write(new, song(9), SR, format="OGG", subtype="VORBIS")
    same = root / "song7.wav"
    same.touch()  # mtime changes, content does not: hashed, kept
    report = index.update(pemr)
    assert report.added == [str(new)] and report.changed == [str(changed)]
    assert report.moved == [str(root / "renamed.wav")]
    assert sorted(report.removed) == sorted([str(gone), str(root / "song3.wav")])
    assert str(same) in report.unchanged and not report.failed
    rows = dict(zip(index.paths, index.embeddings))
    assert sorted(rows) == sorted(str(p) for p in root.rglob("*") if p.is_file())
    np.testing.assert_array_equal(rows[str(same)], before[str(same)])
    np.testing.assert_array_equal(rows[str(root / "renamed.wav")], before[str(root / "song3.wav")])
    assert not np.allclose(rows[str(changed)], before[str(changed)])
    fresh = Index.build(pemr, [root])  # the updated index equals a fresh build
    assert fresh.paths == index.paths and fresh.hashes == index.hashes
    np.testing.assert_allclose(fresh.embeddings, index.embeddings, rtol=1e-5, atol=1e-6)
    assert index.update(pemr).summary().startswith("0 added, 0 changed, 0 removed, 0 moved/copied")


def test_other_model_is_refused(pemr, catalog, tmp_path, pemr_dir):
    index = Index.build(pemr, [catalog / "b"])
    index.save(tmp_path / "b.index.npz")
    other = load_model(make_model_dir(tmp_path / "other", tiny_pemr_config(), seed=1), device="cpu")
    assert model_identity(other)["fingerprint"] != index.model["fingerprint"]
    q = str(catalog / "b" / "song0.wav")
    with pytest.raises(IndexMismatchError, match="built with model 'tiny-pemr'.*weights"):
        index.search(q, model=other)
    with pytest.raises(IndexMismatchError):
        index.search(other.embed(q, return_timestamps=True), model=other)
    with pytest.raises(IndexMismatchError, match="shape"):
        index.search(np.zeros(7, np.float32))
    with pytest.raises(IndexMismatchError):
        index.update(other)
    r = CliRunner().invoke(cli, ["search", q, "--index", str(tmp_path / "b.index.npz"), "--model",
                                 str(tmp_path / "other")])
    assert r.exit_code != 0 and "was built with model" in r.output and "not comparable" in r.output


def test_faiss_gives_the_numpy_results(mfcc_index, mfcc_model, catalog):
    pytest.importorskip("faiss")
    q = str(catalog / "b" / "song0.wav")
    exact = mfcc_index.search(q, k=10, model=mfcc_model, backend="numpy")
    fast = mfcc_index.search(q, k=10, model=mfcc_model, backend="faiss")
    np.testing.assert_allclose([h.score for h in fast], [h.score for h in exact], atol=1e-5)
    exact_scores = {h.path: h.score for h in exact}
    for a, b in zip(fast, exact):  # the same list; order may differ only between tied scores
        assert a.path == b.path or abs(exact_scores.get(a.path, -2) - b.score) < 1e-5
    assert {h.path for h in fast} == set(exact_scores)
    assert mfcc_index.backend("auto").name == "numpy"  # small catalog
    assert mfcc_index.backend("auto", threshold=1).name == "faiss"


def test_faiss_ivf_matches_exact_when_probing_all_lists():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((20, 32)).astype(np.float32)
    x = centres[rng.integers(0, 20, 3000)] + 0.3 * rng.standard_normal((3000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[:25] + 0.05 * rng.standard_normal((25, 32)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    s_np, i_np = NumpyBackend(x).search(q, 10)
    ivf = FaissBackend(x, nprobe=10_000, ivf_min=1000)
    assert ivf.kind == "ivf"
    s_f, i_f = ivf.search(q, 10)
    np.testing.assert_array_equal(i_f, i_np)
    np.testing.assert_allclose(s_f, s_np, atol=1e-5)
    default = FaissBackend(x, ivf_min=1000)  # default nprobe: approximate, still near-exact here
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(default.search(q, 10)[1], i_np)])
    assert recall >= 0.9


def test_mart_hits_carry_the_best_matching_span(mart_dir, tmp_path):
    mart = load_model(mart_dir, device="cpu")  # 1-s level-0 clips, 3 levels
    root = tmp_path / "m"
    root.mkdir()
    tracks = {s: song(s, seconds=4.0) for s in (10, 11, 12)}
    for s, x in tracks.items():
        sf.write(root / f"song{s}.wav", x, SR)
    index = Index.build(mart, [root])
    assert index.hierarchical and len(index.levels) == 3
    assert [len(lv["offsets"]) for lv in index.levels] == [4, 4, 4]
    assert index.levels[2]["offsets"][-1] == 3 * 4 * 4  # 4 clips of 4 quarter-parts per file
    decoded, _ = sf.read(root / "song11.wav", dtype="float32")  # as stored (16-bit PCM)
    excerpt = decoded[2 * SR: 3 * SR]  # seconds 2-3 of song11: exactly its third level-0 clip
    hits = index.search(excerpt, k=3, model=mart, sample_rate=SR)
    assert Path(hits[0].path).name == "song11.wav"
    span = hits[0].span
    assert (span.level, span.start, span.end) == (0, 2.0, 3.0) and span.score == pytest.approx(1.0, abs=1e-4)
    assert (span.query_start, span.query_end) == (0.0, 1.0)
    fine = index.search(excerpt, k=1, model=mart, sample_rate=SR, span_level=2)[0].span
    assert fine.level == 2 and 2.0 <= fine.start < fine.end <= 3.0 and fine.end - fine.start == 0.25
    out = index.save(tmp_path / "m.index.npz")
    again = Index.load(out)
    assert again.search(excerpt, k=1, model=mart, sample_rate=SR)[0].span == span
    assert again.levels[1]["vectors"].dtype == np.float16 and again.embeddings.dtype == np.float32
    small = Index.build(mart, [root / "song11.wav"], levels=1)  # level 0 only
    assert len(small.levels) == 1 and small.search(excerpt, k=1, model=mart, sample_rate=SR)[0].span == span
    with pytest.raises(ValueError, match="span_level"):
        small.search(excerpt, k=1, model=mart, sample_rate=SR, span_level=1)


def test_cli_index_search_update(pemr_dir, catalog, tmp_path):
    runner = CliRunner()
    root = tmp_path / "music"
    root.mkdir()
    for name in ("song0.wav", "song2.wav", "song2_noisy.wav", "song2_copy.mp3"):
        shutil.copy(catalog / "b" / name, root / name)
    idx = tmp_path / "music.index.npz"
    r = runner.invoke(cli, ["index", str(root), "--out", str(idx), "--model", str(pemr_dir)])
    assert r.exit_code == 0, r.output
    assert "indexed 4 files" in r.output
    q = str(root / "song2_noisy.wav")
    r = runner.invoke(cli, ["search", q, "--index", str(idx), "-k", "3", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["model"] == "tiny-pemr" and doc["backend"] == "numpy" and len(doc["results"]) == 3
    first = doc["results"][0]
    assert first["path"] == q and first["rank"] == 1 and first["score"] == pytest.approx(1.0, abs=1e-5)
    assert set(first) == {"rank", "path", "score", "duration", "span"} and first["duration"] == 3.0
    r = runner.invoke(cli, ["search", q, "--index", str(idx), "-k", "2"])
    assert r.exit_code == 0 and "  1   1.0000" in r.stdout and q in r.stdout
    (root / "song0.wav").unlink()
    sf.write(root / "extra.flac", song(77), SR)
    r = runner.invoke(cli, ["index", str(root), "--out", str(idx)])  # model taken from the index
    assert r.exit_code == 0, r.output
    assert "1 added, 0 changed, 1 removed" in r.output and ": 4 files" in r.output
    r = runner.invoke(cli, ["search", str(tmp_path / "nope.wav"), "--index", str(idx)])
    assert r.exit_code == 1 and "no such file" in r.output
    r = runner.invoke(cli, ["search", q, "--index", str(tmp_path / "missing.npz")])
    assert r.exit_code != 0 and "no such index file" in r.output


def test_the_index_records_the_identity_and_refuses_other_windows(pemr, catalog, tmp_path):
    index = Index.build(pemr, [catalog / "b"])
    assert index.model == model_identity(pemr)  # one identity: the same dict outputs and stores record
    assert (index.model["window_seconds"], index.model["hop_seconds"]) == (0.5, 0.5)
    with np.load(index.save(tmp_path / "b.index.npz")) as d:
        assert str(d["model_fingerprint"]) == pemr.fingerprint() and float(d["hop_seconds"]) == 0.5
    q = str(catalog / "b" / "song0.wav")
    assert index.search(pemr.embed(q, return_timestamps=True), k=1, model=pemr)[0].path == q
    with pytest.raises(IndexMismatchError, match=r": window 0\.5 s vs 0\.25 s, the index's first\..*other windows"):
        index.search(pemr.embed(q, return_timestamps=True, window_seconds=0.25), model=pemr)
    with pytest.raises(IndexMismatchError, match=r"hop 0\.5 s vs 0\.125 s"):
        index.search(pemr.embed(q, return_timestamps=True, hop_seconds=0.125), model=pemr)
    with pytest.raises(IndexMismatchError, match=r"hop 0\.5 s vs 0\.25 s"):
        index.search(np.zeros(16, np.float32), query_identity=model_identity(pemr, hop_seconds=0.25))
    with pytest.raises(IndexMismatchError, match="window 0.5 s vs 0.25 s"):
        index.check_model(model_identity(pemr, window_seconds=0.25))

    hop = Index.build(pemr, [catalog / "b" / "song2.wav"], hop_seconds=0.25)
    assert hop.model == model_identity(pemr, hop_seconds=0.25)
    hits = hop.search(q, k=1, model=pemr)  # a path is embedded with the index's window and hop
    assert len(hits) == 1
    with pytest.raises(IndexMismatchError, match=r"hop 0\.25 s vs 0\.5 s"):
        hop.check_model(model_identity(pemr))


def test_a_query_reads_the_weights_fingerprint_at_most_once(pemr_dir, catalog, monkeypatch):
    model = load_model(pemr_dir, device="cpu")
    index = Index.build(model, [catalog / "a" / "song1.wav", catalog / "a" / "song3.wav"])
    calls = []
    real = type(model).fingerprint
    monkeypatch.setattr(model, "fingerprint", lambda: calls.append(1) or real(model))
    index.search(str(catalog / "a" / "song1.wav"), k=1, model=model)
    assert len(calls) <= 1
    calls.clear()
    index.search(model.embed(str(catalog / "a" / "song3.wav"), return_timestamps=True), k=1, model=model)
    assert len(calls) <= 1


def _rewrite_meta(path: Path, change) -> None:
    with np.load(path) as d:
        arrays = {k: d[k] for k in d.files}
    meta = json.loads(str(arrays["meta"]))
    change(meta["model"])
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)


def test_older_indexes_load(pemr, catalog, tmp_path):
    root = tmp_path / "music"
    shutil.copytree(catalog / "a", root)
    path = Index.build(pemr, [root]).save(tmp_path / "old.index.npz")
    # Written before the identity held window and hop: loads quietly, an update records them.
    _rewrite_meta(path, lambda m: [m.pop(k) for k in ("window_seconds", "hop_seconds")])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        old = Index.load(path)
    q = str(root / "song1.wav")
    assert old.search(q, k=1, model=pemr)[0].path == q
    old.update(pemr)
    assert old.model == model_identity(pemr)
    # Written before the identity held a fingerprint: loads with a warning, still checked by name and size.
    _rewrite_meta(path, lambda m: [m.pop(k, None) for k in ("fingerprint", "window_seconds", "hop_seconds")])
    with pytest.warns(UserWarning, match="records no model fingerprint.*--rebuild"):
        older = Index.load(path)
    assert older.search(q, k=1, model=pemr)[0].path == q
    assert "fingerprint" not in older.model
