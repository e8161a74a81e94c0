"""``musicembed compare``: how close two recordings are, in a similarity and a relation."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..errors import EXIT_FAILED_INPUTS, AudioError, MusicEmbedError
from .common import fail, load_model_or_fail


def _time(s: float) -> str:
    m, sec = divmod(max(0.0, s), 60)
    return f"{int(m)}:{sec:05.2f}"


@click.command("compare")
@click.argument("a", type=click.Path(path_type=Path))
@click.argument("b", type=click.Path(path_type=Path))
@click.option("-m", "--model", "model_name", default="pemr", show_default=True,
              help="Model name, folder or hf-hub:<owner>/<repo>[@revision].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (for machines).")
@click.option("--span-level", default=0, show_default=True, type=click.IntRange(min=0),
              help="MART: the level whose segments give the best-matching time spans (0 = the 4.1-s clips, "
                   "the level the model card recommends for same-track matching).")
@click.option("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available).")
def compare_command(a: Path, b: Path, model_name: str, as_json: bool, span_level: int, device: str | None) -> None:
    """Compare two audio files: the cosine similarity of their clip vectors, the most specific
    likely relation (same recording, same track, cover, same source, unrelated) with its
    probability (every relation equally likely beforehand; see the model card), and for MART
    the best-matching time spans in both files.

    A file that cannot be decoded is named on stderr with the reason (exit code 1).

    \b
    Examples:
      musicembed compare song.flac song-copy.mp3
      musicembed compare a.mp3 b.mp3 --model mart --json
    """
    model = load_model_or_fail(model_name, device)
    levels = model.config.mart.levels if model.config.method == "mart" else 1
    if span_level >= levels:
        fail(f"--span-level must be 0..{levels - 1} for this model")
    try:
        c = model.compare(a, b, span_level=span_level)
    except AudioError as e:
        click.echo(f"\n1 input(s) failed:\n  {e.source}: {e.reason}", err=True)
        sys.exit(EXIT_FAILED_INPUTS)
    except (MusicEmbedError, ValueError) as e:
        fail(str(e))
    if as_json:
        click.echo(json.dumps(c.to_dict()))
        return
    click.echo(f"similarity {c.similarity:.5f} (cosine of the clip vectors)")
    if c.relation is None:
        click.echo("relation: not available (this model has no calibration)")
    else:
        click.echo(f"relation: {c.label} (probability {c.probability:.2f})")
    if c.span is not None:
        s = c.span
        click.echo(f"best match (level {s.level}): {a} {_time(s.a_start)}-{_time(s.a_end)}  ~  "
                   f"{b} {_time(s.b_start)}-{_time(s.b_end)} (cosine {s.score:.4f})")
    click.echo(f"model: {c.model['name']} v{c.model['version']}, weights {str(c.model['fingerprint'])[:12]}, "
               f"licence: {c.model['license'] or 'not recorded'}")


COMMANDS = (compare_command,)
