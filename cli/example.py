"""``svsurgery example -o DIR``: the reference encoder exported and shipped three ways.

Writes model folders as they are found in the wild, each with ``model.onnx``:
``funasr/`` (FunASR's export: TorchScript exporter, opset 14, + config.yaml + am.mvn),
``dynamo/`` (torch.export, opset 18, external data, + config.yaml + am.mvn) and
``sherpa/`` (sherpa-onnx's input names, LFR and CMVN in metadata). Needs torch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from svsurgery.cli.common import console, error_console
from svsurgery.errors import BadInputError, require

SIZES = ("tiny", "small-depth")


def register(verbs) -> None:
    parser = verbs.add_parser(
        "example",
        help="export the built-in reference encoder as FunASR, dynamo and sherpa-onnx model folders (needs torch)",
        description="Build the reference SenseVoice-architecture encoder with seeded random weights and write it "
        "as three model folders: funasr/ (legacy exporter, opset 14, config.yaml, am.mvn), dynamo/ (torch.export, "
        "opset 18, external data) and sherpa/ (x/x_length inputs, LFR and CMVN in metadata).",
    )
    parser.add_argument("-o", "--out-dir", default="example", help="folder to write into (default: ./example)")
    parser.add_argument(
        "--size",
        choices=SIZES,
        default="tiny",
        help="tiny: 2+1 blocks, width 64 (default); small-depth: SenseVoice-Small's 50+20 blocks, width 128",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    require("torch", "svsurgery example")
    from svsurgery.testing.encoder import EncoderConfig
    from svsurgery.testing.export import write_model_folders

    out_dir = Path(args.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise BadInputError(f"{out_dir}: exists and is not a folder")
    config = EncoderConfig.tiny() if args.size == "tiny" else EncoderConfig.small_depth()
    with error_console().status(f"exporting the reference encoder ({args.size}) to {out_dir}/ ..."):
        folders = write_model_folders(out_dir, config)
    for kind, path in folders.items():
        console().print(f"{kind:>6}: {path}", markup=False)
    return 0
