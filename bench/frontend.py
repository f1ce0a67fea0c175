"""Front-end speed: the fbank graph (onnxruntime) vs kaldi-native-fbank (Python API) vs torch.

Computes 80-bin SenseVoice fbank (16 kHz, 25/10 ms, hamming, x32768) of espeak-ng speech,
10 s and 60 s, single-threaded (and the graph with 2 threads), best of N runs, and prints
ms per audio-second with ratios against kaldi-native-fbank measured in the same run.
Goal: <= 0.25 ms per audio-second at 10 s single-thread, i.e. >= 4x faster than knf.

    python bench/frontend.py [--repeats 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from _timing import best_of  # bench/ is on sys.path when run as a script

from svsurgery import frontend
from svsurgery.frontend import knf
from svsurgery.frontend.kaldi_math import mel_banks, window_function
from svsurgery.runtime import inference_session
from svsurgery.testing import audio

OPTS = frontend.FbankOptions.sensevoice()


def knf_fbank(waveform: np.ndarray) -> np.ndarray:
    return knf.fbank(waveform, OPTS)


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

    return fbank, torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", help="also write the table as JSON")
    args = parser.parse_args()

    model = frontend.build(OPTS)
    sessions = {threads: inference_session(model, intra_op_threads=threads) for threads in (1, 2)}
    torch_fbank, torch = torch_fbank_factory()
    rows = []
    for seconds in (10, 60):
        waveform = audio.speech(seconds, seed=seconds)
        feeds = {"waveform": waveform[None], "waveform_lengths": np.array([waveform.size])}
        torch.set_num_threads(1)
        timings = {
            "kaldi-native-fbank (Python)": best_of(lambda: knf_fbank(waveform), args.repeats),
            "torch (eager, 1 thread)": best_of(lambda: torch_fbank(waveform), args.repeats),
            "svsurgery graph, ORT 1 thread": best_of(lambda: sessions[1].run(None, feeds), args.repeats),
            "svsurgery graph, ORT 2 threads": best_of(lambda: sessions[2].run(None, feeds), args.repeats),
        }
        reference = timings["kaldi-native-fbank (Python)"]
        for name, seconds_taken in timings.items():
            rows.append(
                {
                    "audio_s": seconds,
                    "implementation": name,
                    "ms": seconds_taken * 1e3,
                    "ms_per_audio_s": seconds_taken * 1e3 / seconds,
                    "speedup_vs_knf": reference / seconds_taken,
                }
            )
    from rich.console import Console
    from rich.table import Table

    table = Table(title="fbank (80 bins, SenseVoice options), best of %d" % args.repeats)
    for column in ("audio", "implementation", "ms", "ms / audio-s", "x vs knf"):
        table.add_column(column, justify="right" if column != "implementation" else "left")
    for row in rows:
        table.add_row(
            f"{row['audio_s']} s", row["implementation"], f"{row['ms']:.2f}", f"{row['ms_per_audio_s']:.3f}",
            f"{row['speedup_vs_knf']:.2f}",
        )
    Console().print(table)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
