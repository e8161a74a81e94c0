"""The ``musicembed`` command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import click
import numpy as np

from .. import __version__
from ..errors import EXIT_FAILED_INPUTS, EXIT_INTERRUPTED, EXIT_NOTHING_WRITTEN, MusicEmbedError


class _LazyGroup(click.Group):
    """Imports the training and evaluation commands only when they are invoked, so the
    inference commands never import ``musicembed.train``."""

    lazy = {
        "train": ("musicembed.train.cli", "train_command", "Pre-train PEMR or MART on your own audio; export."),
        "eval": ("musicembed.eval.cli", "eval_command", "Downstream evaluation protocols (probes, covers)."),
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy:
            import importlib

            module, attr, _ = self.lazy[name]
            try:
                return getattr(importlib.import_module(module), attr)
            except ImportError as e:
                raise click.ClickException(f"'{name}' is unavailable: {e}") from None
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        own = [(n, click.Group.get_command(self, ctx, n)) for n in click.Group.list_commands(self, ctx)]
        rows = [(n, c.get_short_help_str(60)) for n, c in own if c is not None]
        rows += [(n, help_) for n, (_, _, help_) in self.lazy.items()]
        with formatter.section("Commands"):
            formatter.write_dl(sorted(rows))

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:  # click would print "Aborted!" and exit 1, the code of failed inputs
            click.echo("\ninterrupted: nothing written", err=True)
            ctx.exit(EXIT_INTERRUPTED)


class Fatal(click.ClickException):
    """A one-line error that stops a command before it writes its output."""

    exit_code = EXIT_NOTHING_WRITTEN


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="musicembed")
def cli() -> None:
    """Turn music files into embeddings with pretrained PEMR and MART encoders.

    \b
    Examples:
      musicembed embed song.mp3
      musicembed embed music/ -r --out catalog.npz
      musicembed embed music/ -r --out catalog.npz --model mart --hierarchical
      musicembed models
    """
    import warnings

    warnings.showwarning = _show_warning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings on the command line: one line each, without the source location."""
    click.echo(f"warning: {message}", err=True)


def fail(msg: str) -> NoReturn:
    """Stop the command: one error line, exit code 2 (nothing written)."""
    raise Fatal(msg)


def report_failures(failures: list[tuple[str, str]]) -> None:
    """List the inputs that failed, then exit 1 (the others were written); nothing when none did."""
    if failures:
        click.echo(f"\n{len(failures)} input(s) failed:", err=True)
        for path, reason in failures:
            click.echo(f"  {path}: {reason}", err=True)
        sys.exit(EXIT_FAILED_INPUTS)


def load_model_or_fail(name: str, device: str | None, **options: Any):
    """:func:`musicembed.load_model`, or :func:`fail` with its one-line reason."""
    from ..model import load_model

    try:
        return load_model(name, device=device, **options)
    except (MusicEmbedError, ValueError) as e:  # ValueError: an unusable --device
        fail(str(e))


@cli.command()
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


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the manifest entries as JSON.")
def models(as_json: bool) -> None:
    """List the models of the weights manifest and whether each is available offline.

    \b
    Examples:
      musicembed models
      musicembed models --json
    """
    from .. import hub

    manifest = hub.read_manifest()["models"]

    def status(name: str, e: dict) -> tuple[bool, str, str]:
        """(available offline, where from, problem): a broken entry is listed, not fatal."""
        try:
            return hub.available_offline(name), "bundled" if hub.bundled_dir(e) else "hub", ""
        except (MusicEmbedError, KeyError, TypeError) as err:
            return False, "-", f"invalid manifest entry: {err}"

    def weights_sha(e: dict) -> str:
        """The first 12 hex digits of the weights file's sha256 (the manifest checks the whole)."""
        files = e.get("files") if isinstance(e.get("files"), list) else []
        sha = next((f.get("sha256") for f in files if isinstance(f, dict) and f.get("name") == hub.WEIGHTS_NAME), None)
        return sha[:12] if isinstance(sha, str) else "-"

    def hub_repo(e: dict) -> str:
        info = e.get("hub") if isinstance(e.get("hub"), dict) else {}
        repo = info.get("repo_id") or "-"
        return repo + ("" if info.get("published", True) or repo == "-" else " (unpublished)")

    if as_json:
        out = {}
        for n, e in manifest.items():
            offline, _, problem = status(n, e)
            out[n] = {**e, "offline": offline, **({"error": problem} if problem else {})}
        click.echo(json.dumps(out, indent=2))
        return
    if not manifest:
        click.echo("No models in the manifest. Load a local folder or hf-hub:<owner>/<repo> with --model.")
        return
    rows = [("name", "version", "method", "dim", "rate", "offline", "source", "sha256", "hub repository",
             "description")]
    for name, e in sorted(manifest.items()):
        offline, where, problem = status(name, e)
        rows.append((name, str(e.get("version", "-")), e.get("method", "?"), str(e.get("embedding_dim", "?")), str(e.get("sample_rate", "?")),
                     "yes" if offline else "no", where, weights_sha(e), hub_repo(e),
                     problem or e.get("description", "")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])


@cli.command()
@click.argument("name")
@click.option("--force", is_flag=True, help="Download again even if the files are cached.")
def download(name: str, force: bool) -> None:
    """Fetch a model's files into the Hugging Face cache (verifying sha256).

    NAME is a manifest name or hf-hub:<owner>/<repo>[@revision].

    \b
    Examples:
      musicembed download mart
      musicembed download hf-hub:owner/repo@v1.0
    """
    from .. import hub

    try:
        res = hub.resolve(name, force_download=force)
    except hub.HubUnreachableError as e:  # its remedy would be this very command
        fail(f"{e.problem}: connect to the network (or unset HF_HUB_OFFLINE) and try again")
    except MusicEmbedError as e:
        fail(str(e))
    click.echo(f"{name}: ok ({res.weights})")


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path, readable=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
def info(paths: tuple[Path, ...], as_json: bool) -> None:
    """Show duration, sample rate, channels and format of audio files.

    \b
    Examples:
      musicembed info song.mp3
      musicembed info a.flac b.ogg --json
    """
    from dataclasses import asdict

    from ..audio import info as audio_info

    failed = False
    for p in paths:
        try:
            i = audio_info(p)
        except MusicEmbedError as e:
            click.echo(f"error: {e}", err=True)
            failed = True
            continue
        if as_json:
            click.echo(json.dumps(asdict(i)))
        else:
            length = f"{i.duration:.3f}s" if i.duration is not None else "length unknown (not in the header)"
            click.echo(f"{i.path}: {length}  {i.sample_rate} Hz  {i.channels} ch  {i.format}/{i.subtype}")
    if failed:
        sys.exit(EXIT_FAILED_INPUTS)


@cli.group()
def convert() -> None:
    """Convert third-party checkpoints to musicembed's format (config.json + model.safetensors)."""


@convert.command("pemr-official")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="Output model folder.")
def convert_pemr_official(checkpoint: Path, out: Path) -> None:
    """Convert the PEMR authors' Lightning checkpoint (github.com/yaoodng7/PEMR releases).

    The result loads with `musicembed embed --model OUT` and reproduces the authors'
    preprocessing exactly (22.05 kHz, their mel filterbank, 59,049-sample windows).

    \b
    Example:
      musicembed convert pemr-official pemr.ckpt --out models/pemr-official
    """
    from ..convert import convert_pemr_official as run

    try:
        folder = run(checkpoint, out)
    except MusicEmbedError as e:
        fail(str(e))
    click.echo(f"wrote {folder / 'config.json'} and {folder / 'model.safetensors'}")


@cli.command()
@click.argument("name")
@click.option("--repo-id", required=True, help="Target Hub repository, <owner>/<repo>.")
@click.option("--private", is_flag=True, help="Create the repository as private.")
@click.option("--token", envvar="HF_TOKEN", help="Hub token (default: $HF_TOKEN or the stored login).")
def publish(name: str, repo_id: str, private: bool, token: str | None) -> None:
    """Upload a model (manifest name or local folder) to the Hugging Face Hub.

    \b
    Examples:
      musicembed publish pemr --repo-id musicembed/pemr-fcn4-freemusic
      musicembed publish runs/my-model --repo-id me/my-pemr --private
    """
    from ..model import load_model

    try:
        model = load_model(name, device="cpu")
        url = model.push_to_hub(repo_id, token=token, private=private)
    except MusicEmbedError as e:
        fail(str(e))
    except Exception as e:  # network / auth errors from huggingface_hub
        fail(f"upload to {repo_id} failed: {e}")
    click.echo(f"published {name} to {repo_id}: {url}")


@cli.command("export")
@click.argument("name")
@click.option("-f", "--format", "fmt", type=click.Choice(["onnx", "torchscript"]), default="onnx", show_default=True,
              help="onnx (needs: pip install \"musicembed[onnx]\") or torchscript (no extra).")
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="File to write (e.g. pemr.onnx, pemr.pt); written atomically.")
@click.option("--levels", type=click.Choice(["0", "all"]), default="0", show_default=True,
              help="MART: 0 = the clip vector only; all = also every level's part vectors (outputs level1...).")
@click.option("--tolerance", default=1e-4, show_default=True, type=click.FloatRange(min=0),
              help="Largest allowed difference from PyTorch on the verification audio, absolute "
                   "(relative where outputs exceed 1).")
@click.option("--no-verify", is_flag=True, help="Skip running the exported file against PyTorch.")
def export_command(name: str, fmt: str, out: Path, levels: str, tolerance: float, no_verify: bool) -> None:
    """Export a model (frontend + encoder) to ONNX or TorchScript.

    NAME is a manifest name, a model folder or hf-hub:<owner>/<repo>[@revision]. The graph
    maps mono float32 audio at the model's sample rate to embeddings: input `wave`
    (batch, samples), output `embedding` (batch, D). PEMR: batch and length are dynamic; an
    input of the model's window_samples gives exactly the per-window vector of `musicembed
    embed`. MART: batch is dynamic, the length is the model's window; with --levels all,
    outputs level1 ... (batch, M^n, D) follow. The model's name, rate, window and config are
    stored in the file (ONNX metadata_props; TorchScript extra file musicembed.json). The
    file is then run on test audio and compared with PyTorch (ONNX: when onnxruntime is
    installed); a difference above --tolerance fails the command.

    \b
    Examples:
      musicembed export pemr --format onnx --out pemr.onnx
      musicembed export mart --format onnx --levels all --out mart-levels.onnx
      musicembed export runs/my-model --format torchscript --out my-model.pt
    """
    from ..export import export

    try:
        res = export(name, out, fmt, levels=levels, verify=not no_verify, tolerance=tolerance)
    except (MusicEmbedError, RuntimeError, ValueError) as e:  # bad model, missing extra, failed check
        fail(str(e))
    check = ("not verified" if no_verify else
             "not verified: onnxruntime is not installed" if res.max_abs_diff is None else
             f"max abs diff vs PyTorch {res.max_abs_diff:.2g}")
    click.echo(f"wrote {res.path} ({fmt}; inputs {', '.join(res.inputs)}, outputs {', '.join(res.outputs)}; "
               f"dynamic {res.dynamic}; {check})")


# Catalog commands (index, search, explain, map, merge): musicembed/cli_catalog.py, imports kept lazy.
from .catalog import register as _register_catalog  # noqa: E402

_register_catalog(cli)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
