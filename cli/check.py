"""``svsurgery check MODEL GOLDEN.npz``: re-verify a model against a golden file (exit 1 on failure)."""

from __future__ import annotations

import argparse

from svsurgery.cli.arguments import ReportArgs, ToleranceArgs, files
from svsurgery.cli.common import console
from svsurgery.errors import EXIT_CHECK_FAILED
from svsurgery.model_io import load


def register(verbs) -> None:
    parser = verbs.add_parser(
        "check",
        help="run a model on a golden file's inputs and compare with its outputs (exit 1 beyond tolerance)",
        description="Run MODEL on the inputs stored in GOLDEN.npz and compare every output with the stored "
        "one (max abs, max rel, cosine, argmax agreement, NaN/Inf). Exit 0 within tolerance, 1 beyond.",
    )
    parser.add_argument("model", help="the deployed .onnx model")
    parser.add_argument("golden", help="the golden .npz (svsurgery golden, or svsurgery.golden.save)")
    ToleranceArgs.add(parser)
    ReportArgs.add(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from svsurgery.check import check

    plan = files(args)
    model = load(args.model)
    plan.read_model(model)
    plan.read(args.golden, "golden file")
    ReportArgs.declare(args)
    report = check(model, args.golden, ToleranceArgs.parse(args).resolve(model), label=args.model)
    ReportArgs.emit(args, report, console())
    return 0 if report.passed else EXIT_CHECK_FAILED
