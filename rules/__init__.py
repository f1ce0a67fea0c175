"""The rule catalog: one family per module, applied by the engine in catalog order.

Each module defines ``FAMILY`` (a :class:`svsurgery.rules.base.RuleFamily`): what it fixes,
when it is safe, references, and its rewrites (onnxscript rules or onnx_ir passes).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from rich.markup import escape
from rich.table import Table

from svsurgery.errors import BadInputError
from svsurgery.report import Report, dumps
from svsurgery.rules import (
    casts,
    gelu,
    instance_norm,
    layer_norm,
    lossy_casts,
    masks,
    positional,
    rms_norm,
    softmax,
    spectral,
)
from svsurgery.rules.base import RuleFamily

__all__ = ["CATALOG", "CatalogReport", "select"]

# layer-norm first: below opset 17 it converts the model, and the conversion brings every
# value's type, which the cast rules then need without another shape inference.
# rms-norm next (the other fusion; below opset 23 it protects float16 chains instead).
# The precision families (mask-fill for float16 and -inf fills; softmax-fp32,
# positional-fp32, spectral-fp32, instance-norm and gelu only for models computed in float16) come before
# lossy-casts, which judges single sites against whatever precision the model has by then.
CATALOG: tuple[RuleFamily, ...] = (
    layer_norm.FAMILY,
    rms_norm.FAMILY,
    casts.FAMILY,
    masks.FAMILY,
    softmax.FAMILY,
    positional.FAMILY,
    spectral.FAMILY,
    instance_norm.FAMILY,
    gelu.FAMILY,
    lossy_casts.FAMILY,
)


def select(ids: str | list[str] | None, extra: Sequence[RuleFamily] = ()) -> list[RuleFamily]:
    """Families by id (comma-separated or a list), in the order given, from the catalog and
    ``extra`` (a user's rules); for None, ``extra`` when given, else the whole catalog."""
    if ids is None:
        return list(extra) if extra else list(CATALOG)
    wanted = [i.strip() for i in (ids.split(",") if isinstance(ids, str) else ids) if i.strip()]
    known = {family.id: family for family in (*CATALOG, *extra)}
    unknown = [i for i in wanted if i not in known]
    if unknown:
        raise BadInputError(f"unknown rule {unknown[0]!r}; the catalog has: {', '.join(known)}")
    return [known[i] for i in wanted]


@dataclasses.dataclass
class CatalogReport(Report):
    """The families a run can apply, in order (``svsurgery rules``); its JSON is the list."""

    families: list[RuleFamily]

    def to_dict(self) -> dict:
        return {"families": [f.describe() for f in self.families]}

    def to_json(self, indent: int | None = 2) -> str:
        return dumps([f.describe() for f in self.families], indent=indent)

    def render(self, console) -> None:
        table = Table(title="svsurgery rule catalog (applied in this order)", show_lines=True)
        for column in ("id", "what it does", "fixes", "safe when", "kept when"):
            table.add_column(column, overflow="fold")
        for family in self.families:
            kept = "parity strictly improves" if family.acceptance == "improves" else "parity no worse"
            kept += "; in float16 models also when headroom rises with cosine and argmax within tolerance"
            references = "\n".join(f"see: {reference}" for reference in family.references)
            table.add_row(
                escape(family.id),
                escape(family.title),
                escape(family.fixes),
                escape(family.safe_when + (f"\n\n{references}" if references else "")),
                kept,
            )
        console.print(table)
