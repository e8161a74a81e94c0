"""A resumable store of finished results beside a catalog output (``musicembed embed --out X --resume``).

While ``embed --out OUT`` runs, every finished file is appended to ``OUT.partial``, an
append-only file of checksummed records, flushed and fsynced one by one. When the run
completes, OUT is written atomically and ``OUT.partial`` is removed. When the run is
killed (Ctrl-C, SIGKILL, a crash, a power cut), OUT is untouched (the previous complete
file, if any) and ``--resume`` reads ``OUT.partial`` back and embeds only the files that
are not in it.

Layout of ``OUT.partial``: records of ``MAGIC (4 bytes) | payload length (u64 LE) |
crc32 of the payload (u32 LE) | payload``. The first record (magic ``MEH1``) holds the run's
settings as JSON (:func:`run_settings`): the model's identity (:mod:`musicembed.identity`:
name, version, method, dimension, fingerprint of config and weights, window and hop in
seconds) and the other options that change what is recorded. Results are reused only when
these equal this run's (the model's ``source`` and the options ``requested`` as given are
not compared); otherwise ``--resume`` starts over and names each field that differs. Every
later record (``MER1``) is one finished file, an
uncompressed ``.npz`` (no pickles) holding its key, the sha256 of the file's content when
it was recorded, and its :class:`Embedding`. A file's key is its absolute path, size and
modification time (ns). The rule of ``--resume``: a recorded result is reused when the
file's key is unchanged; a file rewritten with the same size and modification time (a
restored backup, ``touch -d``) is therefore not noticed, unless ``--rehash`` is given:
then a result is reused only when the file's sha256 also equals the recorded one (every
file is read once more). A torn or damaged tail (the record being written when the run
died) is detected by length and checksum, cut off, and its file embedded again.

Stores of format 1 (older musicembed) record the model's name, version and fingerprint and the
window and hop as given (None: the model's default) instead of the identity; ``--resume``
compares those with this run's options as given, and reuses the results with a warning.
"""

from __future__ import annotations

import io
import json
import os
import stat
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MusicEmbedError
from ..identity import differences, model_identity
from ..results import Embedding, LevelEmbedding
from .atomic import remove_stale_temporaries

try:  # POSIX: one run per store at a time
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

FORMAT = 2
_LEGACY_FORMAT = 1  # flat settings: model, model_version, model_fingerprint, window/hop as given
_HEAD = struct.Struct("<4sQI")
_MAGIC_META = b"MEH1"
_MAGIC_RECORD = b"MER1"
SUFFIX = ".partial"


class StoreError(MusicEmbedError):
    """The partial store cannot be used (locked by another run, unwritable)."""


def partial_path(out: str | os.PathLike) -> Path:
    """Where the partial results of a run writing ``out`` live: ``OUT.partial`` beside it."""
    out = Path(out)
    return out.with_name(out.name + SUFFIX)


def file_key(path: str | os.PathLike) -> str | None:
    """Identity of an input file for resuming: absolute path, size, mtime (ns). None if it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return json.dumps([os.path.abspath(os.fspath(path)), st.st_size, st.st_mtime_ns])


def run_settings(model, *, window_seconds: float | None, hop_seconds: float | None, timestamps: bool = False,
                 hierarchical: bool = False) -> dict[str, Any]:
    """What must be equal for stored results to be reused: the model's identity with this
    window and hop (seconds; None: the model's defaults), ``timestamps`` (records keep
    per-window vectors only then) and ``hierarchical`` (batch size and device do not change
    vectors). ``requested`` keeps the window and hop as given, to read format-1 stores."""
    return {
        "format": FORMAT,
        "model": model_identity(model, window_seconds=window_seconds, hop_seconds=hop_seconds),
        "timestamps": bool(timestamps),
        "hierarchical": bool(hierarchical),
        "requested": {"window_seconds": window_seconds, "hop_seconds": hop_seconds},
    }


_OPTIONS = ("timestamps", "hierarchical")


def settings_changes(stored: dict[str, Any], settings: dict[str, Any]) -> list[tuple[str, str]]:
    """(field, plain words, stored value first) for each setting that differs between a store's
    ``stored`` settings and this run's :func:`run_settings`; empty when its results can be reused."""
    if not isinstance(stored, dict):
        return [("format", "an unreadable settings record")]
    if stored.get("format") == _LEGACY_FORMAT:
        return _legacy_changes(stored, settings)
    if stored.get("format") != FORMAT or not isinstance(stored.get("model"), dict):
        return [("format", f"store format {stored.get('format')} vs {FORMAT}")]
    out = differences(stored["model"], settings["model"])
    out += [(k, f"{k} {stored.get(k)} vs {settings[k]}") for k in _OPTIONS if stored.get(k) != settings[k]]
    return out


def _legacy_changes(stored: dict[str, Any], settings: dict[str, Any]) -> list[tuple[str, str]]:
    """:func:`settings_changes` for a format-1 store: the model by name, version and
    fingerprint; window and hop as given (None: the model's default)."""
    ident = settings["model"]
    old = {"name": stored.get("model"), "version": stored.get("model_version"),
           "fingerprint": stored.get("model_fingerprint")}
    out = differences(old, ident, ("name", "version", "fingerprint"))
    asked = settings.get("requested", {})
    for k, label in (("window_seconds", "window"), ("hop_seconds", "hop")):
        a, b = stored.get(k), asked.get(k)
        if a != b:
            out.append((k, f"{label} {'the default' if a is None else f'{a:g} s'} vs "
                           f"{'the default' if b is None else f'{b:g} s'}"))
    out += [(k, f"{k} {stored.get(k)} vs {settings[k]}") for k in _OPTIONS if stored.get(k) != settings[k]]
    return out


def content_hash(key: str) -> str | None:
    """sha256 (hex) of the content of the file a :func:`file_key` names; None if it cannot be read."""
    from ..hub import sha256_file

    try:
        return sha256_file(json.loads(key)[0])
    except (OSError, ValueError, TypeError, IndexError, KeyError):  # unreadable now, or not a file key
        return None


def _encode(key: str, e: Embedding, sha256: str | None) -> bytes:
    arrays: dict[str, np.ndarray] = {
        "key": np.array(key), "sha256": np.array(sha256 or ""), "source": np.array(e.source), "clip": e.clip,
        "vectors": e.vectors,
        "starts": np.asarray(e.starts), "ends": np.asarray(e.ends), "duration": np.array(e.duration, np.float64),
        "declared_duration": np.array(np.nan if e.declared_duration is None else e.declared_duration, np.float64),
        "warning": np.array(e.warning or ""),
    }
    for n, lv in enumerate(e.levels or []):
        arrays[f"level{n}_vectors"] = lv.vectors
        arrays[f"level{n}_starts"] = np.asarray(lv.starts)
        arrays[f"level{n}_ends"] = np.asarray(lv.ends)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _decode(payload: bytes) -> tuple[str, Embedding, str | None]:
    with np.load(io.BytesIO(payload), allow_pickle=False) as z:
        d = {k: z[k] for k in z.files}
    levels = []
    n = 0
    while f"level{n}_vectors" in d:
        levels.append(LevelEmbedding(level=n, vectors=d[f"level{n}_vectors"], starts=d[f"level{n}_starts"],
                                     ends=d[f"level{n}_ends"]))
        n += 1
    e = Embedding(source=str(d["source"]), clip=d["clip"], vectors=d["vectors"], starts=d["starts"],
                  ends=d["ends"], duration=float(d["duration"]), levels=levels or None)
    if "declared_duration" in d and not np.isnan(d["declared_duration"]):
        e.declared_duration = float(d["declared_duration"])
    e.warning = (str(d["warning"]) or None) if "warning" in d else None
    return str(d["key"]), e, (str(d["sha256"]) or None) if "sha256" in d else None


def _frame(magic: bytes, payload: bytes) -> bytes:
    return _HEAD.pack(magic, len(payload), zlib.crc32(payload)) + payload


def read_records(f, hashes: dict[str, str | None] | None = None) -> tuple[dict[str, Any] | None,
                                                                        dict[str, Embedding], int]:
    """Parse a store from the start: (settings or None, {key: Embedding}, offset of the end of the last good
    record); ``hashes``, when given, receives each key's recorded content sha256."""
    size = os.fstat(f.fileno()).st_size
    f.seek(0)
    meta, done, good = None, {}, 0
    while True:
        head = f.read(_HEAD.size)
        if len(head) < _HEAD.size:
            break
        magic, length, crc = _HEAD.unpack(head)
        if magic not in (_MAGIC_META, _MAGIC_RECORD) or (magic == _MAGIC_META) != (meta is None):
            break
        if length > size - f.tell():  # torn, or a damaged length: never allocate what is not there
            break
        payload = f.read(length)
        if len(payload) < length or zlib.crc32(payload) != crc:
            break
        try:
            if magic == _MAGIC_META:
                meta = json.loads(payload)
            else:
                key, e, sha = _decode(payload)
                done[key] = e
                if hashes is not None:
                    hashes[key] = sha
        except Exception:  # checksum fine but unreadable: treat as the damaged tail
            break
        good = f.tell()
    return meta, done, good


def _open_store(path: Path):
    """Open (creating) ``path`` for reading and appending, never through a link: a symbolic link
    there is refused (O_NOFOLLOW), and so is anything but a regular file with one name (a hard
    link would make the truncation at a fresh start truncate another file too)."""
    flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, flags, 0o666)
    except OSError as e:
        if path.is_symlink():  # ELOOP from O_NOFOLLOW
            raise StoreError(f"{path}: is a symbolic link; musicembed creates this file itself and does not write "
                             "through links: remove it (or choose another --out)") from None
        raise StoreError(f"{path}: cannot create the partial results file: {e.strerror or e}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
        os.close(fd)
        what = "not a regular file" if not stat.S_ISREG(st.st_mode) else f"a file with {st.st_nlink} hard links"
        raise StoreError(f"{path}: is {what}; musicembed creates this file itself and does not write into "
                         "other files: remove it (or choose another --out)")
    os.set_blocking(fd, True)
    # Unbuffered: a failed write (a full disk) raises at once and leaves nothing pending for close().
    return os.fdopen(fd, "a+b", buffering=0)  # appends go to the end whatever the position


class PartialStore:
    """The append-only store of one run; open it with :meth:`open`, then :meth:`append` each result."""

    def __init__(self, path: Path, f) -> None:
        self.path = path
        self._f = f
        self._fresh: dict[str, Any] | None = None  # settings of a new store, written with its first record
        self.hashes: dict[str, str | None] = {}  # key -> content sha256 of the records read back

    @classmethod
    def open(cls, out: str | os.PathLike, settings: dict[str, Any],
             resume: bool) -> tuple[PartialStore, dict[str, Embedding], str | None]:
        """Open (and lock) ``OUT.partial``. Returns the store, the results it already holds (only with
        ``resume`` and matching settings) and a note for the user, or None."""
        path = partial_path(out)
        f = _open_store(path)
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise StoreError(f"{path}: another musicembed run is writing {out} right now; "
                                     "wait for it or choose another --out") from None
            store = cls(path, f)
            note, done = None, {}
            stale = remove_stale_temporaries(out)  # this run holds the lock: no other run is writing OUT
            if stale:
                note = (f"removed {len(stale)} temporary file(s) left by an interrupted write of {out}: "
                        f"{', '.join(p.name for p in stale)}")
            size = os.fstat(f.fileno()).st_size
            if resume:
                meta, done, good = read_records(f, store.hashes)
                changes = settings_changes(meta, settings) if meta is not None else []
                if meta is None:
                    note = f"--resume: no partial results in {path}; embedding everything"
                elif changes:
                    note = (f"--resume: the partial results in {path} were made with a different "
                            f"{', '.join(k for k, _ in changes)}; starting over "
                            f"(recorded vs this run: {'; '.join(w for _, w in changes)})")
                    done = {}
                else:
                    if good < size:
                        note = (f"--resume: {path} is damaged from byte {good} on ({size - good} bytes: a record "
                                "torn when the run was interrupted, or damaged since); the files recorded there "
                                "are embedded again")
                    if meta.get("format") == _LEGACY_FORMAT:
                        legacy = (f"warning: --resume: {path} was written by an older musicembed, which recorded "
                                  "the model's name, version and fingerprint but not the window and hop it used; "
                                  "its results are reused because these and the options as given match")
                        note = legacy + (f"\n{note}" if note else "")
                    f.truncate(good)
                    os.fsync(f.fileno())
                    return store, done, note
            elif size:
                note = (f"note: replacing the partial results of an interrupted run in {path} "
                        "(pass --resume to continue that run instead)")
            # Replaced only when this run records its first result: a run that fails before that
            # (a mistyped option) leaves the old partial results for a later --resume.
            store._fresh = settings
            return store, {}, note
        except BaseException:
            f.close()
            raise

    def _reset(self, settings: dict[str, Any]) -> None:
        self._f.truncate(0)
        self._write(_frame(_MAGIC_META, json.dumps(settings).encode()))
        if os.name == "posix":
            dfd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            except OSError:
                pass
            finally:
                os.close(dfd)

    def _write(self, data: bytes) -> None:
        """Append ``data`` durably; on failure (a full disk) the store is cut back to what it held."""
        fd = self._f.fileno()
        before = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError:
            try:
                os.ftruncate(fd, before)
            except OSError:
                pass  # the torn record is dropped by the next --resume (length and checksum)
            raise

    def append(self, key: str, result: Embedding) -> None:
        """Record one finished file with its content hash (durable when this returns)."""
        sha = content_hash(key)
        if self._fresh is not None:
            self._reset(self._fresh)
            self._fresh = None
        self._write(_frame(_MAGIC_RECORD, _encode(key, result, sha)))

    def reusable(self, key: str | None, done: dict[str, Embedding], rehash: bool = False) -> Embedding | None:
        """The recorded result for ``key`` if the rule of ``--resume`` (module docstring) allows reusing it."""
        if key is None or key not in done:
            return None
        if rehash and (self.hashes.get(key) is None or content_hash(key) != self.hashes[key]):
            return None
        return done[key]

    def close(self) -> None:
        """Close (and unlock), keeping the file for a later ``--resume`` (unless this run left it empty)."""
        if not self._f.closed:
            try:
                if self._fresh is not None and os.fstat(self._f.fileno()).st_size == 0:
                    self.path.unlink(missing_ok=True)
            except OSError:
                pass
            finally:
                self._f.close()  # unbuffered: nothing left to write that could fail here

    def remove(self) -> None:
        """The run completed and its output is written: delete the store."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        self.close()
