"""``svsurgery inspect MODEL [--fp16 [--inputs NPZ]] [--report FILE|-]``: signature, opsets,
operators, parameters, metadata; with ``--fp16``, how close the model runs to float16's range."""

from __future__ import annotations

import argparse
from pathlib import Path

from svsurgery.cli.arguments import InputsArgs, ReportArgs, files
from svsurgery.cli.common import console
from svsurgery.errors import BadInputError
from svsurgery.model_io import load
from svsurgery.summary import summarize


def register(verbs) -> None:
    parser = verbs.add_parser(
        "inspect",
        help="show a model's inputs/outputs, opsets, producer, operators, parameters and metadata",
        description="Show a model's signature (dtypes, symbolic shapes), opset imports, IR version, "
        "producer, op-type histogram (subgraphs included), parameter count and bytes, metadata_props.",
    )
    parser.add_argument("model", help="the .onnx file")
    parser.add_argument(
        "--fp16",
        action="store_true",
        help="also measure the model's float16 headroom on its inputs: the input scale at which each value "
        "computed in float16 would pass 65504, tightest first (a float32 model as a plain float16 conversion "
        "computes it; svsurgery fp16 --min-headroom refuses results below 8x by default)",
    )
    InputsArgs.add(parser)
    ReportArgs.add(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.inputs and not args.fp16:
        raise BadInputError("--inputs: only --fp16 runs the model; add --fp16 or leave --inputs out")
    model = load(args.model)
    files(args).read_model(model)
    InputsArgs.declare(args)
    ReportArgs.declare(args)
    summary = summarize(model)
    if args.fp16:
        from svsurgery.fp16_outlook import fp16_outlook  # only --fp16 needs the evaluator and input synthesis

        inputs = InputsArgs.parse(args, model, args.model)
        summary.fp16 = fp16_outlook(model, inputs, label=Path(args.model).name)
    ReportArgs.emit(args, summary, console())
    return 0
