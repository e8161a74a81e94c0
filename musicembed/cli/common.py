"""What every command shares: the one-line fatal error, the failure list and model loading."""

from __future__ import annotations

import sys
from typing import Any, NoReturn

import click

from ..errors import EXIT_FAILED_INPUTS, EXIT_NOTHING_WRITTEN, MusicEmbedError


class Fatal(click.ClickException):
    """A one-line error that stops a command before it writes its output."""

    exit_code = EXIT_NOTHING_WRITTEN


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
