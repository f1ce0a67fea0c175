"""``svsurgery diff MODEL [REFERENCE.onnx | --torch SPEC]``: the first layer where MODEL diverges."""

from __future__ import annotations

import argparse

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from svsurgery.cli.arguments import InputsArgs, ReportArgs, TorchArgs, bounded_int, files
from svsurgery.cli.common import console, error_console
from svsurgery.errors import EXIT_CHECK_FAILED, BadInputError
from svsurgery.files import write_atomically
from svsurgery.model_io import load
from svsurgery.parity.metrics import PROFILES, tolerance
from svsurgery.runtime import run as run_model


def register(verbs) -> None:
    parser = verbs.add_parser(
        "diff",
        help=(
            "compare layer by layer with PyTorch (or another ONNX model) and name the first value that "
            "introduces a divergence"
        ),
        description="Run MODEL with every intermediate value exposed and the reference on identical inputs, "
        "map values to torch submodules (legacy exporter node names, dynamo name scopes) or to the same-named "
        "values of REFERENCE.onnx and compare each pair in topological order. Each value's own nodes are also "
        "replayed on the reference's values of what they read: the error a value introduces is kept apart from "
        "the error it inherits, and the culprit is the first value that introduces an error beyond tolerance "
        "(or NaN/Inf the reference does not have). Values a rule changed on purpose (recorded by svsurgery fix "
        "in either model) are not divergences. A float16 side is evaluated in true float16. Exit 1 when a value "
        "introduces a divergence.",
    )
    parser.add_argument("model", help="the .onnx model to examine")
    parser.add_argument("reference", nargs="?", help="another .onnx model to compare with, value by value (by name)")
    TorchArgs.add(parser)
    InputsArgs.add(parser)
    parser.add_argument(
        "--tolerance",
        choices=sorted(PROFILES),
        help="tolerance profile (default: fp32-intermediate, fp16-intermediate with a float16 side)",
    )
    parser.add_argument(
        "--chunk",
        type=bounded_int(1, what="a number of values"),
        default=256,
        help="intermediate values fetched per run (memory bound; default 256)",
    )
    parser.add_argument("--plot", metavar="PNG", help="draw error against depth (needs matplotlib)")
    ReportArgs.add(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from svsurgery.divergence import diff, diff_models
    from svsurgery.parity.inputs import runs_on

    if bool(args.reference) == bool(args.torch):
        raise BadInputError("give one reference: a second .onnx model, or --torch MODULE_SPEC")
    plan = files(args)
    model = load(args.model)
    plan.read_model(model)
    reference_model = None
    if args.reference:
        reference_model = load(args.reference)
        plan.read_model(reference_model, "reference model")
    TorchArgs.declare(args)
    InputsArgs.declare(args)
    plot = plan.write(args.plot, "--plot") if args.plot else None
    ReportArgs.declare(args)
    inputs = InputsArgs.parse(args, model, args.model)
    chosen = tolerance(args.tolerance) if args.tolerance else None
    with runs_on(inputs, args.model):  # inputs it cannot run on: one line naming them (exit 2), before any work
        run_model(model, inputs.feeds)
    with Progress(
        TextColumn("comparing values"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=error_console(),
        transient=True,
    ) as bar:
        task = bar.add_task("diff", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        with runs_on(inputs, args.model):
            if args.torch:
                module = TorchArgs.parse(args)
                report = diff(module, model, inputs.feeds, tolerance=chosen, chunk=args.chunk, progress=progress)
            else:
                assert reference_model is not None, "checked above: a reference model or --torch, not both"
                report = diff_models(
                    model, reference_model, inputs.feeds, tolerance=chosen, chunk=args.chunk, progress=progress
                )
    ReportArgs.emit(args, report, console())
    if plot is not None:
        plan.written(write_atomically(plot, report.plot))
        if not (args.json or args.report == "-"):
            console().print(f"plot: {plot}", markup=False)
    return 0 if report.passed else EXIT_CHECK_FAILED
