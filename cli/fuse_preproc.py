"""``svsurgery fuse-preproc ENC.onnx``: one model from raw 16 kHz waveform to encoder outputs."""

from __future__ import annotations

import argparse
from pathlib import Path

from svsurgery.cli.arguments import OutputArgs, ReportArgs, files
from svsurgery.cli.common import console, error_console
from svsurgery.errors import EXIT_CHECK_FAILED, BadInputError
from svsurgery.frontend.config import PRESETS
from svsurgery.frontend.options import LfrOptions
from svsurgery.fuse import fuse_preprocessing
from svsurgery.vad.options import EnergyVadOptions, FsmnVadOptions, SegmentOptions, SileroVadOptions

OUTPUT = OutputArgs("fused", what="output model")


def register(verbs) -> None:
    parser = verbs.add_parser(
        "fuse-preproc",
        help="prepend the fbank + LFR + CMVN front end to an encoder, verified before writing",
        description="Prepend the Kaldi fbank + LFR + CMVN front end to an encoder so one model takes a raw "
        "waveform. Settings come from the model folder (config.yaml frontend_conf, am.mvn) or sherpa-onnx "
        "metadata, overridable. The fused model is verified against the reference pipeline (kaldi-native-fbank "
        "+ LFR + CMVN + the original encoder) on a built-in waveform; beyond tolerance nothing is written "
        "(exit 1).",
    )
    parser.add_argument("encoder", help="the encoder .onnx (its feature input is float [B, T, D])")
    OUTPUT.add(parser)
    parser.add_argument("--cmvn", metavar="AM_MVN", help="CMVN file (default: am.mvn beside the model, or metadata)")
    parser.add_argument("--no-cmvn", action="store_true", help="fuse without CMVN (the encoder takes raw log-mel)")
    parser.add_argument("--config", metavar="CONFIG_YAML", help="FunASR config.yaml (default: the one beside the model)")
    parser.add_argument("--lfr", metavar="M,N", help="LFR stacking, overriding config and metadata (e.g. 7,6)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="sensevoice", help="defaults for what no source gives")
    parser.add_argument("--feature-input", metavar="NAME", help="the encoder input that takes features")
    parser.add_argument("--length-input", metavar="NAME", help="the encoder input that takes feature lengths")
    parser.add_argument("--keep-features", action="store_true", help="also output the features and their lengths")
    ReportArgs.add(parser)
    vad = parser.add_argument_group("VAD inside the graph (one recording per call; outputs segments [K, 2] in ms)")
    vad.add_argument(
        "--vad", metavar="MODE",
        help="find speech and decode each span: 'silero' (silero-vad's model, from the installed package or "
        "--silero-model), 'fsmn:DIR' (a FunASR fsmn-vad folder: model.onnx, am.mvn, config.yaml), or 'energy' "
        "(weight-free, for clean recordings only)",
    )
    vad.add_argument("--silero-model", metavar="ONNX", help="silero's silero_vad_16k_sequence.onnx (default: the installed silero-vad's)")
    vad.add_argument("--silero-threshold", type=float, default=0.5, help="silero speech threshold (default 0.5)")
    vad.add_argument("--min-speech-ms", type=float, default=250.0, help="silero: shorter speech is dropped (default 250)")
    vad.add_argument("--min-silence-ms", type=float, default=100.0, help="silero: silence that ends speech (default 100)")
    vad.add_argument("--speech-pad-ms", type=float, default=30.0, help="silero: padding each side (default 30)")
    vad.add_argument("--max-speech-s", type=float, default=float("inf"), help="silero: cut longer speech (default: no limit)")
    vad.add_argument("--static-silence", action="store_true",
                     help="fsmn: config.yaml's fixed max_end_silence_time instead of FunASR 1.4.16's dynamic schedule")
    vad.add_argument("--max-end-silence-ms", type=float, help="fsmn: a fixed end silence (as FunASR's generate kwarg)")
    vad.add_argument("--max-single-segment-ms", type=float,
                     help="fsmn: cut segments longer than this (default config.yaml's; SenseVoice's pipeline passes 30000)")
    vad.add_argument("--merge-length-s", type=float, default=15.0, help="FunASR merge_vad span length in s (default 15)")
    vad.add_argument("--no-merge", action="store_true", help="decode each VAD segment alone instead of merged spans")
    vad.add_argument("--max-segment-s", type=float, default=30.0, help="with --no-merge, cut longer segments (default 30 s)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from svsurgery.io import load

    plan = files(args)
    encoder = Path(args.encoder)
    plan.read_model(load(encoder))
    plan.read(args.cmvn, "--cmvn file")
    plan.read(args.config, "--config file")
    plan.read(args.silero_model, "--silero-model")
    if args.vad and args.vad.startswith("fsmn:"):
        plan.read_all((Path(args.vad[5:]) / name for name in ("model.onnx", "am.mvn", "config.yaml")), "fsmn-vad folder file")
    output = OUTPUT.declare(args, encoder)
    ReportArgs.declare(args)
    with error_console().status(f"fusing the front end into {encoder} and verifying ..."):
        _, report = fuse_preprocessing(
            encoder,
            output,
            config=args.config,
            cmvn=args.cmvn,
            lfr=LfrOptions.parse(args.lfr) if args.lfr else None,
            preset=args.preset,
            use_cmvn=not args.no_cmvn,
            feature_input=args.feature_input,
            length_input=args.length_input,
            keep_features=args.keep_features,
            overwrite_input=args.in_place,
            vad=_vad_options(args),
            segmentation=SegmentOptions(merge=not args.no_merge, merge_length_s=args.merge_length_s, max_segment_s=args.max_segment_s),
        )
    if report.written:
        plan.written(output)
    ReportArgs.emit(args, report, console())
    return 0 if report.passed else EXIT_CHECK_FAILED


def _vad_options(args: argparse.Namespace):
    if args.vad is None:
        return None
    if args.vad == "energy":
        return EnergyVadOptions()
    if args.vad == "silero":
        return SileroVadOptions(
            model=args.silero_model, threshold=args.silero_threshold, min_speech_duration_ms=args.min_speech_ms,
            min_silence_duration_ms=args.min_silence_ms, speech_pad_ms=args.speech_pad_ms,
            max_speech_duration_s=args.max_speech_s,
        ).validate()
    if args.vad.startswith("fsmn:") and len(args.vad) > 5:
        return FsmnVadOptions(
            folder=args.vad[5:], dynamic_silence=not args.static_silence, max_end_silence_time=args.max_end_silence_ms,
            max_single_segment_time=args.max_single_segment_ms,
        ).validate()
    raise BadInputError(f"--vad {args.vad}: expected silero, fsmn:DIR or energy")
