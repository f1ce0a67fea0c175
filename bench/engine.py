"""Rule engine speed: the reference encoder at SenseVoice-Small depth (50 + 20 blocks, width
128), and at 2x and 4x that depth, exported as FunASR does (legacy exporter, opset 14).

For each depth, best of N after a warm-up (each run on a fresh load of the same file):
- rules: every catalog family applied once, no verification;
- one check: one verification of the result (validity gate + onnxruntime run + metrics
  against precomputed reference outputs);
- rules + one check: the sum, the issue's goal (< 5 s at 1x, growing linearly);
- fp64 reference: building and running the float64 shadow once;
- full fix: ``svsurgery.fix`` end to end (inputs, float64 reference, a verification after
  every pass, provenance);
with seconds per 1000 nodes and the ratio of each time to the 1x time next to the ratio
of node counts, so linear growth reads as equal ratios. Single machine, default threads.

Then, beside a slimmer that verifies nothing: the ``svsurgery fix MODEL -o OUT`` command
(load, float64 reference, every pass verified, the result gated and written) and
onnxslim's ``slim(MODEL, OUT)`` (load, its passes, write; ``pip install 'svsurgery[bench]'``)
on the same file, calls interleaved (this shared host drifts), best of N, and their ratio.

    python bench/engine.py [--repeats 3] [--depths 1,2,4] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import tempfile
import time
from pathlib import Path

from svsurgery import rules
from svsurgery.engine import default_tolerance, fix
from svsurgery.model_io import load
from svsurgery.parity.inputs import generate_inputs
from svsurgery.parity.references import Float64Reference
from svsurgery.rules.base import ApplyOptions
from svsurgery.verifier import Verifier


def node_count(model) -> int:
    return sum(1 for graph in (model.graph, *model.graph.subgraphs()) for _ in graph)


def apply_catalog(model):
    for family in rules.CATALOG:
        for site in family.sites(model) if family.sites is not None else [None]:
            applied = family.apply(model, ApplyOptions(site=site))
            model = applied.model or model
    return model


def best(function, repeats: int, prepare=lambda: None) -> tuple[float, object]:
    """Fastest of ``repeats`` calls of ``function(prepare())`` after a warm-up; ``prepare`` is not timed."""
    function(prepare())  # warm-up
    timings, result = [], None
    for _ in range(repeats):
        argument = prepare()
        start = time.perf_counter()
        result = function(argument)
        timings.append(time.perf_counter() - start)
    return min(timings), result


def interleaved(functions: dict, repeats: int) -> dict[str, float]:
    """Best time of each function over ``repeats`` rounds, one call of each per round."""
    timings: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            timings[name].append(time.perf_counter() - start)
    return {name: min(values) for name, values in timings.items()}


def fix_command(path: Path, output: Path) -> None:
    from svsurgery.cli.main import main as svsurgery

    with contextlib.redirect_stdout(io.StringIO()):
        code = svsurgery(["fix", str(path), "-o", str(output)])
    assert code == 0, code


def onnxslim_command(path: Path, output: Path) -> None:
    import onnxslim

    with contextlib.redirect_stdout(io.StringIO()):  # its own summary table
        onnxslim.slim(str(path), str(output))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--depths", default="1,2,4", help="depth multipliers of SenseVoice-Small's 50 + 20 blocks")
    parser.add_argument("--json", help="also write the table as JSON")
    args = parser.parse_args()

    from svsurgery.testing.encoder import EncoderConfig, build_encoder
    from svsurgery.testing.export import export_legacy

    rows = []
    with tempfile.TemporaryDirectory(prefix="svsurgery-bench-") as scratch:
        for depth in (int(d) for d in args.depths.split(",")):
            path = export_legacy(
                build_encoder(EncoderConfig.small_depth(depth)), Path(scratch) / f"encoder_x{depth}.onnx"
            )
            model = load(path)
            inputs = generate_inputs(model, path)
            fresh = functools.partial(load, path)  # loading is not what is measured
            fp64_seconds, reference = best(Float64Reference, 1, fresh)
            expected = reference.outputs(inputs.feeds)
            verify = Verifier(expected, inputs.feeds, default_tolerance(model), path.name)

            rules_seconds, rewritten = best(apply_catalog, args.repeats, fresh)
            check_seconds, parity = best(verify, args.repeats, lambda rewritten=rewritten: rewritten)
            assert parity.passed, parity.failures()
            full_seconds, (_, report) = best(fix, 1, fresh)
            assert report.passed and [s.status for s in report.steps][:2] == ["accepted", "accepted"]
            nodes = node_count(model)
            against = interleaved(
                {
                    "fix": functools.partial(fix_command, path, Path(scratch) / "fixed.onnx"),
                    "onnxslim": functools.partial(onnxslim_command, path, Path(scratch) / "slim.onnx"),
                },
                args.repeats,
            )
            rows.append(
                {
                    "fix_command_s": against["fix"],
                    "onnxslim_s": against["onnxslim"],
                    "fix_over_onnxslim": against["fix"] / against["onnxslim"],
                    "depth": f"{depth}x ({50 * depth}+{20 * depth} blocks)",
                    "nodes": nodes,
                    "rules_s": rules_seconds,
                    "check_s": check_seconds,
                    "rules_and_check_s": rules_seconds + check_seconds,
                    "fp64_reference_s": fp64_seconds,
                    "full_fix_s": full_seconds,
                    "rules_and_check_s_per_1000_nodes": (rules_seconds + check_seconds) * 1000 / nodes,
                    "full_fix_s_per_1000_nodes": full_seconds * 1000 / nodes,
                    "rewrites": {s.family: s.matches for s in report.steps},
                }
            )
            del model, rewritten, reference

    base = rows[0]
    for row in rows:
        row["node_ratio"] = row["nodes"] / base["nodes"]
        row["rules_and_check_ratio"] = row["rules_and_check_s"] / base["rules_and_check_s"]
        row["full_fix_ratio"] = row["full_fix_s"] / base["full_fix_s"]

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"rule engine, all rules (legacy export, opset 14 -> 17), best of {args.repeats}")
    columns = (
        "depth",
        "nodes",
        "rules s",
        "one check s",
        "rules+check s",
        "per 1k nodes",
        "fp64 ref s",
        "full fix s",
        "per 1k nodes ",
        "x nodes",
        "x rules+check",
        "x full fix",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "depth" else "right")
    for row in rows:
        table.add_row(
            row["depth"],
            str(row["nodes"]),
            f"{row['rules_s']:.2f}",
            f"{row['check_s']:.2f}",
            f"{row['rules_and_check_s']:.2f}",
            f"{row['rules_and_check_s_per_1000_nodes']:.3f}",
            f"{row['fp64_reference_s']:.2f}",
            f"{row['full_fix_s']:.2f}",
            f"{row['full_fix_s_per_1000_nodes']:.3f}",
            f"{row['node_ratio']:.2f}",
            f"{row['rules_and_check_ratio']:.2f}",
            f"{row['full_fix_ratio']:.2f}",
        )
    Console(width=160).print(table)
    print("rewrites at 1x:", base["rewrites"])
    versus = Table(
        title=f"svsurgery fix (every pass verified) vs onnxslim (no verification), interleaved, best of {args.repeats}"
    )
    for column in ("depth", "nodes", "svsurgery fix -o s", "onnxslim s", "fix / onnxslim"):
        versus.add_column(column, justify="left" if column == "depth" else "right")
    for row in rows:
        versus.add_row(
            row["depth"],
            str(row["nodes"]),
            f"{row['fix_command_s']:.2f}",
            f"{row['onnxslim_s']:.2f}",
            f"{row['fix_over_onnxslim']:.2f}",
        )
    Console(width=160).print(versus)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
