"""Embedding a catalog of files: discovery, sharding, resume, writing; what ``musicembed
embed`` runs. A bad file costs only itself: every other file is embedded and written."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..audio import find_audio_files
from ..errors import MusicEmbedError
from ..results import Embedding


class JobError(MusicEmbedError):
    """The job cannot run or cannot write its output: nothing (more) is written."""


@dataclass
class JobOptions:
    """What to embed and how. Seconds for ``window_seconds``/``hop_seconds`` (None: the
    model's window, non-overlapping); ``shard`` is ``"K/N"``; ``out`` a .npz/.npy/.jsonl file
    (None: results only go to ``on_result``)."""

    recursive: bool = False
    out: Path | None = None
    timestamps: bool = False
    hierarchical: bool = False
    window_seconds: float | None = None
    hop_seconds: float | None = None
    batch_size: int | None = None
    decode_threads: int | None = None
    threads: int | None = None
    progress: bool | None = None
    shard: str | None = None
    resume: bool = False
    rehash: bool = False


@dataclass
class JobReport:
    """What the job did: ``written`` results (to ``out`` when given) and ``failures``
    (path, reason) for every input that could not be embedded."""

    written: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    model: str = ""
    dim: int = 0


def check_options(opts: JobOptions) -> None:
    """Refuse option combinations that cannot work, before any model is loaded."""
    from ..io.writers import FORMATS
    from ..io.writers import check_options as check_layout

    out = opts.out
    if out is not None and out.suffix.lower() not in FORMATS:
        raise JobError(f"--out must end in one of {', '.join(FORMATS)} (got {out.name!r})")
    if out is not None:
        try:
            check_layout(out, windows=opts.timestamps, levels=opts.hierarchical)
        except ValueError as e:
            raise JobError(str(e)) from None
    if opts.resume and out is None:
        raise JobError("--resume needs --out FILE: it continues the interrupted run that was writing FILE")
    if opts.rehash and not opts.resume:
        raise JobError("--rehash is an option of --resume: it decides which recorded results are reused")
    if opts.shard is not None and out is not None and out.suffix.lower() != ".npz":
        raise JobError("--shard needs --out FILE.npz (or no --out): merge reads the shard metadata stored there")


def run_job(paths: Sequence[str | Path], model: Callable[[], object] | object, opts: JobOptions, *,
            on_result: Callable[[Embedding], None] = lambda r: None,
            on_error: Callable[[str], None] = lambda msg: None,
            on_note: Callable[[str], None] = lambda msg: None) -> JobReport:
    """Embed every audio file under ``paths`` with ``model`` (a Model, or a function that
    loads one once the inputs are known to be usable) and write ``opts.out``.

    ``on_result`` gets each finished Embedding (without per-window vectors when writing a
    file without ``timestamps``), ``on_error`` one line per failed input as it fails,
    ``on_note`` progress notes (resume counts, warnings about damaged files). Raises
    :class:`JobError` when nothing can be written; results recorded by then stay in
    ``OUT.partial`` for ``resume``.
    """
    check_options(opts)
    out = opts.out
    files, problems = find_audio_files(list(paths), recursive=opts.recursive, report_unsupported=True)
    selection = None
    if opts.shard is not None:
        from .shard import ShardError, catalog_of, parse_spec

        try:
            selection = catalog_of(files, paths, problems).select(parse_spec(opts.shard))
        except ShardError as e:
            raise JobError(str(e)) from None
        files = selection.files
    model = model() if callable(model) else model
    if opts.hierarchical and model.config.method != "mart":
        raise JobError(f"--hierarchical needs a MART model (--model mart); {model.name!r} is {model.config.method}")
    store, keys, finished = None, [None] * len(files), {}
    if out is not None:  # finished files go to OUT.partial one by one, so an interrupted run can resume
        from ..io.resume import PartialStore, StoreError, file_key, run_settings

        try:
            store, done, note = PartialStore.open(out, run_settings(
                model, window_seconds=opts.window_seconds, hop_seconds=opts.hop_seconds,
                timestamps=opts.timestamps, hierarchical=opts.hierarchical), opts.resume)
        except StoreError as e:
            raise JobError(str(e)) from None
    try:
        if store is not None:
            if note:
                on_note(note)
            keys = [file_key(f) for f in files]
            reuse = {i: store.reusable(k, done, opts.rehash) for i, k in enumerate(keys)}
            finished = {i: replace(e, source=str(files[i])) for i, e in reuse.items() if e is not None}
            if opts.resume:
                on_note(f"resuming: {len(finished)} of {len(files)} file(s) already embedded; "
                        f"embedding the other {len(files) - len(finished)}")
        report = JobReport(failures=list(problems), model=model.name, dim=model.embedding_dim)
        _embed(model, files, finished, keys, store, opts, report, on_result, on_error, on_note)
        results = [finished[i] for i in sorted(finished)]
        if out is not None:
            _write(out, results, model, opts, selection, report, store)
        report.written = len(results)
        return report
    finally:
        if store is not None:
            store.close()


def _embed(model, files: list[Path], finished: dict, keys: list, store, opts: JobOptions, report: JobReport,
           on_result, on_error, on_note) -> None:
    todo = [i for i in range(len(files)) if i not in finished]
    try:
        results = model.iter_embed([files[i] for i in todo], hierarchical=opts.hierarchical,
                                   window_seconds=opts.window_seconds, hop_seconds=opts.hop_seconds,
                                   batch_size=opts.batch_size, progress=opts.progress,
                                   decode_threads=opts.decode_threads, threads=opts.threads)
        for j, res in results:
            i = todo[j]
            if isinstance(res, MusicEmbedError):
                report.failures.append((str(files[i]), getattr(res, "reason", str(res))))
                on_error(str(res))
                continue
            if res.warning:
                on_note(f"warning: {res.source}: {res.warning}")
            if opts.out is not None and not opts.timestamps:  # keep only what the output holds: memory stays small
                res = replace(res, vectors=res.vectors[:0], starts=res.starts[:0], ends=res.ends[:0])
            finished[i] = res
            if store is not None and keys[i] is not None:
                try:
                    store.append(keys[i], res)
                except OSError as e:
                    raise JobError(f"{store.path}: cannot record results ({e.strerror or e}); what was recorded "
                                   "before is kept: free space or fix permissions, then rerun with --resume") from None
            on_result(res)
    except ValueError as e:  # an unusable --window/--hop/--batch-size
        raise JobError(str(e)) from None


def _write(out: Path, results: list[Embedding], model, opts: JobOptions, selection, report: JobReport, store) -> None:
    from ..identity import model_identity
    from ..io.writers import write_results

    extra = selection.arrays([r.source for r in results], report.failures) if selection is not None else None
    identity = model_identity(model, window_seconds=opts.window_seconds, hop_seconds=opts.hop_seconds)
    try:
        write_results(out, results, model.embedding_dim, model.name, windows=opts.timestamps,
                      levels=opts.hierarchical, extra=extra, identity=identity)
    except OSError as e:
        raise JobError(f"cannot write {out} ({e.strerror or e}); the {len(results)} results are kept in "
                       f"{store.path}: fix this, then rerun the same command with --resume") from None
    store.remove()
