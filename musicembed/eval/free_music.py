"""The free-music evaluation: every system, every task, on one split, in one run.

Input: a data folder with ``manifest.csv`` (path, source, licence, duration_s, split,
track_id; paths relative to the folder) and ``covers.csv`` (track_id, version, path, ...;
its track_id joins the manifest, so a cover group belongs to its track's split). Splits:
``train``; ``val`` (tracks held out within the training sources: in-distribution);
``select`` and ``report`` (whole sources held out from training: ``select`` for choosing
checkpoints and settings, ``report`` only for the final table). Tasks, all on the tracks
of ONE split (``FreeMusicConfig.split``):

- same-track retrieval: two excerpts of each track (``excerpt_seconds`` long, centred at
  25 % and 75 % of its duration, shortened to half the track when needed so they never
  overlap; tracks whose excerpts would be shorter than ``min_excerpt_seconds`` are
  skipped). Each excerpt queries all other excerpts; its sibling is the one relevant
  item: MAP, P@1 (and MR1).
- synthetic covers: the recordings of the ``covers.csv`` groups of the split's tracks
  (whole files) query each other; recordings of one group are relevant: MAP, P@10, MR1.
- source classification (which package / corpus part): a linear probe cross-validated by
  track on the split's own tracks (``folds``-fold, stratified by source, seeded; every
  track is in exactly one test fold), accuracy and macro one-vs-rest ROC-AUC over the
  pooled out-of-fold predictions. The same protocol on every split, so the in-distribution
  and the held-out tables differ only in whether the sources were trained on. Each track
  is represented by its central ``classify_seconds`` (the whole track when shorter, or
  when ``classify_seconds`` is None).
- robustness: the central ``robust_seconds`` of each track (clean) and its copies under
  the degradations of :mod:`.degrade`; each degraded copy queries all clean excerpts of
  the split: top-1 per degradation (strictly more similar to its own clean excerpt than
  to every other) and the mean over the degradations.
- embedding covariance eigen-spectrum of the tracks' classification embeddings (collapse
  check; effective rank).

Every metric carries a 95 % bootstrap interval over tracks, and every pair (system,
baseline) the paired-bootstrap interval of the difference (:mod:`.bootstrap`).
Embeddings are cached per system in ``out_dir/cache``; excerpts and degraded copies are
written once under ``out_dir`` and shared by all systems and runs.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from ..audio import info, load_audio
from ..errors import MusicEmbedError
from .bootstrap import DEFAULT_RESAMPLES, TrackMetric, bootstrap_interval, mean_metric, paired_difference
from .datasets import DatasetError
from .degrade import DEGRADATIONS, write_degraded
from .embeddings import embed_files
from .metrics import classification_metrics, retrieval_per_query
from .probes import ProbeConfig, fit_probe
from .systems import System, load_system

SPLITS = ("select", "report", "val")  # the splits an evaluation runs on
DEFAULT_SPLIT = "select"  # the everyday choice; ``report`` is kept for the final table
SPLIT_NAMES = {"select": {"select"}, "report": {"report"}, "val": {"val", "valid", "validation"}}  # manifest spellings
MANIFEST_COLUMNS = ("path", "source", "licence", "duration_s", "split", "track_id")
COVERS_COLUMNS = ("track_id", "version", "path")


@dataclass(frozen=True)
class Track:
    """One manifest row (``path`` made absolute; ``split`` lower-cased)."""

    track_id: str
    path: Path
    source: str
    duration: float
    split: str


@dataclass
class FreeMusicConfig:
    """Protocol settings (all recorded in the report); durations in seconds."""

    split: str = DEFAULT_SPLIT
    excerpt_seconds: float = 10.0
    min_excerpt_seconds: float = 2.0
    positions: tuple[float, float] = (0.25, 0.75)
    classify_seconds: float | None = 30.0
    robust_seconds: float = 10.0
    folds: int = 5
    probe_holdout: float = 0.2  # share of the training folds kept for early stopping (1 of round(1/share) folds)
    resamples: int = DEFAULT_RESAMPLES
    seed: int = 0
    probe: ProbeConfig = field(default_factory=ProbeConfig)


@dataclass(frozen=True)
class MetricSpec:
    """A reported metric: its key in ``row["metrics"]``, its column label, which direction
    is better (None: neither), and whether it gets bootstrap intervals. The effective rank
    does not: a resample holds only about 63 % distinct tracks, which lowers the rank of
    their covariance, so its bootstrap distribution lies below the value itself (and it is
    a collapse diagnostic, not a score to compare)."""

    key: str
    label: str
    higher_is_better: bool | None = True
    digits: int = 3
    bootstrap: bool = True


MAIN_METRICS = (
    MetricSpec("same_track.map", "same-track MAP"),
    MetricSpec("same_track.p@1", "same-track P@1"),
    MetricSpec("covers.map", "covers MAP"),
    MetricSpec("covers.p@10", "covers P@10"),
    MetricSpec("covers.mr1", "covers MR1 (lower is better)", higher_is_better=False, digits=2),
    MetricSpec("source.accuracy", "source accuracy"),
    MetricSpec("source.roc_auc", "source ROC-AUC"),
    MetricSpec("robustness.mean", f"robust top-1 (mean of {len(DEGRADATIONS)})"),
    MetricSpec("spectrum.effective_rank", "effective rank", higher_is_better=None, digits=1, bootstrap=False),
)
ROBUST_METRICS = tuple(MetricSpec(f"robustness.{d.name}", d.description) for d in DEGRADATIONS)
METRICS = MAIN_METRICS + ROBUST_METRICS


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


def split_tracks(tracks: Sequence[Track], split: str) -> list[Track]:
    """The tracks of ``split`` (one of :data:`SPLITS`), sorted by track id."""
    if split not in SPLIT_NAMES:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return sorted((t for t in tracks if t.split in SPLIT_NAMES[split]), key=lambda t: t.track_id)


def stratified_folds(tracks: Sequence[Track], k: int, seed: int) -> dict[str, int]:
    """Fold (0 .. k-1) of every track, stratified by source and seeded: each source's tracks
    (sorted by id, then shuffled by a generator seeded with ``seed``) are dealt to the folds
    in turn, each source continuing where the previous one stopped, so every fold gets
    its share of every source and the fold sizes differ by at most one."""
    if k < 2:
        raise ValueError(f"need at least 2 folds, got {k}")
    rng = np.random.default_rng(seed)
    folds: dict[str, int] = {}
    turn = 0
    for source in sorted({t.source for t in tracks}):
        ids = sorted(t.track_id for t in tracks if t.source == source)
        for i in rng.permutation(len(ids)):
            folds[ids[i]] = turn % k
            turn += 1
    return folds


def _source_classification(features: dict[str, np.ndarray], tracks: list[Track],
                           config: FreeMusicConfig) -> tuple[dict[str, Any], dict[str, TrackMetric]]:
    """Cross-validated linear probe on the tracks' features (track id -> vector); returns
    the summary and the accuracy / ROC-AUC as functions of the tracks."""
    have = [t for t in tracks if t.track_id in features]
    sizes = {s: sum(t.source == s for t in have) for s in {t.source for t in have}}
    kept = [t for t in have if sizes[t.source] >= 2]  # a lone track's source cannot be learnt
    dropped = sorted(s for s, n in sizes.items() if n < 2)
    classes = sorted({t.source for t in kept})
    if len(classes) < 2:
        return {"skipped": "fewer than two sources with two or more tracks", "dropped_sources": dropped}, {}
    index = {s: i for i, s in enumerate(classes)}
    x = np.stack([features[t.track_id] for t in kept])
    y = np.array([index[t.source] for t in kept], dtype=np.int64)
    fold = stratified_folds(kept, config.folds, config.seed)
    test_fold = np.array([fold[t.track_id] for t in kept])
    scores = np.zeros((len(kept), len(classes)), dtype=np.float64)
    epochs = []
    for f in range(config.folds):
        test = np.flatnonzero(test_fold == f)
        train = np.flatnonzero(test_fold != f)
        if not test.size:
            continue
        # early stopping watches a stratified part of the training folds (the whole
        # training set when it is too small to spare one)
        inner_k = max(2, round(1 / config.probe_holdout))
        inner = stratified_folds([kept[i] for i in train], inner_k, config.seed + 1 + f)
        hold = np.array([i for i in train if inner[kept[i].track_id] == 0], dtype=np.int64)
        fit = np.array([i for i in train if inner[kept[i].track_id] != 0], dtype=np.int64)
        if not hold.size or not fit.size:
            fit, hold = train, train
        probe = fit_probe(x[fit], y[fit], x[hold], y[hold], task="multiclass", config=config.probe,
                          n_classes=len(classes))
        scores[test] = probe.scores(x[test])
        epochs.append(probe.epochs)
    ids = [t.track_id for t in kept]
    correct = (np.argmax(scores, axis=1) == y).astype(np.float64)

    def auc(idx: np.ndarray) -> float:
        return float(classification_metrics(y[idx], scores[idx]).get("roc_auc", np.nan))

    metrics = {"accuracy": mean_metric(ids, ids, correct), "roc_auc": TrackMetric(ids, auc)}
    summary = {"accuracy": metrics["accuracy"].full(), "roc_auc": metrics["roc_auc"].full(), "classes": classes,
               "n_tracks": len(kept), "folds": config.folds, "dropped_sources": dropped, "best_epochs": epochs,
               "track_folds": {t.track_id: fold[t.track_id] for t in kept}}
    return summary, metrics


def _retrieval(items: list[tuple[str, Path]], vec: dict[Path, np.ndarray], k: int) -> tuple[
        dict[str, Any], dict[str, TrackMetric]]:
    """Retrieval over the embedded items (group id, path): the summary (MAP, P@k, MR1 and
    the query counts, or the reason there is none) and each metric as a function of the
    groups (a group's queries are resampled together)."""
    kept = [(w, p) for w, p in items if p in vec]
    if len({w for w, _ in kept}) == len(kept):
        return {"skipped": "no group with two or more embedded recordings"}, {}
    groups = [w for w, _ in kept]
    per = retrieval_per_query(np.stack([vec[p] for _, p in kept]), groups, ks=(k,))
    query_groups = [groups[i] for i in per["query"]]
    order = list(dict.fromkeys(groups))
    metrics = {name: mean_metric(order, query_groups, per[column])
               for name, column in (("map", "ap"), (f"p@{k}", f"p@{k}"), ("mr1", "rank1"))}
    summary: dict[str, Any] = {name: m.full() for name, m in metrics.items()}
    summary.update({"queries": int(per["query"].size), "skipped_queries": len(kept) - int(per["query"].size),
                    "groups": len(set(query_groups))})
    return summary, metrics


def _robustness(clean: list[tuple[str, Path]], degraded: dict[str, list[tuple[str, Path]]],
                vec: dict[Path, np.ndarray]) -> tuple[dict[str, Any], dict[str, TrackMetric]]:
    """Top-1 retrieval of each track's clean excerpt from its degraded copies, among all
    clean excerpts: per degradation, and the mean over the degradations."""
    kept = [(t, p) for t, p in clean if p in vec]
    if len(kept) < 2:
        return {"skipped": "fewer than two clean excerpts embedded"}, {}
    ids = [t for t, _ in kept]
    pos = {t: i for i, t in enumerate(ids)}

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)

    c = unit(np.stack([vec[p] for _, p in kept]).astype(np.float64))
    hits = np.full((len(ids), len(DEGRADATIONS)), np.nan)
    for j, d in enumerate(DEGRADATIONS):
        queries = [(pos[t], p) for t, p in degraded[d.name] if t in pos and p in vec]
        if not queries:
            continue
        rows = np.array([i for i, _ in queries])
        sims = unit(np.stack([vec[p] for _, p in queries]).astype(np.float64)) @ c.T
        own = sims[np.arange(rows.size), rows].copy()
        sims[np.arange(rows.size), rows] = -np.inf
        hits[rows, j] = own > sims.max(axis=1)  # ties count as misses

    def column(j: int) -> TrackMetric:
        ok = ~np.isnan(hits[:, j])
        return mean_metric(ids, [t for t, o in zip(ids, ok, strict=True) if o], hits[ok, j])

    def mean_top1(idx: np.ndarray) -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a degradation without queries: NaN
            return float(np.mean(np.nanmean(hits[idx], axis=0)))

    metrics = {d.name: column(j) for j, d in enumerate(DEGRADATIONS) if not np.isnan(hits[:, j]).all()}
    metrics["mean"] = TrackMetric(ids, mean_top1)
    summary: dict[str, Any] = {name: m.full() for name, m in metrics.items()}
    summary["n_tracks"] = len(ids)
    return summary, metrics


def _degraded_copies(clean: list[tuple[str, Path]], folder: Path, seed: int) -> dict[str, list[tuple[str, Path]]]:
    """(track id, degraded copy) per degradation, written once into ``folder/<name>/``."""
    return {d.name: [(t, write_degraded(p, folder / d.name, d, seed)) for t, p in clean] for d in DEGRADATIONS}


def _interval_table(metrics: dict[str, TrackMetric], config: FreeMusicConfig) -> dict[str, Any]:
    return {key: bootstrap_interval(m, config.resamples, config.seed) for key, m in metrics.items()}


def _differences(system: str, baseline: str, a: dict[str, TrackMetric], b: dict[str, TrackMetric],
                 config: FreeMusicConfig) -> dict[str, Any]:
    """Paired-bootstrap differences system - baseline for every metric both have; ``better``
    is true when the interval lies wholly on the better side of 0 (above it; below it for MR1)."""
    out: dict[str, Any] = {}
    for spec in METRICS:
        if not spec.bootstrap or spec.key not in a or spec.key not in b:
            continue
        d = paired_difference(a[spec.key], b[spec.key], config.resamples, config.seed)
        lo, hi = d["ci"]
        if spec.higher_is_better is None:
            d["better"] = None
        else:
            d["better"] = bool(lo > 0) if spec.higher_is_better else bool(hi < 0)
        out[spec.key] = d
    return {"system": system, "baseline": baseline, "metrics": out}


def evaluate_free_music(
    data_dir: str | os.PathLike,
    systems: Sequence[str | System],
    out_dir: str | os.PathLike,
    config: FreeMusicConfig | None = None,
    device: str | None = None,
    log: Callable[[str], None] | None = None,
    baselines: Sequence[str] = (),
) -> dict[str, Any]:
    """Run every task for every system on ``config.split``; returns the report (see
    :func:`write_report`). ``baselines``: system names (specs) to compare every other
    system with; a baseline spec missing from ``systems`` is added to them."""
    cfg = config or FreeMusicConfig()
    if cfg.excerpt_seconds < cfg.min_excerpt_seconds:
        raise ValueError(f"excerpt_seconds ({cfg.excerpt_seconds:g}) is below min_excerpt_seconds "
                         f"({cfg.min_excerpt_seconds:g})")
    names = [s if isinstance(s, str) else s.name for s in systems]
    systems = list(systems) + [b for b in dict.fromkeys(baselines) if b not in names]
    out = Path(out_dir)
    split = split_tracks(read_manifest(data_dir), cfg.split)
    if not split:
        raise DatasetError(f"free music: no {cfg.split!r} tracks in {Path(data_dir) / 'manifest.csv'} "
                           f"(manifest spellings: {sorted(SPLIT_NAMES[cfg.split])})")
    ids = {t.track_id for t in split}
    covers = [c for c in read_covers(data_dir) if c[0] in ids]
    excerpts, skipped = cut_excerpts(split, out / "excerpts" / f"{cfg.excerpt_seconds:g}s", cfg.excerpt_seconds,
                                     cfg.positions, cfg.min_excerpt_seconds)
    if cfg.classify_seconds:
        central, unreadable = cut_excerpts(split, out / "excerpts" / f"central-{cfg.classify_seconds:g}s",
                                           cfg.classify_seconds, (0.5,), max_share=1.0)
        class_files = dict(central)
    else:
        class_files, unreadable = {t.track_id: t.path for t in split}, {}
    robust_dir = out / "robustness" / f"{cfg.robust_seconds:g}s"
    clean, robust_skipped = cut_excerpts(split, robust_dir / "clean", cfg.robust_seconds, (0.5,),
                                         cfg.min_excerpt_seconds, max_share=1.0)
    degraded = _degraded_copies(clean, robust_dir, cfg.seed)
    files = list(dict.fromkeys([p for _, _, p in covers] + [p for _, p in excerpts] + list(class_files.values())
                               + [p for _, p in clean] + [p for d in degraded.values() for _, p in d]))
    report: dict[str, Any] = {
        "data_dir": os.fspath(data_dir),  # as given: a committed report must not carry this machine's paths
        "split": cfg.split,
        "config": asdict(cfg),
        "counts": {
            "tracks": len(split), "sources": len({t.source for t in split}),
            "excerpt_tracks": len(excerpts) // len(cfg.positions), "excerpt_skipped_tracks": len(skipped),
            "cover_recordings": len(covers), "cover_groups": len({c[0] for c in covers}),
            "robust_tracks": len(clean), "robust_skipped_tracks": len(robust_skipped),
        },
        "degradations": [{"name": d.name, "description": d.description} for d in DEGRADATIONS],
        "excerpt_skipped": skipped,
        "classification_unreadable": unreadable,
        "robustness_skipped": robust_skipped,
        "baselines": list(dict.fromkeys(baselines)),
        "systems": [],
        "differences": [],
    }
    per_system: dict[str, dict[str, TrackMetric]] = {}
    for spec in systems:
        system = load_system(spec, device=device) if isinstance(spec, str) else spec
        emb = embed_files(system, files, cache=out / "cache" / f"{_safe_name(system.name)}.npz", log=log)
        vec = {f: emb.vectors[i] for i, f in enumerate(files) if i not in emb.failed}
        row: dict[str, Any] = {"system": system.name, "dim": int(emb.vectors.shape[1]),
                               "failed_files": sorted(str(files[i]) for i in emb.failed)}
        metrics: dict[str, TrackMetric] = {}
        tasks = (("same_track", _retrieval(excerpts, vec, k=1)),
                 ("covers", _retrieval([(tid, p) for tid, _, p in covers], vec, k=10)))
        features = {tid: vec[p] for tid, p in class_files.items() if p in vec}
        tasks += (("source", _source_classification(features, split, cfg)),
                  ("robustness", _robustness(clean, degraded, vec)))
        for task, (summary, task_metrics) in tasks:
            row[task] = summary
            metrics.update({f"{task}.{name}": m for name, m in task_metrics.items()})
        have = [features[t.track_id] for t in split if t.track_id in features]
        row["spectrum"] = covariance_spectrum(np.stack(have)) if len(have) >= 2 else {
            "skipped": "fewer than two tracks embedded"}
        row["metrics"] = _interval_table(metrics, cfg)
        if "effective_rank" in row["spectrum"]:  # no interval: see MetricSpec.bootstrap
            row["metrics"]["spectrum.effective_rank"] = {"value": row["spectrum"]["effective_rank"], "ci": None}
        per_system[system.name] = metrics
        report["systems"].append(row)
        if log:
            log(f"{system.name}: done")
    done: set[frozenset[str]] = set()
    for baseline in report["baselines"]:
        for name in per_system:
            if name != baseline and frozenset((name, baseline)) not in done:
                done.add(frozenset((name, baseline)))
                report["differences"].append(_differences(name, baseline, per_system[name], per_system[baseline], cfg))
    return report


def _fmt(value: Any, digits: int = 3, sign: bool = False) -> str:
    if not isinstance(value, float) or not np.isfinite(value):
        return "n/a"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _cell(entry: dict[str, Any] | None, spec: MetricSpec, sign: bool = False) -> str:
    """'value [low, high]', bold when a difference is better with its interval beyond 0."""
    if not entry:
        return "n/a"
    if entry["ci"] is None:
        return _fmt(entry["value"], spec.digits, sign)
    lo, hi = entry["ci"]
    text = (f"{_fmt(entry['value'], spec.digits, sign)} [{_fmt(lo, spec.digits, sign)}, "
            f"{_fmt(hi, spec.digits, sign)}]")
    return f"**{text}**" if entry.get("better") else text


def _table(head: str, specs: Sequence[MetricSpec], rows: list[tuple[str, dict[str, Any]]],
           sign: bool = False) -> list[str]:
    lines = [f"| {head} | " + " | ".join(s.label for s in specs) + " |", "|" + " --- |" * (len(specs) + 1)]
    lines += [f"| {name} | " + " | ".join(_cell(m.get(s.key), s, sign) for s in specs) + " |" for name, m in rows]
    return lines


def markdown_table(report: dict[str, Any]) -> str:
    """The report as markdown: the metrics with their 95 % intervals, robustness per
    degradation, and the paired differences from the baselines, with the counts."""
    c = report["counts"]
    cfg = report["config"]
    lines = [f"Split `{report['split']}`: {c['tracks']} tracks of {c['sources']} sources.", ""]
    lines += _table("system", MAIN_METRICS, [(r["system"], r["metrics"]) for r in report["systems"]])
    lines += ["", "Robust top-1 per degradation:", ""]
    lines += _table("system", ROBUST_METRICS + MAIN_METRICS[7:8],
                    [(r["system"], r["metrics"]) for r in report["systems"]])
    if report["differences"]:
        lines += ["", "Differences (system - baseline) with 95 % paired-bootstrap intervals over tracks; bold: "
                  "the interval lies wholly on the better side of 0 (above it; below it for MR1).", ""]
        lines += _table("system - baseline", [s for s in MAIN_METRICS if s.bootstrap],
                        [(f"{d['system']} - {d['baseline']}", d["metrics"]) for d in report["differences"]],
                        sign=True)
    seconds = cfg["classify_seconds"]
    clip = f"its central {seconds:g} s" if seconds else "the whole track"
    lines += ["", f"Same-track pairs: {c['excerpt_tracks']} tracks ({cfg['excerpt_seconds']:g}-s excerpts; skipped, "
              f"too short or unreadable: {c['excerpt_skipped_tracks']}); cover recordings: {c['cover_recordings']} "
              f"of {c['cover_groups']} groups; source probe: {cfg['folds']}-fold cross-validation by track, each "
              f"track represented by {clip}; robustness: {c['robust_tracks']} tracks, central "
              f"{cfg['robust_seconds']:g} s; intervals: {cfg['resamples']} bootstrap resamples of the tracks "
              f"(seed {cfg['seed']})."]
    return "\n".join(lines) + "\n"


def _json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float (an undefined metric) replaced by None (JSON null)."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def report_paths(out_dir: str | os.PathLike, split: str) -> tuple[Path, Path]:
    """Where :func:`write_report` puts the JSON and markdown of ``split``."""
    out = Path(out_dir)
    return out / f"free_music_{split}.json", out / f"free_music_{split}.md"


def write_report(report: dict[str, Any], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``free_music_<split>.json`` and ``free_music_<split>.md`` into ``out_dir``."""
    js, md = report_paths(out_dir, report["split"])
    js.parent.mkdir(parents=True, exist_ok=True)
    js.write_text(json.dumps(_json_safe(report), indent=2, allow_nan=False) + "\n")
    md.write_text(markdown_table(report))
    return js, md
