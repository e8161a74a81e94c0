"""Errors a user can act on. Each names the input and the reason."""

from __future__ import annotations


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
