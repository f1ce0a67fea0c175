"""``svsurgery inspect MODEL [--json]``: signature, opsets, operators, parameters, metadata."""

from __future__ import annotations

import argparse

from svsurgery.cli.common import console
from svsurgery.inspect import summarize
from svsurgery.io import load


def register(verbs) -> None:
    parser = verbs.add_parser(
        "inspect",
        help="show a model's inputs/outputs, opsets, producer, operators, parameters and metadata",
        description="Show a model's signature (dtypes, symbolic shapes), opset imports, IR version, "
        "producer, op-type histogram (subgraphs included), parameter count and bytes, metadata_props.",
    )
    parser.add_argument("model", help="the .onnx file (external data beside it is not read)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON instead of tables")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    summary = summarize(load(args.model))
    if args.json:
        print(summary.to_json())
    else:
        summary.render(console())
    return 0
