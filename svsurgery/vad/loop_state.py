"""ONNX Loop state declared once: each carried value's name, type and initial value in one place.

A Loop body takes (iteration, condition, *carried) and returns (condition, *carried, *scanned);
written by hand, every carried value is listed four times in parallel (the body's signature,
its returned tuple, the declared inputs/outputs, the initial values) and a value added to one
list but not another shifts every later one. Here a value is declared once:

    state = LoopState(g)
    state.carry("start", 0)                            # int64 scalar
    state.carry("noise", -100.0)                       # float -> double scalar
    state.carry("window", np.zeros(20, np.int64))      # a vector: shape [None]
    state.scan("closed", ir.DataType.BOOL)             # one value per iteration, stacked
    final, scanned = state.loop(trips, step, name="e2e_vad_event")

``step(op, index, now)`` sees the carried values as attributes of ``now`` and returns a
mapping: a new value for any carried name (the others carry over unchanged), a value for
every scanned name, and optionally ``"going"``, the Loop's condition (absent: unchanged).
``final`` holds the carried values after the last iteration, ``scanned`` the stacked ones,
both by name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from types import EllipsisType, SimpleNamespace

import numpy as np
import onnx_ir as ir

from svsurgery.frontend._ops import GraphOps, subgraph_value

__all__ = ["GOING", "LoopState"]

GOING = "going"  # the key a step returns the Loop's condition under


@dataclasses.dataclass(frozen=True)
class _Declared:
    name: str
    dtype: ir.DataType
    shape: tuple | None  # () scalar, (None,) vector of any length, None any shape
    initial: ir.Value | None = None  # carried values only


class LoopState:
    """The values an ONNX Loop carries and scans, declared once (see the module docstring)."""

    def __init__(self, g: GraphOps) -> None:
        self._g = g
        self._carried: dict[str, _Declared] = {}
        self._scanned: dict[str, _Declared] = {}

    def carry(
        self, name: str, initial, dtype: ir.DataType | None = None, shape: tuple | EllipsisType | None = ...
    ) -> None:
        """A value carried from iteration to iteration, starting at ``initial``: an ir.Value, or a
        Python/numpy value made a constant (bool -> BOOL, int -> INT64, float -> DOUBLE unless
        ``dtype`` says). Shape: scalar for a scalar, any length per axis for an array."""
        self._check_new(name)
        if isinstance(initial, ir.Value):
            dtype = dtype or initial.dtype
            if shape is ...:
                shape = None if initial.shape is None else (None,) * len(initial.shape)
        else:
            array = np.asarray(initial)
            dtype = dtype or ir.DataType.from_numpy(array.dtype)
            if shape is ...:
                shape = (None,) * array.ndim
            initial = self._g.const(array, dtype.numpy())
        if dtype is None:
            raise ValueError(f"loop value '{name}': no dtype given or known")
        self._carried[name] = _Declared(name, dtype, shape, initial)

    def scan(self, name: str, dtype: ir.DataType, shape: tuple | None = ()) -> None:
        """A value each iteration emits; the Loop returns them stacked along a new first axis."""
        self._check_new(name)
        self._scanned[name] = _Declared(name, dtype, shape)

    def loop(
        self, trips: ir.Value, step: Callable, *, name: str, going: ir.Value | bool = True, op=None
    ) -> tuple[SimpleNamespace, SimpleNamespace]:
        """Build the Loop: at most ``trips`` (int64 scalar) iterations while ``going`` holds.
        ``op``: the op builder to add the Loop with (default the graph's; pass a branch's to
        build the Loop inside an If branch)."""
        g = self._g
        op = op or g.op
        carried, scanned = list(self._carried.values()), list(self._scanned.values())
        inputs = [subgraph_value("index", ir.DataType.INT64), subgraph_value(GOING, ir.DataType.BOOL)]
        inputs += [subgraph_value(d.name, d.dtype, d.shape) for d in carried]
        outputs = [subgraph_value(f"{GOING}_out", ir.DataType.BOOL)]
        outputs += [subgraph_value(f"{d.name}_out", d.dtype, d.shape) for d in carried]
        outputs += [subgraph_value(d.name, d.dtype, d.shape) for d in scanned]

        def body(bop, index, condition, *values):
            now = SimpleNamespace(**{d.name: v for d, v in zip(carried, values)})
            result = step(bop, index, now)
            if not isinstance(result, Mapping):
                raise TypeError(f"loop '{name}': the step returns a mapping of names to values")
            unknown = set(result) - set(self._carried) - set(self._scanned) - {GOING}
            missing = set(self._scanned) - set(result)
            if unknown or missing:
                raise ValueError(
                    f"loop '{name}': unknown values {sorted(unknown)}, scanned values missing {sorted(missing)}"
                )
            returned = [result.get(GOING, condition)]
            returned += [result.get(d.name, getattr(now, d.name)) for d in carried]
            returned += [result[d.name] for d in scanned]
            return _own_outputs(bop, returned)

        graph = g.builder.subgraph(body, inputs=inputs, outputs=outputs, name=name)
        if not isinstance(going, ir.Value):
            going = g.const(np.array(bool(going)))
        results = op.Loop(trips, going, *(d.initial for d in carried), body=graph, _outputs=len(carried) + len(scanned))
        if len(carried) + len(scanned) == 1:
            results = [results]
        final = SimpleNamespace(**{d.name: v for d, v in zip(carried, results)})
        stacked = SimpleNamespace(**{d.name: v for d, v in zip(scanned, results[len(carried) :])})
        return final, stacked

    def _check_new(self, name: str) -> None:
        if name == GOING or name in self._carried or name in self._scanned:
            raise ValueError(f"loop value '{name}' declared twice (or named '{GOING}')")


def _own_outputs(bop, values: list[ir.Value]) -> list[ir.Value]:
    """Each body output a distinct value computed in the body: a body input, an outer value or a
    value returned twice goes through Identity (the builder names each output after its
    declaration, which would rename an input, an outer constant or the other output)."""
    body_graph = bop.builder.graph
    owned, seen = [], set()
    for value in values:
        producer = value.producer()
        if producer is None or producer.graph is not body_graph or id(value) in seen:
            value = bop.Identity(value)
        seen.add(id(value))
        owned.append(value)
    return owned
