"""``svsurgery demo``: the whole job on built-in material, no files of yours needed.

Exports the reference encoder as a FunASR model folder, fixes its divergent patterns with
the rule engine (parity against the PyTorch module re-verified after every pass), fuses
the front end into the fixed encoder (verified against kaldi-native-fbank + LFR + CMVN +
the original encoder), runs the result on a built-in waveform and prints the parity
tables. Needs torch (for the export and the PyTorch reference).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

import svsurgery
from svsurgery.cli.common import console, error_console
from svsurgery.errors import EXIT_CHECK_FAILED, require
from svsurgery.fuse import fuse_preprocessing
from svsurgery.parity.waveforms import speech_like
from svsurgery.runtime import run as run_model


def register(verbs) -> None:
    parser = verbs.add_parser(
        "demo",
        help="export the reference encoder, fix it, fuse the front end into it, run it, print parity (needs torch)",
        description=" ".join(line.strip() for line in __doc__.split("\n\n")[1].splitlines()),
    )
    parser.add_argument("-o", "--out-dir", help="keep the models in this folder (default: a temporary one)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    require("torch", "svsurgery demo")
    from svsurgery.parity.inputs import generate_inputs
    from svsurgery.testing.encoder import EncoderConfig, build_encoder
    from svsurgery.testing.export import write_model_folders

    with tempfile.TemporaryDirectory(prefix="svsurgery-demo-") as scratch:
        out_dir = Path(args.out_dir) if args.out_dir else Path(scratch)
        config = EncoderConfig.tiny()
        with error_console().status("exporting the reference encoder (FunASR-style folder) ..."):
            encoder = write_model_folders(out_dir, config)["funasr"]
        fixed_path = encoder.with_name("model.fixed.onnx")
        with error_console().status("fixing divergent patterns, verifying against PyTorch after every pass ..."):
            model = svsurgery.load(encoder)
            inputs = generate_inputs(model, encoder)
            fixed, fix_report = svsurgery.fix(model, torch_module=build_encoder(config), inputs=inputs)
        fix_report.render(console())
        if not fix_report.passed:
            return EXIT_CHECK_FAILED
        svsurgery.save(fixed, fixed_path)
        fused_path = encoder.with_name("model.fused.onnx")
        with error_console().status("fusing the front end into the fixed encoder and verifying ..."):
            fused, report = fuse_preprocessing(fixed_path)
            if report.passed:
                svsurgery.save(fused, fused_path)
                report.output, report.written = str(fused_path), True
        console().print()
        report.render(console())
        if not report.passed:
            return EXIT_CHECK_FAILED
        waveform = speech_like(3.0, seed=3)
        outputs = run_model(
            fused_path,
            {
                "waveform": waveform[None],
                "waveform_lengths": np.array([waveform.size]),
                "language": np.zeros(1, np.int32),
                "textnorm": np.full(1, 15, np.int32),
            },
        )
        logits = outputs["ctc_logits"]
        console().print(
            f"ran {fused_path.name} on {waveform.size / 16000:.1f} s of built-in waveform: "
            f"ctc_logits {list(logits.shape)}, encoder_out_lens {outputs['encoder_out_lens'].tolist()}; "
            f"first tokens {logits[0].argmax(-1)[:12].tolist()}",
            markup=False,
        )
        if args.out_dir:
            console().print(f"models kept in {out_dir}", markup=False)
    return 0
