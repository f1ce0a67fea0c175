"""Re-verify a deployed model against a golden file: the same gate and metrics as the engine."""

from __future__ import annotations

import dataclasses
import os

import onnx_ir as ir
from rich.markup import escape

from svsurgery import golden
from svsurgery.engine import default_tolerance
from svsurgery.parity.inputs import check_feeds
from svsurgery.parity.metrics import ParityResult, Tolerance
from svsurgery.parity.tables import failure_lines, parity_table
from svsurgery.report import Report
from svsurgery.verifier import Verifier

__all__ = ["CheckReport", "check"]


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
        console.print(
            f"[bold]check[/bold] {escape(self.model)} against {escape(self.golden)} ({escape(self.golden_source)})"
        )
        console.print(parity_table(self.parity))
        for line in failure_lines(self.parity):
            console.print(f"  [red]{escape(line)}[/red]")
        verdict = "[green]within tolerance[/green]" if self.passed else "[red]beyond tolerance[/red]"
        console.print(f"tolerance {escape(self.parity.tolerance)}: {verdict}")


def check(
    model: ir.Model, golden_path: str | os.PathLike, tolerance: Tolerance | None = None, label: str | None = None
) -> CheckReport:
    """Run ``model`` (validity gate included) on the golden file's inputs and compare with its outputs."""
    recorded = golden.load(golden_path)
    label = label or str(model.meta.get("svsurgery.source_path", "model"))
    feeds = check_feeds(recorded.inputs, model, str(golden_path))
    verify = Verifier(recorded.outputs, feeds, tolerance or default_tolerance(model), label)
    return CheckReport(
        label, str(golden_path), recorded.meta.get("source", "?"), recorded.meta.get("versions", {}), verify(model)
    )
