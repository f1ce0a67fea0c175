"""The one exception family for user-facing failures.

Every error the user can cause or fix (bad file, bad option, a model that fails a
check) is an :class:`SvsError` carrying the exit code the CLI returns and a one-line
message that names the file, node or option involved. Anything else escaping the
library is a bug and may traceback.
"""

from __future__ import annotations

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_CHECK_FAILED",
    "EXIT_OK",
    "BadInputError",
    "CheckFailedError",
    "MissingDependencyError",
    "SvsError",
    "require",
]

EXIT_OK = 0
EXIT_CHECK_FAILED = 1  # the job ran, but a validity or parity check failed
EXIT_BAD_INPUT = 2  # bad usage or bad input


class SvsError(Exception):
    """A failure explained to the user in one line; ``exit_code`` is what the CLI returns."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class BadInputError(SvsError):
    """The user gave a file, value or option that cannot be used (exit 2)."""

    exit_code = EXIT_BAD_INPUT


class CheckFailedError(SvsError):
    """The job ran but its result failed a validity or parity check (exit 1)."""

    exit_code = EXIT_CHECK_FAILED


class MissingDependencyError(SvsError):
    """An optional dependency is needed for the requested feature (exit 2)."""

    exit_code = EXIT_BAD_INPUT


_INSTALL_HINTS = {"torch": "pip install torch==2.13.0 'svsurgery[torch]'"}


def require(module: str, feature: str):
    """Import an optional dependency or raise a one-line error naming the feature."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        hint = _INSTALL_HINTS.get(module.split(".")[0], f"pip install {module.split('.')[0]}")
        raise MissingDependencyError(
            f"{feature} needs {module.split('.')[0]}, which is not installed ({hint})"
        ) from None
