"""``svsurgery diff MODEL [REFERENCE.onnx | --torch SPEC]``: the first layer where MODEL diverges."""

from __future__ import annotations

import argparse

from svsurgery.cli.common import add_inputs_argument, add_torch_arguments, console, error_console
from svsurgery.errors import EXIT_CHECK_FAILED, BadInputError


def register(verbs) -> None:
    parser = verbs.add_parser(
        "diff",
        help="compare layer by layer with PyTorch (or another ONNX model) and name the first divergence",
        description="Run MODEL with every intermediate value exposed and the reference on identical inputs, "
        "map values to torch submodules (legacy exporter node names, dynamo name scopes) or to the same-named "
        "values of REFERENCE.onnx, compare each pair in topological order and report the first beyond "
        "tolerance and the path to it. A float16 side is evaluated in true float16. Exit 1 when something "
        "diverges.",
    )
    parser.add_argument("model", help="the .onnx model to examine")
    parser.add_argument("reference", nargs="?", help="another .onnx model to compare with, value by value (by name)")
    add_torch_arguments(parser)
    add_inputs_argument(parser)
    parser.add_argument("--tolerance", help="tolerance profile (default: fp32-intermediate, fp16-intermediate with a float16 side)")
    parser.add_argument("--chunk", type=int, default=256, help="intermediate values fetched per run (memory bound; default 256)")
    parser.add_argument("--plot", metavar="PNG", help="draw error against depth (needs matplotlib)")
    parser.add_argument("--report", metavar="JSON", help="also write the report as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from svsurgery.layerwise import diff, diff_models
    from svsurgery.io import load
    from svsurgery.parity.inputs import generate_inputs, load_inputs
    from svsurgery.parity.metrics import tolerance

    if bool(args.reference) == bool(args.torch):
        raise BadInputError("give one reference: a second .onnx model, or --torch MODULE_SPEC")
    if args.chunk < 1:
        raise BadInputError(f"--chunk {args.chunk}: must be at least 1")
    model = load(args.model)
    inputs = load_inputs(args.inputs, model) if args.inputs else generate_inputs(model, args.model)
    chosen = tolerance(args.tolerance) if args.tolerance else None
    with Progress(TextColumn("comparing values"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=error_console(), transient=True) as bar:  # fmt: skip
        task = bar.add_task("diff", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        if args.torch:
            from svsurgery.torchspec import load_module

            report = diff(load_module(args.torch, args.weights), model, inputs.feeds, tolerance=chosen, chunk=args.chunk, progress=progress)
        else:
            report = diff_models(model, load(args.reference), inputs.feeds, tolerance=chosen, chunk=args.chunk, progress=progress)
    report.render(console())
    if args.plot:
        report.plot(args.plot)
        console().print(f"plot: {args.plot}", markup=False)
    if args.report:
        report.write_json(args.report)
    return 0 if report.passed else EXIT_CHECK_FAILED
