"""Which MART level for which job: the free-music tasks on each level's vectors.

For every file, a level's clip vector is the mean of that level's segment vectors over the
whole file (level 0: the 4.1-s windows, the vector ``embed`` returns; level n: the 2^n
sub-clips of each window). Two combinations are scored too: ``concat`` (the unit vectors of
all levels side by side) and ``mean`` (the mean of the levels' unit vectors). Each is run
through the free-music tasks of :mod:`.free_music` on one split (same-track retrieval,
covers, source probe, robustness), with the harness's own functions, excerpts, degraded
copies and bootstrap intervals.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..results import EmbedError
from .bootstrap import paired_difference
from .free_music import (
    FreeMusicConfig,
    _degraded_copies,
    _interval_table,
    _retrieval,
    _robustness,
    _source_classification,
    cut_excerpts,
    read_covers,
    read_manifest,
    split_tracks,
)

TASKS = (("same_track.map", "same-track MAP"), ("same_track.p@1", "same-track P@1"), ("covers.map", "covers MAP"),
         ("robustness.mean", "robust top-1 (mean of 7)"), ("source.accuracy", "source accuracy"),
         ("source.roc_auc", "source ROC-AUC"))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def level_vectors(model, files: list[Path], cache: str | os.PathLike | None = None,
                  log: Callable[[str], None] | None = None) -> dict[Path, np.ndarray]:
    """File -> (levels, D) per-level clip vectors (mean of each level's segments), with an
    ``.npz`` cache keyed by the model's fingerprint; files that cannot be decoded are left out."""
    store: dict[str, np.ndarray] = {}
    cache_path = Path(cache) if cache else None
    if cache_path and cache_path.is_file():
        with np.load(cache_path, allow_pickle=False) as z:
            if str(z["fingerprint"]) == model.fingerprint():
                store = dict(zip(z["keys"].tolist(), z["vectors"], strict=True))
    todo = [f for f in files if str(f) not in store]
    for start in range(0, len(todo), 32):
        chunk = todo[start:start + 32]
        try:
            results = model.embed(chunk, hierarchical=True, progress=False)
        except EmbedError as e:  # the others are kept
            results = e.results
        for f, e in zip(chunk, results, strict=True):
            if e is not None:
                store[str(f)] = np.stack([lv.vectors.mean(axis=0) for lv in e.levels]).astype(np.float32)
        if log:
            log(f"levels: embedded {min(start + 32, len(todo))}/{len(todo)} files")
    if cache_path and todo and store:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_name(cache_path.name + ".tmp.npz")
        keys = list(store)
        np.savez(tmp, keys=np.asarray(keys, dtype=str), vectors=np.stack([store[k] for k in keys]),
                 fingerprint=np.asarray(model.fingerprint()))
        os.replace(tmp, cache_path)
    return {f: store[str(f)] for f in files if str(f) in store}


def variants(per_level: dict[Path, np.ndarray]) -> dict[str, dict[Path, np.ndarray]]:
    """The vectors to score: each level alone, ``concat`` and ``mean`` of the levels' unit vectors."""
    n = next(iter(per_level.values())).shape[0]
    out = {f"level {k}": {f: v[k] for f, v in per_level.items()} for k in range(n)}
    out["concat"] = {f: _unit(v.astype(np.float64)).reshape(-1) for f, v in per_level.items()}
    out["mean"] = {f: _unit(v.astype(np.float64)).mean(axis=0) for f, v in per_level.items()}
    return out


def evaluate_levels(model, data_dir: str | os.PathLike, work_dir: str | os.PathLike,
                    config: FreeMusicConfig | None = None, cache: str | os.PathLike | None = None,
                    log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The free-music tasks for every variant of :func:`variants`: {variant: {metric: {value, ci}}}."""
    cfg = config or FreeMusicConfig()
    out = Path(work_dir)
    split = split_tracks(read_manifest(data_dir), cfg.split)
    ids = {t.track_id for t in split}
    covers = [c for c in read_covers(data_dir) if c[0] in ids]
    excerpts, _ = cut_excerpts(split, out / "excerpts" / f"{cfg.excerpt_seconds:g}s", cfg.excerpt_seconds,
                               cfg.positions, cfg.min_excerpt_seconds)
    central, _ = cut_excerpts(split, out / "excerpts" / f"central-{cfg.classify_seconds:g}s",
                              cfg.classify_seconds or 30.0, (0.5,), max_share=1.0)
    robust_dir = out / "robustness" / f"{cfg.robust_seconds:g}s"
    clean, _ = cut_excerpts(split, robust_dir / "clean", cfg.robust_seconds, (0.5,), cfg.min_excerpt_seconds,
                            max_share=1.0)
    degraded = _degraded_copies(clean, robust_dir, cfg.seed)
    files = list(dict.fromkeys([p for _, _, p in covers] + [p for _, p in excerpts] + [p for _, p in central]
                               + [p for _, p in clean] + [p for d in degraded.values() for _, p in d]))
    per_level = level_vectors(model, files, cache, log)
    class_files = dict(central)
    report: dict[str, Any] = {"split": cfg.split, "tracks": len(split), "files": len(files),
                              "embedded": len(per_level), "variants": {}, "differences": {}}
    scored: dict[str, dict[str, Any]] = {}
    for name, vec in variants(per_level).items():
        metrics = {}
        for task, (_, task_metrics) in (
                ("same_track", _retrieval(excerpts, vec, k=1)),
                ("covers", _retrieval([(tid, p) for tid, _, p in covers], vec, k=10)),
                ("source", _source_classification({t: vec[p] for t, p in class_files.items() if p in vec}, split, cfg)),
                ("robustness", _robustness(clean, degraded, vec))):
            metrics.update({f"{task}.{m}": v for m, v in task_metrics.items()})
        table = _interval_table({k: metrics[k] for k, _ in TASKS if k in metrics}, cfg)
        report["variants"][name] = table
        scored[name] = metrics
        if log:
            log(f"levels: {name} done")
    base = scored.get("level 0", {})
    for name, metrics in scored.items():
        if name != "level 0":
            report["differences"][name] = {
                k: paired_difference(metrics[k], base[k], cfg.resamples, cfg.seed)
                for k, _ in TASKS if k in metrics and k in base}
    report["recommendations"] = recommend(report)
    return report


TASK_OF = {"same_track.map": "same_track", "covers.map": "covers", "robustness.mean": "robustness",
           "source.roc_auc": "source"}
"""The metric each recommendation is made on."""


def recommend(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per task: the variant whose paired difference from level 0 lies wholly above 0 with the
    highest value, else level 0 (no other is better beyond the intervals), with one line of advice."""
    out = {}
    for key, task in TASK_OF.items():
        better = [(d[key]["value"], name) for name, d in report["differences"].items()
                  if key in d and d[key]["ci"][0] > 0]
        label = dict(TASKS)[key]
        if better:
            value, name = max(better)
            d = report["differences"][name][key]
            advice = (f"{name} ({label} +{value:.3f} over level 0, 95 % paired interval "
                      f"[{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}])")
        else:
            name = "level 0"
            advice = f"level 0 (the default): no level or combination beats it on {label} beyond its 95 % interval"
        out[task] = {"vectors": name, "metric": key, "advice": advice}
    return out


def best_per_task(report: dict[str, Any]) -> dict[str, str]:
    """Metric -> the variant with the highest value."""
    out = {}
    for key, _ in TASKS:
        scored = [(v[key]["value"], name) for name, v in report["variants"].items() if key in v]
        if scored:
            out[key] = max(scored)[1]
    return out


def markdown(report: dict[str, Any]) -> str:
    """The variants x tasks table with 95 % intervals; the best value of each column in bold."""
    best = best_per_task(report)
    lines = ["| vectors | " + " | ".join(label for _, label in TASKS) + " |", "|---|" + "---|" * len(TASKS)]
    for name, v in report["variants"].items():
        cells = []
        for key, _ in TASKS:
            m = v.get(key)
            if not m:
                cells.append("n/a")
                continue
            text = f"{m['value']:.3f}" + (f" [{m['ci'][0]:.3f}, {m['ci'][1]:.3f}]" if m.get("ci") else "")
            cells.append(f"**{text}**" if best.get(key) == name else text)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if report.get("differences"):
        lines += ["", "Paired differences from level 0, 95 % bootstrap interval over tracks:", "",
                  "| vectors − level 0 | " + " | ".join(label for _, label in TASKS) + " |",
                  "|---|" + "---|" * len(TASKS)]
        for name, d in report["differences"].items():
            lines.append(f"| {name} | " + " | ".join(
                f"{d[k]['value']:+.3f} [{d[k]['ci'][0]:+.3f}, {d[k]['ci'][1]:+.3f}]" if k in d else "n/a"
                for k, _ in TASKS) + " |")
    if report.get("recommendations"):
        lines += [""] + [f"- {task}: {r['advice']}" for task, r in report["recommendations"].items()]
    return "\n".join(lines) + "\n"
