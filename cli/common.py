"""The consoles every verb writes to: results on stdout, progress and notices on stderr."""

from __future__ import annotations

import functools

from rich.console import Console

__all__ = ["console", "error_console"]


@functools.cache
def console() -> Console:
    """The terminal console (rich); tables go to stdout."""
    return Console()


@functools.cache
def error_console() -> Console:
    """Progress and notices go to stderr so stdout stays machine-readable."""
    return Console(stderr=True)
