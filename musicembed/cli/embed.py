"""``musicembed embed``: the command over :func:`musicembed.catalog.job.run_job`."""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from .common import fail, load_model_or_fail, report_failures


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path, readable=False))
@click.option("-r", "--recursive", is_flag=True, help="Descend into folders and embed every audio file found.")
@click.option("-m", "--model", "model_name", default="pemr", show_default=True,
              help="Manifest name, local model folder, or hf-hub:<owner>/<repo>[@revision].")
@click.option("-o", "--out", type=click.Path(path_type=Path),
              help="Write results to FILE (.npz, .npy or .jsonl). Without it, results are printed.")
@click.option("--timestamps", is_flag=True, help="Also keep per-window vectors with start/end seconds.")
@click.option("--hierarchical", is_flag=True, help="MART: also keep every level's vectors with their time spans.")
@click.option("--window", "window_seconds", type=float, help="Analysis window in seconds (default: the model's).")
@click.option("--hop", "hop_seconds", type=float, help="Step between windows in seconds (default: the window).")
@click.option("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available).")
@click.option("--batch-size", type=click.IntRange(min=1), help="Windows per forward pass.")
@click.option("--fast", is_flag=True,
              help="Alias of the speed options that suit the device: --compile on a GPU, --bfloat16 where the "
                   "hardware computes it natively; on other CPUs nothing changes. Vectors within cosine 0.999.")
@click.option("--compile/--no-compile", "compile_", default=None,
              help="torch.compile the network (the first batch compiles, tens of seconds; falls back with a "
                   "warning where compiling fails).")
@click.option("--bfloat16/--no-bfloat16", default=None,
              help="bfloat16 autocast (fast only on GPUs and CPUs with native bfloat16).")
@click.option("--decode-threads", type=click.IntRange(min=1), help="Threads decoding files ahead of the model "
              "(default: 2, 1 on a single core).")
@click.option("--threads", type=click.IntRange(min=1), help="Torch threads for the model on CPU (default: the "
              "cores the decoding threads leave, at least 1).")
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON lines (when not writing --out).")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a terminal).")
@click.option("--shard", "shard_spec", metavar="K/N",
              help="Embed only shard K of N (K = 0..N-1; a stable hash of each file's path relative to the "
                   "folder given decides). Write each part to a .npz and combine them with `musicembed merge`.")
@click.option("--resume", is_flag=True,
              help="Continue an interrupted run with the same --out: files it finished (kept in OUT.partial "
                   "while a run is under way) are not embedded again, unless their path, size or modification "
                   "time changed.")
@click.option("--rehash", is_flag=True,
              help="With --resume: reuse a finished file only if its content (sha256) is also unchanged, e.g. "
                   "after files were replaced keeping their size and modification time.")
def embed(paths: tuple[Path, ...], recursive: bool, model_name: str, out: Path | None, timestamps: bool,
          hierarchical: bool, window_seconds: float | None, hop_seconds: float | None, device: str | None,
          batch_size: int | None, fast: bool, compile_: bool | None, bfloat16: bool | None,
          decode_threads: int | None, threads: int | None, as_json: bool, progress: bool | None,
          shard_spec: str | None, resume: bool, rehash: bool) -> None:
    """Embed audio files (WAV, FLAC, OGG, MP3, ...) and folders.

    Files that fail are reported on stderr with the reason; every other file is still
    embedded and written, and the exit code is 1. Truncated or damaged files are embedded
    from what decodes, with a warning line naming the decoded and declared durations.
    Exit code 2: nothing written (a bad option, model or output, a full disk); 130: Ctrl-C.

    With --out, each finished file is also recorded in OUT.partial as the run goes. An
    interrupted run leaves OUT as it was; run the same command with --resume to continue.

    \b
    Examples:
      musicembed embed song.mp3
      musicembed embed song.mp3 --json --timestamps
      musicembed embed a.mp3 b.flac --out two.npz
      musicembed embed music/ -r --out catalog.npz --model mart --hierarchical
      musicembed embed music/ -r --out catalog.npz --resume
    """
    from ..catalog.job import JobError, JobOptions, run_job
    from ..io.writers import to_json

    opts = JobOptions(recursive=recursive, out=out, timestamps=timestamps, hierarchical=hierarchical,
                      window_seconds=window_seconds, hop_seconds=hop_seconds, batch_size=batch_size,
                      decode_threads=decode_threads, threads=threads, progress=progress, shard=shard_spec,
                      resume=resume, rehash=rehash)

    def load():
        return load_model_or_fail(model_name, device, fast=fast, compile=compile_, bfloat16=bfloat16)

    def show(res) -> None:
        if out is None:
            click.echo(json.dumps(to_json(res, timestamps, hierarchical)) if as_json
                       else _format_result(res, timestamps, hierarchical))

    try:
        report = run_job(paths, load, opts, on_result=show, on_error=lambda m: click.echo(f"error: {m}", err=True),
                         on_note=lambda m: click.echo(m, err=True))
    except JobError as e:
        fail(str(e))
    if out is not None:
        click.echo(f"wrote {report.written} embeddings ({report.dim}-d, model {report.model}) to {out}", err=True)
    report_failures(report.failures)


def _format_result(res, timestamps: bool, hierarchical: bool) -> str:
    head = np.array2string(res.clip[:6], precision=4, separator=", ", suppress_small=True)
    lines = [f"{res.source}: shape {res.clip.shape} duration {res.duration:.2f}s  {head[:-1]}, ...]"]
    if timestamps:
        for v, s, e in zip(res.vectors, res.starts, res.ends):
            lines.append(f"  window {s:8.2f}-{e:8.2f}s  {np.array2string(v[:4], precision=4, separator=', ')[:-1]}, ...]")
    if hierarchical and res.levels:
        for lv in res.levels:
            lines.append(f"  level {lv.level}: {len(lv.vectors)} segments of {lv.ends[0] - lv.starts[0]:.3f}s")
    return "\n".join(lines)
