"""VAD modes on the vad-dev corpus, clean and in white/pink/babble noise at 20/10/5 dB.

Systems, all measured in this run on the same mixed samples (noise at an SNR over the
clean clip's speech frames, fixed seed per recording and condition):
- svsurgery's in-graph VADs (the mode's VAD part alone, onnxruntime, 1 thread): energy,
  silero (silero's sequence model + get_speech_timestamps in ONNX), fsmn (a random-weight
  FSMN unless ``--fsmn DIR`` names a real FunASR fsmn-vad folder: its accuracy then means
  nothing, its time is the state machine's cost);
- webrtcvad modes 0-3 (10 ms frames of 16-bit samples);
- silero's Python pipeline: ``get_speech_timestamps`` with the stock ONNX model, its
  512-sample chunk loop in Python.
Frame-level scores against the corpus's ``env`` labels (10 ms frames; a frame is speech
when its centre lies in a segment): F1, false-alarm rate (of non-speech frames), miss rate
(of speech frames), pooled over the six recordings. Speed: ms per audio-second (total time
over the recordings / total audio).

Then the whole pipeline on the clean recordings: the fused model (silero VAD + FunASR
merge_vad + front end + encoder, one call) against silero's Python loop + merge_vad +
kaldi-native-fbank/LFR/CMVN + the encoder on each span alone (as FunASR decodes on CPU),
calls interleaved, best of N.

Bars (issue 8): silero mode F1 >= 0.94 at white+pink 10 dB; energy F1 >= 0.98 clean;
fused pipeline faster per audio-second than the Python one.

    python bench/vad.py [--repeats 3] [--size tiny|small-depth] [--fsmn DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from _timing import best_of_interleaved  # bench/ is on sys.path when run as a script

from svsurgery.runtime import inference_session
from svsurgery.testing import vad_corpus
from svsurgery.vad import reference as vad_reference
from svsurgery.vad.detect import vad_model
from svsurgery.vad.options import EnergyVadOptions, FsmnVadOptions, SegmentOptions, SileroVadOptions

SILERO_BAR, ENERGY_BAR = 0.94, 0.98


def _webrtc(mode: int):
    import webrtcvad

    detector = webrtcvad.Vad(mode)

    def run(waveform: np.ndarray) -> np.ndarray:
        pcm = (np.clip(waveform, -1, 1 - 1 / 32768) * 32768).astype("<i2")
        frames = pcm.size // 160
        return np.array([detector.is_speech(pcm[i * 160 : (i + 1) * 160].tobytes(), 16000) for i in range(frames)], bool)

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
                rows.append({"system": name, "noise": kind, "snr_db": snr, **scores, "ms_per_audio_s": elapsed * 1e3 / seconds})
                progress.advance(task)
    return rows


def pipeline_timing(recordings, size: str, repeats: int) -> dict:
    """Fused model vs the Python pipeline on the clean recordings (seconds per audio-second)."""
    from svsurgery.frontend import knf
    from svsurgery.frontend import reference as frontend_reference
    from svsurgery.frontend.config import discover
    from svsurgery.fuse import fuse_preprocessing
    from svsurgery.io import load
    from svsurgery.testing.encoder import EncoderConfig
    from svsurgery.testing.export import write_model_folders

    config = EncoderConfig.tiny() if size == "tiny" else EncoderConfig.small_depth()
    silero = _silero_python()
    segmentation = SegmentOptions()
    with tempfile.TemporaryDirectory(prefix="svsurgery-bench-vad-") as scratch:
        encoder_path = write_model_folders(Path(scratch), config)["funasr"]
        fused_path = Path(scratch) / "fused.onnx"
        _, report = fuse_preprocessing(encoder_path, fused_path, vad=SileroVadOptions(), segmentation=segmentation)
        assert report.passed, "fusion failed verification"
        frontend = discover(load(encoder_path), encoder_path)
        encoder = inference_session(encoder_path, intra_op_threads=1)
        fused = inference_session(fused_path, intra_op_threads=1)
        ids = {"language": np.zeros(1, np.int32), "textnorm": np.full(1, 15, np.int32)}
        totals = {"python": 0.0, "fused": 0.0}
        for recording in recordings:
            waveform = recording.waveform

            def python_pipeline(waveform=waveform):
                spans = vad_reference.merge_vad(np.round(silero(waveform)).astype(np.int64), segmentation.merge_length_s * 1000)
                outputs = []
                for piece in vad_reference.cut_rows(waveform, spans):
                    stacked = frontend_reference.apply_lfr(knf.fbank(piece, frontend.fbank), frontend.lfr)
                    features = ((stacked + frontend.cmvn.shift) * frontend.cmvn.scale).astype(np.float32)
                    outputs.append(encoder.run(None, {"speech": features[None], "speech_lengths": np.array([features.shape[0]], np.int32), **ids}))
                return outputs

            def fused_pipeline(waveform=waveform):
                return fused.run(None, {"waveform": waveform[None], "waveform_lengths": np.array([waveform.size]), **ids})

            best = best_of_interleaved({"python": python_pipeline, "fused": fused_pipeline}, repeats)
            for name in totals:
                totals[name] += best[name]
        seconds = sum(r.waveform.size for r in recordings) / 16000
    return {"encoder": size, "audio_s": seconds, **{f"{k}_ms_per_audio_s": v * 1e3 / seconds for k, v in totals.items()},
            "ratio": totals["fused"] / totals["python"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", choices=("tiny", "small-depth"), default="small-depth", help="encoder for the pipeline timing")
    parser.add_argument("--fsmn", metavar="DIR", help="a real FunASR fsmn-vad folder (default: random weights, timing only)")
    parser.add_argument("--json", help="also write the tables as JSON")
    args = parser.parse_args()
    recordings = vad_corpus.recordings()
    if not recordings:
        raise SystemExit("the vad-dev corpus is not here: set SVSURGERY_VAD_DEV to shared/data/vad-dev")

    with tempfile.TemporaryDirectory(prefix="svsurgery-bench-fsmn-") as scratch:
        fsmn_folder, fsmn_label = args.fsmn, "fsmn (graph)"
        if fsmn_folder is None:
            from svsurgery.testing.fsmn import write_fsmn_vad_folder

            fsmn_folder, fsmn_label = str(write_fsmn_vad_folder(scratch)), "fsmn (graph, random weights: time only)"
        systems = {
            "energy (graph)": (_graph(EnergyVadOptions()), False),
            "silero (graph)": (_graph(SileroVadOptions()), False),
            fsmn_label: (_graph(FsmnVadOptions(fsmn_folder)), False),
            "silero python": (_silero_python(), False),
            **{f"webrtcvad {mode}": (_webrtc(mode), True) for mode in range(4)},
        }
        rows = score_systems(systems, recordings)
    pipeline = pipeline_timing(recordings, args.size, args.repeats)

    def pooled_f1(system: str, conditions) -> float:
        picked = [r for r in rows if r["system"] == system and (r["noise"], r["snr_db"]) in conditions]
        return float(np.mean([r["f1"] for r in picked]))

    bars = {
        "silero F1 at white+pink 10 dB": (pooled_f1("silero (graph)", {("white", 10.0), ("pink", 10.0)}), SILERO_BAR),
        "energy F1 clean": (pooled_f1("energy (graph)", {("clean", None)}), ENERGY_BAR),
        "fused / python pipeline time": (pipeline["ratio"], 1.0),
    }
    _render(rows, pipeline, bars)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "pipeline": pipeline,
                                               "bars": {k: {"value": v, "bar": b} for k, (v, b) in bars.items()}}, indent=2))  # fmt: skip


def _render(rows: list[dict], pipeline: dict, bars: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 100))
    systems = list(dict.fromkeys(r["system"] for r in rows))
    short = {name: name.replace(" (graph, random weights: time only)", "*").replace(" (graph)", "")
             .replace("webrtcvad ", "webrtc").replace("silero python", "silero-py") for name in systems}  # fmt: skip
    console.print("systems: energy/silero/fsmn = svsurgery's graphs; silero-py = silero's Python loop; webrtcN = webrtcvad mode N"
                  + ("; fsmn* = random weights (time only)" if any("*" in v for v in short.values()) else ""))  # fmt: skip
    for metric, title in (("f1", "frame F1"), ("false_alarm", "false-alarm rate"), ("miss", "miss rate")):
        table = Table(title=f"{title} on vad-dev (pooled over the recordings)")
        table.add_column("condition")
        for system in systems:
            table.add_column(short[system], justify="right")
        for kind, snr in vad_corpus.CONDITIONS:
            values = [next(r[metric] for r in rows if r["system"] == s and (r["noise"], r["snr_db"]) == (kind, snr)) for s in systems]
            table.add_row("clean" if snr is None else f"{kind} {snr:g} dB", *(f"{v:.3f}" for v in values))
        if metric == "f1":
            times = [np.mean([r["ms_per_audio_s"] for r in rows if r["system"] == s]) for s in systems]
            table.add_row("ms / audio-s", *(f"{t:.2f}" for t in times))
        console.print(table)
    timing = Table(title=f"whole pipeline on {pipeline['audio_s']:.0f} s of clean speech (encoder: {pipeline['encoder']}, 1 thread)")
    for column in ("pipeline", "ms / audio-s", "ratio"):
        timing.add_column(column, justify="left" if column == "pipeline" else "right")
    timing.add_row("python: silero loop + merge_vad + knf/LFR/CMVN + encoder per span", f"{pipeline['python_ms_per_audio_s']:.2f}", "1.00")
    timing.add_row("fused: one model (silero + merge + front end + encoder)", f"{pipeline['fused_ms_per_audio_s']:.2f}", f"{pipeline['ratio']:.2f}")
    console.print(timing)
    verdicts = Table(title="issue 8 bars")
    for column in ("bar", "measured", "needed", "met"):
        verdicts.add_column(column)
    for name, (value, bar) in bars.items():
        met = value < bar if "time" in name else value >= bar
        verdicts.add_row(name, f"{value:.4f}", ("< " if "time" in name else ">= ") + f"{bar:g}", "yes" if met else "NO")
    console.print(verdicts)


if __name__ == "__main__":
    main()
