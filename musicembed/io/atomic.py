"""Atomic file writes: readers see the old file or the complete new one, never a partial one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def _fsync(path: str | os.PathLike, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync a directory; the file itself is synced already
        if not directory:
            raise
    finally:
        os.close(fd)


_TMP_SUFFIX = ".part"


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}."


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files :func:`atomic_write` left beside ``path`` when killed before its
    rename (``.NAME.XXXXXXXX.part``); returns them. Call it only while no other process writes
    ``path`` (``musicembed embed --out`` holds the lock of ``OUT.partial``)."""
    path = Path(path)
    prefix = _tmp_prefix(path)
    removed = []
    try:
        names = os.listdir(path.parent)
    except OSError:
        return []
    for name in names:
        middle = name[len(prefix):-len(_TMP_SUFFIX)]
        if name.startswith(prefix) and name.endswith(_TMP_SUFFIX) and len(middle) == 8 and "." not in middle:
            try:
                os.unlink(path.parent / name)
                removed.append(path.parent / name)
            except OSError:
                pass
    return removed


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it onto ``path``.

    The file gets the usual permissions (0666 minus the umask), not mkstemp's owner-only 0600.
    Its data reaches the disk before the rename (and the rename before this returns), so after a
    crash or power cut ``path`` holds the previous complete file or the new complete one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=_TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        _fsync(tmp)
        os.replace(tmp, path)
        if os.name == "posix":
            _fsync(path.parent, directory=True)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
