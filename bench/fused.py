"""Fused model vs the two-step pipeline (kaldi-native-fbank in Python + LFR/CMVN in numpy + ORT encoder).

Same encoder in both (the reference SenseVoice encoder at SenseVoice-Small depth, width
reduced), espeak-ng speech of 10 s and 60 s, onnxruntime single-threaded, best of N.
Prints ms and the fused/two-step ratio measured in the same run, calls interleaved so that
drift of a shared machine hits both alike, and the encoder alone (what neither can save).
Goal: fused <= 0.9x.

    python bench/fused.py [--repeats 5] [--size tiny|small-depth] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from _timing import best_of_interleaved  # bench/ is on sys.path when run as a script

from svsurgery.frontend import knf, reference
from svsurgery.frontend.config import discover
from svsurgery.fuse import fuse_preprocessing
from svsurgery.io import load
from svsurgery.runtime import inference_session
from svsurgery.testing import audio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", choices=("tiny", "small-depth"), default="small-depth")
    parser.add_argument("--json", help="also write the table as JSON")
    args = parser.parse_args()

    from svsurgery.testing.encoder import EncoderConfig
    from svsurgery.testing.export import write_model_folders

    config = EncoderConfig.tiny() if args.size == "tiny" else EncoderConfig.small_depth()
    rows = []
    with tempfile.TemporaryDirectory(prefix="svsurgery-bench-") as scratch:
        encoder_path = write_model_folders(Path(scratch), config)["funasr"]
        fused_path = Path(scratch) / "fused.onnx"
        _, report = fuse_preprocessing(encoder_path, fused_path)
        assert report.passed, "fusion failed verification"
        frontend = discover(load(encoder_path), encoder_path)
        encoder = inference_session(encoder_path, intra_op_threads=1)
        fused = inference_session(fused_path, intra_op_threads=1)
        ids = {"language": np.zeros(1, np.int32), "textnorm": np.full(1, 15, np.int32)}

        for seconds in (10, 60):
            waveform = audio.speech(seconds, seed=seconds)

            def two_step_features():
                fbank = knf.fbank(waveform, frontend.fbank)
                stacked = reference.apply_lfr(fbank, frontend.lfr)
                return ((stacked + frontend.cmvn.shift) * frontend.cmvn.scale).astype(np.float32)

            def two_step():
                features = two_step_features()
                return encoder.run(None, {"speech": features[None], "speech_lengths": np.array([features.shape[0]], np.int32), **ids})

            def one_model():
                return fused.run(None, {"waveform": waveform[None], "waveform_lengths": np.array([waveform.size]), **ids})

            features = two_step_features()

            def encoder_alone():
                return encoder.run(None, {"speech": features[None], "speech_lengths": np.array([features.shape[0]], np.int32), **ids})

            timings = best_of_interleaved({"two_step": two_step, "fused": one_model, "encoder": encoder_alone}, args.repeats)
            rows.append({
                "audio_s": seconds, "two_step_ms": timings["two_step"] * 1e3, "fused_ms": timings["fused"] * 1e3,
                "encoder_ms": timings["encoder"] * 1e3, "ratio": timings["fused"] / timings["two_step"],
            })  # fmt: skip

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"fused vs two-step, encoder {args.size}, ORT 1 thread, best of {args.repeats}")
    for column in ("audio", "two-step ms (knf + numpy + ORT)", "fused ms (ORT)", "fused / two-step", "encoder alone ms"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(f"{row['audio_s']} s", f"{row['two_step_ms']:.1f}", f"{row['fused_ms']:.1f}", f"{row['ratio']:.2f}",
                      f"{row['encoder_ms']:.1f}")
    Console().print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
