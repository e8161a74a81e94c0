"""Fit and check a model's similarity calibration on the held-out-source ``select`` split.

Pairs of recordings, each with the relation of :mod:`musicembed.calibration` that holds
between them, built with the free-music harness (:mod:`.free_music`; its excerpts and
degraded copies are reused from ``work_dir`` when present):

- ``same_recording``: a track's central ``robust_seconds`` and each of its copies under the
  degradations of :mod:`.degrade`;
- ``same_track``: the two ``excerpt_seconds`` excerpts of a track (at 25 % and 75 %);
- ``cover``: two renders of one score (the whole files of a ``covers.csv`` group);
- ``same_source``: the 25 % excerpt of one track and the 75 % excerpt of another of its source;
- ``unrelated``: the same for two tracks of different sources.

Every vector is a clip vector as ``Model.embed`` (and so ``compare`` and ``search``) returns
it: the mean over the model's windows of the whole file given. The likelihood of a cosine
similarity under each relation is a Gaussian kernel density (Silverman's bandwidth) on a
grid; :class:`musicembed.calibration.Calibration` turns it into probabilities under a prior.

Checked by leave-one-source-out cross-validation: for each source, the likelihoods are fitted
on the pairs that involve none of its tracks and tested on the pairs that involve one (an
unrelated pair is tested in the fold of its first source in sorted order). The covers of the split all
come from one source (a music21 composer): in its fold no cover pairs remain for fitting, so
there the cover likelihood is fitted on the covers of the source's other scores (leave one
score out), which this report states. Figures are weighted so that every relation counts
equally, the evaluation prior matching the calibration's default uniform prior.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..calibration import CALIBRATION_FORMAT, CALIBRATION_VERSION, RELATIONS, Calibration, uniform_prior
from .embeddings import embed_files
from .free_music import FreeMusicConfig, _degraded_copies, cut_excerpts, read_covers, read_manifest, split_tracks
from .systems import System

GRID_POINTS = 401
ECE_BINS = 10
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
TARGET_ECE = 0.05
TARGET_PRECISION = 0.95  # "same recording" at its threshold


@dataclass
class Pairs:
    """Pairs of files ``a``/``b`` (indices into ``files``) with their relation index (into
    :data:`RELATIONS`), the cross-validation fold of each side's track, and a group (the
    cover group's track id for covers, else '')."""

    files: list[Path]
    a: np.ndarray
    b: np.ndarray
    relation: np.ndarray
    fold_a: np.ndarray
    fold_b: np.ndarray
    group: np.ndarray
    folds: list[str]


def build_pairs(data_dir: str | os.PathLike, work_dir: str | os.PathLike,
                config: FreeMusicConfig | None = None) -> Pairs:
    """The calibration pairs of ``config.split`` (default ``select``): see the module docstring."""
    cfg = config or FreeMusicConfig()
    out = Path(work_dir)
    split = split_tracks(read_manifest(data_dir), cfg.split)
    ids = {t.track_id for t in split}
    source = {t.track_id: t.source for t in split}
    folds = sorted({t.source for t in split})
    fold = {tid: folds.index(s) for tid, s in source.items()}
    excerpts, _ = cut_excerpts(split, out / "excerpts" / f"{cfg.excerpt_seconds:g}s", cfg.excerpt_seconds,
                               cfg.positions, cfg.min_excerpt_seconds)
    clean, _ = cut_excerpts(split, out / "robustness" / f"{cfg.robust_seconds:g}s" / "clean", cfg.robust_seconds,
                            (0.5,), cfg.min_excerpt_seconds, max_share=1.0)
    degraded = _degraded_copies(clean, out / "robustness" / f"{cfg.robust_seconds:g}s", cfg.seed)
    covers = [c for c in read_covers(data_dir) if c[0] in ids]

    files: list[Path] = []
    index: dict[Path, int] = {}

    def at(p: Path) -> int:
        if p not in index:
            index[p] = len(files)
            files.append(p)
        return index[p]

    rows: list[tuple[int, int, int, str, str, str]] = []  # a, b, relation, track a, track b, group
    rec, trk, cov, src, unr = (RELATIONS.index(r) for r in RELATIONS)
    clean_of = dict(clean)
    for d in degraded.values():
        rows += [(at(clean_of[t]), at(p), rec, t, t, "") for t, p in d]
    first: dict[str, Path] = {}
    second: dict[str, Path] = {}
    for t, p in excerpts:
        (second if t in first else first)[t] = p
    both = sorted(t for t in first if t in second)
    rows += [(at(first[t]), at(second[t]), trk, t, t, "") for t in both]
    groups: dict[str, list[Path]] = {}
    for t, _, p in covers:
        groups.setdefault(t, []).append(p)
    for t, ps in sorted(groups.items()):
        rows += [(at(x), at(y), cov, t, t, t) for x, y in itertools.combinations(ps, 2)]
    for s, t in itertools.combinations(both, 2):
        rows.append((at(first[s]), at(second[t]), src if source[s] == source[t] else unr, s, t, ""))
    a, b, r, ta, tb, g = zip(*rows, strict=True)
    return Pairs(files=files, a=np.array(a), b=np.array(b), relation=np.array(r),
                 fold_a=np.array([fold[t] for t in ta]), fold_b=np.array([fold[t] for t in tb]),
                 group=np.array(g), folds=folds)


def pair_similarities(pairs: Pairs, system: System, cache: str | os.PathLike | None,
                      log: Callable[[str], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(cosine similarity of every pair, mask of the pairs whose two files were embedded)."""
    emb = embed_files(system, pairs.files, cache=cache, log=log)
    v = emb.vectors.astype(np.float64)
    v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    ok = emb.ok[pairs.a] & emb.ok[pairs.b]
    sims = np.where(ok, np.einsum("ij,ij->i", np.nan_to_num(v[pairs.a]), np.nan_to_num(v[pairs.b])), np.nan)
    return sims, ok


def make_grid(sims: np.ndarray) -> np.ndarray:
    """The similarity grid: from a little below the lowest similarity seen to a little above the highest."""
    lo, hi = float(np.nanmin(sims)), float(np.nanmax(sims))
    pad = 0.05 * max(hi - lo, 1e-3)
    return np.linspace(max(-1.0, lo - pad), min(1.0, hi + pad), GRID_POINTS)


def log_density(x: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Log of a Gaussian kernel density of ``x`` on ``grid`` (Silverman's bandwidth, at least
    one grid step), with a floor of 1e-9 of its peak so that no similarity is impossible."""
    x = np.asarray(x, np.float64)
    step = grid[1] - grid[0]
    if x.size < 2:
        h = 10 * step
    else:
        iqr = np.subtract(*np.percentile(x, [75, 25]))
        spread = min(np.std(x), iqr / 1.34) if iqr > 0 else np.std(x)
        h = max(0.9 * spread * x.size ** -0.2, step)
    dens = np.exp(-0.5 * ((grid[:, None] - x[None, :]) / h) ** 2).sum(axis=1) / (x.size * h * np.sqrt(2 * np.pi))
    return np.log(dens + 1e-9 * dens.max())


TEMPERATURES = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)
ABSENT = -1e6  # log-likelihood of a relation without pairs to fit (it is never reported)


def fit(sims: np.ndarray, relation: np.ndarray, grid: np.ndarray, temperature: float = 1.0,
        override: dict[int, np.ndarray] | None = None) -> Calibration:
    """A calibration from similarities with their relations (``override``: relation index ->
    similarities to fit that relation on instead). A relation without pairs gets a likelihood
    of ~0 everywhere: it is never reported."""
    ll = {}
    for k, r in enumerate(RELATIONS):
        x = override[k] if override and k in override else sims[relation == k]
        ll[r] = log_density(x, grid).tolist() if x.size else [ABSENT] * grid.size
    return Calibration({"format": CALIBRATION_FORMAT, "format_version": CALIBRATION_VERSION,
                        "model_fingerprint": "", "grid": grid.tolist(), "log_likelihood": ll,
                        "default_prior": uniform_prior(), "temperature": temperature})


def _weights(relation: np.ndarray) -> np.ndarray:
    """Per-pair weights that give every relation present the same total (sum 1)."""
    counts = np.bincount(relation, minlength=len(RELATIONS)).astype(np.float64)
    present = counts > 0
    w = np.zeros(relation.size)
    for k in np.flatnonzero(present):
        w[relation == k] = 1.0 / (counts[k] * present.sum())
    return w


def scores(cal: Calibration, sims: np.ndarray) -> np.ndarray:
    """The "at least" probabilities (N, relations) of each similarity under the default prior."""
    return np.array([[cal.at_least(float(s))[r] for r in RELATIONS] for s in sims]).reshape(-1, len(RELATIONS))


def report_relation(cum: np.ndarray, sims: np.ndarray, floor: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """(reported relation index, its probability) from "at least" probabilities, as
    :meth:`Calibration.relation` decides; ``floor``: the similarity floor of ``same_recording``
    (a number or one per pair; None: none)."""
    rel = np.full(len(cum), len(RELATIONS) - 1)
    prob = 1.0 - cum[:, len(RELATIONS) - 2]
    for k in range(len(RELATIONS) - 2, -1, -1):  # least specific first: the most specific one that holds wins
        hold = cum[:, k] >= 0.5
        if k == 0 and floor is not None:
            hold &= sims >= floor
        rel[hold], prob[hold] = k, cum[hold, k]
    return rel, prob


def expected_calibration_error(conf: np.ndarray, correct: np.ndarray, weight: np.ndarray,
                               bins: int = ECE_BINS) -> float:
    """Weighted ECE: sum over equal-width confidence bins of (bin weight) x |accuracy - confidence|."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    total = weight.sum()
    ece = 0.0
    for k in range(bins):
        m = which == k
        wk = weight[m].sum()
        if wk > 0:
            ece += wk / total * abs(np.average(correct[m], weights=weight[m]) - np.average(conf[m], weights=weight[m]))
    return float(ece)


def precision_recall(truth: np.ndarray, pred: np.ndarray, w: np.ndarray) -> tuple[float | None, float | None]:
    """Weighted precision and recall of boolean predictions."""
    tp, fp, fn = (float(np.sum(w * m)) for m in (pred & truth, pred & ~truth, ~pred & truth))
    return (tp / (tp + fp) if tp + fp > 0 else None), (tp / (tp + fn) if tp + fn > 0 else None)


def evaluate(rel_true: np.ndarray, cum: np.ndarray, sims: np.ndarray, floor: Any = None) -> dict[str, Any]:
    """ECE of the reported relation's probability, its accuracy, and per relation the binary ECE
    of its "at least" probability and the precision and recall of reporting at least it
    (relation-balanced weights)."""
    w = _weights(rel_true)
    rel_pred, prob = report_relation(cum, sims, floor)
    correct = np.where(rel_pred == len(RELATIONS) - 1, rel_true == rel_pred, rel_true <= rel_pred).astype(float)
    out: dict[str, Any] = {"ece": expected_calibration_error(prob, correct, w), "accuracy": float(np.sum(w * correct)),
                           "relations": {}}
    for k, r in enumerate(RELATIONS[:-1]):
        truth = rel_true <= k
        precision, recall = precision_recall(truth, rel_pred <= k, w)
        out["relations"][r] = {"precision": precision, "recall": recall,
                               "ece": expected_calibration_error(cum[:, k], truth.astype(float), w)}
    return out


def out_of_fold(pairs: Pairs, sims: np.ndarray, usable: np.ndarray, grid: np.ndarray, temperature: float,
                folds: list[int] | None = None, notes: list[str] | None = None) -> np.ndarray:
    """Leave-one-source-out "at least" probabilities (N, relations; NaN rows: not tested) of the
    ``usable`` pairs, over ``folds`` (default: every source). A relation with no pairs outside
    a held-out source is fitted on that source's other groups (leave one group out), and
    ``notes`` says so; one with no pairs at all is left out."""
    cum = np.full((sims.size, len(RELATIONS)), np.nan)
    keep = set(range(len(pairs.folds)) if folds is None else folds)
    inside = usable & np.isin(pairs.fold_a, list(keep)) & np.isin(pairs.fold_b, list(keep))
    first = np.minimum(pairs.fold_a, pairs.fold_b)
    for f in sorted(keep):
        touches = (pairs.fold_a == f) | (pairs.fold_b == f)
        train = inside & ~touches
        test = np.flatnonzero(inside & (first == f))
        if not test.size:
            continue
        own = inside & touches
        missing = [k for k in range(len(RELATIONS))
                   if not np.any(pairs.relation[train] == k) and np.any(pairs.relation[own] == k)]
        if not missing:
            cum[test] = scores(fit(sims[train], pairs.relation[train], grid, temperature), sims[test])
            continue
        if notes is not None:
            notes.append(f"{pairs.folds[f]}: no {', '.join(RELATIONS[k] for k in missing)} pairs outside this source; "
                         "in its fold those likelihoods were fitted on the source's other groups (leave one group out)")
        for g in np.unique(pairs.group[test]):
            sub = test[pairs.group[test] == g]
            override = {k: sims[own & (pairs.relation == k) & (pairs.group != g)] for k in missing}
            cum[sub] = scores(fit(sims[train], pairs.relation[train], grid, temperature, override), sims[sub])
    return cum


def choose_temperature(pairs: Pairs, sims: np.ndarray, usable: np.ndarray, grid: np.ndarray,
                       folds: list[int]) -> float:
    """The temperature of :data:`TEMPERATURES` with the lowest leave-one-source-out ECE over ``folds``."""
    best, best_ece = 1.0, np.inf
    for t in TEMPERATURES:
        cum = out_of_fold(pairs, sims, usable, grid, t, folds)
        m = ~np.isnan(cum[:, 0])
        ece = evaluate(pairs.relation[m], cum[m], sims[m])["ece"]
        if ece < best_ece - 1e-9:
            best, best_ece = t, ece
    return best


def choose_floor(rel_true: np.ndarray, sims: np.ndarray, target: float = TARGET_PRECISION) -> float | None:
    """The lowest similarity from which "same recording" (similarity >= it) reaches ``target``
    precision on these pairs, relations weighted equally (None: no similarity does)."""
    w = _weights(rel_true)
    truth = rel_true == 0
    for s in np.unique(sims[truth]):
        precision, _ = precision_recall(truth, sims >= s, w)
        if precision is not None and precision >= target:
            return float(s)
    return None


def cross_validate(pairs: Pairs, sims: np.ndarray, ok: np.ndarray, grid: np.ndarray) -> dict[str, Any]:
    """Nested leave-one-source-out check of the whole procedure: for each held-out source the
    temperature is chosen by an inner leave-one-source-out over the other sources, the
    likelihoods are fitted on the other sources, and the similarity floor of
    ``same_recording`` is the lowest that gives the precision target on the other sources'
    pairs. Returns the pooled and per-source figures, and the temperature and floor the full
    data choose (for the shipped calibration)."""
    n_folds = len(pairs.folds)
    notes: list[str] = []
    cum = np.full((sims.size, len(RELATIONS)), np.nan)
    chosen = {}
    for f in range(n_folds):
        others = [g for g in range(n_folds) if g != f]
        t = choose_temperature(pairs, sims, ok, grid, others)
        part = out_of_fold(pairs, sims, ok, grid, t, notes=notes if f == 0 else None)
        first = np.minimum(pairs.fold_a, pairs.fold_b)
        cum[first == f] = part[first == f]
        chosen[pairs.folds[f]] = {"temperature": t}
    # the similarity floor of same_recording: chosen on the other sources' pairs, applied to this one
    first = np.minimum(pairs.fold_a, pairs.fold_b)
    tested = ~np.isnan(cum[:, 0])
    floor_of = np.full(sims.size, np.inf)
    for f in range(n_folds):
        other = ok & (pairs.fold_a != f) & (pairs.fold_b != f)
        floor = choose_floor(pairs.relation[other], sims[other])
        chosen[pairs.folds[f]]["same_recording_floor"] = floor
        floor_of[first == f] = np.inf if floor is None else floor
    per_fold = {}
    summary = evaluate(pairs.relation[tested], cum[tested], sims[tested], floor_of[tested])
    for f, name in enumerate(pairs.folds):
        m = tested & (first == f)
        if m.any():
            per_fold[name] = {"pairs": int(m.sum()), **evaluate(pairs.relation[m], cum[m], sims[m], floor_of[m]),
                              **chosen[name]}
    temperature = choose_temperature(pairs, sims, ok, grid, list(range(n_folds)))
    floor = choose_floor(pairs.relation[ok], sims[ok])
    return {"summary": summary, "folds": per_fold, "notes": notes, "pairs": int(tested.sum()),
            "temperature": temperature, "same_recording_floor": floor,
            "targets": {"ece": TARGET_ECE, "same_recording_precision": TARGET_PRECISION}}


def distributions(sims: np.ndarray, relation: np.ndarray) -> dict[str, Any]:
    """Per relation: the number of pairs, mean and quantiles of the similarity."""
    out = {}
    for k, r in enumerate(RELATIONS):
        x = sims[relation == k]
        out[r] = {"pairs": int(x.size), "mean": float(np.mean(x)) if x.size else None,
                  "quantiles": {f"{q:g}": float(np.quantile(x, q)) for q in QUANTILES} if x.size else None}
    return out


def calibrate(system: System, model_fingerprint: str, data_dir: str | os.PathLike, work_dir: str | os.PathLike,
              cache: str | os.PathLike | None = None, config: FreeMusicConfig | None = None,
              log: Callable[[str], None] | None = None) -> tuple[Calibration, dict[str, Any]]:
    """Build the pairs, embed them, fit the shipped calibration on all of them and cross-validate
    it; returns (the calibration, its report: counts, distributions, cross-validation)."""
    cfg = config or FreeMusicConfig()
    pairs = build_pairs(data_dir, work_dir, cfg)
    sims, ok = pair_similarities(pairs, system, cache, log)
    grid = make_grid(sims[ok])
    cv = cross_validate(pairs, sims, ok, grid)
    cal = fit(sims[ok], pairs.relation[ok], grid, cv["temperature"])
    dist = distributions(sims[ok], pairs.relation[ok])
    data = (f"split {cfg.split!r} of the free-music data (whole sources held out from training: "
            f"{', '.join(pairs.folds)}); same recording: central {cfg.robust_seconds:g} s vs its degraded copies; "
            f"same track, same source, unrelated: {cfg.excerpt_seconds:g}-s excerpts at 25 % and 75 %; "
            "cover: whole renders of one score")
    floor = cv["same_recording_floor"]
    cal.doc.update({"min_similarity": {"same_recording": 1.0 if floor is None else round(floor, 6)},
                    "model_fingerprint": model_fingerprint, "similarity": "cosine of clip vectors (mean over windows)",
                    "data": data, "pairs": {r: d["pairs"] for r, d in dist.items()}, "distributions": dist,
                    "cross_validation": {"method": "nested leave one source out", "summary": cv["summary"],
                                         "notes": cv["notes"], "pairs": cv["pairs"]}})
    cal.doc["grid"] = [round(x, 6) for x in cal.doc["grid"]]
    cal.doc["log_likelihood"] = {r: [round(x, 4) for x in v] for r, v in cal.doc["log_likelihood"].items()}
    cal = Calibration(cal.doc)  # as it will be read back (rounded)
    thresholds = {r: cal.threshold(r) for r in RELATIONS[:-1]}
    cal.doc["thresholds"] = thresholds
    report = {"data": data, "folds": pairs.folds, "distributions": dist, "cross_validation": cv,
              "thresholds": thresholds, "failed_files": int((~ok).sum())}
    return cal, report


def markdown(report: dict[str, Any]) -> str:
    """The calibration report as markdown tables: distributions, thresholds, cross-validated figures."""
    dist, cv = report["distributions"], report["cross_validation"]

    def f(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    qs = [f"{q:g}" for q in QUANTILES]
    lines = ["| relation | pairs | mean | " + " | ".join(f"q{float(q) * 100:g}" for q in qs) + " |",
             "|---|---:|---:|" + "---:|" * len(qs)]
    for r in RELATIONS:
        d = dist[r]
        lines.append(f"| {r.replace('_', ' ')} | {d['pairs']} | {f(d['mean'])} | "
                     + " | ".join(f(d['quantiles'][q] if d['quantiles'] else None) for q in qs) + " |")
    s = cv["summary"]
    lines += ["", f"Nested leave-one-source-out ({', '.join(report['folds'])}; {cv['pairs']} pairs, every "
              f"relation weighted equally, i.e. the uniform prior): ECE of the reported relation's probability "
              f"**{s['ece']:.3f}** (target <= {TARGET_ECE}), accuracy of the reported relation {s['accuracy']:.3f}. "
              f"Shipped: temperature {cv['temperature']:g}, same-recording similarity floor "
              f"{f(cv['same_recording_floor'])}.", "",
              "| at least | shipped threshold (cosine, uniform prior) | cross-validated precision | recall | binary ECE |",
              "|---|---:|---:|---:|---:|"]

    for r in RELATIONS[:-1]:
        m = s["relations"][r]
        lines.append(f"| {r.replace('_', ' ')} | {f(report['thresholds'][r])} | {f(m['precision'])} | "
                     f"{f(m['recall'])} | {f(m['ece'])} |")
    lines += ["", "Per held-out source: " + "; ".join(
        f"{name}: ECE {v['ece']:.3f}, same-recording precision {f(v['relations']['same_recording']['precision'])} "
        f"recall {f(v['relations']['same_recording']['recall'])} (temperature {v['temperature']:g}, floor "
        f"{f(v['same_recording_floor'])})" for name, v in cv["folds"].items()) + "."]
    lines += [f"Note: {n}." for n in cv["notes"]]
    return "\n".join(lines) + "\n"


def register(name: str, calibration: str | os.PathLike, manifest_path: str | os.PathLike) -> dict[str, Any]:
    """List ``calibration`` (a file inside the package) in manifest entry ``name`` with its
    sha256 and size, replacing an earlier calibration entry; returns the file entry."""
    import json

    from ..hub import sha256_file

    mpath = Path(manifest_path)
    manifest = json.loads(mpath.read_text())
    entry = manifest["models"][name]
    cal = Path(calibration)
    rel = cal.resolve().relative_to(mpath.resolve().parent).as_posix()
    item = {"name": cal.name, "path": rel, "sha256": sha256_file(cal), "size": cal.stat().st_size}
    entry["files"] = [f for f in entry["files"] if f.get("name") != cal.name] + [item]
    mpath.write_text(json.dumps(manifest, indent=2) + "\n")
    return item

