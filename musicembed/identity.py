"""The identity of a model's vectors: the one definition that outputs, the resume store, shards
and the search index record and compare.

Two sets of vectors are comparable only when their identities agree on every field of
:data:`COMPARED`: the model's ``name``, ``version``, ``method``, ``dim`` (vector size) and
``fingerprint`` (sha256 over its config and every weight and buffer, see
``Model.fingerprint``), and the analysis ``window_seconds`` and ``hop_seconds`` it embedded
with, as the model uses them (rounded to whole samples at its rate). ``source`` (where the
model was loaded from) is kept to reload it and never compared, and so is ``license`` (the
licence of the weights, as the weights manifest states it; None for a model folder).

In output files the identity is stored under the names of :data:`STORED` (``model``,
``model_version``, ``model_fingerprint``, ``window_seconds``, ``hop_seconds``, and
``model_license`` where the licence is known): as 0-d arrays
in ``.npz``, as fields of every line in ``.jsonl``; ``method`` and ``dim`` are not stored there
(the fingerprint covers the method; the vectors show their size).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

COMPARED = ("name", "version", "method", "dim", "fingerprint", "window_seconds", "hop_seconds")
"""The fields that must be equal for vectors to be comparable, in the order differences are reported."""

STORED = {"name": "model", "version": "model_version", "fingerprint": "model_fingerprint",
          "window_seconds": "window_seconds", "hop_seconds": "hop_seconds", "license": "model_license"}
"""Identity field -> its name in ``.npz`` arrays and ``.jsonl`` lines."""

WINDOW_FIELDS = ("window_seconds", "hop_seconds")
"""The fields of the options a model embedded with (seconds); the others are the model's own."""

_SHORT = 12  # hex digits of a fingerprint shown in messages


def model_identity(model, *, window_seconds: float | None = None, hop_seconds: float | None = None) -> dict[str, Any]:
    """The identity of the vectors ``model`` gives with these options: name, version, method,
    dim, fingerprint, and the window and hop in seconds as the model uses them (None window:
    the model's trained window; None hop: the window), plus ``source`` and ``license`` (not compared)."""
    cfg = model.config
    rate = cfg.sample_rate
    window = _on_grid(cfg.window_seconds if window_seconds is None else window_seconds, rate)
    hop = window if hop_seconds is None else _on_grid(hop_seconds, rate)
    return {
        "name": cfg.name,
        "version": cfg.version,
        "method": cfg.method,
        "dim": int(model.embedding_dim),
        "fingerprint": model.fingerprint(),
        "window_seconds": window,
        "hop_seconds": hop,
        "source": _portable_source(str(getattr(model, "source", "") or "")),
        "license": (getattr(model, "provenance", None) or {}).get("license"),
    }


def _on_grid(seconds: float, rate: int) -> float:
    """``seconds`` rounded to whole samples at ``rate`` Hz, as embedding cuts windows. A value
    that is no finite number is kept as given: embedding refuses it with its own message."""
    try:
        x = float(seconds)
    except (TypeError, ValueError):
        return seconds
    return int(round(x * rate)) / rate if math.isfinite(x) else x


def _portable_source(source: str) -> str:
    """A model folder as an absolute path (so the model can be reloaded from anywhere)."""
    return os.path.abspath(source) if source and os.path.isdir(source) else source


def missing(ident: Mapping[str, Any], fields: tuple[str, ...] = COMPARED) -> list[str]:
    """The ``fields`` that ``ident`` does not record (written by an older musicembed)."""
    return [k for k in fields if ident.get(k) is None]


def _number(v: Any) -> Any:
    """``v`` as a float where it is a number (a JSON or 0-d array value), else as it is."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def _seconds(v: Any) -> str:
    return f"{v:g} s" if isinstance(v, float) else f"{v} s"


_IN_WORDS: dict[str, Any] = {
    "fingerprint": lambda a, b: f"different weights (fingerprint {str(a)[:_SHORT]} vs {str(b)[:_SHORT]})",
    "name": lambda a, b: f"model {a!r} vs {b!r}",
    "version": lambda a, b: f"model version {a} vs {b}",
    "method": lambda a, b: f"method {a} vs {b}",
    "dim": lambda a, b: f"{a}-d vs {b}-d vectors",
    "window_seconds": lambda a, b: f"window {_seconds(a)} vs {_seconds(b)}",
    "hop_seconds": lambda a, b: f"hop {_seconds(a)} vs {_seconds(b)}",
}


def _words(field: str, a: Any, b: Any) -> str:
    words = _IN_WORDS.get(field)
    return words(a, b) if words else f"{field} {a} vs {b}"


def differences(a: Mapping[str, Any], b: Mapping[str, Any],
                fields: tuple[str, ...] = COMPARED) -> list[tuple[str, str]]:
    """(field, plain words such as ``"hop 1.5 s vs 3 s"``, ``a``'s value first) for each of
    ``fields`` on which the identities differ. A field that either does not record is skipped
    (see :func:`missing`); a hop that equals the window on both sides is not reported apart
    from a window that differs (it only follows the window)."""
    out = []
    for k in fields:
        x, y = a.get(k), b.get(k)
        if x is None or y is None:
            continue
        if k in WINDOW_FIELDS:
            x, y = _number(x), _number(y)
        if x != y:
            out.append((k, _words(k, x, y)))
    changed = {k for k, _ in out}
    if {"window_seconds", "hop_seconds"} <= changed and all(
            _number(i["hop_seconds"]) == _number(i["window_seconds"]) for i in (a, b)):
        out = [(k, w) for k, w in out if k != "hop_seconds"]
    return out


def mismatch(a: Mapping[str, Any], b: Mapping[str, Any], fields: tuple[str, ...] = COMPARED) -> str | None:
    """The :func:`differences` of two identities in one line (``"; "``-joined), or None when
    they agree on every field both record."""
    diffs = differences(a, b, fields)
    return "; ".join(w for _, w in diffs) if diffs else None


def describe(ident: Mapping[str, Any]) -> str:
    """One line, e.g. ``'pemr' v1.0 (pemr, 512-d, weights 1a2b3c4d5e6f, window 3 s, hop 1.5 s)``;
    fields the identity does not record are left out."""
    parts = [str(ident.get("method") or "?")]
    if ident.get("dim") is not None:
        parts.append(f"{ident['dim']}-d")
    parts.append(f"weights {str(ident['fingerprint'])[:_SHORT]}" if ident.get("fingerprint")
                 else "weights not recorded")
    for k, label in (("window_seconds", "window"), ("hop_seconds", "hop")):
        if ident.get(k) is not None:
            parts.append(f"{label} {_seconds(_number(ident[k]))}")
    return f"'{ident.get('name')}' v{ident.get('version')} ({', '.join(parts)})"


def windows_shown(starts, ends, rate: int) -> dict[str, float]:
    """The ``window_seconds`` and ``hop_seconds`` that per-window spans (``starts``/``ends`` in
    seconds, as an :class:`~musicembed.Embedding` holds them) show, on the sample grid of
    ``rate`` Hz: the window when there are two windows or more (then the first is whole), the hop
    when there are three or more (only the last can be the tail window aligned to the end).
    Empty when the spans show neither (one window, or none kept)."""
    s, e = np.asarray(starts, dtype=np.float64), np.asarray(ends, dtype=np.float64)
    out: dict[str, float] = {}
    if len(s) >= 2 and len(e) >= 2:
        out["window_seconds"] = _on_grid(e[0] - s[0], rate)
    if len(s) >= 3:
        out["hop_seconds"] = _on_grid(s[1] - s[0], rate)
    return out


def stored_fields(ident: Mapping[str, Any]) -> dict[str, Any]:
    """The identity under the names of :data:`STORED`, as plain str and float values (seconds),
    for a ``.npz`` (one 0-d array each) or every ``.jsonl`` line; fields it lacks are left out."""
    out: dict[str, Any] = {}
    for k, name in STORED.items():
        v = ident.get(k)
        if v is not None:
            out[name] = _number(v) if k in WINDOW_FIELDS else str(v)
    return out


def from_stored(stored: Mapping[str, Any], dim: int | None = None) -> dict[str, Any]:
    """The identity recorded in a ``.npz`` (its arrays) or a ``.jsonl`` line, the inverse of
    :func:`stored_fields`; ``dim``, when given, is the size of the stored vectors. Fields not
    recorded are None (see :func:`missing`)."""
    ident: dict[str, Any] = {k: None for k in COMPARED}
    for k, name in STORED.items():
        if name in stored:
            v = stored[name]
            ident[k] = _number(v) if k in WINDOW_FIELDS else str(v)
    ident["dim"] = None if dim is None else int(dim)
    return ident
