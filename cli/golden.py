"""``svsurgery golden MODEL -o golden.npz``: save inputs and the outputs a model must give for them."""

from __future__ import annotations

import argparse

from svsurgery.cli.common import add_inputs_argument, add_torch_arguments, console, inputs_from_args


def register(verbs) -> None:
    parser = verbs.add_parser(
        "golden",
        help="save a regression set: inputs and expected outputs (from PyTorch, or the model as it is now)",
        description="Save a golden file for `svsurgery check`: the model's inputs (from --inputs, or generated "
        "from its signature) and the outputs expected for them: from the PyTorch module (--torch), from the "
        "model evaluated in float64 (--fp64), or from the model as it is now (a known-good deployment).",
    )
    parser.add_argument("model", help="the .onnx model whose inputs and outputs the file describes")
    parser.add_argument("-o", "--output", required=True, help="the .npz to write")
    source = parser.add_mutually_exclusive_group()
    add_torch_arguments(source, parser)
    source.add_argument("--fp64", action="store_true", help="expected outputs from the model evaluated in float64")
    add_inputs_argument(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from svsurgery import golden
    from svsurgery.cli.fix import reference_from_args
    from svsurgery.io import load
    from svsurgery.parity import references
    from svsurgery.parity.inputs import generate_inputs

    model = load(args.model)
    inputs = inputs_from_args(args, model) or generate_inputs(model, args.model)
    args.reference = args.reference_model = None
    if args.fp64:
        reference = references.Float64Reference(model)
    else:
        reference = reference_from_args(args, model) or references.ModelReference(model, label=args.model)
    outputs = reference.outputs(inputs.feeds)
    path = golden.save(args.output, inputs.feeds, outputs, source=reference.description)
    console().print(
        f"wrote {path}: {len(inputs.feeds)} inputs ({inputs.describe()}), "
        f"{len(outputs)} outputs from {reference.description}",
        markup=False,
    )
    return 0
