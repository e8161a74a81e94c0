"""One identity for a model's vectors: its definition, its plain-words comparison, and the outputs
that carry it (`embed --out` .npz / .jsonl)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from musicembed import load_model
from musicembed.cli import cli
from musicembed.identity import (
    COMPARED,
    describe,
    differences,
    from_stored,
    mismatch,
    missing,
    model_identity,
    stored_fields,
    windows_shown,
)

from audio_fixtures import make_model_dir, tiny_pemr_config, tone


@pytest.fixture(scope="module")
def pemr(pemr_dir):
    return load_model(pemr_dir, device="cpu")


@pytest.fixture(scope="module")
def other(tmp_path_factory):
    """Another tiny PEMR with the same config and name but other weights."""
    return load_model(make_model_dir(tmp_path_factory.mktemp("models") / "other", tiny_pemr_config(), seed=1),
                      device="cpu")


def test_identity_holds_the_model_and_the_window_and_hop_it_uses(pemr, pemr_dir):
    ident = model_identity(pemr)
    assert set(ident) == {*COMPARED, "source", "license"}
    assert ident["license"] is None  # a model folder states no licence; manifest models do
    assert (ident["name"], ident["version"], ident["method"], ident["dim"]) == ("tiny-pemr", "0", "pemr", 16)
    assert ident["fingerprint"] == pemr.fingerprint() and len(ident["fingerprint"]) == 64
    assert ident["window_seconds"] == pemr.config.window_seconds == 0.5  # None: the trained window
    assert ident["hop_seconds"] == 0.5  # None: the window
    assert ident["source"] == os.path.abspath(pemr_dir)
    assert model_identity(pemr, hop_seconds=0.25)["hop_seconds"] == 0.25
    both = model_identity(pemr, window_seconds=0.25)
    assert (both["window_seconds"], both["hop_seconds"]) == (0.25, 0.25)
    # As the model uses them: whole samples at its rate (16 kHz), so 0.30001 s is 4800 samples = 0.3 s.
    assert model_identity(pemr, window_seconds=0.30001)["window_seconds"] == 0.3
    assert mismatch(model_identity(pemr, window_seconds=0.5), ident) is None  # the default, given explicitly
    assert json.loads(json.dumps(ident)) == ident


def test_differences_name_the_field_in_plain_words(pemr, other):
    a, b = model_identity(pemr), model_identity(other)
    assert a["name"] == b["name"] and a["fingerprint"] != b["fingerprint"]
    assert differences(a, b) == [("fingerprint", f"different weights (fingerprint {a['fingerprint'][:12]} vs "
                                                 f"{b['fingerprint'][:12]})")]
    x = {**a, "window_seconds": 3.0, "hop_seconds": 1.5}
    assert mismatch(x, {**x, "hop_seconds": 3.0}) == "hop 1.5 s vs 3 s"
    assert mismatch(x, {**x, "version": "1.0"}) == "model version 0 vs 1.0"
    # A hop that only follows the window (non-overlapping on both sides) is not a second difference.
    assert differences(a, model_identity(pemr, window_seconds=0.25)) == [("window_seconds", "window 0.5 s vs 0.25 s")]
    assert [k for k, _ in differences(a, model_identity(pemr, window_seconds=0.25, hop_seconds=0.125))] == [
        "window_seconds", "hop_seconds"]
    # Fields one side does not record (an older file) are not compared; missing() names them.
    old = {k: a[k] for k in ("name", "version", "method", "dim")}
    assert mismatch(old, b) is None and missing(old) == ["fingerprint", "window_seconds", "hop_seconds"]
    text = describe(a)
    assert text.startswith("'tiny-pemr' v0 (pemr, 16-d, weights ") and text.endswith("window 0.5 s, hop 0.5 s)")
    assert "weights not recorded" in describe(old)


def test_stored_fields_round_trip_through_npz_and_json(pemr, tmp_path):
    ident = model_identity(pemr, hop_seconds=0.25)
    stored = stored_fields(ident)
    assert stored == {"model": "tiny-pemr", "model_version": "0", "model_fingerprint": pemr.fingerprint(),
                      "window_seconds": 0.5, "hop_seconds": 0.25}
    np.savez(tmp_path / "x.npz", **{k: np.array(v) for k, v in stored.items()})
    with np.load(tmp_path / "x.npz") as z:
        back = from_stored({k: z[k] for k in z.files}, dim=16)
    assert mismatch(back, ident) is None and back["method"] is None and back["dim"] == 16
    assert from_stored(json.loads(json.dumps(stored))) == {**back, "dim": None}


def test_windows_shown_by_an_embedding(pemr):
    x = tone(440, 2.0, 16000)
    e = pemr.embed(x, sample_rate=16000, return_timestamps=True, window_seconds=0.25, hop_seconds=0.125)
    shown = windows_shown(e.starts, e.ends, 16000)
    assert shown == {"window_seconds": 0.25, "hop_seconds": 0.125}
    one = pemr.embed(x[:4000], sample_rate=16000, return_timestamps=True)  # shorter than a window: one window
    assert windows_shown(one.starts, one.ends, 16000) == {}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("music")
    for i in range(3):
        sf.write(d / f"t{i}.wav", tone(300 + 100 * i, 1.2, 16000), 16000)
    return d


def test_outputs_carry_the_identity(pemr, pemr_dir, folder, tmp_path):
    """Needs `embed` to pass the model's identity to write_results (musicembed/cli/main.py)."""
    npz, jsonl, npy = tmp_path / "o.npz", tmp_path / "o.jsonl", tmp_path / "o.npy"
    for out in (npz, jsonl):
        r = CliRunner().invoke(cli, ["embed", str(folder), "-r", "-m", str(pemr_dir), "--hop", "0.25", "--out",
                                     str(out)])
        assert r.exit_code == 0, r.output
    with np.load(npz) as z:
        assert str(z["model"]) == "tiny-pemr" and str(z["model_version"]) == "0"
        assert str(z["model_fingerprint"]) == pemr.fingerprint()
        assert float(z["window_seconds"]) == 0.5 and float(z["hop_seconds"]) == 0.25
        assert mismatch(from_stored({k: z[k] for k in z.files}), model_identity(pemr, hop_seconds=0.25)) is None
    lines = [json.loads(ln) for ln in jsonl.read_text().splitlines()]
    assert len(lines) == 3
    for doc in lines:  # every line stands alone
        assert doc["model_fingerprint"] == pemr.fingerprint() and doc["model"] == "tiny-pemr"
        assert (doc["model_version"], doc["window_seconds"], doc["hop_seconds"]) == ("0", 0.5, 0.25)
    r = CliRunner().invoke(cli, ["embed", str(folder), "-r", "-m", str(pemr_dir), "--out", str(npy)])
    assert r.exit_code == 0, r.output
    assert np.load(npy).dtype.names == ("path", "duration", "declared_duration", "embedding")  # no identity


def test_write_results_keeps_the_call_without_identity(pemr, folder, tmp_path):
    from musicembed.io.writers import write_results

    results = pemr.embed(sorted(folder.iterdir()), return_timestamps=True)
    write_results(tmp_path / "old.npz", results, 16, "tiny-pemr")
    with np.load(tmp_path / "old.npz") as z:
        assert str(z["model"]) == "tiny-pemr" and "model_fingerprint" not in z.files
    write_results(tmp_path / "new.npz", results, 16, "tiny-pemr", identity=model_identity(pemr))
    with np.load(tmp_path / "new.npz") as z:
        assert str(z["model_fingerprint"]) == pemr.fingerprint()
    with pytest.raises(ValueError, match="not the name in identity"):
        write_results(tmp_path / "bad.npz", results, 16, "pemr", identity=model_identity(pemr))


@pytest.mark.parametrize("window", [float("nan"), float("inf"), "x"])
def test_an_unusable_window_is_left_for_embedding_to_refuse(pemr, window):
    ident = model_identity(pemr, window_seconds=window)  # no error of its own
    with pytest.raises(ValueError, match="window_seconds must be between"):
        pemr.embed(tone(440, 1.0, 16000), sample_rate=16000, window_seconds=window)
    assert str(ident["window_seconds"]) == str(window)  # kept as given
