"""Batch runs survive faults (issue 5): `embed --out X --resume` after a SIGKILL, the partial
store's own failure modes, and outputs that are never left half-written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from musicembed import load_model
from musicembed.cli import cli
from musicembed.io.resume import PartialStore, file_key, partial_path, read_records, run_settings
from musicembed.model import Model

from audio_fixtures import make_model_dir, noise, tiny_pemr_config, tone

N_FILES = 30


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Path:
    """30 small files in two folders."""
    d = tmp_path_factory.mktemp("catalog")
    for i in range(N_FILES):
        sub = d / ("a" if i % 2 else "b")
        sub.mkdir(exist_ok=True)
        sf.write(sub / f"track {i:02d}.wav", noise(2.0, sr=16000, seed=i), 16000, subtype="PCM_16")
    return d


@pytest.fixture(scope="module")
def reference(catalog, pemr_dir, tmp_path_factory) -> dict:
    """An uninterrupted run."""
    out = tmp_path_factory.mktemp("ref") / "ref.npz"
    r = CliRunner().invoke(cli, ["embed", str(catalog), "-r", "-m", str(pemr_dir), "--out", str(out)])
    assert r.exit_code == 0, r.output
    with np.load(out) as z:
        return {k: z[k] for k in z.files}


PACED_CLI = """
import sys, time
from musicembed.io import resume as catalog
real = catalog.PartialStore.append
def paced(self, key, result):
    real(self, key, result)
    time.sleep(0.1)
catalog.PartialStore.append = paced
from musicembed.cli import cli
cli(sys.argv[1:], prog_name="musicembed")
"""


def _spy_iter_embed(monkeypatch) -> list:
    """Record every input that Model.iter_embed is asked to embed."""
    seen: list = []
    real = Model.iter_embed

    def spy(self, inputs, *a, **k):
        seen.extend(os.fspath(x) for x in inputs)
        return real(self, inputs, *a, **k)

    monkeypatch.setattr(Model, "iter_embed", spy)
    return seen


def _records(store: Path) -> dict:
    with open(store, "rb") as f:
        return read_records(f)[1]


def test_sigkill_mid_run_then_resume_equals_uninterrupted(catalog, pemr_dir, reference, tmp_path, monkeypatch):
    out = tmp_path / "catalog.npz"
    store = partial_path(out)
    # A complete output from an earlier run is in place: the interrupted run must leave it intact.
    first = catalog / "a" / "track 01.wav"
    r = CliRunner().invoke(cli, ["embed", str(first), "-m", str(pemr_dir), "--out", str(out)])
    assert r.exit_code == 0 and not store.exists()
    previous = out.read_bytes()

    # The real command in its own process, paced (a pause after each durable record) so that it is
    # reliably killed mid-run on a fast machine too.
    cmd = [sys.executable, "-c", PACED_CLI, "embed", str(catalog), "-r", "-m", str(pemr_dir), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        done: dict = {}
        while len(done) < 3:
            assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no records appeared"
            time.sleep(0.01)
            if store.exists():
                done = _records(store)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert out.read_bytes() == previous  # the old complete file, untouched
    recorded = _records(store)  # read again: a record may have landed between the poll and the kill
    assert 3 <= len(recorded) < N_FILES

    seen = _spy_iter_embed(monkeypatch)
    r = CliRunner().invoke(cli, ["embed", str(catalog), "-r", "-m", str(pemr_dir), "--out", str(out), "--resume"])
    assert r.exit_code == 0, r.output
    assert f"resuming: {len(recorded)} of {N_FILES} file(s) already embedded" in r.stderr
    finished = {json.loads(k)[0] for k in recorded}  # absolute paths
    assert len(seen) == N_FILES - len(recorded)  # finished files were not embedded again ...
    assert not finished & {os.path.abspath(p) for p in seen}  # ... and none of them is among those that were
    assert not store.exists()
    with np.load(out) as z:
        assert list(z["paths"]) == list(reference["paths"])
        np.testing.assert_allclose(z["embeddings"], reference["embeddings"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(z["durations"], reference["durations"])
        assert str(z["model"]) == str(reference["model"])


class _Interrupt(KeyboardInterrupt):
    pass


def _interrupt_after(monkeypatch, n: int) -> None:
    """Make the CLI stop as if by Ctrl-C right after its n-th record is durable."""
    real = PartialStore.append
    count = {"n": 0}

    def append(self, key, result):
        real(self, key, result)
        count["n"] += 1
        if count["n"] >= n:
            raise _Interrupt()

    monkeypatch.setattr(PartialStore, "append", append)


@pytest.fixture()
def small(tmp_path) -> Path:
    d = tmp_path / "small"
    d.mkdir()
    for i in range(4):
        sf.write(d / f"s{i}.wav", tone(300 + 50 * i, 1.0, 16000), 16000)
    return d


def _embed(args: list[str]):
    return CliRunner().invoke(cli, ["embed", *args])


def test_resume_checks_settings_files_and_the_store_tail(small, pemr_dir, tmp_path, monkeypatch):
    out = tmp_path / "o.jsonl"
    base = [str(small), "-r", "-m", str(pemr_dir), "--out", str(out)]
    with monkeypatch.context() as m:
        _interrupt_after(m, 2)
        r = _embed(base)
    assert r.exit_code != 0 and not out.exists() and len(_records(partial_path(out))) == 2

    # Other options than the interrupted run: its results are not reused.
    with monkeypatch.context() as m:
        seen = _spy_iter_embed(m)
        _interrupt_after(m, 3)
        r = _embed([*base, "--resume", "--window", "0.25"])
    assert "different window_seconds; starting over" in r.stderr and len(seen) == 4

    # Same options again: the 3 records of the last run stand; a file changed since is embedded again;
    # a torn record at the end (the run died while writing it) is dropped and its file embedded again.
    os.utime(small / "s0.wav", ns=(1, 1))
    with open(partial_path(out), "ab") as f:
        f.write(b"MER1" + (10_000).to_bytes(8, "little") + bytes(12) + b"half a record")
    with monkeypatch.context() as m:
        seen = _spy_iter_embed(m)
        r = _embed([*base, "--resume", "--window", "0.25"])
    assert r.exit_code == 0, r.output
    assert "is damaged from byte" in r.stderr and "embedded again" in r.stderr
    assert "resuming: 2 of 4 file(s) already embedded" in r.stderr  # s0 changed, s3 never finished
    assert sorted(os.path.basename(p) for p in seen) == ["s0.wav", "s3.wav"]
    lines = out.read_text().splitlines()
    assert [os.path.basename(json.loads(ln)["path"]) for ln in lines] == [f"s{i}.wav" for i in range(4)]
    assert not partial_path(out).exists()


def test_a_run_that_fails_before_its_first_result_keeps_the_old_store(small, pemr_dir, tmp_path, monkeypatch):
    out = tmp_path / "o.npz"
    base = [str(small), "-r", "-m", str(pemr_dir), "--out", str(out)]
    with monkeypatch.context() as m:
        _interrupt_after(m, 2)
        _embed(base)
    before = partial_path(out).read_bytes()
    r = _embed([*base, "--resume", "--window", "0.001"])  # a typo: fails before embedding anything
    assert r.exit_code != 0 and "too short for this model" in r.output
    assert partial_path(out).read_bytes() == before
    with monkeypatch.context() as m:
        seen = _spy_iter_embed(m)
        r = _embed([*base, "--resume"])
    assert r.exit_code == 0 and len(seen) == 2
    r = _embed([str(small), "-r", "-m", str(pemr_dir), "--out", str(tmp_path / "new.npz"), "--window", "0.001"])
    assert r.exit_code != 0 and not partial_path(tmp_path / "new.npz").exists()  # no empty store left behind


def test_without_resume_an_old_partial_store_is_replaced(small, pemr_dir, tmp_path, monkeypatch):
    out = tmp_path / "o.npz"
    base = [str(small), "-r", "-m", str(pemr_dir), "--out", str(out)]
    with monkeypatch.context() as m:
        _interrupt_after(m, 2)
        _embed(base)
    with monkeypatch.context() as m:
        seen = _spy_iter_embed(m)
        r = _embed(base)
    assert r.exit_code == 0 and "replacing the partial results" in r.stderr and len(seen) == 4
    assert len(np.load(out)["paths"]) == 4 and not partial_path(out).exists()


def test_resume_needs_out_and_one_run_per_store(small, pemr_dir, tmp_path):
    r = _embed([str(small), "-r", "-m", str(pemr_dir), "--resume"])
    assert r.exit_code != 0 and "--resume needs --out" in r.output
    out = tmp_path / "o.npz"
    model = load_model(pemr_dir, device="cpu")
    held, _, _ = PartialStore.open(out, run_settings(model, window_seconds=None, hop_seconds=None,
                                                     hierarchical=False), resume=False)
    try:
        r = _embed([str(small), "-r", "-m", str(pemr_dir), "--out", str(out)])
        assert r.exit_code != 0 and "another musicembed run is writing" in r.output and "Traceback" not in r.output
    finally:
        held.close()


def test_failed_final_write_keeps_old_output_and_results(small, pemr_dir, tmp_path, monkeypatch):
    """The output write dies half-way (disk full): the previous file stays, no temp file is left,
    and --resume then finishes without embedding anything again."""
    import musicembed.io.writers as outputs

    out = tmp_path / "o.npz"
    base = [str(small), "-r", "-m", str(pemr_dir), "--out", str(out)]
    out.write_bytes(b"previous complete output")
    with monkeypatch.context() as m:
        def broken(tmp, save, *a, **k):
            with open(tmp, "wb") as f:
                f.write(b"PK\x03\x04 half")
            raise OSError(28, "No space left on device")

        m.setattr(outputs, "_write_numpy", broken)
        r = _embed(base)
    assert r.exit_code == 2 and "No space left on device" in r.output and "--resume" in r.output
    assert "Traceback" not in r.output
    assert out.read_bytes() == b"previous complete output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.npz", "o.npz.partial", "small"]
    with monkeypatch.context() as m:
        seen = _spy_iter_embed(m)
        r = _embed([*base, "--resume"])
    assert r.exit_code == 0 and seen == [] and len(np.load(out)["paths"]) == 4


def test_outputs_are_readable_by_others_and_keys_follow_the_file(small, pemr_dir, tmp_path):
    out = tmp_path / "o.npy"
    old = os.umask(0o022)
    try:
        r = _embed([str(small / "s1.wav"), "-m", str(pemr_dir), "--out", str(out)])
    finally:
        os.umask(old)
    assert r.exit_code == 0
    assert (out.stat().st_mode & 0o777) == 0o644  # not mkstemp's private 0600
    k = file_key(small / "s1.wav")
    os.utime(small / "s1.wav", ns=(5, 5))
    assert file_key(small / "s1.wav") != k and file_key(small / "nope.wav") is None


def test_store_reader_stops_at_the_first_damaged_record(pemr_dir, tmp_path):
    """A flipped bit (crc32) or a garbage length ends the good part of the store; nothing after it
    is trusted, nothing is allocated for a length the file does not hold."""
    from musicembed.io.resume import _HEAD

    model = load_model(pemr_dir, device="cpu")
    settings = run_settings(model, window_seconds=None, hop_seconds=None, hierarchical=False)
    out = tmp_path / "o.npz"
    store, _, _ = PartialStore.open(out, settings, resume=False)
    e = model.embed(tone(440, 0.5, 16000), sample_rate=16000, return_timestamps=True)
    offsets = []
    for i in range(3):
        store.append(f"k{i}", e)
        offsets.append(partial_path(out).stat().st_size)
    store.close()
    raw = bytearray(partial_path(out).read_bytes())
    raw[offsets[0] + _HEAD.size + 40] ^= 0x01  # inside record k1's payload
    partial_path(out).write_bytes(bytes(raw))
    meta, done, good = _records_full(partial_path(out))
    assert meta == settings and list(done) == ["k0"] and good == offsets[0]
    np.testing.assert_array_equal(done["k0"].clip, e.clip)
    raw = bytearray(partial_path(out).read_bytes()[: offsets[0]])
    raw += _HEAD.pack(b"MER1", 2**60, 0)
    partial_path(out).write_bytes(bytes(raw))
    assert list(_records_full(partial_path(out))[1]) == ["k0"]


def _records_full(store: Path):
    with open(store, "rb") as f:
        return read_records(f)


def test_resumed_timestamps_run_equals_uninterrupted(small, pemr_dir, tmp_path, monkeypatch):
    """Records keep per-window vectors only when the output needs them (--timestamps); a resumed
    --timestamps run writes the same windows as an uninterrupted one, and resuming it without
    --timestamps starts over rather than mixing the two."""
    ref, out = tmp_path / "ref.npz", tmp_path / "o.npz"
    base = [str(small), "-r", "-m", str(pemr_dir), "--timestamps", "--hop", "0.25"]
    assert _embed([*base, "--out", str(ref)]).exit_code == 0
    with monkeypatch.context() as m:
        _interrupt_after(m, 2)
        _embed([*base, "--out", str(out)])
    r = _embed([str(small), "-r", "-m", str(pemr_dir), "--hop", "0.25", "--out", str(out), "--resume"])
    assert "different timestamps; starting over" in r.stderr
    with monkeypatch.context() as m:
        _interrupt_after(m, 2)
        _embed([*base, "--out", str(out)])
    r = _embed([*base, "--out", str(out), "--resume"])
    assert r.exit_code == 0 and "resuming: 2 of 4" in r.stderr
    a, b = np.load(ref), np.load(out)
    assert sorted(a.files) == sorted(b.files)
    for k in a.files:
        if a[k].dtype.kind == "f":
            np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)
        else:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_resume_with_another_hop_or_other_weights_starts_over(small, pemr_dir, tmp_path, monkeypatch):
    out = tmp_path / "o.npz"
    base = [str(small), "-r", "--out", str(out)]
    with monkeypatch.context() as m:
        _interrupt_after(m, 2)
        _embed([*base, "-m", str(pemr_dir), "--hop", "0.25"])
    meta = _records_full(partial_path(out))[0]
    model = load_model(pemr_dir, device="cpu")
    assert meta["model"]["fingerprint"] == model.fingerprint()  # the store carries the identity
    assert (meta["model"]["window_seconds"], meta["model"]["hop_seconds"]) == (0.5, 0.25)

    with monkeypatch.context() as m:  # another hop: nothing is reused
        seen = _spy_iter_embed(m)
        _interrupt_after(m, 2)
        r = _embed([*base, "-m", str(pemr_dir), "--hop", "0.125", "--resume"])
    assert "different hop_seconds; starting over (recorded vs this run: hop 0.25 s vs 0.125 s)" in r.stderr
    assert len(seen) == 4

    # The same name ("tiny-pemr") and config, other weights: nothing is reused either.
    other = make_model_dir(tmp_path / "other", tiny_pemr_config(), seed=1)
    with monkeypatch.context() as m:
        seen = _spy_iter_embed(m)
        r = _embed([*base, "-m", str(other), "--hop", "0.125", "--resume"])
    assert r.exit_code == 0, r.output
    assert "different fingerprint; starting over" in r.stderr and "different weights" in r.stderr
    assert len(seen) == 4


def test_resume_reads_a_store_of_an_older_version_with_a_warning(small, pemr_dir, tmp_path, monkeypatch):
    """A format-1 store records the model's name, version and fingerprint and the window/hop as given."""
    model = load_model(pemr_dir, device="cpu")
    out = tmp_path / "o.npz"
    legacy = {"format": 1, "model": model.name, "model_version": model.config.version,
              "model_fingerprint": model.fingerprint(), "window_seconds": None, "hop_seconds": None,
              "timestamps": False, "hierarchical": False}
    files = sorted(small.iterdir())
    store, _, _ = PartialStore.open(out, legacy, resume=False)
    for f in files[:2]:
        store.append(file_key(f), model.embed(f, return_timestamps=True))
    store.close()
    with monkeypatch.context() as m:
        seen = _spy_iter_embed(m)
        r = _embed([str(small), "-r", "-m", str(pemr_dir), "--out", str(out), "--window", "0.5", "--resume"])
    assert "different window_seconds; starting over" in r.stderr and len(seen) == 4  # as given: not the same
    store, _, _ = PartialStore.open(out, legacy, resume=False)
    for f in files[:2]:
        store.append(file_key(f), model.embed(f, return_timestamps=True))
    store.close()
    with monkeypatch.context() as m:
        seen = _spy_iter_embed(m)
        r = _embed([str(small), "-r", "-m", str(pemr_dir), "--out", str(out), "--resume"])
    assert r.exit_code == 0, r.output
    assert "written by an older musicembed" in r.stderr and "resuming: 2 of 4" in r.stderr
    assert sorted(os.path.basename(p) for p in seen) == ["s2.wav", "s3.wav"]
