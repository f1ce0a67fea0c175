"""``svsurgery audit MODEL --audio DIR|manifest.jsonl (--reference-model ORIG.onnx | --torch SPEC | --golden-dir DIR)``:
parity of a deployed model against its reference pipeline over a whole corpus."""

from __future__ import annotations

import argparse
from pathlib import Path

from svsurgery.cli.arguments import ReportArgs, TorchArgs, bounded_int, files
from svsurgery.cli.common import console, error_console
from svsurgery.errors import EXIT_CHECK_FAILED, BadInputError
from svsurgery.model_io import load
from svsurgery.vad.mode import parse
from svsurgery.vad.options import SegmentOptions


def register(verbs) -> None:
    parser = verbs.add_parser(
        "audit",
        help="parity of a deployed model against its reference pipeline over a corpus (local pool or Ray)",
        description="Run MODEL and its reference pipeline (the same VAD in Python, kaldi-native-fbank + LFR + CMVN, "
        "the reference encoder per span) on every utterance of a corpus and compare: segments, per-span cosine and "
        "max abs, greedy CTC tokens and their token error rate, time per audio-second. Writes rows (Parquet, JSONL), "
        "summary.json with buckets by duration / estimated SNR / language, report.html, the worst utterances as "
        "golden files and a diff of the worst. An interrupted audit resumes (finished shards are kept). Exit 0, "
        "or 1 when --baseline finds drift beyond the thresholds.",
    )
    parser.add_argument(
        "model", help="the deployed .onnx: a fused model (waveform in, e.g. fuse-preproc --vad) or an encoder"
    )
    parser.add_argument(
        "--audio",
        metavar="DIR|MANIFEST",
        help="a folder of 16 kHz .wav files (recursive) or a JSONL manifest "
        '({"audio": path, "id": ..., "language": ...} per line; paths relative to the manifest)',
    )
    group = parser.add_argument_group("reference (one of)")
    choice = group.add_mutually_exclusive_group(required=True)
    choice.add_argument(
        "--reference-model",
        metavar="ORIG_ONNX",
        help="the original encoder (its folder's config.yaml and am.mvn give the reference front end)",
    )
    choice.add_argument(
        "--golden-dir",
        metavar="DIR",
        help="golden files, one per utterance (e.g. an earlier audit's worst/): their inputs are the corpus",
    )
    TorchArgs.add(choice, group)
    front = parser.add_argument_group("reference front end and VAD")
    front.add_argument(
        "--config",
        metavar="CONFIG_YAML",
        help="the reference front end's config.yaml (default: beside the reference model)",
    )
    front.add_argument(
        "--cmvn", metavar="AM_MVN", help="the reference front end's am.mvn (default: beside the reference model)"
    )
    front.add_argument(
        "--vad",
        metavar="MODE",
        help="the reference VAD: silero, fsmn:DIR or energy, with default settings "
        "(default: the settings a fused model records in its metadata)",
    )
    front.add_argument(
        "--merge-length-s", type=float, help="FunASR merge_vad span length in s (default 15, or the model's)"
    )
    front.add_argument("--no-merge", action="store_true", help="each VAD segment alone (cut at --max-segment-s)")
    front.add_argument(
        "--max-segment-s", type=float, default=30.0, help="with --no-merge, cut longer segments (default 30 s)"
    )
    out = parser.add_argument_group("outputs")
    out.add_argument(
        "-o", "--output-dir", metavar="OUT_DIR", help="where to write (default: ./MODEL.audit); a rerun into it resumes"
    )
    out.add_argument(
        "--worst",
        type=bounded_int(0, what="a count"),
        default=5,
        metavar="K",
        help="harvest the K worst utterances as golden files (default 5)",
    )
    out.add_argument("--no-diff", action="store_true", help="do not localise the worst utterance's divergence")
    ReportArgs.add(out)
    run_group = parser.add_argument_group("engine")
    run_group.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: a process pool; ray: Ray Data on a local or remote cluster",
    )
    run_group.add_argument(
        "--workers",
        type=bounded_int(1, what="a worker count"),
        metavar="N",
        help="processes or Ray actors (default: the CPUs)",
    )
    run_group.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="an existing Ray cluster (e.g. auto, or ray://head:10001); default: start a local one",
    )
    run_group.add_argument(
        "--shard-size",
        type=bounded_int(1, what="a shard size"),
        default=16,
        metavar="N",
        help="utterances per shard (default 16)",
    )
    monitor = parser.add_argument_group("monitoring")
    monitor.add_argument(
        "--baseline",
        metavar="SUMMARY_JSON",
        help="an earlier audit's summary.json: exit 1 on drift beyond the thresholds",
    )
    monitor.add_argument(
        "--max-drift",
        metavar="NAME=VALUE",
        action="append",
        default=[],
        help="a drift threshold (tokens_differ_share, token_error_rate_corpus, segments_identical_share, "
        "boundary_ms_mean, cosine_p01, cosine_distribution)",
    )
    monitor.add_argument(
        "--runtime-matrix",
        action="store_true",
        help="also run a corpus slice under threads 1/2/all x "
        "graph optimisation disabled/basic/extended/all x every execution provider",
    )
    monitor.add_argument(
        "--matrix-utterances",
        type=bounded_int(1, what="a count"),
        default=8,
        metavar="N",
        help="the slice's size (default 8)",
    )
    parser.set_defaults(run=run)


def _vad(args: argparse.Namespace):
    return None if args.vad is None else parse(args.vad)  # the mode's defaults


def run(args: argparse.Namespace) -> int:
    from svsurgery.audit import audit
    from svsurgery.audit.baseline import parse_thresholds

    if args.engine == "ray":  # before any work: a missing Ray is one line
        from svsurgery.audit.engines import import_ray

        import_ray(args.ray_address)
    if args.ray_address and args.engine != "ray":
        raise BadInputError("--ray-address needs --engine ray")
    if args.audio is None and args.golden_dir is None:
        raise BadInputError("give the corpus: --audio DIR|manifest.jsonl (or --golden-dir DIR)")
    plan = files(args)

    model = Path(args.model)
    plan.read_model(load(model))  # a missing or broken model: one line, before any work
    plan.read(args.reference_model, "--reference-model")
    plan.read(args.config, "--config file")
    plan.read(args.cmvn, "--cmvn file")
    plan.read(args.baseline, "--baseline summary")
    TorchArgs.declare(args)
    ReportArgs.declare(args)
    thresholds = parse_thresholds(args.max_drift)
    segmentation = None
    if args.no_merge or args.merge_length_s is not None:
        segmentation = SegmentOptions(
            merge=not args.no_merge, merge_length_s=args.merge_length_s or 15.0, max_segment_s=args.max_segment_s
        )
    output_dir = Path(args.output_dir) if args.output_dir else Path(f"{model.stem}.audit")
    report = audit(
        str(model),
        audio=args.audio,
        reference_model=args.reference_model,
        torch_spec=args.torch,
        weights=args.weights,
        golden_dir=args.golden_dir,
        vad=_vad(args),
        segmentation=segmentation,
        config=args.config,
        cmvn=args.cmvn,
        output_dir=output_dir,
        engine=args.engine,
        workers=args.workers,
        ray_address=args.ray_address,
        shard_size=args.shard_size,
        baseline=args.baseline,
        thresholds=thresholds,
        matrix=args.runtime_matrix,
        matrix_utterances=args.matrix_utterances,
        worst=args.worst,
        localize_worst=not args.no_diff,
        progress_console=error_console(),
        plan=plan,
    )
    ReportArgs.emit(args, report, console())
    return 0 if report.passed else EXIT_CHECK_FAILED
