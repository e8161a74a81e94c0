"""The ``musicembed`` command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

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


def _fail(msg: str) -> None:
    raise Fatal(msg)


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
              help="Time the default model against a compiled one (torch.compile, freezing) and, where the hardware "
                   "has native bfloat16, bfloat16 at the first batch, and keep the fastest: for large catalogs; "
                   "vectors within cosine 0.999 of the default. The first batch compiles (tens of seconds); where "
                   "compiling fails it warns and runs the default model.")
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
          batch_size: int | None, fast: bool, as_json: bool, progress: bool | None, shard_spec: str | None,
          resume: bool, rehash: bool) -> None:
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
    from ..audio import find_audio_files
    from ..model import load_model
    from ..io.writers import FORMATS, check_options, to_json, write_results

    if out is not None and out.suffix.lower() not in FORMATS:
        _fail(f"--out must end in one of {', '.join(FORMATS)} (got {out.name!r})")
    if out is not None:
        try:
            check_options(out, windows=timestamps, levels=hierarchical)
        except ValueError as e:
            _fail(str(e))
    if resume and out is None:
        _fail("--resume needs --out FILE: it continues the interrupted run that was writing FILE")
    if rehash and not resume:
        _fail("--rehash is an option of --resume: it decides which recorded results are reused")
    files, problems = find_audio_files(list(paths), recursive=recursive, report_unsupported=True)
    selection = None
    if shard_spec is not None:  # the sharding logic lives in musicembed/shard.py
        from ..catalog.shard import ShardError, catalog_of, parse_spec

        if out is not None and out.suffix.lower() != ".npz":
            _fail("--shard needs --out FILE.npz (or no --out): merge reads the shard metadata stored there")
        try:
            selection = catalog_of(files, paths, problems).select(parse_spec(shard_spec))
        except ShardError as e:
            _fail(str(e))
        files = selection.files
    try:
        model = load_model(model_name, device=device, fast=fast)
    except (MusicEmbedError, ValueError) as e:  # ValueError: an unusable --device
        _fail(str(e))
    if hierarchical and model.config.method != "mart":
        _fail(f"--hierarchical needs a MART model (--model mart); {model_name!r} is {model.config.method}")
    store, keys, finished = None, [None] * len(files), {}
    if out is not None:  # finished files go to OUT.partial one by one, so an interrupted run can --resume
        from dataclasses import replace

        from ..io.resume import PartialStore, StoreError, file_key, run_settings

        try:
            store, done, note = PartialStore.open(out, run_settings(
                model, window_seconds=window_seconds, hop_seconds=hop_seconds, timestamps=timestamps,
                hierarchical=hierarchical), resume)
        except StoreError as e:
            _fail(str(e))
        click.get_current_context().call_on_close(store.close)
        if note:
            click.echo(note, err=True)
        keys = [file_key(f) for f in files]
        reuse = {i: store.reusable(k, done, rehash) for i, k in enumerate(keys)}
        finished = {i: replace(e, source=str(files[i])) for i, e in reuse.items() if e is not None}
        if resume:
            click.echo(f"resuming: {len(finished)} of {len(files)} file(s) already embedded; "
                       f"embedding the other {len(files) - len(finished)}", err=True)
    todo = [i for i in range(len(files)) if i not in finished]
    failures: list[tuple[str, str]] = list(problems)
    try:
        for j, res in model.iter_embed([files[i] for i in todo], hierarchical=hierarchical,
                                       window_seconds=window_seconds, hop_seconds=hop_seconds,
                                       batch_size=batch_size, progress=progress):
            i = todo[j]
            if isinstance(res, MusicEmbedError):
                failures.append((str(files[i]), getattr(res, "reason", str(res))))
                click.echo(f"error: {res}", err=True)
                continue
            if res.warning:
                click.echo(f"warning: {res.source}: {res.warning}", err=True)
            if out is not None and not timestamps:  # keep only what the output holds: memory stays small
                res = replace(res, vectors=res.vectors[:0], starts=res.starts[:0], ends=res.ends[:0])
            finished[i] = res
            if store is not None and keys[i] is not None:
                try:
                    store.append(keys[i], res)
                except OSError as e:
                    _fail(f"{store.path}: cannot record results ({e.strerror or e}); what was recorded before "
                          "is kept: free space or fix permissions, then rerun with --resume")
            if out is None:
                if as_json:
                    click.echo(json.dumps(to_json(res, timestamps, hierarchical)))
                else:
                    _print_result(res, timestamps, hierarchical)
    except ValueError as e:
        _fail(str(e))
    results = [finished[i] for i in sorted(finished)]
    if out is not None:
        extra = selection.arrays([r.source for r in results], failures) if selection is not None else None
        try:
            write_results(out, results, model.embedding_dim, model.name, windows=timestamps, levels=hierarchical,
                          extra=extra)
        except OSError as e:
            _fail(f"cannot write {out} ({e.strerror or e}); the {len(results)} results are kept in {store.path}: "
                  "fix this, then rerun the same command with --resume")
        store.remove()
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
        _fail(f"{e.problem}: connect to the network (or unset HF_HUB_OFFLINE) and try again")
    except MusicEmbedError as e:
        _fail(str(e))
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
        _fail(str(e))
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
        _fail(str(e))
    except Exception as e:  # network / auth errors from huggingface_hub
        _fail(f"upload to {repo_id} failed: {e}")
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
        _fail(str(e))
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
