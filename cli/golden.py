"""``svsurgery golden MODEL -o golden.npz``: save inputs and the outputs a model must give for them."""

from __future__ import annotations

import argparse

from svsurgery.cli.arguments import InputsArgs, TorchArgs, files
from svsurgery.cli.common import console
from svsurgery.model_io import load, value_names
from svsurgery.parity import references


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
    TorchArgs.add(source, parser)
    source.add_argument("--fp64", action="store_true", help="expected outputs from the model evaluated in float64")
    InputsArgs.add(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from svsurgery import golden
    from svsurgery.parity.inputs import runs_on

    plan = files(args)
    model = load(args.model)
    plan.read_model(model)
    TorchArgs.declare(args)
    InputsArgs.declare(args)
    output = plan.write(args.output, "golden file (-o)")
    inputs = InputsArgs.parse(args, model, args.model)
    module = TorchArgs.parse(args)
    if module is not None:
        reference: references.Reference = references.TorchReference(
            module, value_names(model.graph.outputs), value_names(model.graph.inputs)
        )
    elif args.fp64:
        reference = references.Float64Reference(model)
    else:
        reference = references.ModelReference(model, label=args.model)
    with runs_on(inputs, reference.description):
        outputs = reference.outputs(inputs.feeds)
    path = golden.save(output, inputs.feeds, outputs, source=reference.description)
    plan.written(path)
    console().print(
        f"wrote {path}: {len(inputs.feeds)} inputs ({inputs.describe()}), "
        f"{len(outputs)} outputs from {reference.description}",
        markup=False,
    )
    return 0
