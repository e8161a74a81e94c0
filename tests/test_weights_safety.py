"""Weights safety (issue 5) beyond tests/test_hub.py: no pickle loading anywhere for weights,
names from a manifest or config that try to leave their folder, safetensors files whose header
lies while their checksum matches, and tampered config.json files. Every refusal is a
WeightsError that names the file and says what to do, never a traceback or running code."""

from __future__ import annotations

import ast
import json
import os
import shutil
import struct
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from musicembed import WeightsError, hub, load_model
from musicembed.cli import cli

from audio_fixtures import tone

PACKAGE = Path(hub.__file__).parent


# ----------------------------------------------------------------------------- no pickles, statically

def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = ast.unparse(f) if isinstance(f, (ast.Attribute, ast.Name)) else ""
            yield node, name


def _kw(node: ast.Call, name: str):
    for k in node.keywords:
        if k.arg == name:
            return k.value
    return None


def test_no_pickle_loading_in_the_package():
    """Every torch.load passes weights_only=True (training checkpoints included); the one exception is
    the official-checkpoint converter's fallback, which must use its restricted unpickler. No
    pickle.load / np.load(allow_pickle=True) / joblib / dill anywhere in musicembed/."""
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent)
        tree = ast.parse(path.read_text(), str(path))
        for node, name in _calls(tree):
            where = f"{rel}:{node.lineno}: {ast.unparse(node)[:100]}"
            if name == "torch.load":
                wo = _kw(node, "weights_only")
                safe = isinstance(wo, ast.Constant) and wo.value is True
                restricted = (str(rel) == "musicembed/convert.py" and ast.unparse(_kw(node, "pickle_module") or
                                                                                 ast.Constant(None)) == "_RestrictedPickle")
                if not (safe or restricted):
                    problems.append(where)
            elif name in ("pickle.load", "pickle.loads", "joblib.load", "dill.load", "dill.loads",
                          "cloudpickle.load", "cloudpickle.loads", "pd.read_pickle", "pandas.read_pickle"):
                problems.append(where)
            elif name in ("np.load", "numpy.load"):
                ap = _kw(node, "allow_pickle")
                if ap is not None and not (isinstance(ap, ast.Constant) and ap.value is False):
                    problems.append(where)
        for node in ast.walk(tree):  # only the converter may define an Unpickler, and it must restrict find_class
            if isinstance(node, ast.ClassDef) and any("Unpickler" in ast.unparse(b) for b in node.bases):
                methods = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
                if str(rel) != "musicembed/convert.py" or "find_class" not in methods:
                    problems.append(f"{rel}:{node.lineno}: class {node.name}")
    assert not problems, "pickle loading found:\n" + "\n".join(problems)


# ----------------------------------------------------------------------------- helpers

class _Evil:
    """Unpickling this runs os.mkdir(marker): proof that code from a file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _record_sha(folder: Path, name: str = "model.safetensors") -> None:
    """Make config.json vouch for whatever ``name`` now holds (the checksum matches)."""
    cfg = json.loads((folder / "config.json").read_text())
    cfg["files"] = {name: {"sha256": hub.sha256_file(folder / name)}}
    (folder / "config.json").write_text(json.dumps(cfg))


def _safetensors_bytes(header: dict, data: bytes, header_len: int | None = None) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h) if header_len is None else header_len) + h + data


def _header(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _refused(folder: Path, pattern: str) -> WeightsError:
    with pytest.raises(WeightsError, match=pattern) as err:
        load_model(folder)
    return err.value


# ----------------------------------------------------------------------------- pickles in disguise

@pytest.mark.parametrize("name", ["model.safetensors", "pytorch_model.bin"])
def test_pickle_weights_with_matching_checksum_never_run(pemr_dir, tmp_path, name):
    d = _copy(pemr_dir, tmp_path / "m")
    marker = tmp_path / "pwned"
    (d / "model.safetensors").unlink()
    torch.save({"state_dict": {"w": torch.zeros(2)}, "x": _Evil(marker)}, d / name)
    _record_sha(d, name)
    e = _refused(d, "not a valid safetensors file")
    assert name in str(e) and "re-export" in str(e)
    assert not marker.exists()


# ----------------------------------------------------------------------------- headers that lie

def test_safetensors_headers_that_lie_are_refused_with_the_file_named(pemr_dir, tmp_path):
    header, data = _header(pemr_dir / "model.safetensors")
    first = next(k for k in header if k != "__metadata__")
    cases = {
        "bigger_than_the_data": lambda h: h[first].update(shape=[10**6], data_offsets=[0, 4 * 10**6]),
        "offsets_overlap": lambda h: h[first].update(data_offsets=[0, 4]),
        "unknown_dtype": lambda h: h[first].update(dtype="X64"),
        "negative_shape": lambda h: h[first].update(shape=[-1]),
    }
    for i, (what, lie) in enumerate(cases.items()):
        d = _copy(pemr_dir, tmp_path / f"lie{i}")
        h = json.loads(json.dumps(header))
        lie(h)
        (d / "model.safetensors").write_bytes(_safetensors_bytes(h, data))
        _record_sha(d)
        e = _refused(d, "not a valid safetensors file")
        assert str(d / "model.safetensors") in str(e) and "download it again" in str(e), what
    d = _copy(pemr_dir, tmp_path / "huge-header")  # an 8-byte length that claims 4 EiB of header
    (d / "model.safetensors").write_bytes(_safetensors_bytes(header, data, header_len=2**62))
    _record_sha(d)
    _refused(d, "not a valid safetensors file")


def test_valid_safetensors_that_do_not_fit_or_hold_nan_are_refused(pemr_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    state = load_file(str(pemr_dir / "model.safetensors"))
    d = _copy(pemr_dir, tmp_path / "renamed")
    k = next(n for n, t in state.items() if t.is_floating_point())
    save_file({("x" + k if n == k else n): t for n, t in state.items()}, str(d / "model.safetensors"))
    _record_sha(d)
    _refused(d, "do not match the config's architecture")
    d = _copy(pemr_dir, tmp_path / "nan")
    bad = {n: (t.clone().fill_(float("nan")) if t.is_floating_point() and n == k else t) for n, t in state.items()}
    save_file(bad, str(d / "model.safetensors"))
    _record_sha(d)
    e = _refused(d, "NaN or infinite values")
    assert k in str(e) and "model.safetensors" in str(e)


# ----------------------------------------------------------------------------- config.json tampering

@pytest.mark.parametrize("tamper,pattern", [
    (lambda c: "{not json", "invalid config.json"),
    (lambda c: json.dumps([c]), "invalid config.json: not a JSON object"),
    (lambda c: json.dumps({**c, "files": ["model.safetensors"]}), "invalid config.json.*files"),
    (lambda c: json.dumps({**c, "files": {"model.safetensors": "0" * 64}}), "invalid config.json.*files"),
    (lambda c: json.dumps({**c, "files": {"../../model.safetensors": {"sha256": "0" * 64}}}), "refusing file name"),
    (lambda c: json.dumps({**c, "files": {"/abs/model.safetensors": {"sha256": "0" * 64}}}), "refusing file name"),
    (lambda c: json.dumps({**c, "evil": 1}), "invalid config.json: unknown config keys"),
    (lambda c: json.dumps({**c, "format_version": 99}), "newer than this musicembed"),
    (lambda c: json.dumps({**c, "method": "exec"}), "invalid config.json.*unknown method"),
    (lambda c: json.dumps({**c, "frontend": "x"}), "invalid config.json"),
    (lambda c: json.dumps({**c, "encoder": {**c["encoder"], "channels": ["a", "b"]}}),
     r"invalid config.json: encoder.channels = \[\"a\", \"b\"\]: item 0: must be an integer"),
    (lambda c: json.dumps({**c, "frontend": {**c["frontend"], "n_mels": 0}}),
     "invalid config.json: frontend.n_mels = 0: must be between 1 and"),
], ids=["not-json", "json-list", "files-list", "files-str", "files-dotdot", "files-abs", "unknown-key",
        "future-format", "unknown-method", "frontend-str", "channels-str", "smaller-mel"])
def test_tampered_config_is_refused_not_a_traceback(pemr_dir, tmp_path, tamper, pattern):
    d = _copy(pemr_dir, tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(tamper(cfg))
    _refused(d, pattern)
    r = CliRunner().invoke(cli, ["embed", str(tmp_path / "missing.wav"), "-m", str(d)])
    assert r.exit_code != 0 and "Traceback" not in r.output and str(d) in r.output
    assert not isinstance(r.exception, Exception) or isinstance(r.exception, SystemExit)


# ----------------------------------------------------------------------------- the manifest

@pytest.fixture()
def fake_package(pemr_dir, tmp_path, monkeypatch):
    """A package folder with one bundled model; returns (package dir, manifest dict to edit)."""
    pkg = tmp_path / "pkg"
    shutil.copytree(pemr_dir, pkg / "weights" / "tiny")
    files = [{"name": f, "sha256": hub.sha256_file(pemr_dir / f)} for f in ("config.json", "model.safetensors")]
    manifest = {"models": {"tiny": {"bundled": "weights/tiny", "files": files}}}
    monkeypatch.setattr(hub, "read_manifest", lambda: manifest)
    monkeypatch.setattr(hub, "_package_dir", lambda: pkg)
    return pkg, manifest


@pytest.mark.parametrize("field,value", [
    ("bundled", "../outside"), ("bundled", "weights/../../outside"), ("bundled", "/etc"),
    ("bundled", "C:\\weights"), ("file", "../model.safetensors"), ("file", "..\\..\\model.safetensors"),
    ("file", "/tmp/model.safetensors"),
])
def test_manifest_names_cannot_leave_the_package(fake_package, tmp_path, field, value):
    pkg, manifest = fake_package
    outside = tmp_path / "outside"  # a complete, valid model folder the escape would reach
    shutil.copytree(pkg / "weights" / "tiny", outside)
    entry = manifest["models"]["tiny"]
    if field == "bundled":
        entry["bundled"] = value
    else:
        entry["files"][1]["name"] = value
    with pytest.raises(WeightsError, match="refusing file name"):
        load_model("tiny")


def test_manifest_checksums_cover_config_and_the_weights_it_names(fake_package):
    pkg, manifest = fake_package
    folder = pkg / "weights" / "tiny"
    assert load_model("tiny").embed(tone(440, 0.5, 16000), sample_rate=16000).shape == (16,)
    good = (folder / "config.json").read_text()
    # config.json changed and no longer even parses: refused by its checksum, before it is read.
    (folder / "config.json").write_text(good[:-20])
    with pytest.raises(WeightsError, match=r"checksum mismatch for .*config\.json.*delete it"):
        load_model("tiny")
    # A manifest without config.json's checksum: config.json cannot vouch for weights of its own choosing.
    (folder / "config.json").write_text(good)
    shutil.copy(folder / "model.safetensors", folder / "other.safetensors")
    with open(folder / "other.safetensors", "ab") as f:
        f.write(b" ")
    cfg = json.loads(good)
    cfg["files"] = {"other.safetensors": {"sha256": hub.sha256_file(folder / "other.safetensors")}}
    (folder / "config.json").write_text(json.dumps(cfg))
    manifest["models"]["tiny"]["files"] = manifest["models"]["tiny"]["files"][1:]
    with pytest.raises(WeightsError, match="no sha256 recorded for other.safetensors"):
        load_model("tiny")
