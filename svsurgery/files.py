"""The files a command reads and writes: checked before any work, written atomically.

Nothing the user gave is ever overwritten or lost. A command declares, before it does
any work, every file it reads and every file it will write (:class:`FilePlan`); an
output that is a folder, sits in a missing folder, is one of the command's inputs
(compared by identity, so links and hard links count) or is claimed by a second output
is refused in one line, before anything runs. Every file is then written through
:func:`write_atomically`: into a staging name beside the target, renamed into place in
one step, with SIGINT/SIGTERM held back during the rename so an interrupt lands before
or after it, never inside it. Staging leftovers of runs killed outright (SIGKILL, power
loss) carry the writer's process id and are removed by the next write to the same
target once that process is gone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import secrets
import shutil
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from svsurgery.errors import BadInputError

__all__ = [
    "FilePlan",
    "commit_guard",
    "remove_stale_staging",
    "staging_name",
    "write_atomically",
    "write_text_atomically",
]

_STAGING = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)-[0-9a-f]{8}(?P<suffix>\.[^.]*)?$")


def staging_name(target: Path) -> Path:
    """A fresh staging path beside ``target`` that names this process (for stale-file cleanup)
    and keeps the target's suffix (writers that pick a format by suffix, like matplotlib's)."""
    return target.parent / f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}{target.suffix}"


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_staging(target: Path) -> list[Path]:
    """Remove staging files and folders for ``target`` left by writers that no longer run."""
    removed: list[Path] = []
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _STAGING.match(entry.name)
        if not match or match["name"] != target.name or _process_alive(int(match["pid"])):
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
    return removed


@contextlib.contextmanager
def commit_guard() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back while the block runs (renames that must happen together).

    A signal that arrives meanwhile is delivered when the block ends, so an interrupt
    lands before the first rename or after the last, never between them.
    """
    held = {signal.SIGINT, signal.SIGTERM}
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def write_atomically(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call ``write(staged_path)`` and rename the result onto ``path``; returns the absolute path.

    A failure (or an interrupt) before the rename leaves ``path`` as it was and no staging
    file behind.
    """
    target = Path(path).absolute()
    remove_stale_staging(target)
    staged = staging_name(target)
    try:
        write(staged)
        with commit_guard():
            os.replace(staged, target)
    except BaseException:
        with contextlib.suppress(OSError):
            staged.unlink()
        raise
    return target


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
    """``text`` (and a final newline) written atomically to ``path``."""
    return write_atomically(path, lambda staged: staged.write_text(text + "\n", encoding="utf-8"))


# ----------------------------------------------------------------------------- the plan


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_dev, stat.st_ino)


@dataclasses.dataclass
class _File:
    path: Path
    what: str
    identity: tuple[int, int] | None


class FilePlan:
    """What one command reads and what it will write, declared before any work.

    ``read(path, what)`` records an input (a model's external data files come with
    :meth:`read_model`); ``write(path, what)`` checks an output against everything
    declared so far and returns its absolute path; ``written(path)`` records that an
    output is complete. ``outcome()`` says which outputs were written (for an interrupt
    that arrives after some of them).
    """

    def __init__(self, command: str = "") -> None:
        self.command = command
        self._reads: list[_File] = []
        self._writes: list[_File] = []
        self._done: list[Path] = []

    # -- inputs
    def read(self, path: str | os.PathLike | None, what: str = "input") -> Path | None:
        if path is None or str(path) == "-":
            return None
        absolute = Path(path).absolute()
        self._reads.append(_File(absolute, what, _identity(absolute)))
        for output in self._writes:
            self._check_not_input(output.path, output.what, may_replace=False)
        return absolute

    def read_all(self, paths: Iterable[str | os.PathLike | None], what: str) -> None:
        for path in paths:
            self.read(path, what)

    def read_model(self, model, what: str = "input model") -> None:
        """The files an loaded model came from (the .onnx and its external data)."""
        from svsurgery.model_io import SOURCE_FILES_KEY, SOURCE_PATH_KEY  # local: model_io imports this module

        source = model.meta.get(SOURCE_PATH_KEY)
        for name in sorted(model.meta.get(SOURCE_FILES_KEY, ())):
            self.read(name, what if name == source else f"external data of the {what}")

    # -- outputs
    def write(self, path: str | os.PathLike, what: str, *, may_replace_input: bool = False) -> Path:
        """Check that ``path`` may receive ``what``; returns it absolute. Raises BadInputError."""
        target = Path(path).absolute()
        if target.is_dir():
            raise BadInputError(f"{what} {path}: is a folder; give the path of the file to write")
        if not target.parent.is_dir():
            raise BadInputError(f"{what} {path}: the folder {target.parent} does not exist")
        if not os.access(target.parent, os.W_OK):
            raise BadInputError(f"{what} {path}: the folder {target.parent} is not writable")
        if target.exists() and not target.is_file():
            raise BadInputError(f"{what} {path}: exists and is not a regular file")
        self._check_not_input(target, what, may_replace=may_replace_input)
        identity = _identity(target)
        for other in self._writes:
            if other.path == target or (identity is not None and other.identity == identity):
                raise BadInputError(f"{what} {path}: the {other.what} is written there too; give them different paths")
        self._writes.append(_File(target, what, identity))
        return target

    def _check_not_input(self, target: Path, what: str, *, may_replace: bool) -> None:
        identity = _identity(target)
        resolved = target.resolve()
        for source in self._reads:
            same = source.path.resolve() == resolved or (identity is not None and source.identity == identity)
            if not same:
                continue
            if may_replace and source.what == "input model":
                continue
            hint = " (or ask for it with --in-place)" if source.what == "input model" and what.endswith("model") else ""
            raise BadInputError(
                f"{what} {target}: refusing to overwrite the {source.what} this command reads; "
                f"choose another path{hint}"
            )

    def written(self, path: str | os.PathLike) -> None:
        self._done.append(Path(path).absolute())

    def outcome(self) -> tuple[list[Path], list[Path]]:
        """(written, not written) among the declared outputs."""
        done = set(self._done)
        return [f.path for f in self._writes if f.path in done], [f.path for f in self._writes if f.path not in done]
