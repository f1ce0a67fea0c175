"""``svsurgery fuse-preproc ENC.onnx``: one model from raw 16 kHz waveform to encoder outputs."""

from __future__ import annotations

import argparse
from pathlib import Path

from svsurgery.cli.arguments import OutputArgs, ReportArgs, files
from svsurgery.cli.common import console, error_console
from svsurgery.errors import EXIT_CHECK_FAILED
from svsurgery.frontend.config import PRESETS
from svsurgery.frontend.options import LfrOptions
from svsurgery.fuse import fuse_preprocessing
from svsurgery.model_io import load, save
from svsurgery.vad import mode as vad_modes
from svsurgery.vad.options import SegmentOptions

OUTPUT = OutputArgs("fused", what="output model")


def register(verbs) -> None:
    parser = verbs.add_parser(
        "fuse-preproc",
        help="prepend the fbank + LFR + CMVN front end to an encoder, verified before writing",
        description="Prepend the Kaldi fbank + LFR + CMVN front end to an encoder so one model takes a raw "
        "waveform. Settings come from the model folder (config.yaml frontend_conf, am.mvn) or sherpa-onnx "
        "metadata, overridable. The fused model is verified against the reference pipeline (kaldi-native-fbank "
        "+ LFR + CMVN + the original encoder) on a built-in waveform; beyond tolerance nothing is written "
        "(exit 1). With --vad, one recording per call: speech found, cut into spans, each span decoded.",
    )
    parser.add_argument("encoder", help="the encoder .onnx (its feature input is float [B, T, D])")
    OUTPUT.add(parser)
    parser.add_argument("--cmvn", metavar="AM_MVN", help="CMVN file (default: am.mvn beside the model, or metadata)")
    parser.add_argument("--no-cmvn", action="store_true", help="fuse without CMVN (the encoder takes raw log-mel)")
    parser.add_argument(
        "--config", metavar="CONFIG_YAML", help="FunASR config.yaml (default: the one beside the model)"
    )
    parser.add_argument("--lfr", metavar="M,N", help="LFR stacking, overriding config and metadata (e.g. 7,6)")
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), default="sensevoice", help="defaults for what no source gives"
    )
    parser.add_argument("--feature-input", metavar="NAME", help="the encoder input that takes features")
    parser.add_argument("--length-input", metavar="NAME", help="the encoder input that takes feature lengths")
    parser.add_argument("--keep-features", action="store_true", help="also output the features and their lengths")
    ReportArgs.add(parser)
    vad = parser.add_argument_group("VAD inside the graph (one recording per call; outputs segments [K, 2] in ms)")
    vad.add_argument("--vad", metavar="MODE", help=vad_modes.cli_help())
    vad_modes.add_arguments(vad)  # each mode's own options
    vad.add_argument(
        "--merge-length-s", type=float, default=15.0, help="FunASR merge_vad span length in s (default 15)"
    )
    vad.add_argument("--no-merge", action="store_true", help="decode each VAD segment alone instead of merged spans")
    vad.add_argument(
        "--max-segment-s", type=float, default=30.0, help="with --no-merge, cut longer segments (default 30 s)"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Load and check every input (the VAD mode's files through its own validation), fuse and
    verify, then write through the file plan only when parity held, as ``fix`` does."""
    plan = files(args)
    encoder = Path(args.encoder)
    plan.read_model(load(encoder))
    plan.read(args.cmvn, "--cmvn file")
    plan.read(args.config, "--config file")
    vad = vad_modes.parse(args.vad, args) if args.vad is not None else None  # its files loaded and checked here
    for path, what in vad.files() if vad is not None else ():
        plan.read(path, what)
    output = OUTPUT.declare(args, encoder)
    ReportArgs.declare(args)
    with error_console().status(f"fusing the front end into {encoder} and verifying ...") as status:
        fused, report = fuse_preprocessing(
            encoder,
            config=args.config,
            cmvn=args.cmvn,
            lfr=LfrOptions.parse(args.lfr) if args.lfr else None,
            preset=args.preset,
            use_cmvn=not args.no_cmvn,
            feature_input=args.feature_input,
            length_input=args.length_input,
            keep_features=args.keep_features,
            vad=vad,
            segmentation=SegmentOptions(
                merge=not args.no_merge, merge_length_s=args.merge_length_s, max_segment_s=args.max_segment_s
            ),
        )
        if report.passed:
            status.update(f"writing {output} (validity gate) ...")
            save(fused, output, overwrite_input=args.in_place)
            plan.written(output)
            report.output, report.written = str(output), True
    ReportArgs.emit(args, report, console())
    return 0 if report.passed else EXIT_CHECK_FAILED
