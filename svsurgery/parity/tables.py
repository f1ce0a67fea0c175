"""Parity figures as terminal tables that stay readable at 80 columns (CI logs, pipes).

Figures are formatted to a fixed, short width and their columns never wrap or cut; only
names fold onto a second line when the terminal is narrow, and the reasons an output
failed go below the table, one line each, instead of into a cell.
"""

from __future__ import annotations

from rich import box
from rich.markup import escape
from rich.table import Table

from svsurgery.parity.metrics import OutputParity, ParityResult

__all__ = ["agreement", "error", "failure_lines", "parity_table"]


def error(value: float | None) -> str:
    """An error figure in 8 characters (``4.62e-02``)."""
    return "-" if value is None else f"{value:.2e}"


def agreement(output: OutputParity) -> str:
    """Argmax agreement (and ties not counted) in at most 12 characters, '-' without a class axis."""
    if output.argmax_agreement is None:
        return "-" if not output.argmax_ties else f"ties {output.argmax_ties}"
    text = f"{output.argmax_agreement:.2%}"
    return text + (f" t{output.argmax_ties}" if output.argmax_ties else "")


def parity_table(result: ParityResult, title: str | None = None):
    """One row per output: max abs, max rel, cosine, argmax (ties), token error rate, NaN/Inf, ok."""
    table = Table(box=box.SIMPLE_HEAD, title=title, pad_edge=False)
    table.add_column("output", overflow="fold", ratio=1)
    for column in ("max abs", "max rel", "cosine", "argmax", "TER", "NaN/Inf", "ok"):
        table.add_column(column, justify="right", no_wrap=True)
    for row in result.outputs:
        ok = "[green]yes[/green]" if row.passed else "[red]no[/red]"
        ter = "-" if row.token_error_rate is None else f"{row.token_error_rate:.2%}"
        table.add_row(
            escape(row.name),
            error(row.max_abs),
            error(row.max_rel),
            f"{row.cosine:.7f}",
            agreement(row),
            ter,
            str(row.nan_count + row.inf_count),
            ok,
        )
    return table


def failure_lines(result: ParityResult) -> list[str]:
    """Why each failing output failed, one line each (plain text)."""
    return [f"{o.name}: {f}" for o in result.outputs for f in o.failures]
