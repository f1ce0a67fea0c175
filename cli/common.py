"""Pieces every verb shares."""

from __future__ import annotations

import functools


@functools.cache
def console():
    """The terminal console (rich); tables go to stdout."""
    from rich.console import Console

    return Console()


@functools.cache
def error_console():
    """Progress and notices go to stderr so stdout stays machine-readable."""
    from rich.console import Console

    return Console(stderr=True)


# ----------------------------------------------------------------------------- shared argument groups


def add_tolerance_arguments(parser) -> None:
    """--tolerance PROFILE and per-bound overrides."""
    from svsurgery.parity.metrics import PROFILES

    group = parser.add_argument_group("tolerance")
    group.add_argument(
        "--tolerance",
        choices=sorted(PROFILES),
        help="tolerance profile (default: fp16 for float16 models, fp32 otherwise)",
    )
    group.add_argument("--max-abs", type=float, metavar="X", help="override the profile's max abs error")
    group.add_argument("--max-rel", type=float, metavar="X", help="override the profile's max relative error")
    group.add_argument("--min-cosine", type=float, metavar="X", help="override the profile's minimum cosine similarity")
    group.add_argument("--min-argmax", type=float, metavar="F", help="override the minimum argmax agreement (0..1)")


def tolerance_from_args(args, model, precision=None):
    from svsurgery.engine import default_tolerance
    from svsurgery.parity.metrics import tolerance

    name = args.tolerance or default_tolerance(model, precision).name
    return tolerance(
        name, max_abs=args.max_abs, max_rel=args.max_rel, min_cosine=args.min_cosine,
        min_argmax_agreement=args.min_argmax,
    )  # fmt: skip


def add_torch_arguments(parser, weights_parser=None) -> None:
    """--torch MODULE_SPEC (and --weights, in ``weights_parser`` when --torch sits in an exclusive group)."""
    parser.add_argument(
        "--torch", metavar="MODULE_SPEC",
        help="the PyTorch module as path/to/file.py:factory or package.module:factory (needs torch)",
    )  # fmt: skip
    (weights_parser or parser).add_argument("--weights", metavar="STATE_DICT", help="a state dict to load into the --torch module")


def add_inputs_argument(parser) -> None:
    parser.add_argument(
        "--inputs", metavar="NPZ",
        help="inputs by name in an npz (default: generated from the model's signature, fixed seeds)",
    )  # fmt: skip


def inputs_from_args(args, model):
    from svsurgery.parity.inputs import load_inputs

    return load_inputs(args.inputs, model) if args.inputs else None
