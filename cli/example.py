"""``svsurgery example -o DIR``: build the reference SenseVoice-architecture encoder and export it.

Writes ``sensevoice_legacy.onnx`` (FunASR's export: TorchScript exporter, opset 14)
and ``sensevoice_dynamo.onnx`` + ``.data`` (torch.export, opset 18, external data),
so every other command can be tried without a model of one's own. Needs torch.
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
        help="export the built-in reference encoder (needs torch)",
        description="Build the reference SenseVoice-architecture encoder with seeded random weights and "
        "export it the way FunASR does (legacy exporter, opset 14) and through torch.export (opset 18, "
        "external data).",
    )
    parser.add_argument("-o", "--out-dir", default="example", help="folder to write into (default: ./example)")
    parser.add_argument(
        "--size",
        choices=SIZES,
        default="tiny",
        help="tiny: 3+1 blocks, width 64 (default); small-depth: SenseVoice-Small's 50+20 blocks, width 128",
    )
    parser.add_argument("--no-dynamo", action="store_true", help="only the legacy (FunASR-style) export")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    require("torch", "svsurgery example")
    from svsurgery.testing.encoder import EncoderConfig
    from svsurgery.testing.export import export_reference_encoders

    out_dir = Path(args.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise BadInputError(f"{out_dir}: exists and is not a folder")
    config = EncoderConfig.tiny() if args.size == "tiny" else EncoderConfig.small_depth()
    with error_console().status(f"exporting the reference encoder ({args.size}) to {out_dir}/ ..."):
        paths = export_reference_encoders(out_dir, config, dynamo=not args.no_dynamo)
    for kind, path in paths.items():
        console().print(f"{kind:>6}: {path}")
    return 0
