"""``svsurgery check MODEL GOLDEN.npz``: re-verify a model against a golden file (exit 1 on failure)."""

from __future__ import annotations

import argparse
import dataclasses

from svsurgery.cli.common import add_tolerance_arguments, console, tolerance_from_args
from svsurgery.errors import EXIT_CHECK_FAILED
from svsurgery.parity.metrics import ParityResult
from svsurgery.report import Report


def register(verbs) -> None:
    parser = verbs.add_parser(
        "check",
        help="run a model on a golden file's inputs and compare with its outputs (exit 1 beyond tolerance)",
        description="Run MODEL on the inputs stored in GOLDEN.npz and compare every output with the stored "
        "one (max abs, max rel, cosine, argmax agreement, NaN/Inf). Exit 0 within tolerance, 1 beyond.",
    )
    parser.add_argument("model", help="the deployed .onnx model")
    parser.add_argument("golden", help="the golden .npz (svsurgery golden, or svsurgery.golden.save)")
    add_tolerance_arguments(parser)
    parser.add_argument("--report", metavar="JSON", help="also write the report as JSON")
    parser.set_defaults(run=run)


@dataclasses.dataclass
class CheckReport(Report):
    model: str
    golden: str
    golden_source: str
    golden_versions: dict
    parity: ParityResult

    @property
    def passed(self) -> bool:
        return self.parity.passed

    def render(self, console) -> None:
        from rich.markup import escape
        from rich.table import Table

        console.print(f"[bold]check[/bold] {escape(self.model)} against {escape(self.golden)} ({escape(self.golden_source)})")
        table = Table()
        for column in ("output", "max abs", "max rel", "mean abs", "cosine", "argmax", "NaN/Inf", "ok"):
            table.add_column(column, justify="left" if column == "output" else "right")
        for row in self.parity.outputs:
            agreement = "-" if row.argmax_agreement is None else f"{row.argmax_agreement:.2%}"
            verdict = "[green]yes[/green]" if row.passed else "[red]no[/red]: " + escape("; ".join(row.failures))
            table.add_row(escape(row.name), f"{row.max_abs:.2e}", f"{row.max_rel:.2e}", f"{row.mean_abs:.2e}",
                          f"{row.cosine:.8f}", agreement, str(row.nan_count + row.inf_count), verdict)
        console.print(table)
        verdict = "[green]within tolerance[/green]" if self.passed else "[red]beyond tolerance[/red]"
        console.print(f"tolerance {escape(self.parity.tolerance)}: {verdict}")


def run(args: argparse.Namespace) -> int:
    from svsurgery import golden as golden_files
    from svsurgery.engine import Verifier
    from svsurgery.io import load
    from svsurgery.parity.inputs import check_feeds

    model = load(args.model)
    recorded = golden_files.load(args.golden)
    feeds = check_feeds(recorded.inputs, model, args.golden)
    verify = Verifier(recorded.outputs, feeds, tolerance_from_args(args, model), args.model)
    report = CheckReport(args.model, args.golden, recorded.meta.get("source", "?"), recorded.meta.get("versions", {}), verify(model))
    report.render(console())
    if args.report:
        report.write_json(args.report)
    return 0 if report.passed else EXIT_CHECK_FAILED
