"""``svsurgery fix MODEL``: rewrite divergent patterns, re-verifying parity after every pass."""

from __future__ import annotations

import argparse

import onnx_ir as ir
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from svsurgery.cli.arguments import EngineArgs, InputsArgs, OutputArgs, ReferenceArgs, ReportArgs, ToleranceArgs, files
from svsurgery.cli.common import console, error_console
from svsurgery.errors import EXIT_CHECK_FAILED
from svsurgery.model_io import load, save

OUTPUT = OutputArgs("fixed")


def register(verbs) -> None:
    parser = verbs.add_parser(
        "fix",
        help="apply the rule catalog (or your rules), verifying parity after every pass; roll back what hurts",
        description="Apply rule families one at a time. After each: the validity gate (onnx.checker + "
        "onnxruntime), then parity against the reference; a pass that breaks validity or makes parity worse "
        "is rolled back. Default reference: the original model evaluated in float64. Float16 models are "
        "evaluated in true float16. The result is written only when its parity is within tolerance (or with "
        "--force); provenance goes into metadata_props.",
    )
    add_engine_verb_arguments(parser, default_reference="--fp64-reference", output=OUTPUT)
    parser.set_defaults(run=run)


def add_engine_verb_arguments(parser, *, default_reference: str, output: OutputArgs) -> None:
    """What every verb that runs the rule engine takes (fix, fp16)."""
    parser.add_argument("model", help="the .onnx model")
    output.add(parser)
    EngineArgs.add(parser)
    ReferenceArgs.add(parser, default_reference)
    InputsArgs.add(parser)
    ToleranceArgs.add(parser)
    ReportArgs.add(parser)


def run(args: argparse.Namespace) -> int:
    return run_engine(args, OUTPUT)


def run_engine(
    args: argparse.Namespace,
    output_args: OutputArgs,
    *,
    precision: ir.DataType | None = None,
    default_reference=None,
    **engine_options,
) -> int:
    """Load, check every path, run the engine with a progress line, write when within tolerance, report.
    ``engine_options`` go to :func:`svsurgery.engine.fix` as they are (fp16: ``min_headroom``)."""
    from svsurgery import engine

    plan = files(args)
    model = load(args.model)
    plan.read_model(model)
    ReferenceArgs.declare(args)
    InputsArgs.declare(args)
    EngineArgs.declare(args)
    output = output_args.declare(args, args.model)
    ReportArgs.declare(args)
    choice = EngineArgs.parse(args)
    tolerance = ToleranceArgs.parse(args).resolve(model, precision)
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=error_console(), transient=True
    ) as bar:
        task = bar.add_task("evaluating the reference ...", total=None)
        reference = ReferenceArgs.parse(args, model, default_reference(model) if default_reference else None)
        fixed, report = engine.fix(
            model,
            choice.families,
            reference=reference,
            inputs=InputsArgs.parse(args, model, generate=False),
            tolerance=tolerance,
            raise_opset=not choice.keep_opset,
            precision=precision,
            keep_io_types=getattr(args, "keep_io_types", False),
            **engine_options,
            progress=lambda what: bar.update(task, description=f"rule {what}: apply, gate, verify ..."),
        )
        if report.passed or choice.force:
            bar.update(task, description=f"writing {output} (validity gate) ...")
            save(fixed, output, overwrite_input=args.in_place)
            plan.written(output)
            report.output, report.written = str(output), True
    ReportArgs.emit(args, report, console())
    if not report.passed and not (args.json or args.report == "-"):
        console().print(
            "nothing written (use --force to write it anyway)" if not report.written else "written with --force",
            markup=False,
        )
    return 0 if report.passed else EXIT_CHECK_FAILED
