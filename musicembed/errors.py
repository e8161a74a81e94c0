"""Errors a user can act on. Each names the input and the reason.

Exit codes of the ``musicembed`` commands (README, "Exit codes"):
``EXIT_OK`` everything done; ``EXIT_FAILED_INPUTS`` some inputs failed, each is named on
stderr, and the output holds every other one; ``EXIT_NOTHING_WRITTEN`` the command stopped
with an error before writing its output (a bad option, model or output path, a full disk);
``EXIT_INTERRUPTED`` stopped by Ctrl-C (SIGINT), nothing written.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED_INPUTS = 1
EXIT_NOTHING_WRITTEN = 2  # also click's code for a usage error: nothing was written either
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's convention


class MusicEmbedError(Exception):
    """Base class of musicembed's own errors."""


class AudioError(MusicEmbedError):
    """An input could not be turned into audio. ``source`` names the file (or ``<array>``)."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class WeightsError(MusicEmbedError):
    """Model weights could not be resolved, verified or loaded."""
