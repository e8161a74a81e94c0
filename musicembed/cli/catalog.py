"""Catalog commands: ``index``, ``search``, ``explain``, ``map``, ``merge``.

Added to the main group by :mod:`musicembed.cli.main`; every heavy import happens inside a command.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import click

from ..errors import MusicEmbedError
from .common import fail, load_model_or_fail, report_failures


def _size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m or not (100 <= int(m.group(1)) <= 10000 and 100 <= int(m.group(2)) <= 10000):
        raise click.BadParameter(f"expected WIDTHxHEIGHT in pixels, 100..10000 each (e.g. 1400x800), got {text!r}")
    return int(m.group(1)), int(m.group(2))


# ----------------------------------------------------------------------------- index


@click.command("index")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Index file (.npz). If it exists, it is updated in place.")
@click.option("-m", "--model", "model_name", default=None,
              help="Model to embed with (default: the existing index's model, else pemr).")
@click.option("--rebuild", is_flag=True, help="Build from scratch even if --out exists (e.g. to change the model).")
@click.option("--rehash", is_flag=True,
              help="Check every file's content hash, not only files whose size/mtime changed.")
@click.option("--window", "window_seconds", type=float, help="Analysis window in seconds (new index only).")
@click.option("--hop", "hop_seconds", type=float, help="Step between windows in seconds (new index only).")
@click.option("--levels", type=click.IntRange(min=1),
              help="MART: keep the first N levels for time spans (default: all; 1 = level 0 only, smallest).")
@click.option("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available).")
@click.option("--batch-size", type=click.IntRange(min=1), help="Windows per forward pass.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a terminal).")
def index_command(paths: tuple[Path, ...], out: Path, model_name: str | None, rebuild: bool, rehash: bool,
                  window_seconds: float | None, hop_seconds: float | None, levels: int | None, device: str | None,
                  batch_size: int | None, progress: bool | None) -> None:
    """Build or update a search index over a catalog (folders are searched recursively).

    The index keeps each file's clip vector, duration, size, mtime and sha256, the model's
    identity and, for MART, every level's vectors with their time spans. Run it again to
    update: new files are embedded, changed files (by content hash) re-embedded, moved
    files reuse their vectors, deleted files are dropped.

    \b
    Examples:
      musicembed index music/ --out music.index.npz
      musicembed index music/ --out music-mart.index.npz --model mart
      musicembed index music/ --out music.index.npz            # again later: incremental update
    """
    from ..catalog.index import Index, IndexError_, IndexMismatchError

    if out.suffix.lower() != ".npz":
        fail(f"--out must end in .npz (got {out.name!r})")
    existing = None
    if out.exists() and not rebuild:
        try:
            existing = Index.load(out)
        except IndexError_ as e:
            fail(f"{e} (use --rebuild to replace it)")
    if existing is not None:
        src = model_name or existing.model.get("source") or existing.model["name"]
        model = load_model_or_fail(src, device)
        if window_seconds or hop_seconds or levels:
            click.echo("note: --window/--hop/--levels apply to new indexes only; keeping the index's settings",
                       err=True)
        try:
            report = existing.update(model, list(paths), rehash=rehash, batch_size=batch_size, progress=progress)
        except IndexMismatchError as e:
            fail(f"{out}: {e} To rebuild it with this model, add --rebuild.")
        existing.save(out)
        click.echo(f"updated {out}: {len(existing)} files ({report.summary()}); model {model.name}", err=True)
        report_failures(report.failed)
        return
    model = load_model_or_fail(model_name or "pemr", device)
    try:
        index = Index.build(model, list(paths), window_seconds=window_seconds, hop_seconds=hop_seconds,
                            levels=levels if model.config.method == "mart" else None, batch_size=batch_size,
                            progress=progress)
    except ValueError as e:
        fail(str(e))
    index.save(out)
    levels = f", {len(index.levels)} levels" if index.levels else ""
    click.echo(f"indexed {len(index)} files in {out} (model {model.name}, {index.model['dim']}-d{levels})", err=True)
    report_failures(index.failures)


# ----------------------------------------------------------------------------- search


def _fmt_time(s: float) -> str:
    m, sec = divmod(max(0.0, s), 60)
    return f"{int(m)}:{sec:05.2f}"


@click.command("search")
@click.argument("queries", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-i", "--index", "index_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Index file made by `musicembed index`.")
@click.option("-k", "k", default=10, show_default=True, type=click.IntRange(min=1), help="Results per query.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per query (for machines).")
@click.option("-m", "--model", "model_name", default=None,
              help="Model for the query (default: the index's). Must be the model the index was built with.")
@click.option("--backend", type=click.Choice(["auto", "numpy", "faiss"]), default="auto", show_default=True,
              help="auto: exact numpy below 100,000 files, FAISS above (when installed).")
@click.option("--nprobe", default=32, show_default=True, type=click.IntRange(min=1),
              help="FAISS IVF lists scanned per query (more: slower, closer to exact).")
@click.option("--span-level", default=0, show_default=True, type=click.IntRange(min=0),
              help="MART: the level whose segments give the best-matching time span (0 = the 4.1-s clips, "
                   "the level the model card recommends for same-track matching).")
@click.option("--relation", type=click.Choice(["same_recording", "same_track", "cover", "same_source"]),
              default=None, help="Keep only hits at least this close (with probability --min-prob, default 0.5); "
                                 "needs a calibrated model.")
@click.option("--min-prob", type=click.FloatRange(0, 1), default=None,
              help="Keep only hits whose relation has at least this probability (with --relation: that relation's).")
@click.option("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available).")
def search_command(queries: tuple[Path, ...], index_path: Path, k: int, as_json: bool, model_name: str | None,
                   backend: str, nprobe: int, span_level: int, relation: str | None, min_prob: float | None,
                   device: str | None) -> None:
    """Find the catalog files most similar to each QUERY audio file.

    Prints rank, cosine similarity, duration and path; for a MART index also the best-
    matching time span in the result (and where in the query it matched); for a calibrated
    model (the bundled ones) the most likely relation to the query and its probability, under
    the catalog's prior (1/n for each of same recording, same track and cover among n files).
    --relation and --min-prob filter the k nearest by these.

    \b
    Examples:
      musicembed search query.mp3 --index music.index.npz -k 10
      musicembed search query.mp3 --index music.index.npz --json
      musicembed search query.mp3 --index music.index.npz --relation cover --min-prob 0.8
    """
    from ..catalog.index import Index, IndexError_, IndexMismatchError
    from ..errors import AudioError

    try:
        index = Index.load(index_path)
    except IndexError_ as e:
        fail(str(e))
    src = model_name or index.model.get("source") or index.model["name"]
    model = load_model_or_fail(src, device)
    try:
        index.check_model(model)
    except IndexMismatchError as e:
        fail(f"{index_path}: {e}")
    if span_level and index.levels is not None and span_level >= len(index.levels):
        fail(f"--span-level must be 0..{len(index.levels) - 1} for this index")
    if (relation is not None or min_prob is not None) and model.calibration is None:
        fail(f"--relation and --min-prob need a calibrated model; {model.name!r} has no calibration")
    failures: list[tuple[str, str]] = []
    for q in queries:
        try:
            hits = index.search(str(q), k, model=model, backend=backend, nprobe=nprobe, span_level=span_level,
                                relation=relation, min_prob=min_prob)
        except AudioError as e:
            failures.append((str(q), e.reason))
            continue
        except (MusicEmbedError, ValueError) as e:
            fail(str(e))
        if as_json:
            click.echo(json.dumps({"query": str(q), "index": str(index_path), "model": index.model["name"],
                                   "model_version": index.model.get("version"),
                                   "model_fingerprint": index.model.get("fingerprint"),
                                   "model_license": model.provenance.get("license"),
                                   "backend": index.backend(backend, nprobe=nprobe).name,
                                   "results": [h.to_dict() for h in hits]}))
            continue
        click.echo(f"{q}  (top {len(hits)} of {len(index)}, model {index.model['name']})")
        for h in hits:
            line = f"  {h.rank:3d}  {h.score:7.4f}  {_fmt_time(h.duration):>9}  {h.path}"
            if h.relation is not None:
                line += f"  ({h.relation.replace('_', ' ')}, p={h.probability:.2f})"
            if h.span is not None:
                line += (f"\n{'':23}best match {h.span.start:.2f}-{h.span.end:.2f} s "
                         f"(query {h.span.query_start:.2f}-{h.span.query_end:.2f} s, level {h.span.level}, "
                         f"similarity {h.span.score:.3f})")
            click.echo(line)
    report_failures(failures)


# ----------------------------------------------------------------------------- explain


@click.command("explain")
@click.argument("audio", type=click.Path(path_type=Path))
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Figure file (.png, .svg or .pdf).")
@click.option("-m", "--model", "model_name", default="pemr", show_default=True,
              help="PEMR model (frame importance) or MART model (level structure).")
@click.option("--masks", "masks_path", type=click.Path(exists=True, path_type=Path),
              help="PEMR: a `musicembed train` run folder or checkpoint holding the mask generator. "
                   "Without it the importance is computed by occlusion.")
@click.option("--start", default=0.0, show_default=True, type=click.FloatRange(min=0), help="Excerpt start (s).")
@click.option("--duration", default=30.0, show_default=True, type=click.FloatRange(min=0),
              help="Excerpt length (s); 0 for the whole file.")
@click.option("--segment", "segment_seconds", default=0.25, show_default=True, type=click.FloatRange(min=0.01),
              help="PEMR occlusion: length of each masked segment (s).")
@click.option("--size", default="1400x800", show_default=True, help="Figure size WIDTHxHEIGHT in pixels.")
@click.option("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available).")
def explain_command(audio: Path, out: Path, model_name: str, masks_path: Path | None, start: float, duration: float,
                    segment_seconds: float, size: str, device: str | None) -> None:
    """Draw what the model attends to in AUDIO (needs: pip install "musicembed[plot]").

    PEMR: the log-mel spectrogram with per-frame importance, from the mask generator's
    [CLS] attention when --masks gives its weights, else by occlusion (the drop in cosine
    similarity to the clip vector when a segment is masked); the title says which.
    MART: the log-mel and every level's segments coloured by similarity to the whole.

    \b
    Examples:
      musicembed explain song.mp3 --out fig.png
      musicembed explain song.mp3 --out fig.png --masks runs/pemr-run
      musicembed explain song.mp3 --out fig.png --model mart --start 60 --duration 40
    """
    from ..errors import AudioError
    from ..viz import PlotError, explain_figure, load_mask_generator

    dims = _size(size)
    model = load_model_or_fail(model_name, device)
    masks, ratio = None, 0.1
    if masks_path is not None:
        if model.config.method != "pemr":
            fail("--masks is for PEMR models")
        try:
            masks, ratio = load_mask_generator(masks_path, model)
        except (MusicEmbedError, ValueError, RuntimeError) as e:
            fail(f"cannot load the mask generator: {e}")
    try:
        path = explain_figure(model, str(audio), out, start=start, duration=duration or None, masks=masks,
                              ratio=ratio, segment_seconds=segment_seconds, size=dims)
    except AudioError as e:
        fail(str(e))
    except (PlotError, ValueError) as e:
        fail(str(e))
    click.echo(f"wrote {path}", err=True)


# ----------------------------------------------------------------------------- map


@click.command("map")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Figure file (.png, .svg or .pdf).")
@click.option("-m", "--model", "model_name", default="pemr", show_default=True, help="Model to embed with.")
@click.option("-i", "--index", "index_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Take the vectors from this index instead of embedding (PATHS then filter it).")
@click.option("--method", type=click.Choice(["pca", "umap"]), default="pca", show_default=True,
              help="Projection; umap needs umap-learn.")
@click.option("--labels/--no-labels", default=None, help="Write file names beside points (default: up to 40 files).")
@click.option("--size", default="1000x800", show_default=True, help="Figure size WIDTHxHEIGHT in pixels.")
@click.option("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available).")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a terminal).")
def map_command(paths: tuple[Path, ...], out: Path, model_name: str, index_path: Path | None, method: str,
                labels: bool | None, size: str, device: str | None, progress: bool | None) -> None:
    """Draw a 2-D map of a catalog, one point per file, coloured by folder.

    \b
    Examples:
      musicembed map music/ --out map.png
      musicembed map --index music.index.npz --out map.png
      musicembed map music/ --out map.png --method umap
    """
    import numpy as np

    from ..viz import PlotError, map_figure

    dims = _size(size)
    failures: list[tuple[str, str]] = []
    if index_path is not None:
        from ..catalog.index import Index, IndexError_

        try:
            index = Index.load(index_path)
        except IndexError_ as e:
            fail(str(e))
        vectors, files = index.embeddings, index.paths
        roots = [os.path.abspath(p) for p in paths] or index.roots
        if paths:
            keep = [i for i, f in enumerate(files) if any(f == r or f.startswith(r.rstrip(os.sep) + os.sep)
                                                          for r in roots)]
            vectors, files = vectors[keep], [files[i] for i in keep]
        name = index.model["name"]
    else:
        if not paths:
            fail("give a folder to map, or --index INDEX")
        from ..audio import find_audio_files

        found, problems = find_audio_files(list(paths), recursive=True)
        failures += problems
        model = load_model_or_fail(model_name, device)
        rows, files = [], []
        for i, res in model.iter_embed(found, progress=progress):
            if isinstance(res, MusicEmbedError):
                failures.append((str(found[i]), getattr(res, "reason", str(res))))
                continue
            rows.append(res.clip)
            files.append(os.path.abspath(found[i]))
        vectors = np.stack(rows) if rows else np.zeros((0, model.embedding_dim), np.float32)
        roots = [os.path.abspath(p) for p in paths]
        name = model.name
    root = roots[0] if len(roots) == 1 else os.path.commonpath(roots) if roots else None
    try:
        fig = map_figure(vectors, files, out, root=root, method=method, size=dims, annotate=labels, model_name=name)
    except (PlotError, ValueError) as e:
        fail(str(e))
    click.echo(f"wrote {fig} ({len(files)} files)", err=True)
    report_failures(failures)


# ----------------------------------------------------------------------------- merge


@click.command("merge")
@click.argument("shards", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Merged output (.npz).")
def merge_command(shards: tuple[Path, ...], out: Path) -> None:
    """Combine the .npz outputs of `musicembed embed ... --shard K/N` into one file.

    Checks that all N shards are there exactly once, come from the same catalog, the same
    model (name, version, weights fingerprint), --window, --hop and options, and that every
    catalog file is embedded or recorded as failed, exactly once. A shard written by an older
    musicembed (no fingerprint) is refused: re-embed it. The merged file lists files in
    catalog order, like an unsharded run.

    \b
    Example:
      musicembed merge parts/part-*.npz --out catalog.npz
    """
    from ..catalog.shard import ShardError, merge

    try:
        rep = merge(list(shards), out)
    except ShardError as e:
        fail(str(e))
    click.echo(f"merged {rep.shards} shards into {rep.out}: {rep.files} of {rep.catalog_count} files", err=True)
    report_failures(rep.failed)


COMMANDS = (index_command, search_command, explain_command, map_command, merge_command)
