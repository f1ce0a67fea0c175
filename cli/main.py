"""Entry point: parse the verb, run it, turn user-facing errors into one line and an exit code.

Exit codes, the same for every verb: 0 success, 1 the job ran but a validity or
parity check failed, 2 bad usage or bad input.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from svsurgery._version import __version__
from svsurgery.cli import check, demo, diff, example, extract, fix, fp16, frontend, fuse_preproc, golden, inspect, rules
from svsurgery.errors import EXIT_BAD_INPUT, SvsError

__all__ = ["build_parser", "main"]

VERBS = (demo, fuse_preproc, frontend, fix, fp16, rules, golden, check, diff, extract, inspect, example)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="svsurgery",
        description="ONNX graph surgery for speech models.",
        epilog="Exit codes: 0 success, 1 a validity or parity check failed, 2 bad usage or bad input.",
    )
    parser.add_argument("--version", action="version", version=f"svsurgery {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="COMMAND")
    verbs.required = True
    for verb in VERBS:
        verb.register(verbs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except SvsError as error:
        print(f"svsurgery {args.verb}: error: {error.message}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print(f"svsurgery {args.verb}: interrupted", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
