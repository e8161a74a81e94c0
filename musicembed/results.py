"""What ``embed`` returns: per-input results, the errors of a batch, and one type for ragged
per-window or per-level arrays of many inputs (:class:`Segments`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import AudioError, MusicEmbedError


@dataclass
class LevelEmbedding:
    """One MART level: ``vectors`` (K, D) with each clip's ``starts``/``ends`` in seconds."""

    level: int
    vectors: np.ndarray
    starts: np.ndarray
    ends: np.ndarray


@dataclass
class Embedding:
    """Everything ``embed`` computed for one input.

    ``clip`` (D,) is the clip-level vector (mean over windows); ``vectors`` (W, D) are the
    per-window vectors with ``starts``/``ends`` in seconds; ``levels`` holds MART's per-level
    vectors when ``hierarchical=True`` (level 0 = the windows themselves). ``duration`` is the
    audio that decoded (seconds), ``declared_duration`` the length the file's header declares
    (None when unknown, and for arrays); ``warning`` says why a file decoded short
    (truncated or damaged: see :mod:`musicembed.audio`), else None.
    """

    source: str
    clip: np.ndarray
    vectors: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    duration: float
    levels: list[LevelEmbedding] | None = None
    declared_duration: float | None = None
    warning: str | None = None


class TruncatedAudioWarning(UserWarning):
    """A file decoded short of its declared length or stopped at a decoding error; what decoded
    was embedded (``Embedding.warning`` says how much)."""


class EmbedError(MusicEmbedError):
    """Some inputs of a batch failed. ``errors`` maps input index -> AudioError; ``results``
    holds every input's Embedding (None where it failed), so no finished work is lost."""

    def __init__(self, errors: dict[int, AudioError], results: list[Embedding | None]) -> None:
        lines = [f"  {e}" for e in errors.values()]
        super().__init__(f"{len(errors)} of {len(results)} inputs failed:\n" + "\n".join(lines))
        self.errors = errors
        self.results = results


@dataclass
class Segments:
    """Time segments of N inputs in one set of arrays: ``vectors`` (K, D), ``starts`` and
    ``ends`` (K,) in seconds, ``offsets`` (N+1,) int64; input i owns rows
    ``offsets[i]:offsets[i+1]``. Stored as ``{prefix}_vectors``, ``_starts``, ``_ends`` and
    ``_offsets`` (e.g. ``window_*``, ``level0_*``)."""

    vectors: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    offsets: np.ndarray

    NAMES = ("vectors", "starts", "ends", "offsets")

    @classmethod
    def of(cls, parts: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], dim: int,
           dtype: type = np.float32) -> Segments:
        """From per-input (vectors (k, D), starts (k,), ends (k,)); vectors cast to ``dtype``."""
        if not parts:
            return cls(np.zeros((0, dim), dtype), np.zeros(0), np.zeros(0), np.zeros(1, np.int64))
        return cls(np.concatenate([v for v, _, _ in parts]).astype(dtype),
                   np.concatenate([np.asarray(s, np.float64) for _, s, _ in parts]),
                   np.concatenate([np.asarray(e, np.float64) for _, _, e in parts]),
                   np.cumsum([0] + [len(v) for v, _, _ in parts]).astype(np.int64))

    @classmethod
    def of_windows(cls, results: Sequence[Embedding], dim: int) -> Segments:
        """The per-window vectors of ``results``."""
        return cls.of([(r.vectors, r.starts, r.ends) for r in results], dim)

    @classmethod
    def of_levels(cls, results: Sequence[Embedding], dim: int, keep: int | None = None,
                  dtype: type = np.float32) -> list[Segments]:
        """One :class:`Segments` per MART level of ``results`` (the first ``keep`` levels)."""
        if not results or results[0].levels is None:
            return []
        n_levels = len(results[0].levels)
        n_levels = min(n_levels, keep) if keep else n_levels
        per_input = [r.levels or [] for r in results]
        return [cls.of([(lv[n].vectors, lv[n].starts, lv[n].ends) for lv in per_input], dim, dtype)
                for n in range(n_levels)]

    def __len__(self) -> int:
        """Number of inputs N."""
        return len(self.offsets) - 1

    def rows(self, i: int) -> slice:
        """The rows of input ``i``."""
        return slice(int(self.offsets[i]), int(self.offsets[i + 1]))

    def take(self, inputs: Sequence[int]) -> Segments:
        """The segments of ``inputs`` (in that order), offsets renumbered."""
        idx = [np.arange(self.offsets[i], self.offsets[i + 1]) for i in inputs]
        rows = np.concatenate(idx) if idx else np.zeros(0, np.int64)
        lengths = [len(r) for r in idx]
        return Segments(self.vectors[rows], self.starts[rows], self.ends[rows],
                        np.cumsum([0] + lengths).astype(np.int64))

    @staticmethod
    def concat(parts: Sequence[Segments]) -> Segments:
        """All inputs of ``parts``, one after another (at least one part)."""
        ends = np.cumsum([0] + [int(p.offsets[-1]) for p in parts])
        return Segments(np.concatenate([p.vectors for p in parts]), np.concatenate([p.starts for p in parts]),
                        np.concatenate([p.ends for p in parts]),
                        np.concatenate([[0]] + [p.offsets[1:] + e for p, e in zip(parts, ends)]).astype(np.int64))

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """The four arrays under their stored names."""
        return {f"{prefix}_{n}": getattr(self, n) for n in self.NAMES}

    @classmethod
    def read(cls, arrays: Mapping[str, np.ndarray], prefix: str) -> Segments:
        """The segments stored under ``prefix`` in ``arrays`` (KeyError when absent)."""
        return cls(*(arrays[f"{prefix}_{n}"] for n in cls.NAMES))

    @staticmethod
    def prefixes(names: Sequence[str]) -> list[str]:
        """The prefixes of every segments group among stored array ``names``, sorted."""
        return sorted(n[: -len("_offsets")] for n in names if n.endswith("_offsets"))


@dataclass
class SpanMatch:
    """The best-matching pair of same-level MART segments of two files: ``a_start``/``a_end``
    in the first, ``b_start``/``b_end`` in the second (seconds), ``score`` their cosine similarity."""

    level: int
    a_start: float
    a_end: float
    b_start: float
    b_end: float
    score: float


@dataclass
class Comparison:
    """What ``Model.compare(a, b)`` returns: the cosine ``similarity`` of the two clip vectors;
    with a calibrated model the most specific likely ``relation`` (a name of
    ``musicembed.calibration.RELATIONS``, else None), its ``probability`` and every relation's
    ``at_least`` probability under the ``prior`` used; for MART the best-matching ``span``;
    ``model`` is the identity of the vectors (name, version, fingerprint, licence)."""

    a: str
    b: str
    similarity: float
    relation: str | None
    probability: float | None
    at_least: dict[str, float] | None
    prior: dict[str, float] | None
    span: SpanMatch | None
    model: dict[str, object]

    @property
    def label(self) -> str | None:
        """The relation in words, e.g. ``"same recording"`` (None without a calibration)."""
        return None if self.relation is None else self.relation.replace("_", " ")

    def to_dict(self) -> dict[str, object]:
        """The comparison as JSON-ready values (floats rounded to 6 digits, span seconds to 3)."""
        from dataclasses import asdict

        d = asdict(self)
        d["similarity"] = round(self.similarity, 6)
        if self.probability is not None:
            d["probability"] = round(self.probability, 6)
        if self.at_least is not None:
            d["at_least"] = {k: round(v, 6) for k, v in self.at_least.items()}
        if self.span is not None:
            d["span"] = {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self.span).items()}
        return d
