"""Pictures of what a model sees: per-frame importance (PEMR), level structure (MART), catalog maps.

The numbers are computed without matplotlib (:func:`pemr_importance`, :func:`mart_structure`,
:func:`project`); the figures need it (``pip install "musicembed[plot]"``).

PEMR importance comes from one of two sources, and the figure's title says which:

- **mask generator** (``masks=`` a training run or checkpoint of ``musicembed train``): the
  attention of the [CLS] token to each log-mel frame in the last layer of PEMR's mask-
  generating transformer, the scores its positive and negative masks are cut from (eq. 4 of
  the paper; one view, so both CLS queries see the same frames). Values are scaled so that
  1 means "as much as a uniform share"; the lowest-scoring ``ratio`` of frames, those the
  positive mask would replace, are marked.
- **occlusion** (the fallback; inference weights hold only the encoder): each segment of
  ``segment_seconds`` of every window is replaced by the window's mean level (what PEMR's
  learned MASK frame starts as) and the window re-encoded; the importance is the drop in
  cosine similarity between the window's vector and the clip vector.

MART's picture shows each level's segments (level 0: the model's clips, then halves, ...)
coloured by the cosine similarity of the segment's vector to the whole: the clip vector of
the excerpt (the mean of its level-0 vectors).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import MusicEmbedError
from .windows import cut

DEFAULT_SIZE = (1400, 800)  # pixels
DPI = 100


class PlotError(MusicEmbedError):
    """matplotlib (or umap-learn) is missing, or a figure cannot be made."""


# ----------------------------------------------------------------------------- audio and windows


def _excerpt(model, audio, sample_rate: int | None, start: float, duration: float | None) -> tuple[np.ndarray, float]:
    """Mono audio at the model's rate, from ``start`` s for ``duration`` s (None or 0: to the end)."""
    from .audio import load_audio

    x = load_audio(audio, model.sample_rate, source_rate=sample_rate)
    sr = model.sample_rate
    a = max(0, int(round(start * sr)))
    if a >= len(x):
        raise ValueError(f"--start {start:g} s is past the end of the audio ({len(x) / sr:.2f} s)")
    b = len(x) if not duration else min(len(x), a + int(round(duration * sr)))
    return x[a:b], a / sr


def _unit(v: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(v.float(), dim=-1)


# ----------------------------------------------------------------------------- PEMR


@dataclass
class FrameImportance:
    """Per-frame importance of an excerpt: ``times`` (frame centres, s from the file's start),
    ``values``; ``method`` is "mask-generator" or "occlusion"; ``masked`` marks the frames the
    positive mask would replace (mask generator only); ``window_starts`` in seconds."""

    times: np.ndarray
    values: np.ndarray
    method: str
    window_starts: np.ndarray
    window_seconds: float
    masked: np.ndarray | None = None
    ratio: float | None = None
    segment_seconds: float | None = None


def load_mask_generator(path: str | os.PathLike, model):
    """PEMR's mask-generating transformer from a ``musicembed train`` run folder (its newest
    checkpoint) or one checkpoint folder (``RUN/checkpoints/step-N``). Returns (generator, ratio)."""
    from safetensors.torch import load_file

    from .train.config import TrainConfig
    from .train.masks import MaskGenerator
    from .train.objectives import PEMRObjectiveConfig

    p = Path(path)
    if (p / "run.json").is_file():
        run_dir = p
        found = sorted(c for c in (p / "checkpoints").glob("step-*") if (c / "module.safetensors").is_file())
        if not found:
            raise MusicEmbedError(f"{p}: training run has no checkpoints")
        ckpt = found[-1]
    elif (p / "module.safetensors").is_file():
        ckpt, run_dir = p, p.parent.parent
    else:
        raise MusicEmbedError(f"{p}: expected a `musicembed train` run folder (run.json) or a checkpoint folder "
                              "(module.safetensors)")
    cfg = TrainConfig.load(run_dir)
    if cfg.method != "pemr":
        raise MusicEmbedError(f"{p}: a {cfg.method} run has no PEMR mask generator")
    run_model = cfg.model_config()
    if run_model.frontend != model.config.frontend:
        raise MusicEmbedError(f"{p}: the run's log-mel frontend differs from the model's ({model.name}); "
                              "its mask generator was trained on other frames")
    obj = PEMRObjectiveConfig(**cfg.objective)
    state = {k[len("masks."):]: v for k, v in load_file(str(ckpt / "module.safetensors")).items()
             if k.startswith("masks.")}
    if not state:
        raise MusicEmbedError(f"{ckpt}: no mask-generator weights (the run used mask mode {obj.mask!r})")
    gen = MaskGenerator(run_model.frontend.n_mels, obj.layers, obj.heads, obj.head_dim, obj.ff_dim,
                        dropout=obj.dropout)
    gen.load_state_dict(state)
    return gen.eval(), obj.ratio


@torch.inference_mode()
def pemr_importance(model, audio, sample_rate: int | None = None, *, start: float = 0.0,
                    duration: float | None = None, masks=None, ratio: float = 0.1,
                    segment_seconds: float = 0.25) -> FrameImportance:
    """Per-frame importance of a PEMR model on an excerpt of ``audio`` (see module docstring).

    ``masks`` is a :class:`~musicembed.train.masks.MaskGenerator` (see
    :func:`load_mask_generator`) or None for occlusion importance.
    """
    if model.config.method != "pemr":
        raise ValueError(f"frame importance is for PEMR models; {model.name!r} is {model.config.method}")
    x, offset = _excerpt(model, audio, sample_rate, start, duration)
    sr, window, hop = model.sample_rate, model.config.window_samples, model.config.frontend.hop_length
    net = model.net
    dev = model.device
    wins = cut(x, window)
    waves = torch.from_numpy(np.stack([w for _, w in wins])).to(dev)
    mels = net.frontend(waves)  # (W, n_mels, L)
    n_frames = mels.shape[-1]
    # Frames of each window that are new (the end-aligned tail window overlaps the one before it).
    keep_from = [0] * len(wins)
    for j in range(1, len(wins)):
        prev_end = wins[j - 1][0] + window
        keep_from[j] = max(0, int(np.ceil((prev_end - wins[j][0]) / hop)))
    # ... and up to this window's end (the next window's first frame sits on this one's last).
    stop_at = [(wins[j][0] + window) / sr if j + 1 < len(wins) else np.inf for j in range(len(wins))]
    times, values, masked = [], [], []
    if masks is not None:
        masks = masks.to(dev).eval()
        frames, _, _ = masks.standardize(mels)
        s = masks.scores(frames, frames)  # (W, L), each row sums to the head count
        s = (s * n_frames / s.sum(dim=1, keepdim=True)).cpu().numpy()
        k = int(ratio * n_frames)
        low = np.zeros_like(s, dtype=bool)
        if k > 0:
            idx = np.argsort(s, axis=1, kind="stable")[:, :k]
            np.put_along_axis(low, idx, True, axis=1)
        method = "mask-generator"
        seg_s = None
    else:
        vecs = net.encoder(mels)  # (W, D)
        clip = _unit(vecs.mean(dim=0, keepdim=True))
        base = (_unit(vecs) @ clip.T)[:, 0]  # (W,)
        n_seg = max(1, int(round(n_frames / max(1.0, segment_seconds * sr / hop))))
        edges = np.linspace(0, n_frames, n_seg + 1).round().astype(int)
        bounds = list(zip(edges[:-1], edges[1:]))
        seg = n_frames / n_seg
        s = np.zeros((len(wins), n_frames), np.float32)
        for j in range(len(wins)):
            mel = mels[j]
            fill = mel.mean()
            batch = mel.unsqueeze(0).repeat(len(bounds), 1, 1)
            for b, (a, e) in enumerate(bounds):
                batch[b, :, a:e] = fill
            occl = (_unit(net.encoder(batch)) @ clip.T)[:, 0]
            drop = (base[j] - occl).cpu().numpy()
            for b, (a, e) in enumerate(bounds):
                s[j, a:e] = drop[b]
        low = None
        method = "occlusion"
        seg_s = seg * hop / sr
    for j, (w0, _) in enumerate(wins):
        f = np.arange(keep_from[j], n_frames)
        t = offset + (w0 + f * hop) / sr
        ok = (t <= offset + len(x) / sr) & (t < offset + stop_at[j])  # no zero padding past the end
        times.append(t[ok])
        values.append(s[j, f][ok])
        if low is not None:
            masked.append(low[j, f][ok])
    return FrameImportance(
        times=np.concatenate(times), values=np.concatenate(values).astype(np.float32), method=method,
        window_starts=offset + np.array([w0 for w0, _ in wins]) / sr, window_seconds=window / sr,
        masked=np.concatenate(masked) if masks is not None else None, ratio=ratio if masks is not None else None,
        segment_seconds=seg_s,
    )


# ----------------------------------------------------------------------------- MART


@dataclass
class LevelStructure:
    """MART's segments of an excerpt, per level: ``starts``/``ends`` (s from the file's start)
    and ``similarity``: cosine similarity of each segment's vector to the whole (clip vector)."""

    starts: list[np.ndarray]
    ends: list[np.ndarray]
    similarity: list[np.ndarray]


def mart_structure(model, audio, sample_rate: int | None = None, *, start: float = 0.0,
                   duration: float | None = None) -> LevelStructure:
    """Every MART level's segments of an excerpt with their similarity to the whole."""
    if model.config.method != "mart":
        raise ValueError(f"level structure is for MART models; {model.name!r} is {model.config.method}")
    x, offset = _excerpt(model, audio, sample_rate, start, duration)
    e = model.embed(x, model.sample_rate, hierarchical=True)
    whole = e.clip / max(np.linalg.norm(e.clip), 1e-12)
    starts, ends, sims = [], [], []
    for lv in e.levels:
        v = lv.vectors / np.maximum(np.linalg.norm(lv.vectors, axis=1, keepdims=True), 1e-12)
        starts.append(offset + lv.starts)
        ends.append(offset + lv.ends)
        sims.append((v @ whole).astype(np.float32))
    return LevelStructure(starts, ends, sims)


# ----------------------------------------------------------------------------- catalog map


def project(vectors: np.ndarray, method: str = "pca", seed: int = 0) -> tuple[np.ndarray, str, str]:
    """2-D coordinates of unit-normalised ``vectors``: PCA (numpy) or UMAP (umap-learn, cosine).
    Returns (coords (N, 2), x label, y label)."""
    v = np.asarray(vectors, np.float64)
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    if method == "pca":
        c = v - v.mean(axis=0)
        if len(v) < 2:
            return np.zeros((len(v), 2)), "PC1", "PC2"
        u, s, _ = np.linalg.svd(c, full_matrices=False)
        xy = u[:, :2] * s[:2]
        if xy.shape[1] < 2:
            xy = np.pad(xy, ((0, 0), (0, 2 - xy.shape[1])))
        var = s**2 / max((s**2).sum(), 1e-30)
        pct = [100 * var[i] if i < len(var) else 0.0 for i in range(2)]
        return xy, f"PC1 ({pct[0]:.0f}% of variance)", f"PC2 ({pct[1]:.0f}% of variance)"
    if method == "umap":
        try:
            import umap
        except ImportError:
            raise PlotError('--method umap needs umap-learn: pip install umap-learn') from None
        reducer = umap.UMAP(n_components=2, metric="cosine", random_state=seed,
                            n_neighbors=max(2, min(15, len(v) - 1)))
        return reducer.fit_transform(v), "UMAP 1", "UMAP 2"
    raise ValueError(f"method must be 'pca' or 'umap', got {method!r}")


def folder_labels(paths: Sequence[str], root: str | os.PathLike | None, max_groups: int = 20) -> list[str]:
    """Each file's folder relative to ``root`` ('.' for files directly in it); with more than
    ``max_groups`` folders, the top-level folder; then the smallest groups merge into 'other'."""
    rel = []
    for p in paths:
        try:
            r = Path(os.path.relpath(p, root)) if root is not None else Path(p)
        except ValueError:  # another drive on Windows
            r = Path(p)
        rel.append(r.parent.as_posix() if r.parent.as_posix() not in ("", ".") else "(top folder)")
    if len(set(rel)) > max_groups:
        rel = [r.split("/")[0] for r in rel]
    if len(set(rel)) > max_groups:
        counts: dict[str, int] = {}
        for r in rel:
            counts[r] = counts.get(r, 0) + 1
        top = set(sorted(counts, key=lambda k: (-counts[k], k))[: max_groups - 1])
        rel = [r if r in top else "other" for r in rel]
    return rel


# ----------------------------------------------------------------------------- figures


def _figure(size: tuple[int, int]):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotError('figures need matplotlib: pip install "musicembed[plot]"') from None
    fig = Figure(figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, out: str | os.PathLike) -> Path:
    from .io.atomic import atomic_write

    out = Path(out)
    fmt = out.suffix.lower().lstrip(".") or "png"
    atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=DPI, format=fmt))
    return out


def _logmel_panel(ax, model, x: np.ndarray, offset: float, fig):
    """The excerpt's log-mel (model frontend) with seconds on x and approximate Hz on y."""
    with torch.inference_mode():
        mel = model.net.frontend(torch.from_numpy(x[None]).to(model.device))[0].cpu().numpy()
    sr, hop = model.sample_rate, model.config.frontend.hop_length
    t1 = offset + mel.shape[1] * hop / sr
    im = ax.imshow(mel, origin="lower", aspect="auto", cmap="magma", extent=(offset, t1, 0, mel.shape[0]),
                   vmin=np.percentile(mel, 5), vmax=mel.max(), interpolation="nearest")
    fb = model.net.frontend.fb.cpu().numpy()  # (n_mels, n_freqs)
    centers = fb.argmax(axis=1) * (sr / model.config.frontend.n_fft)
    ticks = np.linspace(0, mel.shape[0] - 1, 6).round().astype(int)
    ax.set_yticks(ticks + 0.5)
    ax.set_yticklabels([f"{centers[i]:.0f}" if centers[i] < 1000 else f"{centers[i] / 1000:.1f}k" for i in ticks])
    scale = "log scale" if model.config.frontend.mel_scale == "log" else "mel scale"
    ax.set_ylabel(f"frequency (Hz, {scale})")
    fig.colorbar(im, ax=ax, label="log power (dB)", pad=0.01)
    return t1


def explain_figure(model, audio, out: str | os.PathLike, *, sample_rate: int | None = None, start: float = 0.0,
                   duration: float | None = 30.0, masks=None, ratio: float = 0.1, segment_seconds: float = 0.25,
                   size: tuple[int, int] = DEFAULT_SIZE, title: str | None = None) -> Path:
    """Write the explanation figure of ``audio`` (PEMR: importance; MART: level structure) to ``out``."""
    name = title or (os.path.basename(os.fspath(audio)) if isinstance(audio, (str, os.PathLike)) else "audio")
    x, offset = _excerpt(model, audio, sample_rate, start, duration)
    fig = _figure(size)
    if model.config.method == "pemr":
        imp = pemr_importance(model, x, model.sample_rate, masks=masks, ratio=ratio, segment_seconds=segment_seconds)
        imp.times += offset
        imp.window_starts += offset
        ax0, ax1 = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
        t1 = _logmel_panel(ax0, model, x, offset, fig)
        if imp.method == "mask-generator":
            head = (f"PEMR frame importance from the mask generator's [CLS] attention (last layer)\n"
                    f"{name} · model {model.name}")
            ylab = "attention (1 = uniform share)"
        else:
            head = (f"PEMR frame importance by occlusion (no mask-generator weights loaded)\n"
                    f"{name} · model {model.name} · {imp.segment_seconds:.2f}-s segments masked one at a time")
            ylab = "drop in cosine similarity\nto the clip vector"
        ax0.set_title(head, loc="left", fontsize=12)
        # Overlay the importance on the spectrogram (right axis), and show it on its own below.
        tw = ax0.twinx()
        tw.plot(imp.times, imp.values, color="white", lw=2.2, alpha=0.9)
        tw.plot(imp.times, imp.values, color="tab:cyan", lw=1.0)
        tw.set_ylabel("importance", color="tab:cyan")
        tw.tick_params(axis="y", colors="tab:cyan")
        lo, hi = float(imp.values.min()), float(imp.values.max())
        span = max(hi - lo, 1e-6)
        base = lo - 0.1 * span if imp.method == "mask-generator" else min(0.0, lo - 0.1 * span)
        ax1.set_ylim(base, hi + 0.45 * span)  # head room for the legend
        ax1.fill_between(imp.times, imp.values, base, step="mid", alpha=0.35, color="tab:blue")
        ax1.plot(imp.times, imp.values, drawstyle="steps-mid", color="tab:blue", lw=1.2, label="importance")
        if imp.method == "mask-generator":
            ax1.axhline(1.0, color="gray", ls=":", lw=1, label="uniform share")
            if imp.masked is not None and imp.masked.any():
                hop_s = model.config.frontend.hop_length / model.sample_rate
                first = True
                for t in imp.times[imp.masked]:
                    ax1.axvspan(t - hop_s / 2, t + hop_s / 2, color="tab:red", alpha=0.25, lw=0,
                                label=f"lowest {imp.ratio:.0%}: replaced by MASK in the positive view"
                                if first else None)
                    first = False
        else:
            ax1.axhline(0.0, color="gray", ls=":", lw=1)
        for w in imp.window_starts:
            for a in (ax0, ax1):
                a.axvline(w, color="white" if a is ax0 else "gray", lw=0.8, ls="--", alpha=0.6)
        ax1.plot([], [], color="gray", ls="--", lw=0.8, label=f"window starts ({imp.window_seconds:g} s windows)")
        ax1.set_ylabel(ylab)
        ax1.set_xlabel("time (s)")
        ax1.set_xlim(offset, max(t1, offset + len(x) / model.sample_rate))
        ax1.legend(loc="upper right", fontsize=9, framealpha=0.85, ncols=2)
        ax1.grid(alpha=0.3)
    else:
        st = mart_structure(model, x, model.sample_rate)
        for lv in range(len(st.starts)):
            st.starts[lv] = st.starts[lv] + offset
            st.ends[lv] = st.ends[lv] + offset
        n_levels = len(st.starts)
        ax0, ax1 = fig.subplots(2, 1, sharex=True, height_ratios=[3, max(2, n_levels)])
        t1 = _logmel_panel(ax0, model, x, offset, fig)
        ax0.set_title(f"MART part-whole structure: each segment's cosine similarity to the whole (clip vector)\n"
                      f"{name} · model {model.name} · {n_levels} levels", loc="left", fontsize=12)
        import matplotlib
        from matplotlib import cm, colors
        from matplotlib.patches import Rectangle

        allsim = np.concatenate(st.similarity)
        lo, hi = float(allsim.min()), float(allsim.max())
        if hi - lo < 1e-6:
            lo, hi = lo - 0.01, hi + 0.01
        norm = colors.Normalize(vmin=lo, vmax=hi)
        digits = 2 if hi - lo > 0.1 else 3
        cmap = matplotlib.colormaps["viridis"]
        for lv in range(n_levels):
            y = n_levels - 1 - lv
            for s, e, v in zip(st.starts[lv], st.ends[lv], st.similarity[lv]):
                ax1.add_patch(Rectangle((s, y + 0.05), e - s, 0.9, facecolor=cmap(norm(v)), edgecolor="white",
                                        lw=0.8))
                if (e - s) / max(t1 - offset, 1e-9) > 0.045:
                    ax1.text((s + e) / 2, y + 0.5, f"{v:.{digits}f}", ha="center", va="center", fontsize=8,
                             color="white" if norm(v) < 0.6 else "black")
        seg_len = [float(np.median(st.ends[lv] - st.starts[lv])) for lv in range(n_levels)]
        ax1.set_yticks([n_levels - 1 - lv + 0.5 for lv in range(n_levels)])
        ax1.set_yticklabels([f"level {lv}\n({seg_len[lv]:.2f} s)" for lv in range(n_levels)])
        ax1.set_ylim(0, n_levels)
        ax1.set_xlabel("time (s)")
        ax1.set_xlim(offset, max(t1, offset + len(x) / model.sample_rate))
        sm = cm.ScalarMappable(norm=norm, cmap=cmap)
        fig.colorbar(sm, ax=ax1, label="cosine similarity\nto the whole", pad=0.01)
    return _save(fig, out)


def map_figure(vectors: np.ndarray, paths: Sequence[str], out: str | os.PathLike, *, root=None,
               method: str = "pca", size: tuple[int, int] = (1000, 800), title: str | None = None,
               annotate: bool | None = None, model_name: str = "") -> Path:
    """A 2-D map (PCA or UMAP) of a catalog's vectors, coloured by folder."""
    if len(vectors) == 0:
        raise PlotError("no vectors to map")
    xy, xl, yl = project(vectors, method)
    labels = folder_labels(paths, root)
    fig = _figure(size)
    ax = fig.subplots()
    groups = sorted(set(labels), key=lambda g: (g == "other", g))
    import matplotlib

    cmap = matplotlib.colormaps["tab20" if len(groups) > 10 else "tab10"]
    for gi, g in enumerate(groups):
        m = np.array([lab == g for lab in labels])
        ax.scatter(xy[m, 0], xy[m, 1], s=36, alpha=0.85, color=cmap(gi % cmap.N), edgecolor="white", lw=0.5,
                   label=f"{g} ({int(m.sum())})")
    if annotate is None:
        annotate = len(paths) <= 40
    if annotate:
        for (px, py), p in zip(xy, paths):
            ax.annotate(Path(p).name[:28], (px, py), fontsize=7, xytext=(3, 3), textcoords="offset points",
                        alpha=0.8)
    what = "PCA" if method == "pca" else "UMAP"
    ax.set_title(title or f"Catalog map ({what} of unit-normalised clip vectors) · {len(paths)} files"
                 + (f" · model {model_name}" if model_name else ""), loc="left", fontsize=12)
    ax.set_xlabel(xl)
    ax.set_ylabel(yl)
    ax.grid(alpha=0.3)
    ax.legend(title="folder (files)", fontsize=8, title_fontsize=9, loc="center left", bbox_to_anchor=(1.01, 0.5),
              frameon=False)
    return _save(fig, out)
