"""The command line's shared argument groups, each declared once.

Every group adds its arguments to a verb's parser and parses them into one typed value;
verbs never read another verb's arguments. Numbers are checked as they are parsed, so an
impossible value (``--max-abs -1``, ``--min-cosine 5``, ``--depth -1``) is a usage error
(exit 2) before any work. Files go through the verb's :class:`svsurgery.files.FilePlan`:
inputs are declared as they are parsed and every output is checked before the work
starts. Reports follow one convention on every verb: ``--report FILE`` writes the JSON
to FILE beside the table on the terminal; ``--report -`` (or ``--json``) prints the JSON
on stdout instead of the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from svsurgery.errors import EXIT_BAD_INPUT, BadInputError
from svsurgery.files import FilePlan
from svsurgery.parity import references
from svsurgery.parity.metrics import PROFILES, tolerance

__all__ = [
    "CommandParser",
    "EngineArgs",
    "InputsArgs",
    "OutputArgs",
    "ReferenceArgs",
    "ReportArgs",
    "ToleranceArgs",
    "TorchArgs",
    "bounded_float",
    "bounded_int",
    "files",
]


class CommandParser(argparse.ArgumentParser):
    """argparse, with usage errors as one line on stderr (exit 2) and no usage block."""

    def error(self, message: str):
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        sys.exit(EXIT_BAD_INPUT)


def files(args: argparse.Namespace) -> FilePlan:
    """The verb's file plan (made by the entry point; a fresh one when a verb runs on its own)."""
    plan = getattr(args, "files", None)
    if plan is None:
        plan = args.files = FilePlan(getattr(args, "verb", ""))
    return plan


# ----------------------------------------------------------------------------- numbers


def bounded_float(
    low: float | None = None, high: float | None = None, *, what: str = "a number"
) -> Callable[[str], float]:
    """An argparse type: a finite float within [low, high]."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value) or (low is not None and value < low) or (high is not None and value > high):
            bounds = (
                f"in [{_g(low)}, {_g(high)}]"
                if low is not None and high is not None
                else f">= {_g(low)}"
                if low is not None
                else f"<= {_g(high)}"
            )
            raise argparse.ArgumentTypeError(f"expected {what} {bounds}, got {text}")
        return value

    return parse


def bounded_int(low: int, high: int | None = None, *, what: str = "an integer") -> Callable[[str], int]:
    """An argparse type: an int within [low, high]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bounds = f"in [{low}, {high}]" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"expected {what} {bounds}, got {value}")
        return value

    return parse


def _g(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


# ----------------------------------------------------------------------------- report


class ReportArgs:
    """``--report FILE`` (JSON beside the table) / ``--report -`` or ``--json`` (JSON instead of it)."""

    @staticmethod
    def add(parser) -> None:
        parser.add_argument(
            "--report",
            metavar="FILE",
            help="also write the report as JSON to FILE; '-' prints it on stdout instead of the table",
        )
        parser.add_argument(
            "--json", action="store_true", help="print the report as JSON on stdout instead of the table (= --report -)"
        )

    @staticmethod
    def declare(args: argparse.Namespace) -> Path | None:
        """Check the report's path before any work; None when it goes to stdout or nowhere."""
        if args.report and args.report != "-":
            return files(args).write(args.report, "--report")
        return None

    @staticmethod
    def emit(args: argparse.Namespace, report, console) -> None:
        """The table on the terminal (or the JSON on stdout), and the JSON file."""
        if args.json or args.report == "-":
            print(report.to_json())
        else:
            report.render(console)
        if args.report and args.report != "-":
            path = report.write_json(args.report)
            files(args).written(path)


# ----------------------------------------------------------------------------- output


@dataclasses.dataclass(frozen=True)
class OutputArgs:
    """``-o/--output`` for a model (default: a suffixed name beside the input) and ``--in-place``."""

    default_suffix: str | None = None  # MODEL.<suffix>.onnx beside the input; None: -o is required
    in_place: bool = True
    what: str = "output model"

    def add(self, parser) -> None:
        if self.default_suffix is None:
            parser.add_argument("-o", "--output", required=True, help="the .onnx file to write")
        else:
            parser.add_argument(
                "-o", "--output", help=f"where to write (default: MODEL.{self.default_suffix}.onnx beside it)"
            )
        if self.in_place:
            parser.add_argument("--in-place", action="store_true", help="allow -o to be the input model itself")

    def declare(self, args: argparse.Namespace, source: str | Path | None = None) -> Path:
        """The output path, checked against the plan (call after the inputs are declared)."""
        if args.output:
            path = Path(args.output)
        else:
            assert source is not None, "an output with a default name is declared with the input it is named after"
            source = Path(source)
            path = source.with_name(f"{source.stem}.{self.default_suffix}.onnx")
        return files(args).write(path, self.what, may_replace_input=bool(getattr(args, "in_place", False)))


# ----------------------------------------------------------------------------- inputs


class InputsArgs:
    """``--inputs NPZ``: the model's inputs by name (default: generated from its signature)."""

    @staticmethod
    def add(parser) -> None:
        parser.add_argument(
            "--inputs",
            metavar="NPZ",
            help="inputs by name in an npz (default: generated from the model's signature, fixed seeds)",
        )

    @staticmethod
    def declare(args: argparse.Namespace) -> None:
        files(args).read(args.inputs, "--inputs file")

    @staticmethod
    def parse(args: argparse.Namespace, model, model_path=None, *, generate: bool = True):
        """ParityInputs from --inputs, else generated (or None when ``generate`` is false)."""
        from svsurgery.parity.inputs import generate_inputs, load_inputs

        if args.inputs:
            return load_inputs(args.inputs, model)
        return generate_inputs(model, model_path) if generate else None


# ----------------------------------------------------------------------------- torch


class TorchArgs:
    """``--torch MODULE_SPEC`` and ``--weights STATE_DICT``."""

    @staticmethod
    def add(parser, weights_parser=None) -> None:
        """``weights_parser``: where --weights goes when --torch sits in a mutually exclusive group."""
        parser.add_argument(
            "--torch",
            metavar="MODULE_SPEC",
            help="the PyTorch module: path/to/file.py:factory or package.module:factory; the factory is called "
            "with no arguments and returns the module or (module, weights); its forward takes the ONNX inputs "
            "positionally (needs torch)",
        )
        (weights_parser or parser).add_argument(
            "--weights", metavar="STATE_DICT", help="a state dict to load into the --torch module"
        )

    @staticmethod
    def declare(args: argparse.Namespace) -> None:
        plan = files(args)
        if getattr(args, "torch", None):
            where = args.torch.rpartition(":")[0]
            if where.endswith(".py"):
                plan.read(where, "--torch module file")
        plan.read(getattr(args, "weights", None), "--weights file")

    @staticmethod
    def parse(args: argparse.Namespace):
        """The torch module, or None without --torch."""
        if getattr(args, "weights", None) and not getattr(args, "torch", None):
            raise BadInputError("--weights needs --torch MODULE_SPEC (the module to load them into)")
        if not getattr(args, "torch", None):
            return None
        from svsurgery.torchspec import load_module

        return load_module(args.torch, args.weights)


# ----------------------------------------------------------------------------- reference


class ReferenceArgs:
    """What parity is measured against: one of --reference, --reference-model, --fp64-reference, --torch."""

    @staticmethod
    def add(parser, default: str) -> None:
        group = parser.add_argument_group(f"reference (one of; default {default})")
        choice = group.add_mutually_exclusive_group()
        choice.add_argument("--reference", metavar="GOLDEN_NPZ", help="golden inputs and outputs (svsurgery golden)")
        choice.add_argument(
            "--reference-model", metavar="ONNX", help="another model's outputs (e.g. the original) as is"
        )
        choice.add_argument("--fp64-reference", action="store_true", help="the input model evaluated in float64")
        TorchArgs.add(choice, group)

    @staticmethod
    def declare(args: argparse.Namespace) -> None:
        plan = files(args)
        plan.read(args.reference, "--reference golden file")
        plan.read(args.reference_model, "--reference-model")
        TorchArgs.declare(args)

    @staticmethod
    def parse(args: argparse.Namespace, model, default=None):
        """The reference the flags ask for; ``default`` (None: the engine's float64) otherwise."""
        if args.reference:
            from svsurgery import golden

            return references.GoldenReference(golden.load(args.reference))
        if args.reference_model:
            return references.ModelReference(args.reference_model, label=args.reference_model)
        module = TorchArgs.parse(args)
        if module is not None:
            return references.TorchReference(
                module, [o.name for o in model.graph.outputs], [i.name for i in model.graph.inputs]
            )
        if args.fp64_reference:
            return references.Float64Reference(model)
        return default


# ----------------------------------------------------------------------------- tolerance


@dataclasses.dataclass(frozen=True)
class ToleranceChoice:
    """A profile name (None: the default for the model's precision) and per-bound overrides."""

    profile: str | None
    overrides: dict[str, Any]

    def resolve(self, model=None, precision=None, *, default: str | None = None):
        from svsurgery.engine import default_tolerance

        name = self.profile or default or default_tolerance(model, precision).name
        return tolerance(name, **self.overrides)


class ToleranceArgs:
    """``--tolerance PROFILE`` and the bounds that override it, each checked when parsed."""

    @staticmethod
    def add(parser, default_help: str = "fp16 for float16 models, fp32 otherwise") -> None:
        group = parser.add_argument_group("tolerance")
        group.add_argument("--tolerance", choices=sorted(PROFILES), help=f"tolerance profile (default: {default_help})")
        group.add_argument(
            "--max-abs",
            type=bounded_float(0, what="an error bound"),
            metavar="X",
            help="override the profile's max abs error",
        )
        group.add_argument(
            "--max-rel",
            type=bounded_float(0, what="an error bound"),
            metavar="X",
            help="override the profile's max relative error",
        )
        group.add_argument(
            "--min-cosine",
            type=bounded_float(-1, 1, what="a cosine"),
            metavar="X",
            help="override the profile's minimum cosine similarity",
        )
        group.add_argument(
            "--min-argmax",
            type=bounded_float(0, 1, what="a fraction"),
            metavar="F",
            help="override the minimum argmax agreement (0..1)",
        )

    @staticmethod
    def parse(args: argparse.Namespace) -> ToleranceChoice:
        overrides = {
            "max_abs": args.max_abs,
            "max_rel": args.max_rel,
            "min_cosine": args.min_cosine,
            "min_argmax_agreement": args.min_argmax,
        }
        return ToleranceChoice(args.tolerance, {k: v for k, v in overrides.items() if v is not None})


# ----------------------------------------------------------------------------- the rule engine


@dataclasses.dataclass(frozen=True)
class EngineChoice:
    families: list
    keep_opset: bool
    force: bool


class EngineArgs:
    """The rule engine's choices: which rules, user rule modules, opset, --force."""

    @staticmethod
    def add(parser) -> None:
        parser.add_argument(
            "--rules",
            metavar="IDS",
            help="comma-separated rule ids, in order (default: the whole catalog; see `svsurgery rules`)",
        )
        parser.add_argument(
            "--rules-module",
            metavar="MODULE",
            action="append",
            default=[],
            help="your own rules: pkg.mod or path/to/rules.py (SVSURGERY_RULES, or RewriteRules/passes/RuleFamily "
            "objects at its top level); given alone, only its rules run",
        )
        parser.add_argument(
            "--keep-opset",
            action="store_true",
            help="never raise the model's opset (LayerNorm stays decomposed below 17)",
        )
        parser.add_argument(
            "--force", action="store_true", help="write the result even when its parity is beyond tolerance"
        )

    @staticmethod
    def declare(args: argparse.Namespace) -> None:
        files(args).read_all((m for m in args.rules_module if m.endswith(".py")), "--rules-module file")

    @staticmethod
    def parse(args: argparse.Namespace) -> EngineChoice:
        return EngineChoice(select_families(args.rules, args.rules_module), args.keep_opset, args.force)


def select_families(rule_ids: str | None, modules: list[str]) -> list:
    """The catalog's families and a user module's, by id in the order given (see rules.select)."""
    from svsurgery import rules
    from svsurgery.rules.base import load_rules_module

    return rules.select(rule_ids, [family for module in modules for family in load_rules_module(module)])
