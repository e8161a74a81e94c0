"""The ``musicembed`` command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import numpy as np

from . import __version__
from .errors import MusicEmbedError

EXIT_FAILED_INPUTS = 1


class _LazyGroup(click.Group):
    """Imports the training and evaluation commands only when they are invoked, so the
    inference commands never import ``musicembed.train``."""

    lazy = {
        "train": ("musicembed.train.cli", "train_command", "Pre-train PEMR or MART on your own audio; export."),
        "eval": ("musicembed.train.eval.cli", "eval_command", "Downstream evaluation protocols (probes, covers)."),
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


def _fail(msg: str) -> None:
    raise click.ClickException(msg)


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
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
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON lines (when not writing --out).")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a terminal).")
def embed(paths: tuple[Path, ...], recursive: bool, model_name: str, out: Path | None, timestamps: bool,
          hierarchical: bool, window_seconds: float | None, hop_seconds: float | None, device: str | None,
          batch_size: int | None, as_json: bool, progress: bool | None) -> None:
    """Embed audio files (WAV, FLAC, OGG, MP3, ...) and folders.

    Files that fail are reported on stderr with the reason; every other file is still
    embedded and written, and the exit code is 1.

    \b
    Examples:
      musicembed embed song.mp3
      musicembed embed song.mp3 --json --timestamps
      musicembed embed a.mp3 b.flac --out two.npz
      musicembed embed music/ -r --out catalog.npz --model mart --hierarchical
    """
    from .audio import find_audio_files
    from .embedder import load_model
    from .outputs import FORMATS, to_json, write_results

    if out is not None and out.suffix.lower() not in FORMATS:
        _fail(f"--out must end in one of {', '.join(FORMATS)} (got {out.name!r})")
    files, problems = find_audio_files(list(paths), recursive=recursive)
    try:
        model = load_model(model_name, device=device)
    except MusicEmbedError as e:
        _fail(str(e))
    if hierarchical and model.config.method != "mart":
        _fail(f"--hierarchical needs a MART model (--model mart); {model_name!r} is {model.config.method}")
    results = []
    failures: list[tuple[str, str]] = list(problems)
    try:
        for i, res in model.iter_embed(files, hierarchical=hierarchical, window_seconds=window_seconds,
                                       hop_seconds=hop_seconds, batch_size=batch_size,
                                       progress=progress):
            if isinstance(res, MusicEmbedError):
                failures.append((str(files[i]), getattr(res, "reason", str(res))))
                click.echo(f"error: {res}", err=True)
                continue
            results.append(res)
            if out is None:
                if as_json:
                    click.echo(json.dumps(to_json(res, timestamps, hierarchical)))
                else:
                    _print_result(res, timestamps, hierarchical)
    except ValueError as e:
        _fail(str(e))
    if out is not None:
        write_results(out, results, model.embedding_dim, model.name, windows=timestamps, levels=hierarchical)
        click.echo(f"wrote {len(results)} embeddings ({model.embedding_dim}-d, model {model.name}) to {out}", err=True)
    if failures:
        click.echo(f"\n{len(failures)} input(s) failed:", err=True)
        for path, reason in failures:
            click.echo(f"  {path}: {reason}", err=True)
        sys.exit(EXIT_FAILED_INPUTS)


def _print_result(res, timestamps: bool, hierarchical: bool) -> None:
    head = np.array2string(res.clip[:6], precision=4, separator=", ", suppress_small=True)
    click.echo(f"{res.source}: shape {res.clip.shape} duration {res.duration:.2f}s  {head[:-1]}, ...]")
    if timestamps:
        for v, s, e in zip(res.vectors, res.starts, res.ends):
            click.echo(f"  window {s:8.2f}-{e:8.2f}s  {np.array2string(v[:4], precision=4, separator=', ')[:-1]}, ...]")
    if hierarchical and res.levels:
        for lv in res.levels:
            click.echo(f"  level {lv.level}: {len(lv.vectors)} segments of {lv.ends[0] - lv.starts[0]:.3f}s")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the manifest entries as JSON.")
def models(as_json: bool) -> None:
    """List the models of the weights manifest and whether each is available offline."""
    from . import hub

    manifest = hub.read_manifest()["models"]
    if as_json:
        click.echo(json.dumps({n: {**e, "offline": hub.available_offline(n)} for n, e in manifest.items()}, indent=2))
        return
    if not manifest:
        click.echo("No models in the manifest. Load a local folder or hf-hub:<owner>/<repo> with --model.")
        return
    rows = [("name", "method", "dim", "rate", "offline", "source", "description")]
    for name, e in sorted(manifest.items()):
        hubinfo = e.get("hub") or {}
        where = "bundled" if hub.bundled_dir(e) else (hubinfo.get("repo_id") or "-")
        rows.append((name, e.get("method", "?"), str(e.get("embedding_dim", "?")), str(e.get("sample_rate", "?")),
                     "yes" if hub.available_offline(name) else "no", where, e.get("description", "")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])


@cli.command()
@click.argument("name")
@click.option("--force", is_flag=True, help="Download again even if the files are cached.")
def download(name: str, force: bool) -> None:
    """Fetch a model's files into the Hugging Face cache (verifying sha256).

    NAME is a manifest name or hf-hub:<owner>/<repo>[@revision].
    """
    from . import hub

    try:
        res = hub.resolve(name, force_download=force)
    except MusicEmbedError as e:
        _fail(str(e))
    click.echo(f"{name}: ok ({res.weights})")


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
def info(paths: tuple[Path, ...], as_json: bool) -> None:
    """Show duration, sample rate, channels and format of audio files."""
    from dataclasses import asdict

    from .audio import info as audio_info

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
            click.echo(f"{i.path}: {i.duration:.3f}s  {i.sample_rate} Hz  {i.channels} ch  {i.format}/{i.subtype}")
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
    from .convert import convert_pemr_official as run

    try:
        folder = run(checkpoint, out)
    except MusicEmbedError as e:
        _fail(str(e))
    click.echo(f"wrote {folder / 'config.json'} and {folder / 'model.safetensors'}")


@cli.command()
@click.argument("name")
@click.option("--repo-id", required=True, help="Target Hub repository, <owner>/<repo>.")
@click.option("--private", is_flag=True, help="Create the repository as private.")
@click.option("--token", envvar="HF_TOKEN", help="Hub token (default: $HF_TOKEN or the stored login).")
def publish(name: str, repo_id: str, private: bool, token: str | None) -> None:
    """Upload a model (manifest name or local folder) to the Hugging Face Hub."""
    from .embedder import load_model

    try:
        model = load_model(name, device="cpu")
        url = model.push_to_hub(repo_id, token=token, private=private)
    except MusicEmbedError as e:
        _fail(str(e))
    except Exception as e:  # network / auth errors from huggingface_hub
        _fail(f"upload to {repo_id} failed: {e}")
    click.echo(f"published {name} to {repo_id}: {url}")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
