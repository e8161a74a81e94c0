"""What a similarity means: a model's calibration, from cosine similarity to relation probabilities.

A calibration (``calibration.json`` beside a model's weights, with its own sha256 in the
manifest; it is not part of the model's fingerprint) holds, for each relation between two
recordings, the likelihood of a cosine similarity of their clip vectors, measured on pairs of
held-out sources (see ``musicembed eval calibrate``). The relations nest, most specific first:

- ``same_recording``: the same audio (also under gain, noise, MP3, low-pass, slight pitch or tempo change);
- ``same_track``: two parts of one recording;
- ``cover``: two recordings of one piece (a cover, or the same track);
- ``same_source``: two pieces of one game or composer;
- ``unrelated``.

"At least" a relation is the relation or any more specific one (a same recording is also a
same track, a cover and a same source). Given a prior over the exclusive relations, Bayes'
rule turns the likelihoods (raised to the calibration's ``temperature``, a power of at most 1
chosen by cross-validation so that probabilities on unseen sources are not over-confident)
into probabilities; the "at least" probabilities are made
non-decreasing in the similarity (pool-adjacent-violators on the grid) and nested, so a
higher similarity never lowers the probability of a closer relation. The reported relation
is the most specific one whose "at least" probability is 0.5 or more (and whose similarity
floor, where the calibration sets one to reach a precision target, e.g. for
``same_recording``, is reached), with that probability.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import WeightsError

CALIBRATION_NAME = "calibration.json"
CALIBRATION_FORMAT = "musicembed-calibration"
CALIBRATION_VERSION = 1
RELATIONS = ("same_recording", "same_track", "cover", "same_source", "unrelated")
"""The relations, most specific first."""
LABELS = {"same_recording": "same recording", "same_track": "same track", "cover": "cover",
          "same_source": "same source", "unrelated": "unrelated"}
DECISION = 0.5  # the "at least" probability from which a relation is reported
MAX_CALIBRATION_BYTES = 1 << 20


def uniform_prior() -> dict[str, float]:
    """The default prior: every relation equally likely (1/5 each)."""
    return {r: 1.0 / len(RELATIONS) for r in RELATIONS}


def catalog_prior(n_items: int) -> dict[str, float]:
    """A prior for a search among ``n_items`` files: one file of each of same recording,
    same track and cover expected per query (1/n each, at most the uniform 1/5), the rest
    split equally between same source and unrelated."""
    if n_items < 1:
        raise ValueError(f"a catalog holds at least one file, got {n_items}")
    close = min(1.0 / n_items, 1.0 / len(RELATIONS))
    rest = (1.0 - 3 * close) / 2
    return {"same_recording": close, "same_track": close, "cover": close, "same_source": rest, "unrelated": rest}


def _check_prior(prior: Mapping[str, float]) -> np.ndarray:
    unknown = sorted(set(prior) - set(RELATIONS))
    if unknown:
        raise ValueError(f"unknown relation(s) in prior: {unknown}; relations are {list(RELATIONS)}")
    p = np.array([float(prior.get(r, 0.0)) for r in RELATIONS], dtype=np.float64)
    if not np.isfinite(p).all() or (p < 0).any() or p.sum() <= 0:
        raise ValueError(f"a prior needs finite non-negative weights with a positive sum, got {dict(prior)}")
    return p / p.sum()


def _pav(y: np.ndarray) -> np.ndarray:
    """The non-decreasing sequence closest to ``y`` in least squares (pool-adjacent-violators)."""
    values: list[float] = []
    counts: list[int] = []
    for v in y.tolist():
        values.append(v)
        counts.append(1)
        while len(values) > 1 and values[-2] > values[-1]:
            n = counts[-2] + counts[-1]
            values[-2] = (values[-2] * counts[-2] + values[-1] * counts[-1]) / n
            counts[-2] = n
            values.pop()
            counts.pop()
    return np.repeat(values, counts)


@dataclass(frozen=True)
class Relation:
    """The reported relation of two recordings: ``relation`` (a name of :data:`RELATIONS`),
    its ``probability`` (that they are at least this close; for ``unrelated``, that they are
    unrelated), and every relation's exclusive probability and "at least" probability."""

    relation: str
    probability: float
    probabilities: dict[str, float] = field(default_factory=dict)
    at_least: dict[str, float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The relation in words, e.g. ``"same recording"``."""
        return LABELS[self.relation]


class Calibration:
    """A model's similarity calibration (see the module docstring). Build with :meth:`load`."""

    def __init__(self, doc: dict[str, Any], source: str = "") -> None:
        self.doc = doc
        self.source = source
        try:
            if doc.get("format") != CALIBRATION_FORMAT or int(doc.get("format_version", 0)) != CALIBRATION_VERSION:
                raise ValueError(f"not a {CALIBRATION_FORMAT} file of version {CALIBRATION_VERSION}")
            self.grid = np.asarray(doc["grid"], dtype=np.float64)
            if self.grid.ndim != 1 or self.grid.size < 2 or not (np.diff(self.grid) > 0).all():
                raise ValueError("grid must be increasing similarities")
            ll = doc["log_likelihood"]
            self.log_likelihood = np.stack([np.asarray(ll[r], dtype=np.float64) for r in RELATIONS])
            if self.log_likelihood.shape != (len(RELATIONS), self.grid.size) or np.isnan(self.log_likelihood).any():
                raise ValueError("log_likelihood must hold one value per grid point for every relation")
            self.model_fingerprint = str(doc["model_fingerprint"])
            self.temperature = float(doc.get("temperature", 1.0))
            if not 0 < self.temperature <= 1:
                raise ValueError(f"temperature must be in (0, 1], got {self.temperature}")
            floors = doc.get("min_similarity") or {}
            self.min_similarity = {r: float(floors[r]) for r in RELATIONS[:-1] if floors.get(r) is not None}
            if not all(-1 <= v <= 1 for v in self.min_similarity.values()):
                raise ValueError(f"similarity floors must be cosines in [-1, 1], got {self.min_similarity}")
            self.prior = dict(zip(RELATIONS, _check_prior(doc.get("default_prior") or uniform_prior()).tolist(),
                                  strict=True))
        except (KeyError, TypeError, ValueError) as e:
            raise WeightsError(f"{source or 'calibration'}: invalid calibration: {e}") from None
        self._curves: dict[tuple[float, ...], np.ndarray] = {}

    @classmethod
    def load(cls, path: str | os.PathLike, sha256: str | None = None) -> Calibration:
        """Read ``path``; with ``sha256``, the file must have that checksum (WeightsError otherwise)."""
        from .hub import sha256_file

        p = Path(path)
        if sha256 is not None:
            actual = sha256_file(p)
            if actual != sha256:
                raise WeightsError(f"{p}: checksum mismatch (expected sha256 {sha256[:12]}..., got {actual[:12]}...): "
                                   "the calibration file is corrupt or was modified")
        try:
            if p.stat().st_size > MAX_CALIBRATION_BYTES:
                raise ValueError(f"more than {MAX_CALIBRATION_BYTES} bytes")
            doc = json.loads(p.read_text())
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            raise WeightsError(f"{p}: cannot read calibration: {e}") from None
        return cls(doc, str(p))

    def save(self, path: str | os.PathLike) -> Path:
        """Write the calibration as JSON (atomically); returns the path."""
        from .io.atomic import atomic_write

        out = Path(path)
        text = json.dumps(self.doc, indent=1) + "\n"
        def write(tmp: str) -> None:
            Path(tmp).write_text(text)

        atomic_write(out, write)
        return out

    def _at_least_curves(self, prior: Mapping[str, float] | None) -> np.ndarray:
        """(relations, grid) "at least" probabilities under ``prior``: monotone and nested."""
        p = _check_prior(self.prior if prior is None else prior)
        key = tuple(np.round(p, 12).tolist())
        curves = self._curves.get(key)
        if curves is None:
            with np.errstate(divide="ignore"):
                logp = self.temperature * self.log_likelihood + np.log(p)[:, None]
            logp -= logp.max(axis=0, keepdims=True)
            post = np.exp(logp)
            post /= post.sum(axis=0, keepdims=True)
            cum = np.cumsum(post, axis=0)  # row k: P(relation k or more specific)
            cum = np.stack([_pav(row) for row in cum])
            for k in range(len(RELATIONS) - 2, -1, -1):  # a closer relation is never more likely
                cum[k] = np.minimum(cum[k], cum[k + 1])
            cum[-1] = 1.0
            curves = self._curves[key] = np.clip(cum, 0.0, 1.0)
        return curves

    def at_least(self, similarity: float, prior: Mapping[str, float] | None = None) -> dict[str, float]:
        """P(the two recordings are at least this close | cosine ``similarity``) per relation."""
        s = float(similarity)
        if not math.isfinite(s):
            raise ValueError(f"similarity must be a finite number, got {similarity}")
        curves = self._at_least_curves(prior)
        return {r: float(np.interp(s, self.grid, curves[k])) for k, r in enumerate(RELATIONS)}

    def relation(self, similarity: float, prior: Mapping[str, float] | None = None) -> Relation:
        """The most specific relation whose "at least" probability is 0.5 or more (and whose
        similarity floor is reached), under ``prior`` (exclusive relation -> weight; default:
        the calibration's own, uniform)."""
        cum = self.at_least(similarity, prior)
        s = float(similarity)
        exclusive, below = {}, 0.0
        for r in RELATIONS:
            exclusive[r] = max(cum[r] - below, 0.0)
            below = cum[r]
        for r in RELATIONS[:-1]:
            if cum[r] >= DECISION and s >= self.min_similarity.get(r, -math.inf):
                return Relation(r, cum[r], exclusive, cum)
        return Relation("unrelated", 1.0 - cum["same_source"], exclusive, cum)

    def threshold(self, relation: str, prior: Mapping[str, float] | None = None) -> float | None:
        """The lowest similarity (on the grid, or the relation's floor) from which ``relation``
        is reported under ``prior``, or None when it never is."""
        k = RELATIONS.index(relation)
        row = self._at_least_curves(prior)[k]
        floor = self.min_similarity.get(relation, -math.inf)
        hit = np.flatnonzero(row >= DECISION)
        if not hit.size or floor > self.grid[-1]:
            return None
        return max(float(self.grid[hit[0]]), floor)


def find_calibration(folder: str | os.PathLike, sha256: str | None, fingerprint: str,
                     source: str = "") -> Calibration | None:
    """The calibration in ``folder`` for the model with ``fingerprint``, or None when the folder
    has none. With ``sha256`` (from the manifest) the file is checked; a calibration made for
    other weights is refused with a warning (its figures do not describe this model)."""
    import warnings

    path = Path(folder) / CALIBRATION_NAME
    if not path.is_file():
        return None
    cal = Calibration.load(path, sha256)
    if cal.model_fingerprint != fingerprint:
        warnings.warn(f"{source or folder}: {CALIBRATION_NAME} was made for other weights (fingerprint "
                      f"{cal.model_fingerprint[:12]}, this model {fingerprint[:12]}): not used", stacklevel=3)
        return None
    return cal
