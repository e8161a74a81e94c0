"""Model commands: ``models``, ``download``, ``info``, ``convert``, ``publish``, ``export``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..errors import EXIT_FAILED_INPUTS, MusicEmbedError
from .common import fail


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the manifest entries as JSON.")
def models(as_json: bool) -> None:
    """List the models of the weights manifest and whether each is available offline, with
    the licence of their weights, their training data and where their figures come from.

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
        rows.append((name, str(e.get("version", "-")), e.get("method", "?"), str(e.get("embedding_dim", "?")),
                     str(e.get("sample_rate", "?")),
                     "yes" if offline else "no", where, weights_sha(e), hub_repo(e),
                     problem or e.get("description", "")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    for name, e in sorted(manifest.items()):
        if not isinstance(e, dict):
            continue
        facts = [f"{label}: {e[key]}" for key, label in (("license", "licence"), ("training_data", "training data"),
                                                          ("figures", "figures")) if e.get(key)]
        recs = e.get("recommendations")
        if isinstance(recs, dict):
            facts += [f"{task}: {r.get('advice', r) if isinstance(r, dict) else r}" for task, r in recs.items()]
        if facts:
            click.echo(f"\n{name}:\n" + "\n".join(f"  {f}" for f in facts))


@click.command()
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


@click.command()
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


@click.group()
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


@click.command()
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


@click.command("export")
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


COMMANDS = (models, download, info, convert, publish, export_command)
