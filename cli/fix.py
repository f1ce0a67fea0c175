"""``svsurgery fix MODEL``: rewrite divergent patterns, re-verifying parity after every pass."""

from __future__ import annotations

import argparse
from pathlib import Path

import onnx_ir as ir

from svsurgery.cli.common import (
    add_inputs_argument,
    add_tolerance_arguments,
    add_torch_arguments,
    console,
    error_console,
    inputs_from_args,
    tolerance_from_args,
)
from svsurgery.errors import EXIT_CHECK_FAILED, BadInputError


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
    add_engine_arguments(parser, default_reference="--fp64-reference", output_suffix="fixed")
    parser.set_defaults(run=run)


def add_engine_arguments(parser, *, default_reference: str, output_suffix: str) -> None:
    """The arguments every verb that runs the rule engine shares (fix, fp16)."""
    parser.add_argument("model", help="the .onnx model")
    parser.add_argument("-o", "--output", help=f"where to write (default: MODEL.{output_suffix}.onnx beside it)")
    parser.add_argument("--rules", metavar="IDS", help="comma-separated rule ids, in order (default: the whole catalog; see `svsurgery rules`)")
    parser.add_argument(
        "--rules-module", metavar="MODULE", action="append", default=[],
        help="your own rules: pkg.mod or path/to/rules.py (SVSURGERY_RULES, or RewriteRules/passes/RuleFamily "
        "objects at its top level); given alone, only its rules run",
    )  # fmt: skip
    reference = parser.add_argument_group(f"reference (one of; default {default_reference})")
    choice = reference.add_mutually_exclusive_group()
    choice.add_argument("--reference", metavar="GOLDEN_NPZ", help="golden inputs and outputs (svsurgery golden)")
    choice.add_argument("--reference-model", metavar="ONNX", help="another model's outputs (e.g. the original) as is")
    choice.add_argument("--fp64-reference", action="store_true", help="the input model evaluated in float64")
    add_torch_arguments(choice, reference)
    add_inputs_argument(parser)
    add_tolerance_arguments(parser)
    parser.add_argument("--keep-opset", action="store_true", help="never raise the model's opset (LayerNorm stays decomposed below 17)")
    parser.add_argument("--report", metavar="JSON", help="also write the report as JSON")
    parser.add_argument("--force", action="store_true", help="write the result even when its parity is beyond tolerance")
    parser.add_argument("--in-place", action="store_true", help="allow -o to be the input model itself")


def select_families(rule_ids: str | None, modules: list[str]):
    from svsurgery import rules
    from svsurgery.family import load_rules_module

    user = [family for module in modules for family in load_rules_module(module)]
    if rule_ids is None:
        return user if user else list(rules.CATALOG)
    known = {f.id: f for f in (*rules.CATALOG, *user)}
    wanted = [i.strip() for i in rule_ids.split(",") if i.strip()]
    unknown = [i for i in wanted if i not in known]
    if unknown:
        raise BadInputError(f"--rules: unknown rule {unknown[0]!r} (known: {', '.join(known)})")
    return [known[i] for i in wanted]


def reference_from_args(args, model, default=None):
    """The reference the flags ask for; ``default`` (None: the engine's float64) otherwise."""
    from svsurgery.parity import references

    if args.reference:
        from svsurgery import golden

        return references.GoldenReference(golden.load(args.reference))
    if args.reference_model:
        return references.ModelReference(args.reference_model, label=args.reference_model)
    if getattr(args, "torch", None):
        from svsurgery.torchspec import load_module

        return references.TorchReference(
            load_module(args.torch, args.weights), [o.name for o in model.graph.outputs], [i.name for i in model.graph.inputs]
        )
    if getattr(args, "fp64_reference", False):
        return references.Float64Reference(model)
    return default


def run(args: argparse.Namespace) -> int:
    return run_engine(args, output_suffix="fixed")


def run_engine(args: argparse.Namespace, *, output_suffix: str, precision: ir.DataType | None = None, default_reference=None) -> int:
    """Load, run the engine with a progress line, write when within tolerance, report."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from svsurgery import engine
    from svsurgery.io import load, save

    model_path = Path(args.model)
    output = Path(args.output) if args.output else model_path.with_name(f"{model_path.stem}.{output_suffix}.onnx")
    model = load(model_path)
    families = select_families(args.rules, args.rules_module)
    tolerance = tolerance_from_args(args, model, precision)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=error_console(), transient=True) as bar:
        task = bar.add_task("evaluating the reference ...", total=None)
        reference = reference_from_args(args, model, default_reference(model) if default_reference else None)
        fixed, report = engine.fix(
            model, families, reference=reference, inputs=inputs_from_args(args, model), tolerance=tolerance,
            raise_opset=not args.keep_opset, precision=precision, keep_io_types=getattr(args, "keep_io_types", False),
            progress=lambda what: bar.update(task, description=f"rule {what}: apply, gate, verify ..."),
        )  # fmt: skip
        if report.passed or args.force:
            bar.update(task, description=f"writing {output} (validity gate) ...")
            save(fixed, output, overwrite_input=args.in_place)
            report.output, report.written = str(output), True
    report.render(console())
    if not report.passed:
        console().print("nothing written (use --force to write it anyway)" if not report.written else "written with --force", markup=False)
    if args.report:
        report.write_json(args.report)
    return 0 if report.passed else EXIT_CHECK_FAILED
