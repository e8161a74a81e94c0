"""Sharded catalog runs: the stable split, `embed --shard K/N`, and `merge` with its checks."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from musicembed import load_model
from musicembed.catalog.shard import ShardError, list_catalog, merge, parse_spec, shard_of
from musicembed.cli import cli

from audio_fixtures import SR, chord, make_model_dir, tiny_pemr_config, tone


@pytest.fixture(scope="module")
def music(tmp_path_factory) -> Path:
    """11 short files in nested folders, one of them not decodable."""
    d = tmp_path_factory.mktemp("music")
    for i in range(10):
        sub = d / ("rock" if i % 3 == 0 else "jazz/old" if i % 3 == 1 else "")
        sub.mkdir(parents=True, exist_ok=True)
        x = tone(220 * 1.25 ** i, 0.6 + 0.1 * i) if i % 2 else chord(seconds=0.7 + 0.05 * i)
        sf.write(sub / f"t{i:02d}.{'wav' if i % 2 else 'flac'}", x, SR)
    (d / "jazz" / "broken.mp3").write_bytes(b"not audio at all" * 10)
    return d


def test_parse_spec():
    assert (parse_spec("0/4").index, parse_spec(" 3 / 4 ").count) == (0, 4)
    assert str(parse_spec("2/8")) == "2/8"
    for bad, msg in [("4/4", "0-based"), ("1/0", "at least 1"), ("a/b", "K/N"), ("-1/3", "K/N"), ("2", "K/N")]:
        with pytest.raises(ShardError, match=msg):
            parse_spec(bad)


def test_shard_of_is_stable_and_balanced():
    # Pinned values: changing the hash would split existing catalogs differently.
    assert [shard_of(k, 7) for k in ("a.mp3", "rock/b.flac", "jazz/old/c.wav")] == [
        int.from_bytes(__import__("hashlib").sha1(k.encode()).digest()[:8], "big") % 7
        for k in ("a.mp3", "rock/b.flac", "jazz/old/c.wav")]
    assert shard_of("rock/b.flac", 1) == 0
    keys = [f"artist{i // 10}/track{i}.mp3" for i in range(4000)]
    counts = np.bincount([shard_of(k, 8) for k in keys], minlength=8)
    assert counts.sum() == 4000 and counts.min() > 400 and counts.max() < 600


def test_keys_do_not_depend_on_where_the_catalog_is_mounted(music, tmp_path):
    other = tmp_path / "mnt" / "elsewhere"
    shutil.copytree(music, other)
    a = list_catalog([music], recursive=True)
    b = list_catalog([str(other) + "/"], recursive=True)
    assert a.keys == b.keys and a.digest == b.digest and "jazz/old/t01.wav" in a.keys
    shards = [set(a.select(parse_spec(f"{k}/3")).rows) for k in range(3)]
    assert set.union(*shards) == set(range(len(a.keys))) and sum(map(len, shards)) == len(a.keys)


def test_sharded_embed_then_merge_equals_one_run(pemr_dir, music, tmp_path):
    runner = CliRunner()
    whole = tmp_path / "whole.npz"
    r = runner.invoke(cli, ["embed", str(music), "-r", "-m", str(pemr_dir), "--out", str(whole), "--timestamps"])
    assert r.exit_code == 1 and "broken.mp3" in r.output  # the bad file fails, the rest is written
    parts = []
    for k in range(3):
        part = tmp_path / f"part-{k}.npz"
        r = runner.invoke(cli, ["embed", str(music), "-r", "-m", str(pemr_dir), "--out", str(part), "--timestamps",
                                "--shard", f"{k}/3"])
        assert r.exit_code in (0, 1), r.output
        parts.append(part)
    sizes = [len(np.load(p)["paths"]) + len(np.load(p)["failed_keys"]) for p in parts]
    assert sum(sizes) == 11 and all(sizes)
    merged = tmp_path / "merged.npz"
    r = runner.invoke(cli, ["merge", *map(str, parts[::-1]), "--out", str(merged)])
    assert r.exit_code == 1, r.output  # the broken file is reported...
    assert "jazz/broken.mp3" in r.output and "10 of 11 files" in r.output
    a, b = np.load(whole), np.load(merged)  # ...and everything else matches an unsharded run
    assert list(a["paths"]) == list(b["paths"]) and str(b["model"]) == "tiny-pemr"
    np.testing.assert_allclose(a["embeddings"], b["embeddings"], rtol=1e-5, atol=1e-6)
    for key in ("window_starts", "window_ends", "window_offsets", "durations"):
        np.testing.assert_array_equal(a[key], b[key])
    np.testing.assert_allclose(a["window_vectors"], b["window_vectors"], rtol=1e-5, atol=1e-6)
    assert sorted(b.files) == sorted(a.files)

    with pytest.raises(ShardError, match=r"1 of 3 shards missing: 1/3"):
        merge([parts[0], parts[2]], tmp_path / "x.npz")
    with pytest.raises(ShardError, match="given twice"):
        merge([parts[0], parts[0], parts[1], parts[2]], tmp_path / "x.npz")
    with pytest.raises(ShardError, match="not a shard output"):
        merge([whole], tmp_path / "x.npz")
    assert not (tmp_path / "x.npz").exists()


def test_merge_refuses_parts_of_different_catalogs_or_options(pemr_dir, music, tmp_path):
    runner = CliRunner()
    small = tmp_path / "small"
    shutil.copytree(music / "rock", small)

    def run(src, k, n, *extra):
        out = tmp_path / f"{src.name}-{k}-{n}-{len(extra)}.npz"
        r = runner.invoke(cli, ["embed", str(src), "-r", "-m", str(pemr_dir), "--out", str(out), "--shard",
                                f"{k}/{n}", *extra])
        assert r.exit_code in (0, 1), r.output
        return out

    with pytest.raises(ShardError, match="different catalogs"):
        merge([run(small, 0, 2), run(music, 1, 2)], tmp_path / "x.npz")
    with pytest.raises(ShardError, match="same N"):
        merge([run(small, 0, 2), run(small, 1, 3)], tmp_path / "x.npz")
    with pytest.raises(ShardError, match="same options"):
        merge([run(small, 0, 2), run(small, 1, 2, "--timestamps")], tmp_path / "x.npz")
    ok = tmp_path / "small.npz"
    r = runner.invoke(cli, ["merge", str(run(small, 0, 2)), str(run(small, 1, 2)), "--out", str(ok)])
    assert r.exit_code == 0, r.output
    assert len(np.load(ok)["paths"]) == 4
    r = runner.invoke(cli, ["embed", str(small), "-r", "-m", str(pemr_dir), "--shard", "2/2"])
    assert r.exit_code != 0 and "0-based" in r.output
    r = runner.invoke(cli, ["embed", str(small), "-r", "-m", str(pemr_dir), "--shard", "0/2", "--out",
                            str(tmp_path / "a.jsonl")])
    assert r.exit_code != 0 and "--shard needs --out FILE.npz" in r.output


def test_merge_refuses_other_weights_another_hop_and_parts_without_a_fingerprint(pemr_dir, music, tmp_path):
    """Needs `embed` to pass the model's identity to write_results (musicembed/cli/main.py)."""
    runner = CliRunner()
    small = tmp_path / "small"
    shutil.copytree(music / "rock", small)
    # The same config and name as pemr_dir ("tiny-pemr"), other weights.
    other = make_model_dir(tmp_path / "other", tiny_pemr_config(), seed=1)

    def run(name, k, model, *extra):
        out = tmp_path / f"{name}-{k}.npz"
        r = runner.invoke(cli, ["embed", str(small), "-r", "-m", str(model), "--out", str(out), "--shard", f"{k}/2",
                                *extra])
        assert r.exit_code == 0, r.output
        return out

    p0, p1 = run("a", 0, pemr_dir), run("a", 1, pemr_dir)
    fingerprint = load_model(pemr_dir, device="cpu").fingerprint()
    with np.load(p0) as z:
        assert str(z["model_fingerprint"]) == fingerprint and str(z["model"]) == "tiny-pemr"
        assert (float(z["window_seconds"]), float(z["hop_seconds"])) == (0.5, 0.5)
    ok = tmp_path / "ok.npz"
    merge([p0, p1], ok)
    with np.load(ok) as z:  # the merged file carries the identity, like an unsharded run
        assert str(z["model_fingerprint"]) == fingerprint and float(z["hop_seconds"]) == 0.5

    with pytest.raises(ShardError, match=r"different weights \(fingerprint [0-9a-f]{12} vs [0-9a-f]{12}\).*--model"):
        merge([p0, run("other", 1, other)], tmp_path / "x.npz")
    with pytest.raises(ShardError, match=r"hop 0\.25 s vs 0\.5 s.*same --window and --hop"):
        merge([p0, run("hop", 1, pemr_dir, "--hop", "0.25")], tmp_path / "x.npz")
    with pytest.raises(ShardError, match=r"window 0\.25 s vs 0\.5 s"):
        merge([p0, run("window", 1, pemr_dir, "--window", "0.25")], tmp_path / "x.npz")

    # A part written before outputs carried the identity: only the model's name.
    old = tmp_path / "old-1.npz"
    with np.load(p1) as z:
        np.savez(old, **{k: z[k] for k in z.files
                         if k not in ("model_fingerprint", "model_version", "window_seconds", "hop_seconds")})
    with pytest.raises(ShardError, match=r"old-1\.npz records no model fingerprint.*re-embed it .*--shard 1/2"):
        merge([p0, old], tmp_path / "x.npz")
    assert not (tmp_path / "x.npz").exists()
