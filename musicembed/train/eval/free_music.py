"""Evaluation on the free-music validation split (issue 4): every system, every task, one run.

Input: a data folder with ``manifest.csv`` (path, source, licence, duration_s, split,
track_id; paths relative to the folder) and ``covers.csv`` (track_id, version, path, ...;
version 0 is the original validation track). Tasks, all on the VALIDATION tracks:

- same-track retrieval: two excerpts of each track (``excerpt_seconds`` long, centred at
  25 % and 75 % of its duration, shortened to half the track when needed so they never
  overlap; tracks whose excerpts would be shorter than ``min_excerpt_seconds`` are
  skipped), cut here from the decoded audio. Each excerpt queries all other excerpts;
  its sibling is the one relevant item: MAP and P@1.
- synthetic covers: every recording of ``covers.csv`` (whole files) queries all others;
  recordings with the same track_id are relevant: MAP, P@10, MR1.
- source classification (which package / corpus part): a linear probe trained on up
  to ``max_train_per_source`` TRAIN tracks per source (seeded sample; a stratified
  ``probe_holdout`` of them for early stopping) and tested on all validation tracks:
  accuracy and macro one-vs-rest ROC-AUC. Training on train tracks keeps the test set
  the whole validation split and gives the probe more examples than cross-validation
  inside a small validation set would. Each track is represented by its central
  ``classify_seconds`` (the whole track when shorter, or when ``classify_seconds`` is
  None): the same evidence for every track, at a fraction of the cost of whole tracks.
- embedding covariance eigen-spectrum of the validation tracks' classification
  embeddings (collapse check).

Embeddings are cached per system in ``out_dir/cache``; excerpts are written once to
``out_dir/excerpts`` and shared by all systems.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from ...audio import info, load_audio
from ...errors import MusicEmbedError
from .datasets import DatasetError
from .embeddings import embed_files
from .metrics import retrieval_metrics
from .probes import ProbeConfig, fit_probe
from .systems import System, load_system

VAL_SPLITS = frozenset({"val", "valid", "validation"})
MANIFEST_COLUMNS = ("path", "source", "licence", "duration_s", "split", "track_id")
COVERS_COLUMNS = ("track_id", "version", "path")


@dataclass(frozen=True)
class Track:
    """One manifest row (``path`` made absolute)."""

    track_id: str
    path: Path
    source: str
    duration: float
    split: str


@dataclass
class FreeMusicConfig:
    """Protocol settings (all recorded in the report)."""

    excerpt_seconds: float = 10.0
    min_excerpt_seconds: float = 2.0
    positions: tuple[float, float] = (0.25, 0.75)
    classify_seconds: float | None = 30.0
    max_train_per_source: int = 40
    probe_holdout: float = 0.2
    seed: int = 0
    probe: ProbeConfig = field(default_factory=ProbeConfig)


def _read_csv(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    if not path.is_file():
        raise DatasetError(f"free music: {path} does not exist")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        absent = [c for c in required if c not in (reader.fieldnames or [])]
        if absent:
            raise DatasetError(f"free music: {path} lacks columns {absent} (has {reader.fieldnames})")
        return list(reader)


def read_manifest(data_dir: str | os.PathLike) -> list[Track]:
    """All rows of ``manifest.csv``."""
    base = Path(data_dir)
    return [Track(r["track_id"], base / r["path"], r["source"], float(r["duration_s"] or 0), r["split"].strip().lower())
            for r in _read_csv(base / "manifest.csv", MANIFEST_COLUMNS)]


def read_covers(data_dir: str | os.PathLike) -> list[tuple[str, int, Path]]:
    """(track_id, version, absolute path) for every row of ``covers.csv``."""
    base = Path(data_dir)
    rows = _read_csv(base / "covers.csv", COVERS_COLUMNS)
    return [(r["track_id"], int(r["version"]), base / r["path"]) for r in rows]


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def excerpt_bounds(duration: float, seconds: float, positions: Sequence[float],
                   max_share: float = 0.5) -> list[tuple[float, float]]:
    """(start, end) in seconds of excerpts centred at ``positions`` (fractions of the
    duration), each ``seconds`` long but at most ``max_share`` of the track, kept inside it.
    With the default share of one half, excerpts at 25 % and 75 % never overlap."""
    length = min(seconds, duration * max_share)
    out = []
    for p in positions:
        start = min(max(p * duration - length / 2, 0.0), duration - length)
        out.append((start, start + length))
    return out


def cut_excerpts(tracks: Sequence[Track], folder: str | os.PathLike, seconds: float, positions: Sequence[float],
                 min_seconds: float = 0.0, max_share: float = 0.5) -> tuple[list[tuple[str, Path]], dict[str, str]]:
    """Write the excerpts of :func:`excerpt_bounds` of every track as FLAC into ``folder``
    (kept between runs; the file name carries the track id and position).

    Returns ([(track_id, excerpt path), ...] in track order, {skipped track id: reason}):
    tracks that cannot be decoded or whose excerpts would be under ``min_seconds``.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    pairs: list[tuple[str, Path]] = []
    skipped: dict[str, str] = {}
    for t in tracks:
        stem = f"{_safe_name(t.track_id)}-{hashlib.sha1(t.track_id.encode()).hexdigest()[:8]}"
        targets = [out / f"{stem}_{int(round(p * 100))}.flac" for p in positions]
        if all(p.is_file() for p in targets):
            pairs += [(t.track_id, p) for p in targets]
            continue
        try:
            rate = info(t.path).sample_rate
            wave = load_audio(t.path, rate)
        except MusicEmbedError as e:
            skipped[t.track_id] = str(e)
            continue
        bounds = excerpt_bounds(wave.size / rate, seconds, positions, max_share)
        if bounds[0][1] - bounds[0][0] < min_seconds:
            skipped[t.track_id] = f"too short ({wave.size / rate:.1f} s)"
            continue
        for (start, end), target in zip(bounds, targets, strict=True):
            clip = np.clip(wave[int(round(start * rate)) : int(round(end * rate))], -1.0, 1.0)
            tmp = target.with_name(target.stem + ".tmp.flac")
            sf.write(tmp, clip, rate, subtype="PCM_16")
            os.replace(tmp, target)
            pairs.append((t.track_id, target))
    return pairs, skipped


def covariance_spectrum(x: np.ndarray) -> dict[str, Any]:
    """Eigenvalues of the embedding covariance, normalised to sum 1 (descending), with the
    effective rank exp(entropy), the top eigenvalue's share, and the number of dimensions
    holding 90 % and 99 % of the variance. A collapsed embedding has effective rank ~1."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need at least 2 embeddings (N, D), got {x.shape}")
    eig = np.clip(np.linalg.eigvalsh(np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1]))[::-1], 0.0, None)
    total = eig.sum()
    if total <= 0:
        return {"eigenvalues": [0.0] * eig.size, "effective_rank": 0.0, "top1": 1.0, "dims_90": 0, "dims_99": 0,
                "total_variance": 0.0}
    p = eig / total
    nz = p[p > 0]
    cum = np.cumsum(p)
    return {
        "eigenvalues": p.tolist(),
        "effective_rank": float(np.exp(-np.sum(nz * np.log(nz)))),
        "top1": float(p[0]),
        "dims_90": int(np.searchsorted(cum, 0.9) + 1),
        "dims_99": int(np.searchsorted(cum, 0.99) + 1),
        "total_variance": float(total),
    }


def probe_tracks(train: Sequence[Track], val_sources: set[str], config: FreeMusicConfig) -> tuple[
        list[Track], list[Track]]:
    """Seeded choice of up to ``max_train_per_source`` train tracks per validation source,
    split into (fit, holdout) with a stratified ``probe_holdout`` (sources with one chosen
    track go to fit only; with no holdout at all, early stopping watches the fit loss)."""
    rng = np.random.default_rng(config.seed)
    fit: list[Track] = []
    hold: list[Track] = []
    for src in sorted(val_sources):
        pool = sorted((t for t in train if t.source == src), key=lambda t: t.track_id)
        chosen = [pool[i] for i in sorted(rng.permutation(len(pool))[: config.max_train_per_source])]
        n_hold = round(config.probe_holdout * len(chosen)) if len(chosen) > 1 else 0
        n_hold = min(max(n_hold, 1 if len(chosen) > 1 else 0), len(chosen) - 1)
        hold += chosen[:n_hold]
        fit += chosen[n_hold:]
    return fit, hold


def _source_classification(features: dict[str, np.ndarray], fit: list[Track], hold: list[Track],
                           val: list[Track], config: FreeMusicConfig) -> dict[str, Any]:
    """Linear probe on the tracks' features (track id -> vector): fit / early-stop / test on val."""
    classes = sorted({t.source for t in fit})
    index = {s: i for i, s in enumerate(classes)}

    def xy(tracks: list[Track]) -> tuple[np.ndarray, np.ndarray]:
        kept = [t for t in tracks if t.source in index and t.track_id in features]
        return (np.stack([features[t.track_id] for t in kept]) if kept else np.zeros((0, 0), np.float32),
                np.array([index[t.source] for t in kept], dtype=np.int64))

    x_fit, y_fit = xy(fit)
    x_hold, y_hold = xy(hold) if hold else xy(fit)
    x_val, y_val = xy(val)
    if len(classes) < 2 or not len(y_val):
        return {"skipped": "fewer than two sources with train and validation tracks"}
    probe = fit_probe(x_fit, y_fit, x_hold, y_hold, task="multiclass", config=config.probe, n_classes=len(classes))
    out = probe.evaluate(x_val, y_val)
    out.update({"classes": classes, "n_fit": int(len(y_fit)), "n_holdout": int(len(y_hold) if hold else 0),
                "n_test": int(len(y_val)), "best_epoch": probe.epochs})
    return out


def _retrieval(items: list[tuple[str, Path]], vec: dict[Path, np.ndarray], k: int) -> dict[str, Any]:
    """Retrieval metrics over the embedded items, or the reason there are none."""
    kept = [(w, p) for w, p in items if p in vec]
    if len({w for w, _ in kept}) == len(kept):
        return {"skipped": "no group with two or more embedded recordings"}
    return retrieval_metrics(np.stack([vec[p] for _, p in kept]), [w for w, _ in kept], ks=(k,))


def evaluate_free_music(
    data_dir: str | os.PathLike,
    systems: Sequence[str | System],
    out_dir: str | os.PathLike,
    config: FreeMusicConfig | None = None,
    device: str | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run every task for every system; returns the report (see :func:`write_report`)."""
    cfg = config or FreeMusicConfig()
    if cfg.excerpt_seconds < cfg.min_excerpt_seconds:
        raise ValueError(f"excerpt_seconds ({cfg.excerpt_seconds:g}) is below min_excerpt_seconds "
                         f"({cfg.min_excerpt_seconds:g})")
    out = Path(out_dir)
    tracks = read_manifest(data_dir)
    val = sorted((t for t in tracks if t.split in VAL_SPLITS), key=lambda t: t.track_id)
    train = [t for t in tracks if t.split == "train"]
    if not val:
        raise DatasetError(f"free music: no validation tracks in {Path(data_dir) / 'manifest.csv'} "
                           f"(split must be one of {sorted(VAL_SPLITS)})")
    covers = read_covers(data_dir)
    excerpts, skipped = cut_excerpts(val, out / "excerpts" / f"{cfg.excerpt_seconds:g}s", cfg.excerpt_seconds,
                                     cfg.positions, cfg.min_excerpt_seconds)
    fit, hold = probe_tracks(train, {t.source for t in val}, cfg)
    if cfg.classify_seconds:
        central, unreadable = cut_excerpts(val + fit + hold, out / "excerpts" / f"central-{cfg.classify_seconds:g}s",
                                           cfg.classify_seconds, (0.5,), max_share=1.0)
        class_files = dict(central)
    else:
        class_files, unreadable = {t.track_id: t.path for t in val + fit + hold}, {}
    files = list(dict.fromkeys([p for _, _, p in covers] + [p for _, p in excerpts] + list(class_files.values())))
    report: dict[str, Any] = {
        "data_dir": os.fspath(data_dir),  # as given: a committed report must not carry this machine's paths
        "config": asdict(cfg),
        "counts": {
            "val_tracks": len(val), "excerpt_tracks": len(excerpts) // len(cfg.positions),
            "excerpt_skipped_tracks": len(skipped),
            "cover_recordings": len(covers), "cover_works": len({c[0] for c in covers}),
            "probe_fit_tracks": len(fit), "probe_holdout_tracks": len(hold),
            "sources": len({t.source for t in val}),
        },
        "excerpt_skipped": skipped,
        "classification_unreadable": unreadable,
        "systems": [],
    }
    for spec in systems:
        system = load_system(spec, device=device) if isinstance(spec, str) else spec
        emb = embed_files(system, files, cache=out / "cache" / f"{_safe_name(system.name)}.npz", log=log)
        vec = {f: emb.vectors[i] for i, f in enumerate(files) if i not in emb.failed}
        row: dict[str, Any] = {"system": system.name, "dim": int(emb.vectors.shape[1]),
                               "failed_files": sorted(str(files[i]) for i in emb.failed)}
        row["same_track"] = _retrieval([(tid, p) for tid, p in excerpts], vec, k=1)
        row["covers"] = _retrieval([(tid, p) for tid, _, p in covers], vec, k=10)
        features = {tid: vec[p] for tid, p in class_files.items() if p in vec}
        row["source"] = _source_classification(features, fit, hold, val, cfg)
        row["spectrum"] = covariance_spectrum(np.stack([features[t.track_id] for t in val if t.track_id in features]))
        report["systems"].append(row)
        if log:
            log(f"{system.name}: done")
    return report


def _fmt(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) else "n/a"


def markdown_table(report: dict[str, Any]) -> str:
    """The report as a markdown table (MR1: lower is better) with the counts beneath."""
    head = ("| system | same-track MAP | same-track P@1 | covers MAP | covers P@10 | covers MR1 (lower is better) "
            "| source accuracy | source ROC-AUC | effective rank |")
    lines = [head, "|" + " --- |" * 9]
    for r in report["systems"]:
        st, cv, src = r["same_track"], r["covers"], r["source"]
        lines.append(f"| {r['system']} | {_fmt(st.get('map'))} | {_fmt(st.get('p@1'))} | {_fmt(cv.get('map'))} | "
                     f"{_fmt(cv.get('p@10'))} | {_fmt(cv.get('mr1'), 2)} | {_fmt(src.get('accuracy'))} | "
                     f"{_fmt(src.get('roc_auc'))} | {_fmt(r['spectrum']['effective_rank'], 1)} |")
    c = report["counts"]
    seconds = report["config"]["classify_seconds"]
    clip = f"its central {seconds:g} s" if seconds else "the whole track"
    lines += ["", f"Validation tracks: {c['val_tracks']} ({c['sources']} sources); same-track pairs: "
              f"{c['excerpt_tracks']} (tracks skipped, too short or unreadable: {c['excerpt_skipped_tracks']}); "
              "cover recordings: "
              f"{c['cover_recordings']} of {c['cover_works']} works; source probe trained on "
              f"{c['probe_fit_tracks']} train tracks (+{c['probe_holdout_tracks']} for early stopping), "
              f"each track represented by {clip}."]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``free_music_eval.json`` and ``free_music_eval.md`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    js, md = out / "free_music_eval.json", out / "free_music_eval.md"
    js.write_text(json.dumps(report, indent=2) + "\n")
    md.write_text(markdown_table(report))
    return js, md
