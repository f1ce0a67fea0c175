"""Pieces every verb shares."""

from __future__ import annotations

import functools


@functools.cache
def console():
    """The terminal console (rich); tables go to stdout."""
    from rich.console import Console

    return Console()


@functools.cache
def error_console():
    """Progress and notices go to stderr so stdout stays machine-readable."""
    from rich.console import Console

    return Console(stderr=True)
