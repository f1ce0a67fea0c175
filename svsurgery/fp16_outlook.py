"""How close a model runs to float16's range: its headroom, and the values that set it.

The headroom of a value is the input scale at which it would pass float16's largest finite
number (65504): its largest magnitude on the inputs, extrapolated by how it grows with the
input scale (linearly, as a square, ...); for Exp, the scale at which its argument passes
log(65504). The model's headroom is the smallest over its values computed in float16. A
float32 model is measured as svsurgery's plain float16 conversion would compute it (no
precision rules), which is what ``svsurgery fp16`` starts from; a float16 model as it is.
``svsurgery inspect --fp16`` prints this report; ``svsurgery fp16 --min-headroom`` refuses
results below a bound (default :data:`~svsurgery.parity.headroom.DEFAULT_MIN_HEADROOM`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import onnx_ir as ir

from svsurgery.parity.headroom import DEFAULT_MIN_HEADROOM, format_headroom, measure_model
from svsurgery.parity.inputs import ParityInputs, runs_on
from svsurgery.precision import model_precision
from svsurgery.report import Report
from svsurgery.runtime import run

__all__ = ["Float16Outlook", "fp16_outlook"]


@dataclasses.dataclass
class Float16Outlook(Report):
    """A model's float16 headroom on given inputs, tightest values first."""

    model: str
    measured_as: str  # "float16 as it is" or "converted to float16 without precision rules"
    inputs: str  # how each input was made
    headroom: float  # inf when nothing computed in float16 grows with the inputs
    description: str
    values_measured: int
    lowest: list[dict[str, Any]]  # the tightest values: value, node, op_type, what, magnitude, degree, headroom
    min_headroom: float
    # float16 values computed inside If/Loop/Scan bodies: the true-float16 evaluation measures the main graph only
    unmeasured_in_bodies: int = 0

    @property
    def passed(self) -> bool | None:
        """Would ``svsurgery fp16 --min-headroom`` at its default accept this headroom? False
        when the measured values are already below it; None (not known) when they are not but
        values inside control-flow bodies went unmeasured."""
        if self.headroom < self.min_headroom:
            return False
        return None if self.unmeasured_in_bodies else True

    def render(self, console) -> None:
        from rich.markup import escape
        from rich.table import Table

        bound = f"svsurgery fp16's default bound ({format_headroom(self.min_headroom)})"
        verdict = {
            True: f"[green]enough[/green] for {bound}",
            False: f"[red]below[/red] {bound}",
            None: f"[yellow]over the main graph only[/yellow]: whether it meets {bound} is not known",
        }[self.passed]
        console.print(
            f"[bold]float16 headroom[/bold] of {escape(self.model)} ({escape(self.measured_as)}): "
            f"{format_headroom(self.headroom)}, {verdict}"
        )
        if self.unmeasured_in_bodies:
            console.print(
                f"[yellow]{self.unmeasured_in_bodies} float16 values inside If/Loop/Scan bodies are not measured"
                "[/yellow] "
                "(the true-float16 evaluation measures the main graph): the headroom covers the rest only"
            )
        console.print(escape(f"inputs: {self.inputs}"), soft_wrap=True)
        if not self.lowest:
            console.print(escape(f"{self.values_measured} float16 values measured; none grows with the inputs"))
            return
        table = Table(title="Tightest values (the input scale at which each passes 65504)", title_justify="left")
        table.add_column("headroom", justify="right", no_wrap=True)
        table.add_column("value", overflow="fold")
        table.add_column("op", overflow="fold")
        table.add_column("what", overflow="fold")
        table.add_column("max", justify="right", no_wrap=True)
        table.add_column("grows as", justify="right", no_wrap=True)
        for site in self.lowest:
            table.add_row(
                format_headroom(site["headroom"]),
                escape(site["value"]),
                escape(site["op_type"]),
                escape(site["what"]),
                f"{site['magnitude']:.3g}",
                f"scale^{site['degree']:g}",
            )
        console.print(table)


def fp16_outlook(model: ir.Model, inputs: ParityInputs, *, label: str = "model") -> Float16Outlook:
    """The float16 headroom of ``model`` on ``inputs``; the model is not changed."""
    is_float16 = model_precision(model) == ir.DataType.FLOAT16
    with runs_on(inputs, label):
        run(model, inputs.feeds)  # inputs it cannot run on: the usual one line (exit 2), not the evaluator's
        measured = measure_model(model, inputs.feeds)
    return Float16Outlook(
        model=label,
        measured_as="float16 as it is" if is_float16 else "converted to float16 without precision rules",
        inputs=inputs.describe(),
        headroom=measured.headroom,
        description=measured.describe(),
        values_measured=measured.measured,
        lowest=[dataclasses.asdict(site) for site in measured.lowest],
        min_headroom=DEFAULT_MIN_HEADROOM,
        unmeasured_in_bodies=measured.unmeasured,
    )
