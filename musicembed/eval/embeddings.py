"""Embed lists of files with a resumable ``.npz`` cache.

The cache maps each file's absolute path to its vector and remembers the system's
fingerprint; a cache written by another system (or other weights) is ignored. It is
rewritten atomically every ``save_every_s`` seconds and at the end, so an interrupted run
resumes where it stopped. Files that cannot be decoded are reported, not cached.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import MusicEmbedError
from .systems import System

PathLike = str | os.PathLike


@dataclass
class Embedded:
    """``vectors`` (N, D) for the inputs in order; rows of ``failed`` inputs are NaN."""

    vectors: np.ndarray
    failed: dict[int, str] = field(default_factory=dict)

    @property
    def ok(self) -> np.ndarray:
        """Boolean mask of the inputs that were embedded."""
        mask = np.ones(len(self.vectors), dtype=bool)
        mask[list(self.failed)] = False
        return mask


def _load_cache(path: Path, fingerprint: str) -> dict[str, np.ndarray]:
    if not path.is_file():
        return {}
    with np.load(path, allow_pickle=False) as z:
        if str(z["fingerprint"]) != fingerprint:
            return {}
        return dict(zip(z["keys"].tolist(), z["vectors"], strict=True))


def _save_cache(path: Path, fingerprint: str, cache: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    keys = list(cache)
    vectors = np.stack([cache[k] for k in keys]) if keys else np.zeros((0, 0), np.float32)
    np.savez(tmp, keys=np.asarray(keys, dtype=str), vectors=vectors.astype(np.float32),
             fingerprint=np.asarray(fingerprint))
    os.replace(tmp, path)


def _embed_chunk(system: System, files: list[str]) -> tuple[list[np.ndarray | None], dict[int, str]]:
    """Embed a chunk at once; if any file fails, redo the chunk file by file to isolate it."""
    try:
        return list(np.asarray(system.embedder.embed(files), dtype=np.float32)), {}
    except MusicEmbedError:
        out: list[np.ndarray | None] = []
        errors: dict[int, str] = {}
        for i, f in enumerate(files):
            try:
                out.append(np.asarray(system.embedder.embed([f]), dtype=np.float32)[0])
            except MusicEmbedError as e:
                out.append(None)
                errors[i] = str(e)
        return out, errors


def embed_files(
    system: System,
    paths: Sequence[PathLike],
    cache: PathLike | None = None,
    chunk_size: int = 32,
    save_every_s: float = 60.0,
    log: Callable[[str], None] | None = None,
) -> Embedded:
    """Embed ``paths`` with ``system``, reusing and extending the cache file ``cache``."""
    keys = [os.fspath(Path(p).resolve()) for p in paths]
    cache_path = Path(cache) if cache is not None else None
    store = _load_cache(cache_path, system.fingerprint) if cache_path else {}
    todo = sorted({k for k in keys if k not in store})
    failed_keys: dict[str, str] = {}
    last_save = time.monotonic()
    for start in range(0, len(todo), chunk_size):
        chunk = todo[start : start + chunk_size]
        vectors, errors = _embed_chunk(system, chunk)
        for i, (k, v) in enumerate(zip(chunk, vectors, strict=True)):
            if i in errors:
                failed_keys[k] = errors[i]
            else:
                store[k] = v
        if log:
            log(f"{system.name}: embedded {min(start + chunk_size, len(todo))}/{len(todo)} files")
        if cache_path and time.monotonic() - last_save > save_every_s:
            _save_cache(cache_path, system.fingerprint, store)
            last_save = time.monotonic()
    if cache_path and todo:
        _save_cache(cache_path, system.fingerprint, store)
    dim = next(iter(store.values())).shape[0] if store else 0
    out = np.full((len(keys), dim), np.nan, dtype=np.float32)
    failed: dict[int, str] = {}
    for i, k in enumerate(keys):
        if k in store:
            out[i] = store[k]
        else:
            failed[i] = failed_keys.get(k, "not embedded")
    return Embedded(out, failed)
