"""Writing embedding results to .npz / .npy / .jsonl, atomically (temporary file, then rename).

Layouts (N files, D dims):
- ``.npz``: ``paths`` (N,) str, ``embeddings`` (N, D) float32, ``durations`` (N,) seconds
  decoded, ``declared_durations`` (N,) seconds the headers declare (NaN: unknown), ``model`` str
  (the model's name); given the model's identity (:mod:`musicembed.identity`) also
  ``model_version`` str, ``model_fingerprint`` str (sha256 hex of config and weights),
  ``window_seconds`` and ``hop_seconds`` (seconds, as the model used them), all 0-d; with
  windows also ``window_vectors`` (W, D), ``window_starts``/``window_ends``
  (W,) seconds and ``window_offsets`` (N+1,) so file i owns rows offsets[i]:offsets[i+1];
  with MART levels, the same four arrays per level as ``level{n}_vectors`` etc.
- ``.npy``: one structured array (N,) with fields ``path`` (str), ``duration``,
  ``declared_duration`` (seconds, NaN: unknown) and ``embedding`` (D,) float32, so each row carries its own
  path (``np.load(f)["embedding"]``
  is the (N, D) matrix); clip vectors only: windows and levels need ``.npz`` or ``.jsonl``.
  A ``.npy`` carries no model identity (a bare array has no place for it, and a column
  would repeat it on every row): write ``.npz`` or ``.jsonl`` where it must be checked later.
- ``.jsonl``: one JSON object per file: path, duration, declared_duration (null: unknown),
  given the identity also model, model_version, model_fingerprint, window_seconds and
  hop_seconds (the same names as in ``.npz``, on every line, so each line stands alone),
  embedding, and optionally windows / levels ([{"start", "end", "embedding"}]).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..identity import stored_fields
from ..results import Embedding
from .atomic import atomic_write

FORMATS = (".npz", ".npy", ".jsonl")


def _write_numpy(tmp: str, save: Callable, *args, **kwargs) -> None:
    with open(tmp, "wb") as f:  # a file object keeps numpy from appending its own suffix
        save(f, *args, **kwargs)


def _stack(parts: list[np.ndarray], dim: int) -> np.ndarray:
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, dim), np.float32)


def _segment_arrays(prefix: str, items: list[tuple[np.ndarray, np.ndarray, np.ndarray]], dim: int) -> dict:
    offsets = np.cumsum([0] + [len(v) for v, _, _ in items]).astype(np.int64)
    return {
        f"{prefix}_vectors": _stack([v for v, _, _ in items], dim),
        f"{prefix}_starts": np.concatenate([s for _, s, _ in items]) if items else np.zeros(0),
        f"{prefix}_ends": np.concatenate([e for _, _, e in items]) if items else np.zeros(0),
        f"{prefix}_offsets": offsets,
    }


def _declared(results: list[Embedding]) -> np.ndarray:
    return np.array([np.nan if r.declared_duration is None else r.declared_duration for r in results], np.float64)


def check_options(path: str | os.PathLike, windows: bool = False, levels: bool = False) -> None:
    """Raise ValueError when the format of ``path`` cannot hold what was asked for."""
    ext = Path(path).suffix.lower()
    if ext not in FORMATS:
        raise ValueError(f"unsupported output format {ext!r}; use one of {', '.join(FORMATS)}")
    if ext == ".npy" and (windows or levels):
        what = "--timestamps" if windows else "--hierarchical"
        raise ValueError(f"{Path(path).name}: .npy holds one clip vector per file, not the per-window data of "
                         f"{what}: write .npz or .jsonl instead")


def npy_rows(results: list[Embedding], dim: int) -> np.ndarray:
    """The ``.npy`` layout: a structured (N,) array of (path, duration, embedding)."""
    width = max([len(r.source) for r in results] + [1])
    rows = np.zeros(len(results), dtype=[("path", f"U{width}"), ("duration", "f8"), ("declared_duration", "f8"),
                                         ("embedding", "f4", (dim,))])
    rows["path"] = [r.source for r in results]
    rows["duration"] = [r.duration for r in results]
    rows["declared_duration"] = _declared(results)
    rows["embedding"] = _stack([r.clip[None] for r in results], dim)
    return rows


def write_results(path: str | os.PathLike, results: list[Embedding], dim: int, model_name: str,
                  windows: bool = False, levels: bool = False, extra: dict[str, np.ndarray] | None = None, *,
                  identity: dict | None = None) -> None:
    """Write ``results`` in the format given by the file extension (see module docstring).

    ``identity``: the model's :func:`~musicembed.identity.model_identity` with the options the
    results were embedded with, stored beside them (``.npz``, ``.jsonl``); its name must be
    ``model_name``. Without it only the name is stored (``.npz``), and tools that check the
    model (``musicembed merge``) refuse the file.
    ``extra``: more named arrays to store (``.npz`` only), e.g. the shard metadata of ``--shard``."""
    path = Path(path)
    ext = path.suffix.lower()
    check_options(path, windows, levels)
    if extra and ext != ".npz":
        raise ValueError(f"extra arrays can only be stored in a .npz file, not {ext}")
    if identity is not None and identity.get("name") != model_name:
        raise ValueError(f"model_name {model_name!r} is not the name in identity ({identity.get('name')!r})")
    if ext == ".npy":
        rows = npy_rows(results, dim)
        atomic_write(path, lambda tmp: _write_numpy(tmp, np.save, rows))
        return
    if ext == ".npz":
        arrays: dict[str, np.ndarray] = {
            "paths": np.array([r.source for r in results], dtype=str),
            "embeddings": _stack([r.clip[None] for r in results], dim),
            "durations": np.array([r.duration for r in results], dtype=np.float64),
            "declared_durations": _declared(results),
            "model": np.array(model_name),
        }
        arrays.update({k: np.array(v) for k, v in stored_fields(identity or {}).items()})
        if windows:
            arrays.update(_segment_arrays("window", [(r.vectors, r.starts, r.ends) for r in results], dim))
        if levels and results and results[0].levels:
            for n in range(len(results[0].levels)):
                items = [(r.levels[n].vectors, r.levels[n].starts, r.levels[n].ends) for r in results]
                arrays.update(_segment_arrays(f"level{n}", items, dim))
        arrays.update(extra or {})
        atomic_write(path, lambda tmp: _write_numpy(tmp, np.savez, **arrays))
        return
    lines = [json.dumps(to_json(r, windows, levels, identity)) + "\n" for r in results]
    atomic_write(path, lambda tmp: Path(tmp).write_text("".join(lines)))


def _segments(vectors: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> list[dict]:
    return [{"start": round(float(s), 4), "end": round(float(e), 4), "embedding": v.tolist()}
            for v, s, e in zip(vectors, starts, ends)]


def to_json(r: Embedding, windows: bool = False, levels: bool = False, identity: dict | None = None) -> dict:
    """One result as a JSON-ready dict (floats as lists); with ``identity`` (a model identity)
    the line also carries its :func:`~musicembed.identity.stored_fields`."""
    declared = None if r.declared_duration is None else round(r.declared_duration, 4)
    doc: dict = {"path": r.source, "duration": round(r.duration, 4), "declared_duration": declared,
                 **stored_fields(identity or {}), "embedding": r.clip.tolist()}
    if windows:
        doc["windows"] = _segments(r.vectors, r.starts, r.ends)
    if levels and r.levels:
        doc["levels"] = [_segments(lv.vectors, lv.starts, lv.ends) for lv in r.levels]
    return doc
