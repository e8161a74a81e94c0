"""Weights resolution without network: save_pretrained folders, a pre-populated Hugging Face
cache with HF_HUB_OFFLINE=1, the manifest (bundled and Hub-backed), and every refusal."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from musicembed import WeightsError, hub, list_models, load_model

from audio_fixtures import tone

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def populate_hf_cache(cache: Path, repo_id: str, model_dir: Path, commit: str = COMMIT, ref: str = "main") -> Path:
    """Lay out files exactly as huggingface_hub's cache does (blobs, snapshots, refs)."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for f in model_dir.iterdir():
        blob = repo / "blobs" / hub.sha256_file(f)
        shutil.copy(f, blob)
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    return snap


def run_offline(code: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(cache.parent / "hfhome")}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_save_pretrained_round_trip_is_exact(pemr_dir, tmp_path):
    m = load_model(pemr_dir, device="cpu")
    x = tone(440, 1.0, 16000)
    m.save_pretrained(tmp_path / "copy")
    m2 = load_model(tmp_path / "copy", device="cpu")
    np.testing.assert_array_equal(m.embed(x, sample_rate=16000), m2.embed(x, sample_rate=16000))
    cfg = json.loads((tmp_path / "copy" / "config.json").read_text())
    assert cfg["files"]["model.safetensors"]["sha256"] == hub.sha256_file(tmp_path / "copy" / "model.safetensors")


def test_tampered_and_truncated_weights_are_refused(pemr_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(pemr_dir, bad)
    w = bad / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-10] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="checksum mismatch.*model.safetensors.*delete it"):
        load_model(bad)
    w.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(WeightsError, match="checksum mismatch"):
        load_model(bad)


def test_weights_without_recorded_checksum_are_refused(pemr_dir, tmp_path):
    d = tmp_path / "nohash"
    shutil.copytree(pemr_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    del cfg["files"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightsError, match="no sha256"):
        load_model(d)


@pytest.mark.parametrize("name", ["../evil.safetensors", "/etc/passwd", "sub/../../x", "C:evil"])
def test_file_names_cannot_escape_the_folder(pemr_dir, tmp_path, name):
    d = tmp_path / "escape"
    shutil.copytree(pemr_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["files"] = {name: {"sha256": "0" * 64}}
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightsError, match="refusing file name"):
        load_model(d)


def test_mismatched_architecture_is_refused(pemr_dir, mart_dir, tmp_path):
    d = tmp_path / "mixed"
    shutil.copytree(pemr_dir, d)
    shutil.copy(mart_dir / "config.json", d / "config.json")
    cfg = json.loads((d / "config.json").read_text())
    cfg["files"]["model.safetensors"]["sha256"] = hub.sha256_file(d / "model.safetensors")
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightsError, match="do not match the config"):
        load_model(d)


def test_unknown_name_lists_known_models():
    with pytest.raises(WeightsError, match="unknown model 'nope'. Known models"):
        load_model("nope")
    assert list_models() == sorted(hub.read_manifest()["models"])


def test_manifest_bundled_and_hub_entries(pemr_dir, tmp_path, monkeypatch):
    pkg = tmp_path / "pkg"
    shutil.copytree(pemr_dir, pkg / "weights" / "tiny")
    files = [{"name": f, "path": f"weights/tiny/{f}", "sha256": hub.sha256_file(pemr_dir / f)}
             for f in ("config.json", "model.safetensors")]
    manifest = {"models": {
        "tiny": {"bundled": "weights/tiny", "files": files},
        "remote": {"files": files, "hub": {"repo_id": "someone/remote", "revision": COMMIT}},
    }}
    monkeypatch.setattr(hub, "read_manifest", lambda: manifest)
    monkeypatch.setattr(hub, "_package_dir", lambda: pkg)
    assert load_model("tiny").embed(tone(440, 1.0, 16000), sample_rate=16000).shape == (16,)
    assert hub.available_offline("tiny")
    # A manifest checksum that does not match the bundled file wins over config.json's own.
    manifest["models"]["tiny"]["files"][1]["sha256"] = "f" * 64
    with pytest.raises(WeightsError, match="checksum mismatch"):
        load_model("tiny")


def test_hf_cache_offline_resolution(pemr_dir, tmp_path):
    cache = tmp_path / "hub"
    populate_hf_cache(cache, "someone/tiny-pemr", pemr_dir)
    code = (
        "import numpy as np; from musicembed import load_model\n"
        "x = np.sin(np.arange(16000) / 10).astype('float32')\n"
        "a = load_model('hf-hub:someone/tiny-pemr').embed(x, sample_rate=16000)\n"
        f"b = load_model('hf-hub:someone/tiny-pemr@{COMMIT}').embed(x, sample_rate=16000)\n"
        "assert a.shape == (16,) and np.array_equal(a, b); print('ok')\n"
    )
    r = run_offline(code, cache)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def test_hf_cache_offline_missing_file_and_tampered_blob(pemr_dir, tmp_path):
    cache = tmp_path / "hub"
    r = run_offline("from musicembed import load_model; load_model('hf-hub:someone/absent')", cache)
    assert r.returncode != 0 and "not in the local Hugging Face cache" in r.stderr and "musicembed download" in r.stderr
    snap = populate_hf_cache(cache, "someone/tampered", pemr_dir)
    blob = (snap / "model.safetensors").resolve()
    blob.write_bytes(blob.read_bytes()[:-100])
    r = run_offline("from musicembed import load_model; load_model('hf-hub:someone/tampered')", cache)
    assert r.returncode != 0 and "checksum mismatch" in r.stderr


def test_bad_hub_reference():
    with pytest.raises(WeightsError, match="hf-hub:<owner>/<repo>"):
        load_model("hf-hub:no-slash")


def test_push_to_hub_uploads_a_loadable_folder(pemr_dir, tmp_path, monkeypatch):
    """push_to_hub goes through HfApi; the folder it uploads is what load_model accepts."""
    import huggingface_hub

    seen = {}

    class FakeApi:
        def __init__(self, token=None):
            seen["token"] = token

        def create_repo(self, repo_id, private=False, exist_ok=False):
            seen["repo"] = (repo_id, private, exist_ok)

        def upload_folder(self, repo_id, folder_path, revision=None, commit_message=""):
            shutil.copytree(folder_path, tmp_path / "uploaded")
            return f"https://huggingface.co/{repo_id}/commit/abc"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    url = load_model(pemr_dir).push_to_hub("me/tiny", token="t0k")
    assert url.endswith("/commit/abc") and seen["repo"] == ("me/tiny", False, True) and seen["token"] == "t0k"
    assert sorted(p.name for p in (tmp_path / "uploaded").iterdir()) == ["config.json", "model.safetensors"]
    load_model(tmp_path / "uploaded")
