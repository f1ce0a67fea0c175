"""``svsurgery extract MODEL --node NAME -o repro.onnx``: a minimal repro of one node, with its tensors."""

from __future__ import annotations

import argparse
from pathlib import Path

from svsurgery.cli.arguments import InputsArgs, bounded_int, files
from svsurgery.cli.common import console
from svsurgery.errors import EXIT_CHECK_FAILED
from svsurgery.model_io import load, save


def register(verbs) -> None:
    parser = verbs.add_parser(
        "extract",
        help="cut one node (and its feeders) out as a standalone model with captured inputs and outputs",
        description="Run MODEL on the inputs, capture the tensors NODE reads and writes, and save the subgraph "
        "computing NODE as a standalone model (weights included) plus an npz of its inputs and expected "
        "outputs (a golden file: `svsurgery check repro.onnx repro.npz` re-runs it). Exit 1 if the repro "
        "does not reproduce the captured outputs bit for bit.",
    )
    parser.add_argument("model", help="the .onnx model")
    parser.add_argument("--node", required=True, help="the node's name (as `svsurgery diff` or Netron shows it)")
    parser.add_argument("-o", "--output", required=True, help="the repro .onnx to write (the .npz goes beside it)")
    parser.add_argument(
        "--depth",
        type=bounded_int(0, what="a number of levels"),
        default=0,
        help="also include this many levels of producers (default 0)",
    )
    InputsArgs.add(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from svsurgery import golden
    from svsurgery.parity.inputs import runs_on
    from svsurgery.repro import extract_repro

    plan = files(args)
    model = load(args.model)
    plan.read_model(model)
    InputsArgs.declare(args)
    output = plan.write(args.output, "repro model (-o)")
    data = plan.write(Path(args.output).with_suffix(".npz"), "repro tensors (the .npz beside -o)")
    inputs = InputsArgs.parse(args, model, args.model)
    with runs_on(inputs, args.model):
        repro, feeds, expected, report = extract_repro(model, args.node, inputs.feeds, depth=args.depth)
    save(repro, output)
    plan.written(output)
    golden.save(data, feeds, expected, source=f"captured from {args.model} at node {args.node}")
    plan.written(data)
    report.model_path, report.data_path = str(output), str(data)
    report.render(console())
    return 0 if report.bit_exact else EXIT_CHECK_FAILED
