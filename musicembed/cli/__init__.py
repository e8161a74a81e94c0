"""The ``musicembed`` command line: thin commands over the package's functions."""

from .main import cli, main

__all__ = ["cli", "main"]
