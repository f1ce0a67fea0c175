"""Front-end speed: the fbank graph (onnxruntime) vs asrfront, kaldi-native-fbank, torchaudio and torch.

80-bin SenseVoice fbank (16 kHz, 25/10 ms, hamming, x32768) of espeak-ng speech at 10 s, 60 s
and 10 min (the 60 s recording repeated), 1 and 2 threads. Every implementation's calls are
interleaved (A, B, C, A, B, C, ...) so that the drift of a shared machine hits all alike; the
table gives ms per audio-second (best of N) and the ratio to asrfront measured in the same run.
Absolute figures drift +-20 % from run to run on a shared 2-core host; ratios hold.

- ``svsurgery fbank``: the fbank graph alone (``fbank_graph``: waveform -> [B, T, 80]);
- ``svsurgery front end``: ``frontend.build`` (adds the waveform entry checks and the frame mask);
- asrfront 0.2.2 (C, SIMD), ``sensevoice.fbank_raw`` (2 threads: its ``n_threads``);
- kaldi-native-fbank through its Python API (the samples go through a Python list);
- torchaudio's ``compliance.kaldi.fbank`` (pure Python over torch; torchaudio's compiled
  library does not load beside torch 2.13, so the module is loaded from its file);
- a Kaldi fbank in torch eager ops (unfold, rfft, mel matmul): a fair eager baseline.

    python bench/frontend.py [--seconds 10 60 600] [--threads 1 2] [--repeats 10] [--json out.json]
    python bench/frontend.py --profile      # onnxruntime's per-op profile of the graph, 10 s and 60 s
    python bench/frontend.py --accuracy     # max / mean abs vs kaldi-native-fbank and the float64 statement

Acceptance (issue 12): the fbank graph within 2x asrfront at 10 s and 60 s, one thread.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile

import numpy as np
from _timing import best_of_interleaved  # bench/ is on sys.path when run as a script

from svsurgery import frontend
from svsurgery.frontend import knf, numpy_statement
from svsurgery.frontend._ops import GraphOps
from svsurgery.frontend.build import finish_frontend_model, frontend_metadata
from svsurgery.frontend.fbank import fbank_graph
from svsurgery.frontend.kaldi_math import mel_banks, window_function
from svsurgery.model_io import to_proto
from svsurgery.runtime import inference_session
from svsurgery.testing import audio

OPTS = frontend.FbankOptions.sensevoice()


def fbank_only_model():
    """The fbank graph alone: waveform [B, N] and lengths in, features [B, T, 80] and counts out."""
    import onnx_ir as ir

    waveform = ir.val("waveform", ir.DataType.FLOAT, ["batch", "samples"])
    lengths = ir.val("waveform_lengths", ir.DataType.INT64, ["batch"])
    graph = ir.Graph([waveform, lengths], [], nodes=[], opset_imports={"": 17}, name="fbank")
    g = GraphOps(graph, 17)
    features, counts = fbank_graph(g, waveform, lengths, OPTS)
    return finish_frontend_model(graph, 17, features, counts, OPTS.feature_dim, frontend_metadata(OPTS, None, None))


def recording(seconds: int) -> np.ndarray:
    if seconds <= 60:
        return audio.speech(seconds, seed=seconds)
    return np.tile(audio.speech(60, seed=60), -(-seconds // 60))[: seconds * audio.SAMPLE_RATE]


def asrfront_fbank(threads: int):
    try:
        from asrfront import _ext
    except ImportError:
        return None
    extractor = _ext.SenseVoiceFrontend(n_mels=80, lfr_m=1, lfr_n=1, n_threads=threads)
    return lambda waveform: extractor.fbank_raw(waveform)


def torchaudio_fbank():
    """torchaudio.compliance.kaldi.fbank, or None. The module only uses torchaudio for MFCC's DCT:
    where torchaudio's compiled library does not load, the file is loaded beside a stub."""
    import importlib.util
    import types

    try:
        from torchaudio.compliance import kaldi
    except Exception:
        spec = importlib.util.find_spec("torchaudio")
        if spec is None or not spec.submodule_search_locations:
            return None
        path = os.path.join(spec.submodule_search_locations[0], "compliance", "kaldi.py")
        saved = sys.modules.get("torchaudio")
        sys.modules["torchaudio"] = types.ModuleType("torchaudio")
        try:
            loader = importlib.util.spec_from_file_location("torchaudio_compliance_kaldi", path)
            kaldi = importlib.util.module_from_spec(loader)
            loader.loader.exec_module(kaldi)
        finally:
            if saved is None:
                del sys.modules["torchaudio"]
            else:
                sys.modules["torchaudio"] = saved
    import torch

    def fbank(waveform: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x = torch.from_numpy(waveform)[None] * OPTS.input_scale
            return kaldi.fbank(
                x, num_mel_bins=80, window_type="hamming", dither=0.0, energy_floor=0.0, sample_frequency=16000
            ).numpy()

    return fbank


def torch_fbank_factory():
    """Kaldi fbank in torch ops (framing by unfold, rfft, mel matmul): a fair eager baseline."""
    import torch

    frame = OPTS.frame_opts
    window = torch.tensor(window_function(frame), dtype=torch.float32)
    banks = torch.tensor(mel_banks(OPTS.mel_opts, frame), dtype=torch.float32)
    eps = float(np.finfo(np.float32).eps)

    def fbank(waveform: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x = torch.from_numpy(waveform) * OPTS.input_scale
            frames = x.unfold(0, frame.window_size, frame.window_shift)
            frames = frames - frames.mean(dim=1, keepdim=True)
            previous = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)
            frames = (frames - frame.preemph_coeff * previous) * window
            spectrum = torch.fft.rfft(frames, n=frame.padded_window_size)[:, : frame.padded_window_size // 2]
            power = spectrum.real**2 + spectrum.imag**2
            return torch.log(torch.clamp(power @ banks, min=eps)).numpy()

    return fbank


def _contenders(waveform: np.ndarray, threads: int, sessions: dict, audio_kaldi, eager) -> dict:
    """Name -> a call computing the fbank of ``waveform``, for every implementation."""
    feeds = {"waveform": waveform[None], "waveform_lengths": np.array([waveform.size])}
    functions = {f"{name}, {threads} thread(s)": (lambda s=s: s.run(None, feeds)) for name, s in sessions.items()}
    asr = asrfront_fbank(threads)
    if asr is not None:
        functions[f"asrfront, {threads} thread(s)"] = lambda: asr(waveform)
    if threads == 1:  # single-threaded by construction
        functions["kaldi-native-fbank (Python)"] = lambda: knf.fbank(waveform, OPTS)
    functions[f"torch eager, {threads} thread(s)"] = lambda: eager(waveform)
    if audio_kaldi is not None:
        functions[f"torchaudio compliance.kaldi, {threads} thread(s)"] = lambda: audio_kaldi(waveform)
    return functions


def speed(args) -> list[dict]:
    import torch

    models = {"svsurgery fbank": fbank_only_model(), "svsurgery front end": frontend.build(OPTS)}
    audio_kaldi, eager = torchaudio_fbank(), torch_fbank_factory()
    if audio_kaldi is None:
        print("torchaudio not installed: its row is left out")
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        sessions = {name: inference_session(model, intra_op_threads=threads) for name, model in models.items()}
        for seconds in args.seconds:
            functions = _contenders(recording(seconds), threads, sessions, audio_kaldi, eager)
            repeats = args.repeats if seconds <= 60 else max(2, args.repeats // 5)
            timings = best_of_interleaved(functions, repeats)
            anchor = timings.get(f"asrfront, {threads} thread(s)")
            for name, taken in timings.items():
                rows.append(
                    {
                        "audio_s": seconds,
                        "threads": threads,
                        "implementation": name,
                        "ms": taken * 1e3,
                        "ms_per_audio_s": taken * 1e3 / seconds,
                        "x_asrfront": taken / anchor if anchor else None,
                    }
                )
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"fbank (80 bins, SenseVoice options), best of {args.repeats} interleaved calls")
    for column in ("audio", "threads", "implementation", "ms", "ms / audio-s", "x asrfront"):
        table.add_column(column, justify="left" if column == "implementation" else "right")
    for row in rows:
        ratio = f"{row['x_asrfront']:.2f}" if row["x_asrfront"] else "-"
        table.add_row(
            f"{row['audio_s']} s",
            str(row["threads"]),
            row["implementation"],
            f"{row['ms']:.2f}",
            f"{row['ms_per_audio_s']:.4f}",
            ratio,
        )
    Console().print(table)
    return rows


def profile(args) -> None:
    """onnxruntime's profiler over the fbank graph alone: per-op-type and top nodes, one thread."""
    import onnxruntime as ort

    source = to_proto(fbank_only_model(), inline_external_data=True).SerializeToString()
    for seconds in args.seconds:
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level = 1, 1, 3
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(tempfile.gettempdir(), "svsurgery-frontend-profile")
        session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        waveform = recording(seconds)
        feeds = {"waveform": waveform[None], "waveform_lengths": np.array([waveform.size])}
        for _ in range(args.repeats + 3):
            session.run(None, feeds)
        path = session.end_profiling()
        with open(path, encoding="utf-8") as handle:
            events = json.load(handle)
        os.remove(path)
        runs = sum(1 for event in events if event.get("name") == "model_run")
        durations = collections.defaultdict(list)
        for event in events:
            if (
                event.get("cat") == "Node"
                and event["name"].endswith("_kernel_time")
                and event["args"]["op_name"] != "Loop"
            ):
                durations[(event["args"]["op_name"], event["name"][: -len("_kernel_time")])].append(event["dur"])
        # per run: a node's median call times its calls per run (a Loop body node runs once per block)
        per_run = {key: float(np.median(d)) * len(d) / runs for key, d in durations.items()}
        nodes = sorted(((taken, key) for key, taken in per_run.items()), reverse=True)
        total = sum(t for t, _ in nodes)
        by_op = collections.Counter()
        for taken, (op_type, _) in nodes:
            by_op[op_type] += taken
        print(
            f"\n{seconds} s: {total / 1e3:.3f} ms per run in {len(nodes)} kernels "
            f"({total / 1e3 / seconds:.4f} ms per audio-second; profiled)"
        )
        for op_type, taken in by_op.most_common(10):
            print(f"  {op_type:14s} {taken / 1e3:8.3f} ms  {100 * taken / total:5.1f} %")
        for taken, (op_type, name) in nodes[:8]:
            print(f"    {taken / 1e3:8.3f} ms  {op_type:12s} {name[-60:]}")


def accuracy(args) -> None:
    """Max / mean abs (log-mel) of the graph and of kaldi-native-fbank against the float64 statement."""
    session = inference_session(fbank_only_model(), intra_op_threads=1)
    rng = np.random.default_rng(0)
    offset = np.float32(328 / 32768)
    signals = {
        "speech 60 s": audio.speech(60, seed=2),
        "speech 10 s": audio.speech(10, seed=1),
        "white noise 5 s": audio.white_noise(5.0, seed=4),
        "speech + DC offset 2000": audio.speech(10, seed=1) + np.float32(2000 / 32768),
        "1-LSB noise on DC offset 328": (np.round(rng.standard_normal(48000)) / 32768 + offset).astype(np.float32),
        "constant levels (0, 0.3, -0.2, 0.01)": np.repeat(np.array([0, 0.3, -0.2, 0.01], np.float32), 8000),
    }
    print(f"{'signal':38s} {'graph-f64 max':>14s} {'knf-f64 max':>12s} {'graph-knf max':>14s} {'graph-knf mean':>15s}")
    for name, signal in signals.items():
        signal = signal.astype(np.float32)
        exact = numpy_statement.fbank(signal, OPTS)
        theirs = knf.fbank(signal, OPTS)
        ours = session.run(None, {"waveform": signal[None], "waveform_lengths": np.array([signal.size])})[0][0]
        print(
            f"{name:38s} {np.abs(ours - exact).max():14.2e} {np.abs(theirs - exact).max():12.2e} "
            f"{np.abs(ours - theirs).max():14.2e} {np.abs(ours - theirs).mean():15.2e}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, nargs="+", help="audio lengths (default 10 60 600; profile: 10 60)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", help="also write the speed table as JSON")
    parser.add_argument("--profile", action="store_true", help="onnxruntime's per-op profile of the graph")
    parser.add_argument("--accuracy", action="store_true", help="error against kaldi-native-fbank and float64")
    args = parser.parse_args()
    if args.accuracy:
        accuracy(args)
        return
    if args.profile:
        args.seconds = args.seconds or [10, 60]
        profile(args)
        return
    args.seconds = args.seconds or [10, 60, 600]
    rows = speed(args)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
