"""Lossy cast round trips: remove one only where the reference shows parity improves.

``Cast(Cast(x, to=B), to=A)`` with x of type A and A -> B lossy (f32 -> f16 -> f32,
float -> int -> float, i64 -> i32 -> i64) throws information away and brings the
narrower value back. Sometimes that is a bug of the export (a float16 round trip left in
a float32 graph); sometimes it is the point (``x.long().float()`` truncates on purpose).
The types cannot tell which, so this family proposes each round trip as its own site,
removes it (readers read x), and the engine keeps the removal only when parity against
the reference strictly improves; everything else is rolled back, site by site.
"""

from __future__ import annotations

import onnx_ir as ir

from svsurgery import patch
from svsurgery.errors import BadInputError
from svsurgery.rules.base import Applied, ApplyOptions, RuleFamily
from svsurgery.rules.casts import cast_inputs, lossy_round_trips, removable_cast

__all__ = ["FAMILY"]


def _sites(model: ir.Model) -> list[str]:
    patch.infer_types(model, only_if_missing=cast_inputs(model))
    return [trip.second for _, _, trip in lossy_round_trips(model) if trip.second]


def _apply(model: ir.Model, options: ApplyOptions) -> Applied:
    patch.infer_types(model, only_if_missing=cast_inputs(model))
    removed = []
    for first, second, trip in list(lossy_round_trips(model)):
        if options.site is not None and trip.second != options.site:
            continue
        second.replace_input_with(0, first.inputs[0])  # now Cast(x, to=A): an identity cast
        if not removable_cast(second):
            second.replace_input_with(0, first.outputs[0])
            continue
        patch.bypass(model, second)
        if not first.outputs[0].uses() and not first.outputs[0].is_graph_output():
            first.graph.remove(first, safe=True)
        removed.append(trip.describe())
    if options.site is not None and not removed:
        raise BadInputError(f"lossy-casts: no removable round trip ends at node '{options.site}'")
    return Applied(len(removed), notes=[f"removed {text}" for text in removed])


FAMILY = RuleFamily(
    id="lossy-casts",
    title="remove lossy cast round trips where the reference shows parity improves",
    fixes="a round trip through a narrower type (f32->f16->f32, i64->i32->i64) silently drops precision or range",
    safe_when="only where the reference shows strictly better parity; each round trip is verified on its own",
    references=("onnxruntime issue 17953",),
    apply=_apply,
    acceptance="improves",
    sites=_sites,
)
