"""Layer-by-layer comparison: the first module (or value) where an ONNX model leaves its reference.

The standard method for export accuracy bugs, as one call: run PyTorch with a forward hook
on every submodule and the ONNX model with its intermediate values exposed, on identical
inputs; map values to modules through the names the exporters leave (legacy:
``/encoder/encoders.0/self_attn/MatMul``; dynamo: the ``pkg.torch.onnx.name_scopes``
metadata; svsurgery's own ``svs/rule/<id>/...`` names keep the module path); compare each
mapped pair in topological order with the engine's metrics; report the first beyond
tolerance and the path to it. :func:`diff_models` does the same for two ONNX models
(original vs fixed, float32 vs float16) matching values by name, evaluating a float16 side
in true float16.

Intermediate values are fetched in chunks (one onnxruntime session, a bounded number of
outputs per run), so models with many thousands of values fit in memory.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from svsurgery import patch
from svsurgery.errors import BadInputError
from svsurgery.parity.metrics import PROFILES, OutputParity, Tolerance, compare
from svsurgery.report import Report

__all__ = ["DiffReport", "Divergence", "diff", "diff_models", "module_scopes"]

_RULE_PREFIX = re.compile(r"^svs/(?:rule/[\w.-]+|patch|frontend|fp16)/?")
_CALL_SUFFIX = re.compile(r"^(?P<name>.+)_(?P<call>\d+)$")
DEFAULT_CHUNK = 256  # intermediate values per onnxruntime run


@dataclasses.dataclass
class Divergence:
    """One compared pair, in topological order."""

    position: int  # topological index of the producing node
    value: str  # ONNX value name
    node: str  # producing node
    op_type: str
    module: str | None  # torch module path (torch mode), e.g. encoder.encoders.0.norm2
    parity: OutputParity


@dataclasses.dataclass
class DiffReport(Report):
    model: str
    reference: str
    evaluation: str
    tolerance: str
    compared: int
    values_in_model: int
    first: Divergence | None  # the first pair beyond tolerance
    first_nonfinite: Divergence | None  # the first pair with NaN/Inf where the reference is finite (an overflow)
    path: list[Divergence]  # the compared pairs before it (upstream last), and it
    rows: list[Divergence]  # every compared pair (for --plot and JSON)

    @property
    def passed(self) -> bool:
        return self.first is None

    def render(self, console) -> None:
        from rich import box
        from rich.markup import escape
        from rich.table import Table

        console.print(f"[bold]diff[/bold] {escape(self.model)} against {escape(self.reference)}")
        console.print(f"  evaluation: {escape(self.evaluation)}; tolerance: {escape(self.tolerance)}")
        console.print(f"  compared {self.compared} values (of {self.values_in_model} in the model)")
        table = Table(box=box.SIMPLE_HEAD)
        for column in ("#", "module / value", "op", "max abs", "max rel", "cosine", "ok"):
            table.add_column(column, justify="left" if column in ("module / value", "op") else "right")
        for row in self.path:
            label = row.module or row.value
            ok = "[green]yes[/green]" if row.parity.passed else "[red]no[/red]"
            table.add_row(str(row.position), escape(label), row.op_type, f"{row.parity.max_abs:.2e}",
                          f"{row.parity.max_rel:.2e}", f"{row.parity.cosine:.7f}", ok)
        console.print(table)
        if self.first is None:
            console.print("[green]no value beyond tolerance[/green]")
            return
        for label, row in (("first divergence", self.first), ("first overflow (NaN/Inf where the reference is finite)", self.first_nonfinite)):
            if row is None:
                continue
            where = f"module [bold]{escape(row.module)}[/bold], " if row.module else ""
            console.print(
                f"[red]{label}[/red]: {where}node '{escape(row.node)}' ({row.op_type}), "
                f"value '{escape(row.value)}': {escape('; '.join(row.parity.failures))}"
            )

    def plot(self, path) -> None:
        """Error against depth (needs matplotlib: pip install 'svsurgery[plot]')."""
        from svsurgery.errors import require

        require("matplotlib", "diff --plot")
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axis = plt.subplots(figsize=(10, 4))
        depth = [r.position for r in self.rows]
        errors = [max(r.parity.max_rel, 1e-12) if np.isfinite(r.parity.max_rel) else 1e6 for r in self.rows]
        axis.semilogy(depth, errors, ".", markersize=3, label="max rel error")
        if self.first is not None:
            axis.axvline(self.first.position, color="red", linewidth=1, label=f"first divergence: {self.first.module or self.first.value}")
        axis.set_xlabel("depth (topological position of the producing node)")
        axis.set_ylabel("max relative error")
        axis.set_title(f"{self.model} vs {self.reference}")
        axis.legend(loc="upper left", fontsize=8)
        figure.tight_layout()
        figure.savefig(path, dpi=120)
        plt.close(figure)


# ----------------------------------------------------------------------------- module scopes


def module_scopes(node: ir.Node) -> list[str]:
    """Module paths a node belongs to, outermost first (``['encoder', 'encoder.encoders.0', ...]``)."""
    scopes = node.metadata_props.get("pkg.torch.onnx.name_scopes")
    if scopes:
        try:
            names = [n for n in ast.literal_eval(scopes) if n]
        except (ValueError, SyntaxError):
            names = []
        return names[:-1]  # the last entry names the op itself
    name = _RULE_PREFIX.sub("", node.name or "")
    parts = [p for p in name.split("/") if p]
    if len(parts) < 2:
        return []
    modules = parts[:-1]
    return [".".join(modules[: i + 1]) for i in range(len(modules))]


def _resolve(scope: str, known: set[str]) -> tuple[str, int] | None:
    """(module path, call index): 'embed_1' is the second call of 'embed' when only 'embed' exists."""
    if scope in known:
        return scope, 0
    parts = scope.split(".")
    match = _CALL_SUFFIX.match(parts[-1])
    if match:
        candidate = ".".join([*parts[:-1], match["name"]])
        if candidate in known:
            return candidate, int(match["call"])
    return None


# ----------------------------------------------------------------------------- running


class _Intermediates:
    """Fetch a model's intermediate values in chunks from one onnxruntime session."""

    def __init__(self, model: ir.Model, feeds: Mapping[str, np.ndarray], names: Sequence[str]) -> None:
        from svsurgery.runtime import inference_session

        exposed = patch.clone(model)
        patch.expose(exposed, list(names))
        self.session = inference_session(exposed, optimize=False)  # the graph as written, unfused
        self.feeds = dict(feeds)

    def fetch(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        return dict(zip(names, self.session.run(list(names), self.feeds)))


def _topological(model: ir.Model) -> list[ir.Node]:
    ordered = patch.clone(model)  # sorting must not reorder the caller's model
    ordered.graph.sort()
    names = [n.name for n in ordered.graph]
    by_name = {n.name: n for n in model.graph}
    if len(by_name) == len(names):
        return [by_name[name] for name in names]
    return list(model.graph)  # unnamed duplicates: keep the graph's own order


def _same_shape(value: ir.Value, array: np.ndarray) -> bool:
    """Could ``array`` be this value? Rank equal, static dimensions equal."""
    if value.shape is None:
        return True
    dims = list(value.shape)
    return len(dims) == array.ndim and all(not isinstance(d, int) or d == s for d, s in zip(dims, array.shape))


def _comparable(value: ir.Value, *, exact_too: bool = False) -> bool:
    """Float values (and with ``exact_too`` integer and bool ones, compared for equality)."""
    if value.dtype is None or value.is_graph_input() or value.dtype == ir.DataType.STRING:
        return False
    return value.dtype.is_floating_point() or exact_too


# ----------------------------------------------------------------------------- torch vs onnx


def diff(
    module,
    model: ir.Model,
    inputs: Mapping[str, np.ndarray],
    *,
    tolerance: Tolerance | None = None,
    chunk: int = DEFAULT_CHUNK,
    progress: Callable[[int, int], None] | None = None,
) -> DiffReport:
    """Compare every torch submodule's output with the ONNX value it maps to.

    ``inputs`` are the model's feeds by name; the module gets them positionally in the
    model's input order (as it was exported).
    """
    from svsurgery.errors import require

    torch = require("torch", "diff against a torch module")
    tolerance = tolerance or PROFILES["fp32-intermediate"]
    captured = _capture(module, model, inputs, torch)
    patch.infer_types(model)
    known = set(captured)
    order = _topological(model)
    position = {id(n): i for i, n in enumerate(order)}
    members: dict[tuple[str, int], set[int]] = {}
    for node in order:
        for scope in module_scopes(node):
            resolved = _resolve(scope, known)
            if resolved:
                members.setdefault(resolved, set()).add(id(node))
    members = _split_repeated_calls(members, {path: len(calls) for path, calls in captured.items()}, order)
    pairs: dict[str, tuple[int, ir.Node, ir.Value, str, np.ndarray]] = {}
    for (path, call), nodes in members.items():
        if call >= len(captured[path]):
            continue
        # values computed inside the module and read outside it, latest first: a module's
        # outputs are what it computes last (its input passed through, e.g. to a residual, is not)
        leaving = sorted(
            (
                (position[id(node)], node, value)
                for node in order if id(node) in nodes
                for value in node.outputs
                if _comparable(value) and (value.is_graph_output() or any(id(u.node) not in nodes for u in value.uses()))
            ),
            key=lambda item: -item[0],
        )
        used: set[int] = set()
        for tensor in captured[path][call]:
            for pos, node, value in leaving:
                if id(value) not in used and _same_shape(value, tensor):
                    used.add(id(value))
                    innermost = pairs.get(value.name)
                    if innermost is None or path.count(".") > innermost[3].count("."):
                        pairs[value.name] = (pos, node, value, path, tensor)  # the innermost module names a value
                    break
    unique = sorted(pairs.values(), key=lambda item: item[0])
    if not unique:
        raise BadInputError("no ONNX value could be mapped to a torch submodule (node names carry no module scopes)")
    fetcher = _Intermediates(model, inputs, [item[2].name for item in unique])
    rows = _compare_in_chunks(fetcher, unique, tolerance, chunk, progress)
    return _report(model, f"the torch module {type(module).__name__}", "onnxruntime CPU, graph optimizations off", tolerance, rows)


def _split_repeated_calls(members: dict, calls: dict[str, int], order: list[ir.Node]) -> dict:
    """A module called several times whose nodes all carry the same scope (the dynamo exporter
    does not number repeated calls): each connected group of its nodes is one call, in order."""
    split = {}
    for (path, call), nodes in members.items():
        if call != 0 or calls.get(path, 1) < 2 or (path, 1) in members:
            split[(path, call)] = nodes
            continue
        groups: list[set[int]] = []
        for node in (n for n in order if id(n) in nodes):
            linked = {id(v.producer()) for v in node.inputs if v is not None and v.producer() is not None} & nodes
            joined = [g for g in groups if g & linked]
            merged = set().union(*joined) | {id(node)} if joined else {id(node)}
            groups = [g for g in groups if not (g & linked)] + [merged]
        if len(groups) == calls[path]:
            first = {gid: min(i for i, n in enumerate(order) if id(n) in group) for gid, group in enumerate(groups)}
            for index, gid in enumerate(sorted(first, key=first.get)):
                split[(path, index)] = groups[gid]
        else:
            split[(path, call)] = nodes
    return split


def _capture(module, model: ir.Model, inputs, torch) -> dict[str, list[list[np.ndarray]]]:
    """Every submodule's outputs, per call, as float arrays."""
    captured: dict[str, list[list[np.ndarray]]] = {}
    handles = []

    def hook(name):
        def record(_module, _args, output):
            from svsurgery.parity.references import flatten_outputs

            arrays = [a for a in flatten_outputs(output) if np.issubdtype(a.dtype, np.floating)]
            captured.setdefault(name, []).append([a.astype(np.float32, copy=False) for a in arrays])

        return record

    for name, submodule in module.named_modules():
        if name:
            handles.append(submodule.register_forward_hook(hook(name)))
    try:
        tensors = [torch.from_numpy(np.ascontiguousarray(inputs[v.name])) for v in model.graph.inputs if v.name in inputs]
        was_training = module.training
        module.eval()
        with torch.no_grad():
            module(*tensors)
        module.train(was_training)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def _compare_in_chunks(fetcher, items, tolerance: Tolerance, chunk: int, progress) -> list[Divergence]:
    rows = []
    for start in range(0, len(items), max(chunk, 1)):
        batch = items[start : start + chunk]
        values = fetcher.fetch([item[2].name for item in batch])
        for pos, node, value, path, expected in batch:
            parity = compare(value.name, values[value.name], expected, rel_floor=tolerance.rel_floor).check(tolerance)
            rows.append(Divergence(pos, value.name, node.name or "", node.op_type, path, parity))
        del values
        if progress is not None:
            progress(min(start + chunk, len(items)), len(items))
    return rows


def _report(model: ir.Model, reference: str, evaluation: str, tolerance: Tolerance, rows: list[Divergence]) -> DiffReport:
    from svsurgery.io import SOURCE_PATH_KEY

    rows.sort(key=lambda r: r.position)
    first = next((r for r in rows if not r.parity.passed), None)
    nonfinite = next((r for r in rows if r.parity.nan_count + r.parity.inf_count), None)
    if first is None:
        path = rows[-10:]
    else:
        index = rows.index(first)
        path = rows[max(0, index - 9) : index + 1]
    values = sum(len(n.outputs) for n in model.graph)
    return DiffReport(
        model=str(model.meta.get(SOURCE_PATH_KEY, "model")), reference=reference, evaluation=evaluation,
        tolerance=tolerance.name, compared=len(rows), values_in_model=values, first=first, first_nonfinite=nonfinite,
        path=path, rows=rows,
    )  # fmt: skip


# ----------------------------------------------------------------------------- onnx vs onnx


def diff_models(
    model: ir.Model,
    reference: ir.Model,
    inputs: Mapping[str, np.ndarray],
    *,
    tolerance: Tolerance | None = None,
    chunk: int = DEFAULT_CHUNK,
    progress: Callable[[int, int], None] | None = None,
) -> DiffReport:
    """Compare ``model``'s values with ``reference``'s of the same name, in ``model``'s order.

    A float16 side is evaluated in true float16 (onnxruntime's CPU provider would hide its
    overflow); the tolerance defaults to ``fp16-intermediate`` then.
    """
    from svsurgery.engine import model_precision

    low = {ir.DataType.FLOAT16, ir.DataType.BFLOAT16}
    patch.infer_types(model)
    patch.infer_types(reference)
    float16 = model_precision(model) in low or model_precision(reference) in low
    tolerance = tolerance or PROFILES["fp16-intermediate" if float16 else "fp32-intermediate"]
    theirs = {v.name: v for n in reference.graph for v in n.outputs if v.name}
    order = _topological(model)
    items = []
    for position, node in enumerate(order):
        for value in node.outputs:
            other = theirs.get(value.name)
            if other is not None and _comparable(value, exact_too=True) and _comparable(other, exact_too=True):
                items.append((position, node, value))
    if not items:
        raise BadInputError("the two models share no intermediate value names to compare")
    names = [item[2].name for item in items]
    evaluations = []
    sources = {}
    for side, which in ((model, "model"), (reference, "reference")):
        if model_precision(side) in low:
            from svsurgery.parity.float16 import SEMANTICS, Float16Evaluator

            evaluator = Float16Evaluator(side)
            sources[which] = _ReferenceChunks(evaluator, inputs)
            evaluations.append(f"{which}: {SEMANTICS}")
        else:
            sources[which] = _Intermediates(side, inputs, names)
            evaluations.append(f"{which}: onnxruntime CPU, graph optimizations off")
    rows = []
    for start in range(0, len(items), max(chunk, 1)):
        batch = items[start : start + chunk]
        batch_names = [item[2].name for item in batch]
        actual, expected = sources["model"].fetch(batch_names), sources["reference"].fetch(batch_names)
        for position, node, value in batch:
            parity = compare(value.name, actual[value.name], expected[value.name], rel_floor=tolerance.rel_floor).check(tolerance)
            scopes = module_scopes(node)
            rows.append(Divergence(position, value.name, node.name or "", node.op_type, scopes[-1] if scopes else None, parity))
        if progress is not None:
            progress(min(start + chunk, len(items)), len(items))
    from svsurgery.io import SOURCE_PATH_KEY

    label = str(reference.meta.get(SOURCE_PATH_KEY, "the reference model"))
    return _report(model, label, "; ".join(evaluations), tolerance, rows)


class _ReferenceChunks:
    """Intermediate values from a true-float16 evaluation (computed once, fetched by name)."""

    def __init__(self, evaluator, inputs) -> None:
        self._evaluator = evaluator
        self._inputs = inputs
        self._cache: dict[str, np.ndarray] | None = None

    def fetch(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        if self._cache is None:
            self._cache = self._evaluator.run_intermediates(self._inputs)
        return {name: self._cache[name] for name in names}
