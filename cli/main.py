"""Entry point: parse the verb, run it, turn user-facing errors into one line and an exit code.

Exit codes, the same for every verb: 0 success, 1 the job ran but a validity or
parity check failed, 2 bad usage or bad input. SIGTERM is handled like Ctrl-C: the
command stops, a file being written is left as it was (see svsurgery.files), and the
message says which outputs were complete; an interrupt that arrives once every output
is written reports success.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def build_parser():
    from svsurgery._version import __version__
    from svsurgery.cli import (
        audit,
        check,
        demo,
        diff,
        example,
        extract,
        fix,
        fp16,
        frontend,
        fuse_preproc,
        golden,
        inspect,
        rules,
    )
    from svsurgery.cli.arguments import CommandParser

    parser = CommandParser(
        prog="svsurgery",
        description="ONNX graph surgery for speech models.",
        epilog="Exit codes: 0 success, 1 a validity or parity check failed, 2 bad usage or bad input.",
    )
    parser.add_argument("--version", action="version", version=f"svsurgery {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="COMMAND")
    verbs.required = True
    for verb in (demo, fuse_preproc, frontend, fix, fp16, rules, golden, check, diff, extract, inspect, example, audit):
        verb.register(verbs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    previous = signal.signal(signal.SIGTERM, _interrupt)
    verb = "svsurgery"
    plan = None
    try:
        from svsurgery.errors import SvsError
        from svsurgery.files import FilePlan

        args = build_parser().parse_args(argv)
        verb = f"svsurgery {args.verb}"
        plan = args.files = FilePlan(args.verb)
        try:
            return int(args.run(args) or 0)
        except SvsError as error:
            print(f"{verb}: error: {error.message}", file=sys.stderr)
            return error.exit_code
    except KeyboardInterrupt:
        return _interrupted(verb, plan)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupted(verb: str, plan) -> int:
    written, missing = plan.outcome() if plan is not None else ([], [])
    if written and not missing:
        print(
            f"{verb}: interrupted after its outputs were written; they are complete: {', '.join(map(str, written))}",
            file=sys.stderr,
        )
        return 0
    done = f"; complete: {', '.join(map(str, written))}" if written else ""
    print(
        f"{verb}: interrupted; nothing else was written (files in progress were left as they were){done}",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
