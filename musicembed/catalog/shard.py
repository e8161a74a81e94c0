"""Sharded catalog runs: split a catalog over N machines by a stable hash, merge the outputs.

``musicembed embed music/ -r --out part-K.npz --shard K/N`` embeds shard K (0-based, 0 <= K < N)
of the files found; every file belongs to exactly one shard, decided by the sha1 of its path
*relative to the folder it was found in* (POSIX separators), so machines that mount the
catalog at different places split it identically. Each shard's ``.npz`` also records what
``musicembed merge`` needs to prove the parts add up to the whole catalog:

``shard`` ("K/N"), ``catalog_count`` (files in the whole catalog), ``catalog_digest`` (sha256
of all files' keys, newline-joined, in catalog order), per row ``catalog_keys`` and
``catalog_index`` (the file's position in the whole catalog), and the shard's failures
(``failed_keys``, ``failed_index``, ``failed_reasons``).

:func:`merge` checks that all parts come from the same catalog, model and options (the model
identity each part records, :mod:`musicembed.identity`: name, version, fingerprint of config
and weights, window and hop; a part that records no fingerprint is refused), that each
shard 0..N-1 is present exactly once, that no file appears twice, and that every catalog
file is either embedded or listed as failed; it writes one ``.npz`` in catalog order, the
same layout as an unsharded run.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath

import numpy as np

from ..errors import MusicEmbedError
from ..identity import WINDOW_FIELDS, differences, from_stored

SHARD_KEYS = ("shard", "catalog_count", "catalog_digest", "catalog_keys", "catalog_index",
              "failed_keys", "failed_index", "failed_reasons")
_SEGMENT = re.compile(r"^(.*)_offsets$")


class ShardError(MusicEmbedError):
    """A bad ``--shard`` value, or shard outputs that do not add up to one catalog."""


@dataclass(frozen=True)
class ShardSpec:
    """Shard ``index`` of ``count`` (0 <= index < count)."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_spec(text: str) -> ShardSpec:
    """'K/N' -> ShardSpec(K, N); K is 0-based (K = 0..N-1), as $SLURM_ARRAY_TASK_ID with
    --array=0-(N-1), torchrun's $RANK, or a Kubernetes indexed job's $JOB_COMPLETION_INDEX."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m:
        raise ShardError(f"--shard must look like K/N (e.g. 0/8), got {text!r}")
    k, n = int(m.group(1)), int(m.group(2))
    if n < 1:
        raise ShardError(f"--shard {text}: N must be at least 1")
    if k >= n:
        raise ShardError(f"--shard {text}: K is 0-based, so it must be 0..{n - 1} for N={n}")
    return ShardSpec(k, n)


def shard_of(key: str, count: int) -> int:
    """The shard (0..count-1) of a file key: the first 8 bytes of sha1(key, UTF-8) modulo count."""
    digest = hashlib.sha1(key.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") % count


def _key(path: Path, root: Path | None) -> str:
    rel = PurePath(os.path.relpath(path, root)) if root is not None else PurePath(path)
    return rel.as_posix()


@dataclass
class Catalog:
    """The files of a run in catalog order, each with its stable key."""

    files: list[Path]
    keys: list[str]
    problems: list[tuple[str, str]] = field(default_factory=list)

    @property
    def digest(self) -> str:
        return catalog_digest(self.keys)

    def select(self, spec: ShardSpec) -> ShardSelection:
        rows = [i for i, k in enumerate(self.keys) if shard_of(k, spec.count) == spec.index]
        return ShardSelection(spec, self, rows)


def catalog_digest(keys: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(keys).encode("utf-8", "surrogateescape")).hexdigest()


def list_catalog(paths: Sequence[str | os.PathLike], recursive: bool = False) -> Catalog:
    """Expand ``paths`` like ``musicembed embed`` does (same files, same order) and give each
    file its key: the path relative to the folder argument it was found under, or, for a
    file given directly, the path as given. Duplicate keys (the same relative path under two
    folder arguments) are an error: they could not be told apart across machines."""
    from ..audio import find_audio_files

    files, problems = find_audio_files(list(paths), recursive=recursive)
    return catalog_of(files, paths, problems)


def catalog_of(files: Sequence[Path], paths: Sequence[str | os.PathLike],
               problems: Sequence[tuple[str, str]] = ()) -> Catalog:
    """:func:`list_catalog` for files already found by ``find_audio_files(paths)``."""
    files = [Path(f) for f in files]
    # Which argument each file came from: the first folder argument that contains it.
    roots = [Path(p) for p in paths if Path(p).is_dir()]
    keys = []
    for f in files:
        root = next((r for r in roots if _inside(f, r)), None)
        keys.append(_key(f, root))
    seen: dict[str, Path] = {}
    for f, k in zip(files, keys):
        if k in seen:
            raise ShardError(f"two files share the key {k!r} ({seen[k]} and {f}): give each folder once, "
                             "or one folder that holds them all, so every file has a unique relative path")
        seen[k] = f
    return Catalog(files, keys, list(problems))


def _inside(f: Path, root: Path) -> bool:
    try:
        f.relative_to(root)
        return True
    except ValueError:
        return False


@dataclass
class ShardSelection:
    """The catalog rows a shard owns (positions in the catalog, ascending)."""

    spec: ShardSpec
    catalog: Catalog
    rows: list[int]

    @property
    def files(self) -> list[Path]:
        return [self.catalog.files[i] for i in self.rows]

    def arrays(self, done_files: Sequence[str], failed: Sequence[tuple[str, str]]) -> dict[str, np.ndarray]:
        """The shard metadata to store in the output ``.npz`` for ``done_files`` (the rows
        written, in order, as the ``paths`` array names them) and ``failed`` (path, reason)."""
        pos = {str(self.catalog.files[i]): i for i in self.rows}
        done_idx = [pos[str(p)] for p in done_files]
        fail = [(pos[str(p)], r) for p, r in failed if str(p) in pos]
        return {
            "shard": np.array(str(self.spec)),
            "catalog_count": np.array(len(self.catalog.keys), dtype=np.int64),
            "catalog_digest": np.array(self.catalog.digest),
            "catalog_keys": np.array([self.catalog.keys[i] for i in done_idx], dtype=str),
            "catalog_index": np.array(done_idx, dtype=np.int64),
            "failed_keys": np.array([self.catalog.keys[i] for i, _ in fail], dtype=str),
            "failed_index": np.array([i for i, _ in fail], dtype=np.int64),
            "failed_reasons": np.array([r for _, r in fail], dtype=str),
        }


# ----------------------------------------------------------------------------- merge


@dataclass
class MergeReport:
    """What :func:`merge` wrote: ``files`` embedded, ``failed`` (key, reason) recorded by the shards."""

    out: Path
    shards: int
    files: int
    catalog_count: int
    failed: list[tuple[str, str]]


def _load(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as d:
            return {k: d[k] for k in d.files}
    except (OSError, ValueError) as e:
        raise ShardError(f"{path}: cannot read: {e}") from None


def _identity(d: dict[str, np.ndarray]) -> dict:
    """The model identity a shard output records (see :mod:`musicembed.identity`)."""
    emb = d.get("embeddings")
    return from_stored(d, dim=emb.shape[1] if emb is not None and emb.ndim == 2 else None)


def _check_identity(p: Path, d: dict[str, np.ndarray], p0: Path, d0: dict[str, np.ndarray], spec: ShardSpec) -> None:
    """Raise :class:`ShardError` unless part ``p`` records a fingerprint and the same model
    identity as the first part ``p0``."""
    ident, first = _identity(d), _identity(d0)
    if ident["fingerprint"] is None:
        raise ShardError(f"{p} records no model fingerprint (written by an older musicembed), so merge cannot "
                         "check that it was embedded with the same weights, window and hop as the other parts: "
                         f"re-embed it with `musicembed embed ... --out {p.name} --shard {spec}`")
    diffs = differences(ident, first)
    if diffs:
        words = "; ".join(w for _, w in diffs)
        fields = {k for k, _ in diffs}
        options = (["--model (the same weights)"] if fields - set(WINDOW_FIELDS) else []) + (
            ["--window and --hop"] if fields & set(WINDOW_FIELDS) else [])
        raise ShardError(f"{p} and {p0} were embedded differently ({p.name}'s values first): {words}; vectors "
                         f"of different models or windows are not comparable: run every shard with the same "
                         f"{', '.join(options)}, and re-embed the parts that differ")


def merge(parts: Sequence[str | os.PathLike], out: str | os.PathLike) -> MergeReport:
    """Combine shard outputs (``.npz`` from ``musicembed embed --shard K/N``) into ``out``.

    Raises :class:`ShardError`, writing nothing, when a shard is missing or given twice, a
    file appears twice, the parts come from different catalogs, models or options, or the
    embedded and failed files do not add up to the catalog. Files the shards record as failed
    are returned in the report (the merged file holds every other file).
    """
    from ..io.atomic import atomic_write

    out = Path(out)
    if out.suffix.lower() != ".npz":
        raise ShardError(f"--out must be a .npz file (got {out.name!r})")
    if not parts:
        raise ShardError("no shard files given")
    loaded = []
    for p in parts:
        p = Path(p)
        d = _load(p)
        missing = [k for k in SHARD_KEYS if k not in d]
        if missing:
            raise ShardError(f"{p}: not a shard output (no {', '.join(missing)}); write shards with "
                             "`musicembed embed ... --out FILE.npz --shard K/N`")
        loaded.append((p, d, parse_spec(str(d["shard"]))))
    p0, d0, s0 = loaded[0]
    count, digest = int(d0["catalog_count"]), str(d0["catalog_digest"])
    layout = sorted(k for k in d0 if k not in SHARD_KEYS)
    by_index: dict[int, Path] = {}
    for p, d, s in loaded:
        if s.count != s0.count:
            raise ShardError(f"{p} is shard {s} but {p0} is shard {s0}: all parts must use the same N")
        if int(d["catalog_count"]) != count or str(d["catalog_digest"]) != digest:
            raise ShardError(f"{p} and {p0} were made from different catalogs ({int(d['catalog_count'])} vs {count} "
                             "files, or different file lists): run every shard on the same folders")
        _check_identity(p, d, p0, d0, s)
        same_arrays = sorted(k for k in d if k not in SHARD_KEYS) == layout
        if not same_arrays or d["embeddings"].shape[1:] != d0["embeddings"].shape[1:]:
            raise ShardError(f"{p} and {p0} hold different arrays (e.g. --timestamps or --hierarchical on one only): "
                             "run every shard with the same options")
        if s.index in by_index:
            raise ShardError(f"shard {s} is given twice: {by_index[s.index]} and {p}")
        by_index[s.index] = p
    absent = [i for i in range(s0.count) if i not in by_index]
    if absent:
        shown = ", ".join(f"{i}/{s0.count}" for i in absent[:20]) + (" ..." if len(absent) > 20 else "")
        raise ShardError(f"{len(absent)} of {s0.count} shards missing: {shown}")

    # Every catalog position exactly once, embedded or failed; each in the shard its key hashes to.
    owner = np.full(count, -1, dtype=np.int64)
    keys: list[str | None] = [None] * count
    failed: list[tuple[str, str]] = []
    for j, (p, d, s) in enumerate(loaded):
        for idx_name, key_name in (("catalog_index", "catalog_keys"), ("failed_index", "failed_keys")):
            for i, k in zip(d[idx_name].tolist(), d[key_name].tolist()):
                if not 0 <= i < count:
                    raise ShardError(f"{p}: catalog position {i} out of range (catalog of {count})")
                if owner[i] >= 0:
                    raise ShardError(f"{k!r} appears twice: in {loaded[owner[i]][0]} and {p}")
                if shard_of(k, s.count) != s.index:
                    raise ShardError(f"{p}: {k!r} belongs to shard {shard_of(k, s.count)}/{s.count}, not {s}")
                owner[i], keys[i] = j, k
        failed += list(zip(d["failed_keys"].tolist(), d["failed_reasons"].tolist()))
    holes = np.flatnonzero(owner < 0)
    if len(holes):
        raise ShardError(f"{len(holes)} catalog file(s) are in no shard output (neither embedded nor failed), "
                         f"e.g. catalog position {int(holes[0])}: a shard run was incomplete")
    if catalog_digest([k for k in keys if k is not None]) != digest:
        raise ShardError("the files in the shard outputs do not match the catalog they were listed from")

    # Rows in catalog order.
    rows = []  # (catalog position, part number, row in part)
    for j, (_, d, _) in enumerate(loaded):
        rows += [(int(i), j, r) for r, i in enumerate(d["catalog_index"].tolist())]
    rows.sort()
    merged: dict[str, np.ndarray] = {"model": d0["model"]}
    segments = {m.group(1) for k in layout if (m := _SEGMENT.match(k))}
    # The four arrays of each segment group, by their exact names: `window_seconds` is no segment array.
    segment_arrays = {f"{s}_{f}" for s in segments for f in ("vectors", "starts", "ends", "offsets")}
    for name in layout:
        if name == "model" or name in segment_arrays:
            continue
        arrs = [d[name] for _, d, _ in loaded]
        if arrs[0].ndim == 0:
            merged[name] = arrs[0]
            continue
        base = np.cumsum([0] + [len(a) for a in arrs])
        perm = np.array([base[j] + r for _, j, r in rows], dtype=np.int64)
        merged[name] = np.concatenate(arrs)[perm]
    for seg in sorted(segments):
        parts_ = []
        lengths = []
        for _, j, r in rows:
            d = loaded[j][1]
            off = d[f"{seg}_offsets"]
            parts_.append((j, int(off[r]), int(off[r + 1])))
            lengths.append(int(off[r + 1] - off[r]))
        for field_ in ("vectors", "starts", "ends"):
            src = [loaded[j][1][f"{seg}_{field_}"][a:b] for j, a, b in parts_]
            merged[f"{seg}_{field_}"] = np.concatenate(src) if src else loaded[0][1][f"{seg}_{field_}"][:0]
        merged[f"{seg}_offsets"] = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **merged)

    atomic_write(out, write)
    return MergeReport(out=out, shards=s0.count, files=len(rows), catalog_count=count, failed=failed)
