"""Catalog similarity search: a persisted, incrementally updatable index of a music catalog.

    from musicembed import load_model
    from musicembed.catalog.index import Index

    model = load_model("mart")
    index = Index.build(model, ["music/"])          # embeds every audio file below music/
    index.save("music.index.npz")
    index = Index.load("music.index.npz")
    report = index.update(model)                    # new files added, changed re-embedded, deleted dropped
    for hit in index.search("query.mp3", k=10, model=model):
        print(hit.rank, hit.score, hit.path, hit.span)

The index file (``.npz``, written atomically) holds, per file: the path (absolute), the
duration, size, modification time and sha256 of its content, and the clip vector; for a
MART model also every level's vectors with their time spans (the layout of
``musicembed embed --hierarchical``: ``level{n}_vectors``, ``_starts``, ``_ends``,
``_offsets``). It also records the model's identity (:mod:`musicembed.identity`: name,
version, method, dimension, a fingerprint of its weights and config, and the window and hop
in seconds it embedded with), the embedding options and the catalog roots.

Search ranks files by the cosine similarity of their clip vectors to the query's. Below
:data:`FAISS_THRESHOLD` vectors this is an exact numpy product; above it, when ``faiss`` is
installed (``pip install "musicembed[faiss]"``), an inverted-file FAISS index (IVF, inner
product on unit vectors) is used, built once and cached beside the index file. For MART
indexes, each hit also gets the best-matching time span: the pair of same-level segments
(query, result) with the highest cosine similarity.

A query embedded with another model, window or hop than the index's is refused with
:class:`IndexMismatchError` naming what differs. An index written by an older musicembed
without a model fingerprint loads with a warning (queries are then checked by name,
version, method and dimension only).
"""

from __future__ import annotations

import json
import os
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AudioError, MusicEmbedError
from ..hub import sha256_file
from ..identity import WINDOW_FIELDS, describe, differences, missing, model_identity, stored_fields, windows_shown

INDEX_FORMAT = "musicembed-index"
INDEX_VERSION = 1
LEVEL_DTYPE = np.float16  # per-level vectors only serve spans: half the size, same argmax in practice
FAISS_THRESHOLD = 100_000  # vectors; "auto" uses FAISS at or above this size when installed
FAISS_IVF_MIN = 10_000  # below this a FAISS index is exact (flat); above, IVF
DEFAULT_NPROBE = 32
BACKENDS = ("auto", "numpy", "faiss")


class IndexError_(MusicEmbedError):  # noqa: N801 - avoid shadowing the builtin IndexError
    """An index file is missing, unreadable or of an unknown format."""


class IndexMismatchError(MusicEmbedError):
    """A query (or an update) comes from another model, window or hop than the index was built with."""


# ----------------------------------------------------------------------------- model identity


def check_same_model(index_model: dict[str, Any], other: dict[str, Any], what: str = "the query") -> None:
    """Raise :class:`IndexMismatchError`, naming each field that differs, unless ``other`` (a
    :func:`~musicembed.identity.model_identity`) is the model, window and hop the index was
    built with. Fields either identity does not record are not compared."""
    diffs = differences(index_model, other)
    if not diffs:
        return
    words = "; ".join(w for _, w in diffs)
    if any(k not in WINDOW_FIELDS for k, _ in diffs):
        src = index_model.get("source") or index_model.get("name")
        remedy = (f"Vectors of different models are not comparable: query with the index's model (--model {src}), "
                  "or build a new index with the other model.")
    else:
        window, hop = float(index_model["window_seconds"]), float(index_model["hop_seconds"])
        remedy = (f"Vectors of other windows are not comparable: embed the query with the index's window and hop "
                  f"(window_seconds={window:g}, hop_seconds={hop:g}; `musicembed search` does), or build a new "
                  "index with these options.")
    raise IndexMismatchError(
        f"this index was built with model {describe(index_model)}, but {what} was embedded with "
        f"{describe(other)}: {words}, the index's first. {remedy}"
    )


# ----------------------------------------------------------------------------- files


def _stat(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return int(st.st_size), int(st.st_mtime_ns)


def _catalog_files(roots: Sequence[str | os.PathLike]) -> tuple[list[str], list[tuple[str, str]]]:
    from ..audio import find_audio_files

    files, problems = find_audio_files(list(roots), recursive=True)
    return [os.path.abspath(f) for f in files], problems


# ----------------------------------------------------------------------------- results


@dataclass
class Span:
    """The best-matching pair of same-level segments: ``start``/``end`` in the result file,
    ``query_start``/``query_end`` in the query, seconds; ``score`` their cosine similarity."""

    level: int
    start: float
    end: float
    query_start: float
    query_end: float
    score: float


@dataclass
class Hit:
    """One search result: 1-based ``rank``, cosine ``score`` of the clip vectors, ``span`` for
    MART; with a calibrated model, the most specific likely ``relation`` to the query and its
    ``probability`` under the catalog's prior (see :func:`musicembed.calibration.catalog_prior`)."""

    rank: int
    path: str
    score: float
    duration: float
    span: Span | None = None
    relation: str | None = None
    probability: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The hit as JSON-ready values; ``relation``/``probability`` only when the model is calibrated."""
        d = asdict(self)
        if self.relation is None:
            d.pop("relation")
            d.pop("probability")
        else:
            d["probability"] = round(float(self.probability or 0.0), 6)
        d["score"] = round(self.score, 6)
        d["duration"] = round(self.duration, 3)
        if self.span is not None:
            d["span"] = {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self.span).items()}
        return d


@dataclass
class UpdateReport:
    """What :meth:`Index.update` did, as lists of paths; ``failed`` holds (path, reason)."""

    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    moved: list[str] = field(default_factory=list)  # new paths whose content was indexed before: vectors reused
    failed: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{len(self.added)} added, {len(self.changed)} changed, {len(self.removed)} removed, "
                f"{len(self.moved)} moved/copied (reused), {len(self.unchanged)} unchanged, {len(self.failed)} failed")


# ----------------------------------------------------------------------------- backends


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


class NumpyBackend:
    """Exact cosine search: one matrix product over unit vectors, then a partial sort."""

    name = "numpy"

    def __init__(self, unit: np.ndarray) -> None:
        self.x = np.ascontiguousarray(unit, dtype=np.float32)

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        n = len(self.x)
        k = min(k, n)
        if k == 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        s = np.asarray(q, dtype=np.float32) @ self.x.T  # (M, N); float32, never a float64 copy of x
        if k < n:
            part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        else:
            part = np.broadcast_to(np.arange(n), (len(q), n)).copy()
        ps = np.take_along_axis(s, part, axis=1)
        order = np.lexsort((part, -ps), axis=1)  # score descending, then row ascending: deterministic ties
        ids = np.take_along_axis(part, order, axis=1)
        return np.take_along_axis(s, ids, axis=1), ids.astype(np.int64)


class FaissBackend:
    """FAISS inner-product search on unit vectors: exact (flat) below ``ivf_min`` vectors,
    else an inverted file with ``nlist = sqrt(N)`` lists of which ``nprobe`` are scanned."""

    name = "faiss"

    def __init__(self, unit: np.ndarray, nprobe: int = DEFAULT_NPROBE, ivf_min: int = FAISS_IVF_MIN,
                 index: Any = None, seed: int = 0) -> None:
        import faiss

        x = np.ascontiguousarray(unit, dtype=np.float32)
        n, d = x.shape
        if index is None:
            if n < ivf_min:
                index = faiss.IndexFlatIP(d)
            else:
                nlist = max(1, int(np.sqrt(n)))
                quantizer = faiss.IndexFlatIP(d)
                index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
                rng = np.random.default_rng(seed)
                sample = x if n <= 50 * nlist else x[np.sort(rng.choice(n, 50 * nlist, replace=False))]
                index.cp.seed = seed
                index.train(sample)
            index.add(x)
        self.index = index
        if hasattr(index, "nprobe"):
            index.nprobe = min(nprobe, index.nlist)
        self.kind = "ivf" if hasattr(index, "nprobe") else "flat"

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, self.index.ntotal)
        if k == 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        s, ids = self.index.search(np.ascontiguousarray(q, dtype=np.float32), k)
        return s, ids.astype(np.int64)


# ----------------------------------------------------------------------------- the index


@dataclass
class _Rows:
    """Per-file arrays of an index (row i = file i); levels as concatenated segments + offsets.
    Built by :meth:`of` (from stats and results), filtered or reordered by :meth:`take`, joined by
    :meth:`concat`: every field at once, so no field can be forgotten."""

    paths: list[str]
    durations: np.ndarray  # seconds
    sizes: np.ndarray  # bytes
    mtimes: np.ndarray  # ns
    hashes: list[str]
    embeddings: np.ndarray
    levels: list[dict[str, np.ndarray]] | None  # per level: vectors, starts, ends, offsets (N+1)

    @classmethod
    def of(cls, paths: list[str], stats: Sequence[tuple[int, int]], hashes: list[str], durations: Sequence[float],
           embeddings: Sequence[np.ndarray], dim: int, levels: list[dict[str, np.ndarray]] | None) -> _Rows:
        """Rows from per-file values: ``stats`` (size in bytes, mtime in ns), ``durations`` (seconds)
        and clip ``embeddings`` (D,) each."""
        return cls(
            paths=list(paths),
            durations=np.array(durations, dtype=np.float64),
            sizes=np.array([s for s, _ in stats], dtype=np.int64),
            mtimes=np.array([m for _, m in stats], dtype=np.int64),
            hashes=list(hashes),
            embeddings=np.stack(embeddings).astype(np.float32) if len(embeddings) else np.zeros((0, dim), np.float32),
            levels=levels,
        )

    def take(self, rows: Sequence[int]) -> _Rows:
        """The rows ``rows`` (positions, in that order; repeats allowed)."""
        idx = np.asarray(rows, dtype=np.int64)
        return _Rows(
            paths=[self.paths[i] for i in idx],
            durations=self.durations[idx],
            sizes=self.sizes[idx],
            mtimes=self.mtimes[idx],
            hashes=[self.hashes[i] for i in idx],
            embeddings=self.embeddings[idx],
            levels=_take_levels(self.levels, idx),
        )

    def concat(self, other: _Rows) -> _Rows:
        """These rows, then ``other``'s."""
        return _Rows(
            paths=self.paths + other.paths,
            durations=np.concatenate([self.durations, other.durations]),
            sizes=np.concatenate([self.sizes, other.sizes]),
            mtimes=np.concatenate([self.mtimes, other.mtimes]),
            hashes=self.hashes + other.hashes,
            embeddings=np.concatenate([self.embeddings, other.embeddings]),
            levels=_concat_levels(self.levels, other.levels),
        )


def _empty_rows(dim: int) -> _Rows:
    return _Rows.of([], [], [], [], [], dim, None)


def _level_arrays(embs: list, dim: int, keep: int | None) -> list[dict[str, np.ndarray]] | None:
    """Concatenated per-level segments of ``embs`` (the first ``keep`` levels), vectors as float16."""
    if not embs or embs[0].levels is None:
        return None
    out = []
    for n in range(min(len(embs[0].levels), keep or len(embs[0].levels))):
        lv = [e.levels[n] for e in embs]
        out.append({
            "vectors": np.concatenate([x.vectors for x in lv]).astype(LEVEL_DTYPE),
            "starts": np.concatenate([x.starts for x in lv]).astype(np.float64),
            "ends": np.concatenate([x.ends for x in lv]).astype(np.float64),
            "offsets": np.cumsum([0] + [len(x.vectors) for x in lv]).astype(np.int64),
        })
    return out


def _take_levels(levels: list[dict[str, np.ndarray]] | None, rows: Sequence[int]) -> list[dict[str, np.ndarray]] | None:
    """The segments of ``rows`` (in that order), offsets renumbered."""
    if levels is None:
        return None
    out = []
    for lv in levels:
        off = lv["offsets"]
        idx = np.concatenate([np.arange(off[i], off[i + 1]) for i in rows]) if len(rows) else np.zeros(0, np.int64)
        lens = np.array([off[i + 1] - off[i] for i in rows], dtype=np.int64)
        out.append({"vectors": lv["vectors"][idx], "starts": lv["starts"][idx], "ends": lv["ends"][idx],
                    "offsets": np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)})
    return out


def _concat_levels(a: list[dict] | None, b: list[dict] | None) -> list[dict] | None:
    if a is None or b is None:
        return a if b is None else b
    out = []
    for x, y in zip(a, b):
        out.append({"vectors": np.concatenate([x["vectors"], y["vectors"]]),
                    "starts": np.concatenate([x["starts"], y["starts"]]),
                    "ends": np.concatenate([x["ends"], y["ends"]]),
                    "offsets": np.concatenate([x["offsets"], x["offsets"][-1] + y["offsets"][1:]])})
    return out


class Index:
    """A searchable catalog. Create with :meth:`build` or :meth:`load`; keep current with
    :meth:`update`; query with :meth:`search`; persist with :meth:`save`."""

    def __init__(self, model: dict[str, Any], rows: _Rows, roots: list[str], embed_options: dict[str, Any],
                 uid: str | None = None, path: str | None = None) -> None:
        self.model = model
        self._rows = rows
        self.roots = roots
        self.embed_options = embed_options
        self.uid = uid or uuid.uuid4().hex
        self.path = path  # where it was loaded from / saved to (for the FAISS cache)
        self.failures: list[tuple[str, str]] = []
        self._backend: Any = None
        self._backend_key: tuple | None = None
        self._unit: np.ndarray | None = None
        self._mart_levels = int(embed_options.get("levels") or 0)

    # -- facts
    def __len__(self) -> int:
        return len(self._rows.paths)

    def __repr__(self) -> str:
        return (f"Index({len(self)} files, model {describe(self.model)}, "
                f"levels={0 if self._rows.levels is None else len(self._rows.levels)}, roots={self.roots})")

    @property
    def paths(self) -> list[str]:
        return list(self._rows.paths)

    @property
    def embeddings(self) -> np.ndarray:
        """(N, D) clip vectors as embedded (not normalised)."""
        return self._rows.embeddings

    @property
    def durations(self) -> np.ndarray:
        return self._rows.durations

    @property
    def hashes(self) -> list[str]:
        return list(self._rows.hashes)

    @property
    def levels(self) -> list[dict[str, np.ndarray]] | None:
        """MART: per level ``{"vectors", "starts", "ends", "offsets"}``; file i owns segments
        ``offsets[i]:offsets[i+1]``. None for PEMR."""
        return self._rows.levels

    @property
    def hierarchical(self) -> bool:
        return self._rows.levels is not None

    # -- building
    @classmethod
    def build(cls, model, paths: Sequence[str | os.PathLike], *, hierarchical: bool | None = None,
              window_seconds: float | None = None, hop_seconds: float | None = None, batch_size: int | None = None,
              levels: int | None = None, progress: bool | None = None,
              on_error: Callable[[str, str], None] | None = None) -> Index:
        """Embed every audio file in ``paths`` (files and folders, searched recursively).

        ``hierarchical`` (default: True for MART models) keeps MART's per-level vectors (as
        float16; they only serve the best-matching spans): the first ``levels`` levels (default
        all; 1 = level 0 only: about 1/(1+M+M^2+...) of the size).
        Files that fail are skipped and listed in ``index.failures`` (and passed to ``on_error``).
        """
        ident = model_identity(model, window_seconds=window_seconds, hop_seconds=hop_seconds)
        if hierarchical is None:
            hierarchical = model.config.method == "mart"
        if hierarchical and model.config.method != "mart":
            raise ValueError(f"hierarchical=True needs a MART model; {model.name!r} is {model.config.method}")
        n_levels = model.config.mart.levels if model.config.method == "mart" else 0
        if levels is not None and not 1 <= levels <= n_levels:
            raise ValueError(f"levels must be 1..{n_levels} for this model")
        opts = {"window_seconds": window_seconds, "hop_seconds": hop_seconds, "hierarchical": bool(hierarchical),
                "levels": (levels or n_levels) if hierarchical else 0}
        roots = [os.path.abspath(p) for p in paths]
        index = cls(ident, _empty_rows(ident["dim"]), roots, opts)
        files, problems = _catalog_files(roots)
        index.failures = list(problems)
        for p, reason in problems:
            if on_error:
                on_error(p, reason)
        rows = index._embed_files(model, files, batch_size, progress, on_error, index.failures)
        index._rows = rows
        return index

    def _embed_files(self, model, files: list[str], batch_size, progress, on_error,
                     failures: list[tuple[str, str]]) -> _Rows:
        """Embed ``files`` with the index's options; failing files go to ``failures``."""
        opts = self.embed_options
        embs, paths, stats, hashes = [], [], [], []
        todo = []
        for f in files:  # stat and hash first, so a file changed during embedding is re-done next time
            try:
                stats.append(_stat(f))
                hashes.append(sha256_file(f))
                todo.append(f)
            except OSError as e:
                failures.append((f, e.strerror or str(e)))
                if on_error:
                    on_error(f, e.strerror or str(e))
        keep_stats, keep_hashes = [], []
        for i, res in model.iter_embed(todo, hierarchical=opts["hierarchical"], window_seconds=opts["window_seconds"],
                                       hop_seconds=opts["hop_seconds"], batch_size=batch_size, progress=progress):
            if isinstance(res, AudioError):
                failures.append((todo[i], res.reason))
                if on_error:
                    on_error(todo[i], res.reason)
                continue
            embs.append(res)
            paths.append(todo[i])
            keep_stats.append(stats[i])
            keep_hashes.append(hashes[i])
        dim = self.model["dim"]
        levels = (_level_arrays(embs, dim, opts.get("levels")) if opts["hierarchical"] and embs else
                  self._no_levels() if opts["hierarchical"] else None)
        return _Rows.of(paths, keep_stats, keep_hashes, [e.duration for e in embs], [e.clip for e in embs], dim,
                        levels)

    def _no_levels(self) -> list[dict[str, np.ndarray]]:
        """Empty level arrays (a hierarchical index of zero files)."""
        n = self.embed_options.get("levels") or self._mart_levels
        return [{"vectors": np.zeros((0, self.model["dim"]), LEVEL_DTYPE), "starts": np.zeros(0),
                 "ends": np.zeros(0), "offsets": np.zeros(1, np.int64)} for _ in range(n)]

    def query_identity(self, model) -> dict[str, Any]:
        """The identity of the vectors ``model`` gives with this index's options (window, hop)."""
        o = self.embed_options
        return model_identity(model, window_seconds=o.get("window_seconds"), hop_seconds=o.get("hop_seconds"))

    def check_model(self, model_or_identity) -> None:
        """Raise :class:`IndexMismatchError` unless this is the model the index was built with:
        a model (embedding with the index's window and hop), or an identity of
        :func:`~musicembed.identity.model_identity`, whose window and hop are compared too."""
        ident = model_or_identity if isinstance(model_or_identity, dict) else self.query_identity(model_or_identity)
        check_same_model(self.model, ident)

    def update(self, model, paths: Sequence[str | os.PathLike] | None = None, *, rehash: bool = False,
               batch_size: int | None = None, progress: bool | None = None,
               on_error: Callable[[str, str], None] | None = None) -> UpdateReport:
        """Bring the index in line with the catalog: the files now under ``paths`` (default: the
        roots it was built from; given paths become the new roots).

        A file whose size and modification time are unchanged is kept as is (``rehash=True``
        checks its content hash anyway); otherwise its sha256 decides: same content -> kept,
        new content -> re-embedded. New files are embedded, unless their content is already
        in the index (a moved or copied file: its vectors are reused). Files no longer found are
        dropped. Needs the index's own model.
        """
        ident = self.query_identity(model)
        check_same_model(self.model, ident, "the model given for the update")
        self.model["source"] = ident["source"] or self.model.get("source", "")
        if self.model.get("fingerprint"):  # an index that predates window/hop in the identity: now known
            for k in WINDOW_FIELDS:
                self.model.setdefault(k, ident[k])
        if paths is not None:
            self.roots = [os.path.abspath(p) for p in paths]
        files, problems = _catalog_files(self.roots)
        report = UpdateReport(failed=list(problems))
        old = self._rows
        where = {p: i for i, p in enumerate(old.paths)}
        by_hash = {h: i for i, h in enumerate(old.hashes)}
        keep: list[int] = []  # old rows, in the order of the new index
        keep_paths: list[str] = []
        keep_stats: list[tuple[int, int]] = []
        embed: list[str] = []
        for f in files:
            try:
                st = _stat(f)
                i = where.get(f)
                if i is not None and not rehash and st == (int(old.sizes[i]), int(old.mtimes[i])):
                    keep.append(i), keep_paths.append(f), keep_stats.append(st)
                    report.unchanged.append(f)
                    continue
                h = sha256_file(f)
            except OSError as e:
                report.failed.append((f, e.strerror or str(e)))
                continue
            if i is not None and old.hashes[i] == h:
                keep.append(i), keep_paths.append(f), keep_stats.append(st)
                report.unchanged.append(f)
            elif i is None and h in by_hash:
                keep.append(by_hash[h]), keep_paths.append(f), keep_stats.append(st)
                report.moved.append(f)
            else:
                embed.append(f)
                (report.changed if i is not None else report.added).append(f)
        found = set(files)
        report.removed = [p for p in old.paths if p not in found]
        for p, reason in report.failed:
            if on_error:
                on_error(p, reason)
        n_fail = len(report.failed)
        new = self._embed_files(model, embed, batch_size, progress, on_error, report.failed)
        failed_now = {p for p, _ in report.failed[n_fail:]}
        report.added = [p for p in report.added if p not in failed_now]
        report.changed = [p for p in report.changed if p not in failed_now]
        # The old rows kept, under their paths and stats of now (a moved file keeps its vectors).
        kept = replace(old.take(keep), paths=keep_paths, sizes=np.array([s for s, _ in keep_stats], dtype=np.int64),
                       mtimes=np.array([m for _, m in keep_stats], dtype=np.int64))
        merged = kept.concat(new)
        position = {f: i for i, f in enumerate(files)}  # catalog order, as a fresh build would have it
        self._rows = merged.take(np.argsort([position[p] for p in merged.paths], kind="stable"))
        self.failures = list(report.failed)
        if report.added or report.changed or report.removed or report.moved:
            self.uid = uuid.uuid4().hex
            self._backend = self._unit = None
        return report

    # -- persistence
    def save(self, path: str | os.PathLike) -> Path:
        """Write the index to ``path`` (``.npz``), atomically."""
        from ..io.atomic import atomic_write

        path = Path(path)
        if path.suffix.lower() != ".npz":
            raise ValueError(f"an index is saved as .npz (got {path.name!r})")
        r = self._rows
        meta = {"format": INDEX_FORMAT, "format_version": INDEX_VERSION, "model": self.model, "roots": self.roots,
                "embed_options": self.embed_options, "uid": self.uid}
        arrays: dict[str, np.ndarray] = {
            "meta": np.array(json.dumps(meta)),
            # The identity under the names `musicembed embed --out x.npz` writes (model, model_fingerprint, ...).
            **{k: np.array(v) for k, v in stored_fields(self.model).items()},
            "paths": np.array(r.paths, dtype=str),
            "durations": r.durations,
            "sizes": r.sizes,
            "mtimes": r.mtimes,
            "hashes": np.array(r.hashes, dtype=str),
            "embeddings": r.embeddings,
        }
        for n, lv in enumerate(r.levels or []):
            for key, value in lv.items():
                arrays[f"level{n}_{key}"] = value

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)

        atomic_write(path, write)
        self.path = str(path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Index:
        """Read an index written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise IndexError_(f"{path}: no such index file (build one with `musicembed index DIR --out {path}`)")
        try:
            with np.load(path, allow_pickle=False) as d:
                if "meta" not in d.files:
                    raise IndexError_(f"{path}: not a musicembed index (no 'meta'); build one with `musicembed index`")
                meta = json.loads(str(d["meta"]))
                if meta.get("format") != INDEX_FORMAT:
                    raise IndexError_(f"{path}: not a musicembed index")
                if int(meta.get("format_version", 0)) > INDEX_VERSION:
                    raise IndexError_(f"{path}: index format {meta['format_version']} is newer than this musicembed "
                                      f"understands ({INDEX_VERSION}); upgrade musicembed")
                n_levels = len({k.split("_")[0] for k in d.files if k.startswith("level")})
                levels = [{key: d[f"level{n}_{key}"] for key in ("vectors", "starts", "ends", "offsets")}
                          for n in range(n_levels)] or None
                rows = _Rows(
                    paths=[str(p) for p in d["paths"]],
                    durations=d["durations"],
                    sizes=d["sizes"],
                    mtimes=d["mtimes"],
                    hashes=[str(h) for h in d["hashes"]],
                    embeddings=d["embeddings"].astype(np.float32, copy=False),
                    levels=levels,
                )
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
            raise IndexError_(f"{path}: cannot read index: {e}") from None
        if missing(meta["model"], ("fingerprint",)):
            warnings.warn(f"{path}: this index records no model fingerprint (written by an older musicembed): "
                          "queries and updates are checked by model name, version, method and dimension only, "
                          "not by the weights; rebuild it (`musicembed index ... --rebuild`) to have them checked",
                          stacklevel=2)
        return cls(meta["model"], rows, meta["roots"], meta["embed_options"], uid=meta["uid"], path=str(path))

    # -- searching
    def backend(self, backend: str = "auto", *, nprobe: int = DEFAULT_NPROBE, threshold: int = FAISS_THRESHOLD,
                cache: bool = True):
        """The search backend: ``"numpy"`` (exact), ``"faiss"``, or ``"auto"``: FAISS when the
        index holds at least ``threshold`` vectors and faiss is installed, else numpy. A FAISS
        IVF index is cached as ``<index>.faiss`` beside a saved index (rebuilt when stale)."""
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "auto":
            backend = "faiss" if len(self) >= threshold and faiss_available() else "numpy"
        if backend == "faiss" and not faiss_available():
            raise MusicEmbedError('the faiss backend needs FAISS: pip install "musicembed[faiss]" (faiss-cpu)')
        key = (backend, nprobe)
        if self._backend is not None and self._backend_key == key:
            return self._backend
        if self._unit is None:
            self._unit = _unit(self._rows.embeddings)
        if backend == "numpy":
            be: Any = NumpyBackend(self._unit)
        else:
            be = self._faiss_backend(nprobe, cache)
        self._backend, self._backend_key = be, key
        return be

    def _faiss_backend(self, nprobe: int, cache: bool) -> FaissBackend:
        import faiss

        side = Path(self.path + ".faiss") if (cache and self.path) else None
        tag = Path(str(side) + ".json") if side else None
        if side is not None and side.is_file() and tag.is_file():
            try:
                if json.loads(tag.read_text()).get("uid") == self.uid:
                    index = faiss.read_index(str(side))
                    if index.ntotal == len(self):
                        return FaissBackend(self._unit, nprobe=nprobe, index=index)
            except Exception:  # a stale or damaged cache is rebuilt
                pass
        be = FaissBackend(self._unit, nprobe=nprobe)
        if side is not None and be.kind == "ivf":
            try:
                from ..io.atomic import atomic_write

                atomic_write(side, lambda tmp: faiss.write_index(be.index, tmp))
                atomic_write(tag, lambda tmp: Path(tmp).write_text(json.dumps({"uid": self.uid})))
            except OSError:  # a read-only folder: search still works, the next run rebuilds
                pass
        return be

    def embed_query(self, query, model, sample_rate: int | None = None):
        """Embed a query (path, array or tensor) with the index's model and options."""
        self.check_model(model)
        return self._embed_query(query, model, sample_rate)

    def _embed_query(self, query, model, sample_rate: int | None):
        o = self.embed_options
        return model.embed(query, sample_rate, return_timestamps=True, hierarchical=o["hierarchical"],
                           window_seconds=o["window_seconds"], hop_seconds=o["hop_seconds"])

    def search(self, query, k: int = 10, *, model=None, sample_rate: int | None = None, backend: str = "auto",
               nprobe: int = DEFAULT_NPROBE, span_level: int = 0, query_identity: dict | None = None,
               calibration=None, prior: dict[str, float] | None = None, min_prob: float | None = None,
               relation: str | None = None) -> list[Hit]:
        """The ``k`` files most similar to ``query``, best first.

        ``query`` is a path or array (embedded with ``model``, which must be the index's model),
        an :class:`~musicembed.Embedding` (give ``model`` or ``query_identity`` to have it
        checked: with ``model``, the window and hop its per-window spans show are checked too),
        or a clip vector (D,) (only its size can be checked). For MART indexes each hit gets the
        best-matching time span at ``span_level`` (0: MART's level-0 clips).

        With a calibration (``calibration``, default ``model.calibration``) each hit gets its
        most specific likely relation and probability under ``prior`` (default: the catalog's,
        :func:`~musicembed.calibration.catalog_prior` of this index's size). Then, of the ``k``
        nearest, ``relation`` keeps only hits at least that close with probability ``min_prob``
        or more (default 0.5), and ``min_prob`` alone keeps hits whose reported relation has at
        least that probability. The filters need a calibration (ValueError otherwise).
        """
        from ..calibration import RELATIONS, catalog_prior
        from ..results import Embedding

        cal = calibration if calibration is not None else getattr(model, "calibration", None)
        if relation is not None and relation not in RELATIONS:
            raise ValueError(f"relation must be one of {', '.join(RELATIONS)}, got {relation!r}")
        if min_prob is not None and not 0 <= min_prob <= 1:
            raise ValueError(f"min_prob must be a probability in [0, 1], got {min_prob}")
        if (relation is not None or min_prob is not None) and cal is None:
            raise ValueError("relation and min_prob filters need a calibrated model (this model has no calibration)")
        used_prior = prior if prior is not None else catalog_prior(max(len(self), 1))

        if model is not None:
            ident = self.query_identity(model)  # the model's fingerprint is read once per query
            if isinstance(query, Embedding):
                ident.update(windows_shown(query.starts, query.ends, model.config.sample_rate))
            check_same_model(self.model, ident)
        elif query_identity is not None:
            check_same_model(self.model, query_identity)
        if isinstance(query, Embedding):
            emb = query
        elif isinstance(query, np.ndarray) and query.ndim == 1 and sample_rate is None:
            emb = None
            vec = query
        else:
            if model is None:
                raise ValueError("a path or audio query needs model= (the index's model) to embed it")
            emb = self._embed_query(query, model, sample_rate)  # checked above
        if emb is not None:
            vec = emb.clip
        vec = np.asarray(vec, dtype=np.float32)
        if vec.shape != (self.model["dim"],):
            raise IndexMismatchError(f"query vector has shape {vec.shape}, but this index holds "
                                     f"{self.model['dim']}-d vectors of model {describe(self.model)}")
        scores, ids = self.backend(backend, nprobe=nprobe).search(_unit(vec)[None], k)
        hits = []
        for rank, (s, i) in enumerate(zip(scores[0], ids[0]), start=1):
            if i < 0:  # FAISS pads with -1 when fewer than k vectors were reached
                continue
            span = None
            if self.hierarchical and emb is not None and emb.levels is not None:
                span = self._best_span(emb, int(i), span_level)
            hit = Hit(rank=rank, path=self._rows.paths[i], score=float(s), duration=float(self._rows.durations[i]),
                      span=span)
            if cal is not None:
                r = cal.relation(float(s), used_prior)
                hit.relation, hit.probability = r.relation, r.probability
                if relation is not None:
                    floor = cal.min_similarity.get(relation, -np.inf)
                    if r.at_least[relation] < (0.5 if min_prob is None else min_prob) or float(s) < floor:
                        continue
                elif min_prob is not None and r.probability < min_prob:
                    continue
            hits.append(hit)
        return hits

    def _best_span(self, emb, i: int, level: int) -> Span | None:
        levels = self._rows.levels
        assert levels is not None
        if not 0 <= level < len(levels) or level >= len(emb.levels):
            raise ValueError(f"span_level must be in 0..{len(levels) - 1}")
        lv = levels[level]
        a, b = lv["offsets"][i], lv["offsets"][i + 1]
        if a == b:
            return None
        r = _unit(lv["vectors"][a:b])
        q = emb.levels[level]
        s = _unit(q.vectors) @ r.T  # (query segments, result segments)
        qi, ri = np.unravel_index(int(np.argmax(s)), s.shape)
        return Span(level=level, start=float(lv["starts"][a + ri]), end=float(lv["ends"][a + ri]),
                    query_start=float(q.starts[qi]), query_end=float(q.ends[qi]), score=float(s[qi, ri]))
