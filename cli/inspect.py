"""``svsurgery inspect MODEL [--report FILE|-]``: signature, opsets, operators, parameters, metadata."""

from __future__ import annotations

import argparse

from svsurgery.cli.arguments import ReportArgs, files
from svsurgery.cli.common import console
from svsurgery.model_io import load
from svsurgery.summary import summarize


def register(verbs) -> None:
    parser = verbs.add_parser(
        "inspect",
        help="show a model's inputs/outputs, opsets, producer, operators, parameters and metadata",
        description="Show a model's signature (dtypes, symbolic shapes), opset imports, IR version, "
        "producer, op-type histogram (subgraphs included), parameter count and bytes, metadata_props.",
    )
    parser.add_argument("model", help="the .onnx file (external data beside it is not read)")
    ReportArgs.add(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    model = load(args.model)
    files(args).read_model(model)
    ReportArgs.declare(args)
    ReportArgs.emit(args, summarize(model), console())
    return 0
