"""The bad-input matrix (issue 5): every hostile or odd input, through the Python API and the CLI.

Each case ends in either a correct, finite embedding or an error that names the input and
the reason: never a hang (every call runs under a timeout), a bare traceback, a NaN vector
or a silently skipped file.

- API: ``load_model(tiny).embed(input)`` for each case on its own, and once for all file
  cases in one list (``EmbedError`` must account for every input).
- CLI: one ``musicembed embed ... -r --out x.npz`` run over all file cases at once (the
  good files must still be written), checked case by case; plus separate runs where a
  case needs other flags. Array-only cases (non-contiguous, 0-d, 3-d, NaN/Inf arrays) have
  no command-line form; their file forms (NaN/Inf in a float WAV, int16/int32/float64 PCM)
  are file cases of their own.
- Read permission: the suite usually runs as root, where ``chmod 000`` does not stop reads.
  In process, ``os.access`` is patched to deny the file (the API and the CLI take the same
  path). For real, a CLI subprocess reads a ``chmod 000`` file: as root, with the
  capabilities that let root read anything (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH) dropped
  from its bounding set before exec, so the kernel refuses the read; as a normal user,
  directly. (Switching to ``nobody`` with ``os.setuid`` does not work here: the
  interpreter lives under /root, which ``nobody`` cannot enter.)
"""

from __future__ import annotations

import faulthandler
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from musicembed import AudioError, EmbedError, load_model
from musicembed.cli import cli

from audio_fixtures import SR, noise, tone

TIMEOUT = 60  # seconds any one case may take before it counts as a hang


@pytest.fixture(autouse=True)
def _hang_watchdog():
    """Backstop: a case stuck inside C code (where a thread timeout cannot reach) kills the run
    with every thread's traceback instead of hanging CI."""
    faulthandler.dump_traceback_later(4 * TIMEOUT, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def call_with_timeout(fn: Callable, timeout: float = TIMEOUT):
    """Run ``fn()`` in a thread; fail the test if it has not returned after ``timeout`` s."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        pytest.fail(f"hang: no result after {timeout} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


@pytest.fixture(scope="module")
def model(pemr_dir):
    return load_model(pemr_dir, device="cpu")


# ----------------------------------------------------------------------------- the cases

BAD_UTF8 = os.fsdecode(b"caf\xe9 latin-1 name.wav")  # a file name that is not valid UTF-8


@dataclass
class Case:
    """``make(folder) -> path`` builds the input; ``expect`` is "ok", or a regex the error reason
    must match. ``cli`` overrides the CLI's expectation where the command line reports the
    input differently (e.g. folders). ``warn``: a regex the warning of an "ok" result must
    match (truncated or damaged files are embedded from what decodes, with a warning); None:
    no warning. ``declared``: the declared duration (s) an "ok" result records, "unknown", or
    None for "equal to the decoded duration"."""

    id: str
    make: Callable[[Path], Path]
    expect: str
    cli: str | None = None
    duration: tuple[float, float] | None = None  # expected duration range of an "ok" result, s
    warn: str | None = None
    declared: float | str | None = None


def _write(name: str, data: np.ndarray, sr: int = SR, **kw) -> Callable[[Path], Path]:
    def make(d: Path) -> Path:
        sf.write(d / name, data, sr, **kw)
        return d / name
    return make


def _bytes(name: str, data: bytes) -> Callable[[Path], Path]:
    def make(d: Path) -> Path:
        (d / name).write_bytes(data)
        return d / name
    return make


def _truncated(name: str, fmt: str, keep: float) -> Callable[[Path], Path]:
    def make(d: Path) -> Path:
        full = d / f"full-{name}"
        sf.write(full, noise(3.0), SR, format=fmt)
        data = full.read_bytes()
        full.unlink()
        (d / name).write_bytes(data[: int(len(data) * keep)])
        return d / name
    return make


def _unknown_length_flac(d: Path) -> Path:
    """A FLAC whose STREAMINFO gives no total length (streaming encoders write 0 there)."""
    from test_decode import _without_total_length

    sf.write(d / "full-stream.flac", noise(3.0), SR, format="FLAC")
    _without_total_length(d / "full-stream.flac", d / "stream.flac")
    (d / "full-stream.flac").unlink()
    return d / "stream.flac"


def _streamed_wav(d: Path) -> Path:
    """A WAV as a streaming writer leaves it: RIFF and data sizes 0xFFFFFFFF ("unknown")."""
    import struct

    sf.write(d / "streamed.wav", _x, SR, subtype="PCM_16")
    b = bytearray((d / "streamed.wav").read_bytes())
    i = b.index(b"data")
    b[4:8] = b[i + 4 : i + 8] = struct.pack("<I", 0xFFFFFFFF)
    (d / "streamed.wav").write_bytes(bytes(b))
    return d / "streamed.wav"


def _rate_header(name: str, rate: int) -> Callable[[Path], Path]:
    """A WAV whose header claims ``rate`` Hz for its 1 s of samples."""
    def make(d: Path) -> Path:
        sf.write(d / name, _x, SR, subtype="PCM_16")
        b = bytearray((d / name).read_bytes())
        assert b[12:16] == b"fmt "
        b[24:28] = rate.to_bytes(4, "little")
        b[28:32] = (2 * rate).to_bytes(4, "little")  # bytes per second
        (d / name).write_bytes(bytes(b))
        return d / name
    return make


def _missing(d: Path) -> Path:
    return d / "does-not-exist.wav"


def _empty_dir(d: Path) -> Path:
    (d / "no audio here").mkdir()
    (d / "no audio here" / "notes.txt").write_text("not audio")
    return d / "no audio here"


def _loop_link(d: Path) -> Path:
    (d / "loop.wav").symlink_to("loop.wav")
    return d / "loop.wav"


def _dangling_link(d: Path) -> Path:
    (d / "dangling.wav").symlink_to("gone.wav")
    return d / "dangling.wav"


def _fifo(d: Path) -> Path:
    os.mkfifo(d / "pipe.wav")  # opening it for reading would block forever
    return d / "pipe.wav"


def _bad_utf8(d: Path) -> Path:
    p = Path(os.path.join(os.fspath(d), BAD_UTF8))
    sf.write(os.fsencode(p), tone(440, 1.0), SR, format="WAV")
    return p


_x = tone(440, 1.0)
_square = np.sign(np.sin(2 * np.pi * 220 * np.arange(SR) / SR)).astype(np.float32)
_nan = _x.copy()
_nan[100] = np.nan
_inf = _x.copy()
_inf[5] = np.inf

FILE_CASES = [
    Case("missing_path", _missing, r"no such file", cli=r"no such file or directory"),
    Case("dir_without_audio", _empty_dir, r"is a directory", cli=r"folder contains no audio files"),
    Case("empty_file", _bytes("empty.wav", b""), r"file is empty \(0 bytes\)"),
    Case("truncated_mp3", _truncated("cut.mp3", "MP3", 0.5), "ok", duration=(1.3, 1.6), declared=3.0,
         warn=r"^truncated or damaged: decoded 1\.\d\d s of the 3\.00 s its header declares; embedded what decodes$"),
    Case("truncated_mp3_to_header", _truncated("stub.mp3", "MP3", 0.01), r"not a valid audio file"),
    Case("truncated_ogg", _truncated("cut.ogg", "OGG", 0.5), "ok", duration=(0.3, 2.0), declared="unknown",
         warn=r"^truncated or damaged: decoded \d\.\d\d s: the Ogg stream ends without its end-of-stream mark"),
    Case("truncated_ogg_to_header", _truncated("stub.ogg", "OGG", 0.05), r"malformed"),
    Case("truncated_flac", _truncated("cut.flac", "FLAC", 0.5), "ok", duration=(1.3, 1.6), declared=3.0,
         warn=r"decoded (1\.\d\d) s of the 3\.00 s its header declares: decoding stopped at \1 s \(.*lost sync"),
    Case("truncated_wav", _truncated("cut.wav", "WAV", 0.5), "ok", duration=(1.45, 1.55), declared=3.0,
         warn=r"decoded 1\.50 s of the 3\.00 s its header declares; embedded what decodes"),
    Case("flac_of_unknown_length", _unknown_length_flac, "ok", duration=(2.99, 3.01), declared="unknown"),
    Case("wav_of_unknown_length", _streamed_wav, "ok", duration=(0.99, 1.01), declared="unknown"),
    Case("wav_header_claims_2ghz", _rate_header("ghz.wav", 2_000_000_000), r"resample to no sample"),
    Case("newline_in_name", _write("new\nline.wav", _x), "ok", duration=(0.99, 1.01)),
    Case("random_bytes_wav", _bytes("random.wav", np.random.default_rng(1).bytes(20000)), r"cannot decode"),
    Case("random_bytes_mp3", _bytes("random.mp3", np.random.default_rng(2).bytes(20000)),
         r"cannot decode: not a valid audio file"),
    Case("random_bytes_flac", _bytes("random.flac", np.random.default_rng(3).bytes(20000)), r"cannot decode"),
    Case("random_bytes_ogg", _bytes("random.ogg", np.random.default_rng(4).bytes(20000)), r"cannot decode"),
    Case("riff_header_then_garbage", _bytes("fake.wav", b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(200)),
         r"cannot decode"),
    Case("text_renamed_mp3", _bytes("notes.mp3", b"this is a text file, not audio\n" * 40),
         r"cannot decode: not a valid audio file"),
    Case("zero_length_audio", _write("zero.wav", np.zeros(0, np.float32)), r"no audio samples \(length 0\)"),
    Case("single_sample", _write("one.wav", np.array([0.5], np.float32)), r"1 frames at 44100 Hz resample to no sample"),
    Case("two_samples_at_16k", _write("two.wav", np.array([0.5, -0.5], np.float32), 16000), "ok",
         duration=(0.0, 0.001)),
    Case("pure_silence", _write("silence.wav", np.zeros(SR, np.float32)), "ok", duration=(0.99, 1.01)),
    Case("dc_offset", _write("dc.wav", np.full(SR, 0.7, np.float32)), "ok", duration=(0.99, 1.01)),
    Case("full_scale_clipping_pcm16", _write("clip16.wav", _square, subtype="PCM_16"), "ok", duration=(0.99, 1.01)),
    Case("over_full_scale_float", _write("hot.wav", 8 * _square, subtype="FLOAT"), "ok", duration=(0.99, 1.01)),
    Case("absurd_float_levels", _write("absurd.wav", 1e30 * _x, subtype="FLOAT"), r"non-finite"),
    Case("nan_in_float_wav", _write("nan.wav", _nan, subtype="FLOAT"), r"NaN or infinite"),
    Case("inf_in_float_wav", _write("inf.wav", _inf, subtype="FLOAT"), r"NaN or infinite"),
    Case("eight_channels", _write("ch8.wav", np.repeat(_x[:, None], 8, axis=1), subtype="FLOAT"), "ok",
         duration=(0.99, 1.01)),
    Case("rate_8k", _write("r8k.wav", tone(440, 1.0, 8000), 8000), "ok", duration=(0.99, 1.01)),
    Case("rate_192k", _write("r192k.flac", tone(440, 1.0, 192000), 192000), "ok", duration=(0.99, 1.01)),
    Case("rate_1hz_header", _write("r1.wav", np.zeros(200, np.float32), 1), r"header claims 1 Hz"),
    Case("int16_pcm", _write("pcm16.wav", _x, subtype="PCM_16"), "ok", duration=(0.99, 1.01)),
    Case("int32_pcm", _write("pcm32.wav", _x, subtype="PCM_32"), "ok", duration=(0.99, 1.01)),
    Case("float64_pcm", _write("pcm64.wav", _x, subtype="DOUBLE"), "ok", duration=(0.99, 1.01)),
    Case("path_with_spaces", _write("a song with spaces.wav", _x), "ok", duration=(0.99, 1.01)),
    Case("path_non_ascii", _write("Ünïcødé ♫ 歌.flac", _x), "ok", duration=(0.99, 1.01)),
    Case("path_not_utf8", _bad_utf8, "ok", duration=(0.99, 1.01)),
    Case("symlink_loop_file", _loop_link, r"symbolic link loop"),
    Case("dangling_symlink", _dangling_link, r"broken symbolic link"),
    Case("fifo_named_wav", _fifo, r"not a regular file"),
    Case("no_read_permission", _write("secret.wav", _x), r"permission denied"),
]
NO_READ = "secret.wav"


def _deny_secret(real_access):
    def access(path, mode, *a, **k):
        if os.fspath(path).endswith(NO_READ):
            return False
        return real_access(path, mode, *a, **k)
    return access


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    d = tmp_path_factory.mktemp("matrix")
    return d, {c.id: c.make(d) for c in FILE_CASES}


def _check_ok(emb, case: Case, dim: int) -> None:
    assert emb.clip.shape == (dim,) and emb.clip.dtype == np.float32
    assert np.isfinite(emb.clip).all() and np.isfinite(emb.vectors).all()
    if case.duration:
        lo, hi = case.duration
        assert lo <= emb.duration <= hi, emb.duration
    if case.warn is None:
        assert emb.warning is None, emb.warning
    else:
        assert emb.warning and re.search(case.warn, emb.warning), emb.warning
    _check_declared(emb.declared_duration, emb.duration, case)


def _check_declared(declared: float | None, duration: float, case: Case) -> None:
    if case.declared == "unknown":
        assert declared is None or np.isnan(declared), declared
    elif case.declared is not None:
        assert declared == pytest.approx(case.declared, abs=0.01)
    else:
        assert declared == pytest.approx(duration, abs=0.01)


# ----------------------------------------------------------------------------- API, one case at a time

@pytest.mark.parametrize("case", FILE_CASES, ids=lambda c: c.id)
def test_api_file_case(case, model, matrix, monkeypatch):
    _, paths = matrix
    path = paths[case.id]
    monkeypatch.setattr(os, "access", _deny_secret(os.access))
    import warnings

    from musicembed.model import TruncatedAudioWarning

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            emb = call_with_timeout(lambda: model.embed(path, return_timestamps=True))
    except AudioError as e:
        assert case.expect != "ok", f"expected an embedding, got: {e}"
        assert e.source == os.fspath(path) and str(e).startswith(os.fspath(path) + ": ")
        assert re.search(case.expect, e.reason), e.reason
        return
    assert case.expect == "ok", f"expected an error matching {case.expect!r}, got an embedding"
    _check_ok(emb, case, model.embedding_dim)
    truncated = [w for w in caught if issubclass(w.category, TruncatedAudioWarning)]
    assert len(truncated) == (case.warn is not None)  # the API warns too


@pytest.mark.filterwarnings("ignore::musicembed.model.TruncatedAudioWarning")  # checked per case above
def test_api_list_of_all_cases_accounts_for_every_input(model, matrix, monkeypatch):
    _, paths = matrix
    monkeypatch.setattr(os, "access", _deny_secret(os.access))
    inputs = [paths[c.id] for c in FILE_CASES]
    with pytest.raises(EmbedError) as err:
        call_with_timeout(lambda: model.embed(inputs, return_timestamps=True))
    e = err.value
    for i, c in enumerate(FILE_CASES):
        assert (e.results[i] is None) == (i in e.errors), c.id  # exactly one of the two
        if c.expect == "ok":
            assert e.results[i] is not None, f"{c.id}: {e.errors.get(i)}"
            _check_ok(e.results[i], c, model.embedding_dim)
        else:
            assert i in e.errors and re.search(c.expect, e.errors[i].reason), c.id


# ----------------------------------------------------------------------------- API: arrays and tensors

_f32 = tone(440, 1.0, 16000)
_stereo = np.stack([_f32, 0.5 * _f32], axis=1)

ARRAY_CASES = [  # (id, array, sample_rate, "ok" or error regex, reference array the result must match)
    ("int16", (_f32 * 32767).astype(np.int16), 16000, "ok", (_f32 * 32767).astype(np.int16) / 32768.0),
    ("int32", (_f32 * (2**31 - 1)).astype(np.int32), 16000, "ok", _f32),
    ("float64", _f32.astype(np.float64), 16000, "ok", _f32),
    ("non_contiguous", np.repeat(_f32, 2)[::2], 16000, "ok", _f32),
    ("non_contiguous_2d", np.asfortranarray(_stereo)[:, ::-1][:, ::-1], 16000, "ok", _stereo.mean(axis=1)),
    ("channels_first", _stereo.T.copy(), 16000, "ok", _stereo.mean(axis=1)),
    ("single_sample", np.array([0.25], np.float32), 16000, "ok", None),
    ("silence", np.zeros(16000, np.float32), 16000, "ok", None),
    ("zero_d", np.array(0.5, np.float32), 16000, r"expected a 1-D or 2-D array.*0-D", None),
    ("three_d", np.zeros((2, 3, 400), np.float32), 16000, r"expected a 1-D or 2-D array.*3-D", None),
    ("empty", np.zeros(0, np.float32), 16000, r"length 0", None),
    ("nan", np.where(np.arange(16000) == 7, np.nan, _f32).astype(np.float32), 16000, r"NaN or infinite", None),
    ("inf", np.where(np.arange(16000) == 7, -np.inf, _f32), 16000, r"NaN or infinite", None),
    ("complex", _f32.astype(np.complex64), 16000, r"unsupported dtype", None),
    ("too_many_channels", np.zeros((100, 100), np.float32), 16000, r"too many channels", None),
    ("rate_too_low", _f32, 1, r"at least 1000 Hz", None),  # would be 4.4 hours of audio: refused, not a hang
    ("rate_nan", _f32, float("nan"), r"at least 1000 Hz", None),
    ("rate_not_a_number", _f32, "16000", r"must be a number", None),
    ("resamples_to_nothing", np.ones(32000, np.float32), 1e12, r"resample to no sample", None),  # issue 14, item 9
]


@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("cid,x,sr,expect,ref", ARRAY_CASES, ids=[c[0] for c in ARRAY_CASES])
def test_api_array_case(model, cid, x, sr, expect, ref, kind):
    import torch

    if kind == "torch":
        if cid == "non_contiguous":
            x = torch.from_numpy(np.repeat(_f32, 2))[::2]
        elif cid == "non_contiguous_2d":
            x = torch.from_numpy(_stereo.T.copy()).T
        else:
            x = torch.from_numpy(np.array(x, copy=True)) if x.ndim else torch.tensor(x.item())
        assert cid != "non_contiguous" or not x.is_contiguous()
    try:
        v = call_with_timeout(lambda: model.embed(x, sample_rate=sr))
    except AudioError as e:
        assert expect != "ok", f"expected an embedding, got: {e}"
        assert e.source == "<array>" and re.search(expect, e.reason), e.reason
        return
    assert expect == "ok", f"expected an error matching {expect!r}"
    assert v.shape == (model.embedding_dim,) and v.dtype == np.float32 and np.isfinite(v).all()
    if ref is not None:
        np.testing.assert_allclose(v, model.embed(np.asarray(ref, np.float32), sample_rate=sr), rtol=1e-4, atol=1e-5)


def test_eight_channel_file_equals_its_mono_downmix(model, matrix):
    _, paths = matrix
    # float32 rounding of the 8-way sum moves the log-mel of near-silent bins a little
    np.testing.assert_allclose(model.embed(paths["eight_channels"]), model.embed(_x, sample_rate=SR),
                               rtol=2e-3, atol=1e-3)


# ----------------------------------------------------------------------------- CLI: all cases in one run

@pytest.fixture(scope="module")
def cli_run(matrix, pemr_dir, tmp_path_factory):
    """One `embed -r --out` over every file case plus good files before and after them."""
    d, paths = matrix
    good = tmp_path_factory.mktemp("good")
    sf.write(good / "first.wav", tone(330, 1.0), SR)
    sf.write(good / "last.flac", tone(550, 1.0), SR)
    inputs = [good / "first.wav", *(paths[c.id] for c in FILE_CASES), good / "last.flac"]
    out = tmp_path_factory.mktemp("cli") / "catalog.npz"
    mp = pytest.MonkeyPatch()
    mp.setattr(os, "access", _deny_secret(os.access))
    try:
        r = call_with_timeout(lambda: CliRunner().invoke(
            cli, ["embed", *map(os.fspath, inputs), "-r", "-m", str(pemr_dir), "--out", str(out)]))
    finally:
        mp.undo()
    assert out.exists(), r.output + repr(r.exception)
    return r, np.load(out), inputs


def _failure_lines(stderr: str) -> list[str]:
    return stderr.split("input(s) failed:\n", 1)[1].splitlines()


def test_cli_run_keeps_going_and_accounts_for_every_input(cli_run):
    r, data, inputs = cli_run
    assert r.exit_code == 1, r.output
    assert isinstance(r.exception, SystemExit) and "Traceback" not in r.output
    written = list(data["paths"])
    assert written[0].endswith("first.wav") and written[-1].endswith("last.flac")
    n_failed = int(re.search(r"(\d+) input\(s\) failed", r.stderr).group(1))
    assert len(written) + n_failed == len(inputs)  # nothing silently skipped
    assert np.isfinite(data["embeddings"]).all()


@pytest.mark.parametrize("case", FILE_CASES, ids=lambda c: c.id)
def test_cli_file_case(case, cli_run, matrix):
    r, data, _ = cli_run
    _, paths = matrix
    name = os.fspath(paths[case.id])
    written = list(data["paths"])
    expect = case.cli or case.expect
    if name in written:
        assert expect == "ok", f"expected an error matching {expect!r}, but it was written"
        row = data["embeddings"][written.index(name)]
        assert row.shape == (16,) and np.isfinite(row).all()
        duration = data["durations"][written.index(name)]
        if case.duration:
            lo, hi = case.duration
            assert lo <= duration <= hi
        _check_declared(data["declared_durations"][written.index(name)], duration, case)
        shown = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        warned = [ln for ln in r.stderr.splitlines() if ln.startswith((f"warning: {name}: ", f"warning: {shown}: "))]
        if case.warn is None:
            assert not warned, warned
        else:  # one line, and not counted as a failure
            assert len(warned) == 1 and re.search(case.warn.lstrip("^"), warned[0]), warned
        return
    assert expect != "ok", f"{name} was neither written nor reported:\n{r.stderr}"
    shown = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    lines = [ln for ln in _failure_lines(r.stderr) if ln.strip().startswith(shown + ": ")
             or ln.strip().startswith(name + ": ")]
    assert len(lines) == 1, f"no failure line for {name}:\n{r.stderr}"
    assert re.search(expect, lines[0]), lines[0]


def test_cli_folder_without_recursive_and_symlink_loop_under_r(pemr_dir, tmp_path):
    root = tmp_path / "music"
    (root / "sub").mkdir(parents=True)
    sf.write(root / "sub" / "a.wav", tone(440, 0.5), SR)
    (root / "sub" / "up").symlink_to(root, target_is_directory=True)  # a folder loop
    (root / "sub" / "self").symlink_to("self", target_is_directory=True)  # a link to itself
    (root / "sub" / "loop.wav").symlink_to("loop.wav")  # a file that is a loop
    out = tmp_path / "x.npz"
    r = call_with_timeout(lambda: CliRunner().invoke(cli, ["embed", str(root), "-m", str(pemr_dir), "--out",
                                                          str(out)]))
    assert r.exit_code == 1 and "is a directory (use -r/--recursive" in r.stderr and "Traceback" not in r.output
    r = call_with_timeout(lambda: CliRunner().invoke(cli, ["embed", str(root), "-r", "-m", str(pemr_dir), "--out",
                                                          str(out)]))
    assert r.exit_code == 1, r.output
    assert [os.path.basename(p) for p in np.load(out)["paths"]] == ["a.wav"]
    assert re.search(r"loop\.wav: symbolic link loop", r.stderr)


def test_cli_reports_what_a_folder_walk_cannot_use(pemr_dir, tmp_path, monkeypatch):
    """Under -r: audio in formats libsndfile cannot read (.m4a, .wma, ...) and folders that cannot
    be listed are reported, not skipped unseen; notes and cover art are not audio and are ignored."""
    root = tmp_path / "music"
    for sub in ("ok", "locked"):
        (root / sub).mkdir(parents=True)
    sf.write(root / "ok" / "a.flac", tone(440, 0.5), SR)
    (root / "ok" / "b.m4a").write_bytes(b"\x00\x00\x00\x20ftypM4A " + bytes(100))
    (root / "ok" / "c.WMA").write_bytes(bytes(100))
    (root / "ok" / "cover.jpg").write_bytes(b"\xff\xd8\xff")
    (root / "locked" / "d.wav").write_bytes(b"")
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    out = tmp_path / "x.npz"
    r = call_with_timeout(lambda: CliRunner().invoke(cli, ["embed", str(root), "-r", "-m", str(pemr_dir), "--out",
                                                          str(out)]))
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert [os.path.basename(p) for p in np.load(out)["paths"]] == ["a.flac"]
    lines = _failure_lines(r.stderr)
    assert any(ln.strip().startswith(f"{root / 'ok' / 'b.m4a'}: .m4a files are not supported") for ln in lines)
    assert any("c.WMA: .wma files are not supported" in ln and "ffmpeg" in ln for ln in lines)
    assert any(ln.strip().startswith(f"{root / 'locked'}: cannot list this folder: Permission denied") for ln in lines)
    assert not any("cover.jpg" in ln for ln in lines) and len(lines) == 3


# ----------------------------------------------------------------------------- read permission, for real

_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH, _PR_CAPBSET_DROP = 1, 2, 24


def _drop_file_read_capabilities() -> None:
    """In the child before exec: drop root's power to read any file (Linux capabilities), so
    that a chmod-000 file stops it like it stops everyone else."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def test_file_without_read_permission_real(pemr_dir, tmp_path):
    """A chmod-000 file read by a process the permission really stops: as a normal user that is
    any process; as root (this suite's usual case) a child whose file-read capabilities are
    dropped before exec (root itself would read anything)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("needs Linux permissions and capabilities")
    sf.write(tmp_path / "readable.wav", tone(440, 0.5), SR)
    sf.write(tmp_path / "secret.wav", tone(440, 0.5), SR)
    os.chmod(tmp_path / "secret.wav", 0o000)
    cmd = [sys.executable, "-m", "musicembed", "embed", str(tmp_path / "readable.wav"), str(tmp_path / "secret.wav"),
           "-m", str(pemr_dir)]
    kw = {"preexec_fn": _drop_file_read_capabilities} if os.geteuid() == 0 else {}
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                           **kw)
    except subprocess.SubprocessError as e:  # prctl refused (no CAP_SETPCAP, seccomp)
        pytest.skip(f"cannot drop root's read capabilities here ({e}); the os.access cases cover the path")
    finally:
        os.chmod(tmp_path / "secret.wav", 0o644)
    assert r.returncode == 1, r.stderr
    assert f"{tmp_path / 'secret.wav'}: permission denied" in r.stderr and "Traceback" not in r.stderr
    assert "readable.wav: shape (16,)" in r.stdout


# ----------------------------------------------------------------------------- options that cannot work

@pytest.mark.parametrize("opts,reason", [
    (["--window", "0.001"], "too short for this model: its encoder needs at least"),  # shorter than the FFT
    (["--window", "1e9"], "between 0 and 3600 s"),  # would zero-pad each file to 32 years
    (["--window", "nan"], "between 0 and 3600 s"),
    (["--hop", "0"], "between 0 and 3600 s"),
])
def test_cli_options_that_cannot_work_are_errors_not_tracebacks(pemr_dir, matrix, opts, reason):
    _, paths = matrix
    r = call_with_timeout(lambda: CliRunner().invoke(cli, ["embed", str(paths["pure_silence"]), "-m", str(pemr_dir),
                                                          *opts]))
    assert r.exit_code != 0 and reason in r.output, r.output
    assert isinstance(r.exception, SystemExit) and "Traceback" not in r.output


# ============================================================================= round two (issue 14)
# Each block names the item of the issue it guards. Subprocess runs carry a timeout, so a hang
# fails the test instead of stalling the suite.

SUBPROCESS_TIMEOUT = 300  # generous: the machines running the suite are often loaded


def run_cli(args: list[str], cwd: Path | None = None, timeout: float = SUBPROCESS_TIMEOUT,
            env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    """``python -m musicembed ARGS`` in a real process; fails the test on a hang."""
    try:
        return subprocess.run([sys.executable, "-m", "musicembed", *args], capture_output=True, text=True,
                              timeout=timeout, cwd=cwd, env=env or {**os.environ, "HF_HUB_OFFLINE": "1"}, **kw)
    except subprocess.TimeoutExpired:
        pytest.fail(f"hang: `musicembed {' '.join(args)}` still running after {timeout} s")


def run_python(code: str, timeout: float = SUBPROCESS_TIMEOUT, cwd: Path | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
    except subprocess.TimeoutExpired:
        pytest.fail(f"hang: still running after {timeout} s:\n{code}")


# -- 1. an exception in the decode thread never leaves embed() waiting

def test_unencodable_file_names_are_errors_not_hangs(pemr_dir, tmp_path):
    """A NUL byte or a lone surrogate in a path made the decode thread die and embed() wait
    forever; in a real process with a timeout, each is now an error naming the input and the
    good file of the list is still embedded."""
    sf.write(tmp_path / "good.wav", tone(440, 1.0), SR)
    code = f"""
import sys
from musicembed import load_model, EmbedError
m = load_model({str(pemr_dir)!r}, device="cpu")
try:
    m.embed(["x\\x00.wav", "y\\ud800.wav", {str(tmp_path / 'good.wav')!r}])
except EmbedError as e:
    print(sorted(e.errors), e.results[2] is not None)
    print(ascii(e.errors[0].reason)); print(ascii(e.errors[1].reason))
"""
    r = run_python(code)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "[0, 1] True"
    assert "NUL byte" in lines[1] and "cannot be encoded" in lines[2]
    assert "Traceback" not in r.stderr


def test_a_decode_thread_failure_is_raised_not_waited_for(model, tmp_path, monkeypatch):
    """Whatever breaks the decoding reaches the caller as an exception."""
    import musicembed.pipeline as pipeline

    def broken(*a, **k):
        yield 0, np.zeros(100, np.float32)
        raise RuntimeError("decoder exploded")

    monkeypatch.setattr(pipeline, "stream_many", broken)
    with pytest.raises(RuntimeError, match="decoder exploded"):
        call_with_timeout(lambda: model.embed([tmp_path / "a.wav", tmp_path / "b.wav"]))


# -- 2. links at files the tool creates are not followed

def test_symlink_at_partial_store_is_refused_not_followed(pemr_dir, tmp_path):
    sf.write(tmp_path / "a.wav", tone(440, 1.0), SR)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    out = tmp_path / "out.npz"
    (tmp_path / "out.npz.partial").symlink_to(victim)
    r = run_cli(["embed", str(tmp_path / "a.wav"), "-m", str(pemr_dir), "--out", str(out)])
    assert r.returncode == 2, r.stderr
    assert victim.read_text() == "precious\n" and not out.exists()
    assert "out.npz.partial: is a symbolic link" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    # a hard link is refused as well (truncating the store would truncate the other file)
    (tmp_path / "out.npz.partial").unlink()
    os.link(victim, tmp_path / "out.npz.partial")
    r = run_cli(["embed", str(tmp_path / "a.wav"), "-m", str(pemr_dir), "--out", str(out)])
    assert r.returncode == 2 and "hard links" in r.stderr and victim.read_text() == "precious\n"


def test_symlink_at_out_is_replaced_not_written_through(pemr_dir, tmp_path):
    sf.write(tmp_path / "a.wav", tone(440, 1.0), SR)
    victim = tmp_path / "victim.npz"
    victim.write_bytes(b"precious")
    for name in ("out.npz", "out.npy", "out.jsonl"):
        out = tmp_path / name
        out.symlink_to(victim)
        r = run_cli(["embed", str(tmp_path / "a.wav"), "-m", str(pemr_dir), "--out", str(out)])
        assert r.returncode == 0, r.stderr
        assert not out.is_symlink() and out.is_file() and victim.read_bytes() == b"precious"
    # links the user set up for folders keep working: OUT inside a symlinked folder
    (tmp_path / "real").mkdir()
    (tmp_path / "linked").symlink_to(tmp_path / "real", target_is_directory=True)
    r = run_cli(["embed", str(tmp_path / "a.wav"), "-m", str(pemr_dir), "--out", str(tmp_path / "linked" / "o.npz")])
    assert r.returncode == 0 and (tmp_path / "real" / "o.npz").is_file(), r.stderr


# -- 3. a folder named like a manifest model never shadows it

def test_manifest_name_wins_over_a_folder_of_that_name(pemr_dir, tmp_path):
    import shutil

    sf.write(tmp_path / "song.wav", tone(440, 1.0), SR)
    (tmp_path / "pemr").mkdir()  # an unrelated folder that happens to be called pemr
    r = run_cli(["embed", "song.wav", "--json"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)["embedding"]) == 1536  # the bundled model
    warn = [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warn) == 1 and "'./pemr'" in warn[0] and "Traceback" not in r.stderr
    # with a separator the folder is meant: here an empty one, refused on one line
    r = run_cli(["embed", "song.wav", "-m", "./pemr"], cwd=tmp_path)
    assert r.returncode == 2 and "config.json not found" in r.stderr and "Traceback" not in r.stderr
    # a folder holding another model: only used when asked for as a folder
    (tmp_path / "pemr").rmdir()
    shutil.copytree(pemr_dir, tmp_path / "pemr")
    code = ("from pathlib import Path; import warnings; warnings.simplefilter('error');"
            "from musicembed import load_model\n"
            "print(load_model('./pemr').embedding_dim, load_model(Path('pemr')).embedding_dim)\n"
            "warnings.simplefilter('ignore'); print(load_model('pemr').embedding_dim)")
    r = run_python(code, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["16", "16", "1536"]
    # a bare name the manifest does not have still loads a folder of that name
    shutil.copytree(pemr_dir, tmp_path / "mymodel")
    r = run_cli(["embed", "song.wav", "-m", "mymodel", "--json"], cwd=tmp_path)
    assert r.returncode == 0 and len(json.loads(r.stdout)["embedding"]) == 16, r.stderr


# -- 4. .npy: each row carries its own path, names round-trip exactly

def test_npy_rows_carry_their_paths_exactly(pemr_dir, tmp_path):
    music = tmp_path / "music"
    music.mkdir()
    names = ["a.wav", "new\nline.wav", "tab\there.wav", "z.wav"]
    for k, n in enumerate(names):
        sf.write(music / n, tone(300 + 100 * k, 1.0), SR)
    sf.write(os.fsencode(music / BAD_UTF8), tone(800, 1.0), SR, format="WAV")
    out = tmp_path / "out.npy"
    r = run_cli(["embed", str(music), "-r", "-m", str(pemr_dir), "--out", str(out)])
    assert r.returncode == 0, r.stderr
    rows = np.load(out)  # no pickle needed
    assert not (tmp_path / "out.paths.txt").exists()
    got = [os.path.basename(p) for p in rows["path"]]
    assert sorted(got) == sorted(names + [BAD_UTF8])  # the newline did not split a name, the bytes survived
    m = load_model(pemr_dir, device="cpu")
    for p, v, dur in zip(rows["path"], rows["embedding"], rows["duration"]):
        np.testing.assert_allclose(v, m.embed(os.fsdecode(os.fsencode(p))), rtol=1e-5, atol=1e-6)
        assert 0.99 < dur < 1.01


@pytest.mark.parametrize("flag", ["--timestamps", "--hierarchical"])
def test_npy_with_per_window_options_is_refused(pemr_dir, mart_dir, tmp_path, flag):
    sf.write(tmp_path / "a.wav", tone(440, 1.0), SR)
    model = mart_dir if flag == "--hierarchical" else pemr_dir
    r = call_with_timeout(lambda: CliRunner().invoke(cli, ["embed", str(tmp_path / "a.wav"), "-m", str(model),
                                                          "--out", str(tmp_path / "o.npy"), flag]))
    assert r.exit_code == 2 and ".npz or .jsonl" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "o.npy").exists()


# -- 5. --resume: the stale rule, and --rehash

def test_resume_rehash_notices_content_changed_under_the_same_size_and_mtime(pemr_dir, tmp_path, monkeypatch):
    from musicembed.io.resume import PartialStore

    music = tmp_path / "music"
    music.mkdir()
    for k in range(3):
        sf.write(music / f"s{k}.wav", tone(300 + 100 * k, 1.0, 16000), 16000, subtype="PCM_16")
    out = tmp_path / "o.npz"
    base = ["embed", str(music), "-r", "-m", str(pemr_dir), "--out", str(out)]
    real = PartialStore.append

    def append_then_interrupt(self, key, result):
        real(self, key, result)
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(PartialStore, "append", append_then_interrupt)
        r = call_with_timeout(lambda: CliRunner().invoke(cli, base))
    assert r.exit_code == 130 and "interrupted" in r.stderr and not out.exists()  # item 12: its own code
    # s0 was recorded; now replace it with other audio of the same length, keeping its mtime
    st = os.stat(music / "s0.wav")
    sf.write(music / "s0.wav", noise(1.0, 16000), 16000, subtype="PCM_16")
    os.utime(music / "s0.wav", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(music / "s0.wav").st_size == st.st_size
    fresh = load_model(pemr_dir, device="cpu").embed(music / "s0.wav")
    store = out.with_name(out.name + ".partial")
    saved = store.read_bytes()
    r = call_with_timeout(lambda: CliRunner().invoke(cli, [*base, "--resume"]))
    assert r.exit_code == 0 and "resuming: 1 of 3" in r.stderr, r.output
    stale = np.load(out)["embeddings"][0]
    assert not np.allclose(stale, fresh, atol=1e-4)  # the documented limit of the size+mtime rule
    store.write_bytes(saved)
    r = call_with_timeout(lambda: CliRunner().invoke(cli, [*base, "--resume", "--rehash"]))
    assert r.exit_code == 0 and "resuming: 0 of 3" in r.stderr, r.output
    np.testing.assert_allclose(np.load(out)["embeddings"][0], fresh, rtol=1e-5, atol=1e-6)
    r = call_with_timeout(lambda: CliRunner().invoke(cli, [*base, "--rehash"]))
    assert r.exit_code == 2 and "--rehash is an option of --resume" in r.output


# -- 6. window and hop are checked against the model; memory does not grow with 1/hop

@pytest.mark.parametrize("opts,reason", [
    (["--window", "0.005"], r"too short for this model: its encoder needs at least 0\.\d+ s \(\d+ samples\)"),
    (["--hop", "0.001"], r"shorter than one frame of this model \(0\.008 s"),
    (["--hop", "0.00001"], r"shorter than one frame"),
])
def test_window_and_hop_limits_are_named(pemr_dir, matrix, opts, reason):
    _, paths = matrix
    r = call_with_timeout(lambda: CliRunner().invoke(cli, ["embed", str(paths["pure_silence"]), "-m", str(pemr_dir),
                                                          *opts]))
    assert r.exit_code == 2 and re.search(reason, r.output), r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1


def test_the_named_minimum_window_fits_and_one_sample_less_does_not(pemr_dir, mart_dir, tmp_path):
    for d in (pemr_dir, mart_dir):
        m = load_model(d, device="cpu")
        with pytest.raises(ValueError, match="needs at least") as e:
            m.embed(tone(440, 2.0, 16000), sample_rate=16000, window_seconds=0.01)
        need = int(re.search(r"\((\d+) samples\)", str(e.value)).group(1))
        v = m.embed(tone(440, 2.0, 16000), sample_rate=16000, window_seconds=need / 16000)
        assert np.isfinite(v).all()
        with pytest.raises(ValueError, match="needs at least"):
            m.embed(tone(440, 2.0, 16000), sample_rate=16000, window_seconds=(need - 1) / 16000)


_PEAK = """
import resource, sys
import numpy as np
from musicembed import load_model
m = load_model(sys.argv[1], device="cpu")
m.embed(np.zeros(16000, np.float32), sample_rate=16000)  # warm up: the first batch allocates the caches
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
e = m.embed(sys.argv[2], hop_seconds=float(sys.argv[3]), return_timestamps=True)
print(len(e.vectors), (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
"""


def test_memory_does_not_grow_with_one_over_hop(pemr_dir, tmp_path):
    """A small hop makes a 30-s block hold thousands of overlapping windows: they are views of the
    decoded block, not copies (copies cost 120 MB per block here at a hop of one frame)."""
    f = tmp_path / "long.wav"
    sf.write(f, noise(120.0, 16000), 16000)
    peaks = {}
    for hop in ("0.5", "0.008"):  # the window, and one frame
        try:
            r = subprocess.run([sys.executable, "-c", _PEAK, str(pemr_dir), str(f), hop], capture_output=True,
                               text=True, timeout=SUBPROCESS_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail("hang")
        assert r.returncode == 0, r.stderr[-2000:]
        n, peaks[hop] = r.stdout.split()
    assert int(n) > 14000  # one window per frame
    assert float(peaks["0.008"]) - float(peaks["0.5"]) < 80, peaks


# -- 7. config.json: every field validated at load, the message names the field and the file

def _set(section: str | None, key: str, value):
    def tamper(cfg: dict) -> str:
        target = cfg if section is None else cfg[section]
        target[key] = value
        return json.dumps(cfg)
    return tamper


def _nested(cfg: dict) -> str:
    return json.dumps(cfg)[:-1] + ', "description": ' + "[" * 100_000 + "]" * 100_000 + "}"


CONFIG_CASES = [  # (id, model, tamper -> text, or None for a file-shaped case; regex of the reason)
    ("hop_0", "pemr", _set("frontend", "hop_length", 0), r"frontend\.hop_length = 0: must be between 1 and"),
    ("window_100", "pemr", _set(None, "window_samples", 100),
     r"window_samples = 100: too short for this model: its encoder needs at least"),
    ("window_1e9", "pemr", _set(None, "window_samples", 10**9), r"window_samples = 1000000000: must be between"),
    ("window_float", "pemr", _set(None, "window_samples", 8000.5), r"window_samples = 8000.5: must be an integer"),
    ("pools_zero", "pemr", _set("encoder", "pools", [[0, 4], [4, 4]]), r"encoder\.pools = .*sizes 1\.\.64"),
    ("pools_empty", "pemr", _set("encoder", "pools", []), r"encoder\.pools = \[\]: must be a non-empty list"),
    ("rate_0", "pemr", _set("frontend", "sample_rate", 0), r"frontend\.sample_rate = 0: must be between 1000"),
    ("rate_negative", "pemr", _set("frontend", "sample_rate", -16000), r"frontend\.sample_rate = -16000"),
    ("n_fft_str", "pemr", _set("frontend", "n_fft", "512"), r"frontend\.n_fft = \"512\": must be an integer"),
    ("f_min_nan", "pemr", _set("frontend", "f_min", float("nan")), r"frontend\.f_min = NaN: must be a finite"),
    ("f_max_at_f_min", "pemr", _set("frontend", "f_max", 0.0), r"frontend\.f_max = 0: must be above f_min"),
    ("top_db_negative", "pemr", _set("frontend", "top_db", -80.0), r"frontend\.top_db = -80.0: must be between"),
    ("mel_scale", "pemr", _set("frontend", "mel_scale", "bark"), r"frontend\.mel_scale = \"bark\": must be one of"),
    ("log_scale_f_min_0", "pemr", _set("frontend", "mel_scale", "log"),
     r"frontend\.f_min = 0: must be above 0 for mel_scale \"log\""),
    ("freq_pool", "pemr", _set("encoder", "freq_pool", "min"), r"encoder\.freq_pool.*must be one of"),
    ("center_str", "pemr", _set("frontend", "center", "yes"), r"frontend\.center = \"yes\": must be true or false"),
    ("mart_parts_0", "mart", _set("mart", "parts", 0), r"mart\.parts = 0: must be at least 1"),
    ("mart_heads_0", "mart", _set("mart", "heads", 0), r"mart\.heads = 0: must be between 1 and"),
    ("mart_levels_huge", "mart", _set("mart", "levels", 40), r"mart\.levels = 40: must be between 1 and 12"),
    ("mart_dropout", "mart", _set("mart", "dropout", 2.0), r"mart\.dropout = 2.0: must be between 0 and"),
    ("mart_section_list", "mart", _set(None, "mart", [1, 2]), r"mart must be an object of settings"),
    ("deeply_nested", "pemr", _nested, r"JSON nested too deeply|description = .*must be a string"),
    ("config_is_folder", "pemr", None, r"cannot read|not a regular file"),
    ("config_is_fifo", "pemr", None, r"not a regular file"),
    ("config_symlink_loop", "pemr", None, r"cannot read .*symbolic links"),
]


def _bad_model(case, pemr_dir: Path, mart_dir: Path, root: Path) -> Path:
    import shutil

    cid, which, tamper, _ = case
    d = root / cid
    shutil.copytree(pemr_dir if which == "pemr" else mart_dir, d)
    cfg_path = d / "config.json"
    if tamper is not None:
        cfg_path.write_text(tamper(json.loads(cfg_path.read_text())))
    else:
        cfg_path.unlink()
        if cid == "config_is_folder":
            cfg_path.mkdir()
        elif cid == "config_is_fifo":
            os.mkfifo(cfg_path)  # reading it would wait for a writer forever
        else:
            cfg_path.symlink_to("config.json")
    return d


@pytest.mark.parametrize("case", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_is_refused_at_load_naming_the_field(case, pemr_dir, mart_dir, tmp_path):
    from musicembed import WeightsError

    d = _bad_model(case, pemr_dir, mart_dir, tmp_path)
    with pytest.raises(WeightsError) as e:
        call_with_timeout(lambda: load_model(d, device="cpu"))
    msg = str(e.value)
    assert msg.startswith(f"{d}: ") and "config.json" in msg and re.search(case[3], msg), msg
    assert "\n" not in msg


def test_bad_configs_through_the_cli_one_line_each(pemr_dir, mart_dir, tmp_path):
    sf.write(tmp_path / "a.wav", tone(440, 1.0), SR)
    for case in CONFIG_CASES[::3]:
        d = _bad_model(case, pemr_dir, mart_dir, tmp_path)
        r = run_cli(["embed", str(tmp_path / "a.wav"), "-m", str(d), "--out", str(tmp_path / "o.npz")], timeout=120)
        assert r.returncode == 2, (case[0], r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and re.search(case[3], lines[0]) and "Traceback" not in r.stderr, (case[0], r.stderr)



# -- 8. truncated files: one policy (the matrix above has a case per format); info and read errors

def test_info_reports_the_declared_length_or_unknown(matrix):
    _, paths = matrix
    r = call_with_timeout(lambda: CliRunner().invoke(cli, ["info", str(paths["flac_of_unknown_length"]),
                                                          str(paths["truncated_wav"])]))
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert "length unknown (not in the header)" in lines[0]
    assert lines[1].startswith(f"{paths['truncated_wav']}: 3.000s")  # what the data chunk declares


@pytest.fixture(scope="module")
def eio_preload(tmp_path_factory) -> Path:
    import shutil

    cc = shutil.which("cc") or shutil.which("gcc")
    if not sys.platform.startswith("linux") or cc is None:
        pytest.skip("needs Linux and a C compiler for the read-fault shim")
    so = tmp_path_factory.mktemp("eio") / "eio.so"
    src = Path(__file__).parent / "data" / "eio_preload.c"
    subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(so), str(src), "-ldl"], check=True, timeout=120)
    return so


@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "MP3"])
def test_read_error_is_reported_as_a_read_error_not_damage(pemr_dir, tmp_path, eio_preload, fmt):
    """EIO half-way through a file (fault injection with LD_PRELOAD): an error naming the read
    failure, never a truncated embedding or "corrupt file"; the other file is embedded."""
    ext = fmt.lower()
    sf.write(tmp_path / f"fails.{ext}", noise(10.0), SR, format=fmt)
    sf.write(tmp_path / "fine.wav", tone(440, 1.0), SR)
    size = (tmp_path / f"fails.{ext}").stat().st_size
    out = tmp_path / "o.npz"
    r = run_cli(["embed", str(tmp_path / f"fails.{ext}"), str(tmp_path / "fine.wav"), "-m", str(pemr_dir),
                 "--out", str(out)],
                env={**os.environ, "HF_HUB_OFFLINE": "1", "LD_PRELOAD": str(eio_preload),
                     "EIO_FILE": f"fails.{ext}", "EIO_OFFSET": str(size // 2)})
    assert r.returncode == 1, r.stderr
    assert re.search(rf"fails\.{ext}: read error( after \d+\.\d\d s)?: Input/output error \(the disk", r.stderr), r.stderr
    assert "Traceback" not in r.stderr and "truncated" not in r.stderr
    assert [os.path.basename(p) for p in np.load(out)["paths"]] == ["fine.wav"]


# -- 9. an input that resamples to no sample is an error (cases in FILE_CASES and ARRAY_CASES)
# -- 10. API arguments

def test_a_non_input_in_a_list_costs_only_itself(model, tmp_path):
    sf.write(tmp_path / "good.wav", tone(440, 1.0), SR)
    with pytest.raises(EmbedError) as e:
        call_with_timeout(lambda: model.embed([None, tmp_path / "good.wav", 3.5, {"a": 1}]))
    assert sorted(e.value.errors) == [0, 2, 3] and e.value.results[1] is not None
    assert e.value.errors[0].reason == "expected a file path, numpy array or torch tensor"
    assert str(e.value.errors[0]).startswith("None: ")
    with pytest.raises(TypeError, match="audio must be a path"):
        model.embed(None)


@pytest.mark.parametrize("kw,match", [
    ({"batch_size": -1}, "batch_size must be a positive integer"),
    ({"batch_size": 0}, "batch_size must be a positive integer"),
    ({"batch_size": 2.5}, "batch_size must be a positive integer"),
    ({"batch_size": True}, "batch_size must be a positive integer"),
    ({"hop_seconds": "1"}, "hop_seconds must be between"),
    ({"window_seconds": float("inf")}, "window_seconds must be between"),
    ({"device": "bogus"}, "unknown device 'bogus'"),
    ({"device": "meta"}, "embedding runs on cpu, cuda or mps, not meta"),
])
def test_bad_api_arguments_are_value_errors(model, kw, match):
    with pytest.raises(ValueError, match=match):
        call_with_timeout(lambda: model.embed(tone(440, 1.0), sample_rate=SR, **kw))
    assert model.device.type == "cpu"


@pytest.mark.parametrize("device,match", [
    ("bogus", "unknown device 'bogus'"), ("meta", "not meta"), ("cuda:7", "CUDA|7"), ("cuda", "CUDA"),
])
def test_bad_devices_on_the_command_line_are_one_line(pemr_dir, tmp_path, device, match):
    import torch

    if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.device_count() > 7:
        pytest.skip("this machine has the device")
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    sf.write(tmp_path / "a.wav", tone(440, 1.0), SR)
    r = call_with_timeout(lambda: CliRunner().invoke(cli, ["embed", str(tmp_path / "a.wav"), "-m", str(pemr_dir),
                                                          "--device", device]))
    assert r.exit_code == 2 and re.search(match, r.output) and "Traceback" not in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1


# -- 11. a full disk while recording, and a kill at the final rename

@pytest.fixture()
def small_disk(tmp_path):
    """A 256-KiB tmpfs (root only), filled but for ``free`` bytes with a file to delete later."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.decode().strip()})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(mnt: Path, leave: int) -> Path:
    filler = mnt / "filler"
    free = os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize
    filler.write_bytes(bytes(max(free - leave, 0)))
    return filler


def test_full_disk_while_recording_is_one_line_and_resume_finishes(pemr_dir, tmp_path, small_disk):
    music = tmp_path / "music"
    music.mkdir()
    for k in range(12):
        sf.write(music / f"s{k:02d}.wav", tone(200 + 50 * k, 0.6, 16000), 16000)
    ref = tmp_path / "ref.npz"
    assert run_cli(["embed", str(music), "-r", "-m", str(pemr_dir), "--out", str(ref)]).returncode == 0
    out = small_disk / "out.npz"
    out.write_bytes(b"previous output")
    filler = _fill(small_disk, 9000)  # room for a few records
    r = run_cli(["embed", str(music), "-r", "-m", str(pemr_dir), "--out", str(out)])
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "out.npz.partial: cannot record results (No space left on device)" in lines[0]
    assert "--resume" in lines[0] and "Traceback" not in r.stderr
    assert out.read_bytes() == b"previous output"
    filler.unlink()
    r = run_cli(["embed", str(music), "-r", "-m", str(pemr_dir), "--out", str(out), "--resume"])
    assert r.returncode == 0, r.stderr
    assert re.search(r"resuming: [1-9]\d* of 12 file\(s\) already embedded", r.stderr)
    with np.load(out) as got, np.load(ref) as want:
        np.testing.assert_array_equal(got["embeddings"], want["embeddings"])
        assert list(got["paths"]) == list(want["paths"])


_KILL_AT_RENAME = """
import os, signal, sys
real = os.replace
def replace(src, dst, *a, **k):
    if os.fspath(dst).endswith("out.npz"):
        os.kill(os.getpid(), signal.SIGKILL)  # the temporary file is complete: killed just before the rename
    return real(src, dst, *a, **k)
os.replace = replace
from musicembed.cli import cli
cli(sys.argv[1:], prog_name="musicembed")
"""


def test_kill_at_the_final_rename_leaves_a_temporary_the_next_run_removes(pemr_dir, tmp_path):
    import signal

    sf.write(tmp_path / "a.wav", tone(440, 1.0), SR)
    out = tmp_path / "out.npz"
    args = ["embed", str(tmp_path / "a.wav"), "-m", str(pemr_dir), "--out", str(out)]
    r = subprocess.run([sys.executable, "-c", _KILL_AT_RENAME, *args], capture_output=True, text=True,
                       timeout=SUBPROCESS_TIMEOUT)
    assert r.returncode == -signal.SIGKILL, r.stderr
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".out.npz.") and p.name.endswith(".part")]
    assert len(left) == 1 and left[0].stat().st_size > 0 and not out.exists()
    unrelated = tmp_path / ".out.npz.notes.part.txt"
    unrelated.write_text("not ours")
    r = run_cli([*args, "--resume"])
    assert r.returncode == 0 and "removed 1 temporary file(s) left by an interrupted write" in r.stderr, r.stderr
    assert not left[0].exists() and unrelated.exists() and out.exists()


# -- 12. exit codes: 0 done, 1 some inputs failed (the rest written), 2 nothing written, 130 Ctrl-C

_PACED = """
import signal, sys, time
# Ctrl-C as in a terminal, even where the test runner's process ignores SIGINT (a child inherits that)
signal.signal(signal.SIGINT, signal.default_int_handler)
from musicembed.io import resume as catalog
real = catalog.PartialStore.append
def paced(self, key, result):
    real(self, key, result)
    time.sleep(0.5)
catalog.PartialStore.append = paced
from musicembed.cli import cli
cli(sys.argv[1:], prog_name="musicembed")
"""


def test_ctrl_c_exits_130_and_leaves_the_old_output(pemr_dir, tmp_path):
    import signal
    import time

    music = tmp_path / "music"
    music.mkdir()
    for k in range(8):
        sf.write(music / f"s{k}.wav", tone(200 + 50 * k, 0.6, 16000), 16000)
    out = tmp_path / "out.npz"
    out.write_bytes(b"previous output")
    proc = subprocess.Popen([sys.executable, "-c", _PACED, "embed", str(music), "-r", "-m", str(pemr_dir),
                             "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        store = tmp_path / "out.npz.partial"
        deadline = time.monotonic() + SUBPROCESS_TIMEOUT
        while not (store.exists() and store.stat().st_size > 0) and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=SUBPROCESS_TIMEOUT)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted: nothing written" in err and "Traceback" not in err and "Aborted" not in err
    assert out.read_bytes() == b"previous output" and store.stat().st_size > 0  # --resume can continue


def test_exit_codes_are_distinct(pemr_dir, tmp_path):
    sf.write(tmp_path / "a.wav", tone(440, 1.0), SR)
    (tmp_path / "bad.wav").write_bytes(b"not audio" * 100)
    base = ["embed", "-m", str(pemr_dir), "--out"]
    assert run_cli([*base, str(tmp_path / "o.npz"), str(tmp_path / "a.wav")]).returncode == 0
    r = run_cli([*base, str(tmp_path / "o.npz"), str(tmp_path / "a.wav"), str(tmp_path / "bad.wav")])
    assert r.returncode == 1 and len(np.load(tmp_path / "o.npz")["paths"]) == 1  # written, one failed
    r = run_cli(["embed", "-m", str(tmp_path / "no-model"), "--out", str(tmp_path / "p.npz"), str(tmp_path / "a.wav")])
    assert r.returncode == 2 and not (tmp_path / "p.npz").exists()  # nothing written


# -- 13. the smaller ones

def test_download_without_network_is_quick_and_not_circular(tmp_path):
    import time

    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HUB_CACHE=str(tmp_path / "cache"), HF_HOME=str(tmp_path / "hf"))
    for extra in ([], ["--force"]):
        t = time.monotonic()
        r = run_cli(["download", "hf-hub:someone/some-model", *extra], env=env)
        assert time.monotonic() - t < 60  # no retries for a minute (was ~24 s of them on a quiet machine)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        line = r.stderr.strip()
        assert len(line.splitlines()) == 1 and "127.0.0.1 cannot be reached" in line, line
        assert "musicembed download" not in line  # not "run this same command"
    # elsewhere the advice names the download command
    r = run_python("from musicembed import load_model\ntry: load_model('hf-hub:someone/some-model')\n"
                   "except Exception as e: print(e)")
    assert "musicembed download hf-hub:someone/some-model" in r.stdout


def test_models_lists_sha256_and_hub_repository():
    from musicembed import hub

    r = call_with_timeout(lambda: CliRunner().invoke(cli, ["models"]))
    assert r.exit_code == 0
    head = r.stdout.splitlines()[0]
    assert "sha256" in head and "hub repository" in head
    for name, e in hub.read_manifest()["models"].items():
        sha = next(f["sha256"] for f in e["files"] if f["name"] == "model.safetensors")
        row = next(ln for ln in r.stdout.splitlines() if ln.startswith(name + " "))
        assert sha[:12] in row and e["hub"]["repo_id"] in row


def test_a_damaged_middle_record_is_reported_as_such(pemr_dir, tmp_path, monkeypatch):
    from musicembed.io.resume import PartialStore

    music = tmp_path / "music"
    music.mkdir()
    for k in range(4):
        sf.write(music / f"s{k}.wav", tone(300 + 100 * k, 0.6, 16000), 16000)
    out = tmp_path / "o.npz"
    base = ["embed", str(music), "-r", "-m", str(pemr_dir), "--out", str(out)]
    real, ends = PartialStore.append, []

    def append(self, key, result):
        real(self, key, result)
        ends.append(self.path.stat().st_size)
        if len(ends) == 3:
            raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(PartialStore, "append", append)
        assert call_with_timeout(lambda: CliRunner().invoke(cli, base)).exit_code == 130
    store = out.with_name("o.npz.partial")
    data = bytearray(store.read_bytes())
    data[ends[0] + 40] ^= 0xFF  # inside the second of three records
    store.write_bytes(bytes(data))
    r = call_with_timeout(lambda: CliRunner().invoke(cli, [*base, "--resume"]))
    assert r.exit_code == 0, r.output
    assert f"is damaged from byte {ends[0]} on ({ends[2] - ends[0]} bytes" in r.stderr
    assert "last record" not in r.stderr and "resuming: 1 of 4" in r.stderr


def test_batch_partners_change_vectors_only_by_float32_rounding(pemr_dir, tmp_path):
    """Windows of different files share batches; the kernels' rounding can depend on a window's
    batch and its place in it, so a file's vector may move in the last bits with its partners
    (the documented tolerance: 1e-5 relative; ``merge`` of shards is equal to a single run to it)."""
    files = []
    for k in range(5):
        files.append(tmp_path / f"f{k}.wav")
        sf.write(files[-1], noise(1.3 + 0.4 * k, 16000, seed=k), 16000)
    m = load_model(pemr_dir, device="cpu")
    together = m.embed(files, batch_size=3)
    for k, f in enumerate(files):
        alone = m.embed(f, batch_size=3)
        np.testing.assert_allclose(alone, together[k], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- all of it, one real run

def test_one_real_run_over_a_folder_of_every_file_case(matrix, pemr_dir, tmp_path):
    """The matrix folder (every file-shaped case) plus good files, embedded by one real
    `musicembed embed FOLDER -r --out` process: every good file written, every bad one named
    on one line with its reason, every truncated one warned about, no traceback, no hang,
    exit code 1 (some inputs failed, the rest written)."""
    d, paths = matrix
    sf.write(d / "good-first.wav", tone(330, 1.0), SR)
    sf.write(d / "zz-good-last.flac", tone(550, 1.0), SR)
    out = tmp_path / "all.npz"
    try:
        r = run_cli(["embed", str(d), "-r", "-m", str(pemr_dir), "--out", str(out)])
    finally:
        (d / "good-first.wav").unlink()
        (d / "zz-good-last.flac").unlink()
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    with np.load(out) as z:
        written = list(z["paths"])
        assert np.isfinite(z["embeddings"]).all()
    assert os.fspath(d / "good-first.wav") in written and os.fspath(d / "zz-good-last.flac") in written
    failures = _failure_lines(r.stderr)
    for c in FILE_CASES:
        name = os.fspath(paths[c.id])
        if not name.startswith(os.fspath(d) + os.sep) or os.path.isdir(name) or not os.path.lexists(name):
            continue  # not a file in the folder (a missing path, a folder)
        shown = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        lines = [ln for ln in failures if ln.strip().startswith((f"{name}: ", f"{shown}: "))]
        expect = "ok" if c.id == "no_read_permission" else c.expect  # denied in process only (os.access patch)
        if expect == "ok":
            assert name in written and not lines, (c.id, lines)
            warned = [ln for ln in r.stderr.splitlines() if ln.startswith((f"warning: {name}: ", f"warning: {shown}: "))]
            assert len(warned) == (c.warn is not None), (c.id, warned)
        else:
            assert name not in written and len(lines) == 1 and re.search(expect, lines[0]), (c.id, lines)
    n_failed = int(re.search(r"(\d+) input\(s\) failed", r.stderr).group(1))
    assert n_failed == len(failures)
