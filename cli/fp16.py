"""``svsurgery fp16 MODEL``: a float16 model that keeps parity, verified in true float16."""

from __future__ import annotations

import argparse

import onnx_ir as ir

from svsurgery.cli.arguments import OutputArgs, bounded_float
from svsurgery.cli.fix import add_engine_verb_arguments, run_engine
from svsurgery.parity.headroom import DEFAULT_MIN_HEADROOM

OUTPUT = OutputArgs("fp16")


def register(verbs) -> None:
    parser = verbs.add_parser(
        "fp16",
        help="convert to float16 with the precision rules, verified after every pass in true float16 arithmetic",
        description="Convert weights and compute to float16, keeping the regions the precision rules mark "
        "(LayerNorm statistics, Softmax and its score path, positional encodings) in float32 and mask fills "
        "finite. Every pass is verified on the float16 conversion, evaluated with true float16 arithmetic "
        "(onnxruntime's CPU provider would hide overflow), against the reference (default: the original "
        "model as is); passes that do not help are rolled back. Each candidate's headroom is measured too: the "
        "factor by which the inputs can be scaled before a value computed in float16 passes 65504; a pass that "
        "raises it is kept when cosine and argmax stay within tolerance. Written only within tolerance (profile "
        "fp16) and with at least --min-headroom.",
    )
    add_engine_verb_arguments(parser, default_reference="the original model as is", output=OUTPUT)
    parser.add_argument(
        "--keep-io-types", action="store_true", help="keep float32 graph inputs and outputs (Casts inside)"
    )
    parser.add_argument(
        "--min-headroom",
        type=bounded_float(0, what="an input scale"),
        default=DEFAULT_MIN_HEADROOM,
        metavar="X",
        help=(
            "refuse a result that overflows when its inputs are scaled by less than X (default: "
            "%(default)gx; 0: report only)"
        ),
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from svsurgery.parity.references import ModelReference

    return run_engine(
        args,
        OUTPUT,
        precision=ir.DataType.FLOAT16,
        default_reference=lambda model: ModelReference(model, label="the original model"),
        min_headroom=args.min_headroom or None,
    )
