"""The ``musicembed`` command line."""

from __future__ import annotations

import click

from .. import __version__
from ..errors import EXIT_INTERRUPTED


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


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="musicembed")
def cli() -> None:
    """Turn music files into embeddings with pretrained PEMR and MART encoders.

    \b
    Examples:
      musicembed embed song.mp3
      musicembed embed music/ -r --out catalog.npz
      musicembed embed music/ -r --out catalog.npz --model mart --hierarchical
      musicembed compare song.flac song-copy.mp3
      musicembed models
    """
    import warnings

    warnings.showwarning = _show_warning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings on the command line: one line each, without the source location."""
    click.echo(f"warning: {message}", err=True)


from .catalog import COMMANDS as _CATALOG  # noqa: E402
from .compare import COMMANDS as _COMPARE  # noqa: E402
from .embed import embed  # noqa: E402
from .models import COMMANDS as _MODELS  # noqa: E402

for _command in (embed, *_MODELS, *_CATALOG, *_COMPARE):
    cli.add_command(_command)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
