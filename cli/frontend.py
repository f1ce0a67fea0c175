"""``svsurgery frontend -o frontend.onnx``: the Kaldi fbank + LFR + CMVN front end as its own model."""

from __future__ import annotations

import argparse

import onnx_ir as ir

from svsurgery.cli.arguments import bounded_int, files
from svsurgery.cli.common import console
from svsurgery.errors import BadInputError
from svsurgery.frontend import Cmvn, LfrOptions, build
from svsurgery.frontend._ops import MIN_OPSET
from svsurgery.frontend.config import PRESETS
from svsurgery.model_io import save


def register(verbs) -> None:
    parser = verbs.add_parser(
        "frontend",
        help="write the fbank + LFR + CMVN front end as an ONNX model (waveform in, features out)",
        description="Build the Kaldi fbank + LFR + CMVN front end as an ONNX graph: inputs waveform f32 [B, N] "
        "(samples in [-1, 1]) and waveform_lengths i64 [B]; outputs features f32 [B, T, D] and feature_lengths.",
    )
    parser.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), default="sensevoice", help="fbank and LFR settings (default: sensevoice)"
    )
    parser.add_argument("--cmvn", metavar="AM_MVN", help="Kaldi nnet text with <AddShift>/<Rescale> (FunASR's am.mvn)")
    parser.add_argument("--lfr", metavar="M,N", help="LFR stacking, e.g. 7,6; 1,1 disables it (default: the preset's)")
    parser.add_argument(
        "--opset",
        type=bounded_int(MIN_OPSET, what="an ai.onnx opset"),
        default=17,
        help="ai.onnx opset to author the graph in (default: 17)",
    )
    parser.add_argument("--lengths-dtype", choices=("int32", "int64"), default="int32", help="type of feature_lengths")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    plan = files(args)
    plan.read(args.cmvn, "--cmvn file")
    output = plan.write(args.output, "front-end model (-o)")
    fbank_preset, lfr_preset = PRESETS[args.preset]
    lfr = LfrOptions.parse(args.lfr) if args.lfr else lfr_preset()
    cmvn = Cmvn.from_am_mvn(args.cmvn) if args.cmvn else None
    length_dtype = ir.DataType.INT32 if args.lengths_dtype == "int32" else ir.DataType.INT64
    if args.output.endswith(("am.mvn", ".mvn")):
        raise BadInputError(f"-o {args.output}: that looks like a CMVN file, not an .onnx path")
    model = build(
        fbank_preset(), None if (lfr.m, lfr.n) == (1, 1) else lfr, cmvn, opset=args.opset, length_dtype=length_dtype
    )
    path = save(model, output)
    plan.written(path)
    features_shape = model.graph.outputs[0].shape
    assert features_shape is not None, "build() gives the features output its shape"
    dim = features_shape[2]
    console().print(
        f"wrote {path}: preset {args.preset}, LFR {lfr.m},{lfr.n}, "
        f"CMVN {cmvn.source if cmvn else 'none'}, features [batch, frames, {dim}], opset {args.opset}",
        markup=False,
    )
    return 0
