"""Layer-by-layer comparison: the first module (or value) that makes an ONNX model leave its reference.

The standard method for export accuracy bugs, as one call: run PyTorch with a forward hook
on every submodule and the ONNX model with its intermediate values exposed, on identical
inputs; map values to modules through the names the exporters leave (legacy:
``/encoder/encoders.0/self_attn/MatMul``; dynamo: the ``pkg.torch.onnx.name_scopes``
metadata; svsurgery's own ``svs/rule/<id>/...`` names keep the module path); compare each
mapped pair in topological order with the engine's metrics. :func:`diff_models` does the
same for two ONNX models (original vs fixed, float32 vs float16) matching values by name,
evaluating a float16 side in true float16.

Introduced and inherited error. A value's error against its reference is partly its own
and partly what reaches it through its inputs. For every compared value, the nodes that
compute it from the nearest compared values (its *unit*: one node when every value is
compared, a module's ONNX nodes against torch; graph inputs and weights are the unit's
own) are replayed with the *reference's* values at that frontier. The replay against the
reference is the error the value **introduces**; the model's value against the replay is
the error it **inherits**. The culprit is the first value whose introduced error is beyond
tolerance (or that introduces NaN/Inf the reference does not have): a divergence that
merely propagates is shown as inherited and never blamed on the node it reaches.

Intended changes. ``svsurgery fix`` records in the model's provenance
(``svsurgery.rules_applied``) the values each accepted rule changed on purpose (mask
fills: -inf -> finite). Such a value, named in either model's provenance, is compared but
never a divergence, and what reads it is replayed on the reference's version of it, so what
merely inherits the intended change is not blamed either: either argument order gives the
same verdict.

Torch capture copies every hooked output when the hook fires: third-party modules change
tensors in place after returning them (FunASR's SANM does ``x += inputs`` on its FSMN Conv
output), return views, or reuse one buffer across calls; the module also gets copies of
the inputs, so in-place ops on them cannot reach the arrays the ONNX model is fed.

Intermediate values are fetched in chunks (one onnxruntime session, a bounded number of
outputs per run) and each chunk's units are replayed as one small model, so models with
many thousands of values fit in memory.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from rich import box
from rich.markup import escape
from rich.table import Table

from svsurgery import patch
from svsurgery.dtypes import LOW_PRECISION_TYPES
from svsurgery.errors import BadInputError, require
from svsurgery.model_io import SOURCE_PATH_KEY
from svsurgery.parity.float16 import SEMANTICS, Float16Evaluator
from svsurgery.parity.headroom import DEFAULT_MIN_HEADROOM
from svsurgery.parity.metrics import PROFILES, OutputParity, Tolerance, compare
from svsurgery.parity.references import flatten_outputs
from svsurgery.patch import value_name
from svsurgery.precision import model_precision
from svsurgery.report import Report
from svsurgery.runtime import inference_session

__all__ = [
    "INHERITS",
    "INTENDED",
    "INTRODUCES",
    "OK",
    "DiffReport",
    "Divergence",
    "diff",
    "diff_models",
    "intended_changes",
    "module_scopes",
]

_RULE_PREFIX = re.compile(r"^svs/(?:rule/[\w.-]+|patch|frontend|fp16)/?")
_CALL_SUFFIX = re.compile(r"^(?P<name>.+)_(?P<call>\d+)$")
_REPLAY_PREFIX = "svs/replay/"
_RULES_APPLIED_KEY = "svsurgery.rules_applied"
DEFAULT_CHUNK = 256  # intermediate values per onnxruntime run

# a compared value's verdict
OK = "ok"  # within tolerance
INHERITS = "inherits"  # beyond tolerance only through its inputs: its own nodes reproduce the reference
INTRODUCES = "introduces"  # its own nodes, fed the reference's inputs, leave the reference: a culprit
INTENDED = "intended"  # changed on purpose by a rule (the model's provenance says so)


@dataclasses.dataclass
class Divergence:
    """One compared value, in topological order."""

    position: int  # topological index of the producing node
    value: str  # ONNX value name
    node: str  # producing node
    op_type: str
    module: str | None  # torch module path (torch mode), e.g. encoder.encoders.0.norm2
    parity: OutputParity  # total error: the model's value against the reference's
    introduced: OutputParity | None = None  # its unit replayed on the reference's inputs, against the reference
    inherited: OutputParity | None = None  # the model's value against that replay: error arriving through the inputs
    verdict: str = OK  # ok | inherits | introduces | intended
    replayed_nodes: int = 0  # nodes in its unit (0: the replay failed; the verdict then reads the total error)
    from_intended: bool = False  # inherits: what it inherits comes from a value changed on purpose

    @property
    def own(self) -> OutputParity:
        """The error this value is judged by: introduced when the replay ran, else the total."""
        return self.introduced if self.introduced is not None else self.parity


@dataclasses.dataclass
class DiffReport(Report):
    model: str
    reference: str
    evaluation: str
    tolerance: str
    compared: int
    values_in_model: int
    first: Divergence | None  # the first value that introduces an error beyond tolerance: the culprit
    first_nonfinite: Divergence | None  # the first value that introduces NaN/Inf where the reference is finite
    # the first value beyond tolerance only through what it inherits, not from an intended change
    first_inherited: Divergence | None
    path: list[Divergence]  # the compared values before the culprit (upstream last), and it
    rows: list[Divergence]  # every compared value (for --plot and JSON)
    intended: dict[str, str] = dataclasses.field(default_factory=dict)  # value -> rule that changed it on purpose
    notes: list[str] = dataclasses.field(default_factory=list)
    # a float16 model's headroom on these inputs (svsurgery.parity.headroom): how far its values are from 65504
    headroom: dict[str, Any] | None = None

    @property
    def passed(self) -> bool:
        return self.first is None and self.first_nonfinite is None

    def render(self, console) -> None:
        console.print(f"[bold]diff[/bold] {escape(self.model)} against {escape(self.reference)}")
        console.print(f"  evaluation: {escape(self.evaluation)}; tolerance: {escape(self.tolerance)}")
        console.print(
            f"  compared {self.compared} values (of {self.values_in_model} in the model), max rel errors: introduced = "
            "its own nodes run on the reference's inputs vs the reference; inherited = its value vs that run"
        )
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
        # figures never wrap or get cut: the name column folds instead
        table.add_column("#", justify="right", no_wrap=True)
        table.add_column("module / value", overflow="fold", ratio=1)
        table.add_column("op", overflow="fold", max_width=12)
        table.add_column("introduced", justify="right", no_wrap=True)
        table.add_column("inherited", justify="right", no_wrap=True)
        table.add_column("verdict", no_wrap=True)
        colours = {OK: "green", INHERITS: "yellow", INTRODUCES: "red", INTENDED: "cyan"}
        for row in self.path:
            table.add_row(
                str(row.position),
                escape(row.module or row.value),
                escape(row.op_type),
                _figure(row.introduced),
                _figure(row.inherited),
                f"[{colours[row.verdict]}]{row.verdict}[/{colours[row.verdict]}]",
            )
        console.print(table)
        if self.headroom is not None:
            tight = self.headroom["headroom"] < DEFAULT_MIN_HEADROOM
            colour = "yellow" if tight else "green"
            console.print(f"[{colour}]float16 {escape(self.headroom['description'])}[/{colour}]")
        if self.intended:
            changed = ", ".join(f"'{escape(v)}' ({escape(r)})" for v, r in list(self.intended.items())[:6])
            more = f" and {len(self.intended) - 6} more" if len(self.intended) > 6 else ""
            following = sum(r.from_intended for r in self.rows)
            console.print(
                f"[cyan]changed on purpose[/cyan] (recorded by svsurgery fix; not divergences, nor the "
                f"{following} values beyond tolerance only through them): {changed}{more}"
            )
        for note in self.notes:
            console.print(f"[yellow]note[/yellow]: {escape(note)}")
        if self.passed:
            console.print("[green]no value introduces an error beyond tolerance[/green]")
            if self.first_inherited is not None:
                row = self.first_inherited
                console.print(
                    f"[yellow]errors within tolerance add up beyond it[/yellow] (no value introduces it), from "
                    f"'{escape(row.module or row.value)}' ({row.op_type}, value '{escape(row.value)}') on: "
                    f"{escape('; '.join(row.parity.failures))}"
                )
            return
        for label, culprit in (
            ("first divergence", self.first),
            ("first overflow (introduces NaN/Inf where the reference is finite)", self.first_nonfinite),
        ):
            if culprit is None:
                continue
            where = f"module [bold]{escape(culprit.module)}[/bold], " if culprit.module else ""
            inherited = f"; inherited max rel {_figure(culprit.inherited)}" if culprit.inherited is not None else ""
            console.print(
                f"[red]{label}[/red]: {where}node '{escape(culprit.node)}' ({culprit.op_type}), "
                f"value '{escape(culprit.value)}' introduces: {escape('; '.join(culprit.own.failures))}{inherited}"
            )

    def plot(self, path) -> None:
        """Error against depth (needs matplotlib: pip install 'svsurgery[plot]')."""
        require("matplotlib", "diff --plot")
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        def errors(parities):
            return [max(p.max_rel, 1e-12) if np.isfinite(p.max_rel) else 1e6 for p in parities]

        figure, axis = plt.subplots(figsize=(10, 4))
        depth = [r.position for r in self.rows]
        axis.semilogy(
            depth, errors(r.parity for r in self.rows), ".", markersize=3, color="0.6", label="total (max rel)"
        )
        axis.semilogy(depth, errors(r.own for r in self.rows), ".", markersize=3, label="introduced (max rel)")
        if self.first is not None:
            axis.axvline(
                self.first.position,
                color="red",
                linewidth=1,
                label=f"first divergence: {self.first.module or self.first.value}",
            )
        axis.set_xlabel("depth (topological position of the producing node)")
        axis.set_ylabel("max relative error")
        axis.set_title(f"{self.model} vs {self.reference}")
        axis.legend(loc="upper left", fontsize=8)
        figure.tight_layout()
        figure.savefig(path, dpi=120)
        plt.close(figure)


def _figure(parity: OutputParity | None) -> str:
    """Max rel error in 7 characters (``3.4e-05``); NaN/Inf introduced show as such."""
    if parity is None:
        return "-"
    if parity.problem:
        return "shape"
    if parity.nan_count or parity.inf_count:
        return "NaN/Inf"
    value = parity.max_rel
    return f"{value:.1e}" if np.isfinite(value) else str(value)


# ----------------------------------------------------------------------------- provenance


def intended_changes(*models: ir.Model) -> dict[str, str]:
    """Values the models' provenance says a rule changed on purpose: ``{value name: rule id}``.

    Read from ``svsurgery.rules_applied`` (``changed_values`` of accepted steps, written by
    ``svsurgery fix``); a model without provenance contributes nothing.
    """
    changed: dict[str, str] = {}
    for model in models:
        raw = model.metadata_props.get(_RULES_APPLIED_KEY)
        if not raw:
            continue
        try:
            steps = json.loads(raw)
        except ValueError:
            continue  # unreadable provenance exempts nothing
        for step in steps if isinstance(steps, list) else []:
            if not isinstance(step, dict) or step.get("status", "accepted") != "accepted":
                continue
            for name in step.get("changed_values") or []:
                if isinstance(name, str):
                    changed.setdefault(name, str(step.get("id", "a rule")))
    return changed


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
    """(module path, call index): 'embed_1' is the second call of 'embed' when only 'embed' exists.

    A scope that names no module path may name a module by the tail of its path: the legacy
    exporter scopes a child called directly through its parent (``self.ctc.ctc_lo(x)`` where
    ``ctc`` itself is never called) as ``ctc_lo``. It resolves when exactly one module ends so.
    """
    for name, call in _candidates(scope):
        if name in known:
            return name, call
    for name, call in _candidates(scope):
        tails = [path for path in known if path.endswith("." + name)]
        if len(tails) == 1:
            return tails[0], call
    return None


def _candidates(scope: str) -> list[tuple[str, int]]:
    """The scope itself (first call), then, for 'embed_1', 'embed' (second call)."""
    found = [(scope, 0)]
    parts = scope.split(".")
    match = _CALL_SUFFIX.match(parts[-1])
    if match:
        found.append((".".join([*parts[:-1], match["name"]]), int(match["call"])))
    return found


# ----------------------------------------------------------------------------- running


class _Intermediates:
    """Fetch a model's intermediate values in chunks from one onnxruntime session."""

    def __init__(self, model: ir.Model, feeds: Mapping[str, np.ndarray], names: Sequence[str]) -> None:
        exposed = patch.clone(model)
        patch.expose(exposed, list(names))
        self.session = inference_session(exposed, optimize=False)  # the graph as written, unfused
        self.feeds = dict(feeds)

    def fetch(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        return dict(zip(names, self.session.run(list(names), self.feeds)))


class _Float16Values:
    """Intermediate values from a true-float16 evaluation (computed once, fetched by name)."""

    def __init__(self, model: ir.Model, inputs: Mapping[str, np.ndarray]) -> None:
        self._evaluator = Float16Evaluator(model)
        self._inputs = dict(inputs)
        self._cache: dict[str, np.ndarray] | None = None

    def fetch(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        if self._cache is None:
            self._cache = self._evaluator.run_intermediates(self._inputs)
        return {name: self._cache[name] for name in names}

    @property
    def headroom(self) -> dict[str, Any] | None:
        """The model's headroom, measured by the run that gave its values."""
        measured = self._evaluator.headroom
        return measured.to_dict() if measured is not None else None


class _Captured:
    """The torch module's captured outputs, by the ONNX value name each was mapped to."""

    def __init__(self, arrays: Mapping[str, np.ndarray]) -> None:
        self._arrays = dict(arrays)

    def fetch(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        return {name: self._arrays[name] for name in names}


_ORT = "onnxruntime CPU, graph optimizations off"


def _is_low_precision(model: ir.Model) -> bool:
    return model_precision(model) in LOW_PRECISION_TYPES


def _values_of(model: ir.Model, inputs: Mapping[str, np.ndarray], names: Sequence[str]):
    """(a source of the model's intermediate values, how it evaluates): true float16 for a float16 model."""
    if _is_low_precision(model):
        return _Float16Values(model, inputs), SEMANTICS
    return _Intermediates(model, inputs, names), _ORT


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


# ----------------------------------------------------------------------------- replay


def _reads(node: ir.Node) -> list[ir.Value]:
    """What a node reads from its graph: its inputs and the outer values its subgraphs capture."""
    values = [v for v in node.inputs if v is not None]
    for attribute in node.attributes.values():
        if attribute.type not in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
            continue
        for body in attribute.value if attribute.type == ir.AttributeType.GRAPHS else [attribute.value]:
            for inner in ir.traversal.RecursiveGraphIterator(body):
                values.extend(v for v in inner.inputs if v is not None and v.graph is node.graph)
    return values


class _Replay:
    """Recompute compared values from the reference's values: each value's unit (the nodes that
    compute it from the nearest compared values, graph inputs and weights) fed the reference's
    arrays at that frontier, a chunk of units at a time as one small model.

    The replay model is written at the protobuf level, where values are names: a compared
    value a unit produces is renamed ``svs/replay/<name>`` and the name itself becomes a graph
    input carrying the reference's array, so every node (and every subgraph capturing it)
    that reads it reads the reference's version.
    """

    def __init__(
        self,
        model: ir.Model,
        order: Sequence[ir.Node],
        compared: Iterable[ir.Value],
        feeds: Mapping[str, np.ndarray],
        borrowed: Mapping[str, np.ndarray],
    ) -> None:
        self._model = model
        self._feeds = feeds
        self.borrowed = borrowed  # weights the reference's version replaces (intended changes)
        self._compared = {id(v): v for v in compared}
        self._position = {id(n): i for i, n in enumerate(order)}
        self._low = _is_low_precision(model)
        self.failed = 0  # values whose replay failed
        self.failures: list[str] = []  # the first few reasons
        reads = {id(n): _reads(n) for n in order}
        self.units: dict[str, list[ir.Node]] = {}
        self.frontier: dict[str, list[ir.Value]] = {}
        for value in self._compared.values():
            unit: dict[int, ir.Node] = {}
            frontier: dict[int, ir.Value] = {}
            computed_by = value.producer()
            assert computed_by is not None, "compared values are node outputs"
            pending = [computed_by]
            while pending:
                node = pending.pop()
                if id(node) in unit:
                    continue
                unit[id(node)] = node
                for read in reads.get(id(node), ()):
                    producer = read.producer()
                    if self._fed(read):
                        frontier[id(read)] = read
                    elif producer is not None and id(producer) in reads:
                        pending.append(producer)
            self.units[value_name(value)] = sorted(unit.values(), key=lambda n: self._position[id(n)])
            self.frontier[value_name(value)] = list(frontier.values())

    def _fed(self, value: ir.Value) -> bool:
        """Is this value a graph input of the replay (rather than computed or a weight of the unit)?"""
        if id(value) in self._compared or value.name in self.borrowed:
            return True
        return value.is_graph_input() and value.name in self._feeds

    def needs(self, names: Iterable[str]) -> list[str]:
        """The compared values whose reference arrays replaying ``names`` reads."""
        wanted = {value_name(v): None for name in names for v in self.frontier[name] if id(v) in self._compared}
        return list(wanted)

    def run(self, names: Sequence[str], reference: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Replayed arrays by value name (values whose replay failed are left out, and noted)."""
        try:
            return self._run(names, reference)
        except Exception:
            replayed = {}
            for name in names:
                try:
                    replayed.update(self._run([name], reference))
                except Exception as error:
                    self.failed += 1
                    if len(self.failures) < 5:
                        text = str(error).strip().splitlines()[0][:160] if str(error).strip() else ""
                        self.failures.append(f"'{name}': {type(error).__name__}: {text}")
            return replayed

    def _run(self, names: Sequence[str], reference: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        proto, feeds = self._build(names, reference)
        with np.errstate(all="ignore"):
            if self._low:
                outputs = Float16Evaluator(ir.serde.deserialize_model(proto)).run(feeds)
            else:
                options = ort.SessionOptions()  # as runtime.inference_session(optimize=False), from bytes
                options.log_severity_level = 3
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
                session = ort.InferenceSession(
                    proto.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
                )
                wanted = [o.name for o in session.get_outputs()]
                outputs = dict(zip(wanted, session.run(wanted, feeds)))
        return {name: outputs[_REPLAY_PREFIX + name] for name in names}

    def _build(
        self, names: Sequence[str], reference: Mapping[str, np.ndarray]
    ) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
        nodes = {id(n): n for name in names for n in self.units[name]}
        ordered = sorted(nodes.values(), key=lambda n: self._position[id(n)])
        graph = onnx.GraphProto(name="svsurgery replay")
        feeds: dict[str, np.ndarray] = {}
        weights: set[str] = set()
        for node in ordered:
            proto = ir.serde.serialize_node(node)
            # a compared value computed here is renamed, so whoever reads its name reads the reference's
            for index, output in enumerate(node.outputs):
                if id(output) in self._compared:
                    proto.output[index] = _REPLAY_PREFIX + value_name(output)
            graph.node.append(proto)
            for read in _reads(node):
                name = value_name(read)
                if name in feeds or name in weights:
                    continue
                if self._fed(read):
                    if id(read) in self._compared:
                        array = reference[name]
                    elif name in self.borrowed:
                        array = self.borrowed[name]
                    else:
                        array = self._feeds[name]
                    feeds[name] = _as_type(array, read)
                    graph.input.append(onnx.helper.make_tensor_value_info(name, _elem_type(read, feeds[name]), None))
                elif read.producer() is None and read.const_value is not None:  # a weight of the unit
                    weights.add(name)
                    graph.initializer.append(ir.serde.serialize_tensor(read.const_value))
                    graph.initializer[-1].name = name
        for name in names:
            value = next(v for v in self.units[name][-1].outputs if v.name == name)
            graph.output.append(
                onnx.helper.make_tensor_value_info(_REPLAY_PREFIX + name, _elem_type(value, None), None)
            )
        model = onnx.ModelProto(ir_version=self._model.ir_version, graph=graph)
        for domain, version in self._model.opset_imports.items():
            model.opset_import.append(onnx.helper.make_opsetid(domain, version))
        for function in self._model.functions.values():
            model.functions.append(ir.serde.serialize_function(function))
        return model, feeds


def _elem_type(value: ir.Value, array: np.ndarray | None) -> int:
    if value.dtype is not None:
        return int(value.dtype)
    assert array is not None, "outputs are compared values, whose type is known: only inputs come with an array"
    return int(ir.DataType.from_numpy(array.dtype))


def _as_type(array: np.ndarray, value: ir.Value) -> np.ndarray:
    """The reference's array in the type the model gives this value (float32 torch output fed to a
    float16 model, say: the rounding is the model's own)."""
    array = np.asarray(array)
    if value.dtype is not None and value.dtype != ir.DataType.STRING:
        target = value.dtype.numpy()
        if array.dtype != target:
            with np.errstate(over="ignore"):  # beyond float16's range is inf, as the model would have it
                return array.astype(target)
    return array


# ----------------------------------------------------------------------------- comparing


@dataclasses.dataclass
class _Item:
    position: int
    node: ir.Node
    value: ir.Value
    module: str | None


def _compare_all(
    model: ir.Model,
    items: list[_Item],
    actual_source,
    reference_source,
    replay: _Replay,
    tolerance: Tolerance,
    intended: Mapping[str, str],
    chunk: int,
    progress,
) -> list[Divergence]:
    rows = []
    floor = tolerance.rel_floor
    for start in range(0, len(items), max(chunk, 1)):
        batch = items[start : start + chunk]
        names = [value_name(item.value) for item in batch]
        actual = actual_source.fetch(names)
        expected = reference_source.fetch(list(dict.fromkeys([*names, *replay.needs(names)])))
        replayed = replay.run(names, expected)
        for item in batch:
            name = value_name(item.value)
            total = compare(name, actual[name], expected[name], rel_floor=floor).check(tolerance)
            row = Divergence(item.position, name, item.node.name or "", item.node.op_type, item.module, total)
            if name in replayed:
                again = replayed[name]
                # a replay bit for bit equal to one side makes one comparison the total and the other
                # zero: the same figures without computing them again (most values, in most diffs)
                if _identical(again, actual[name]):
                    row.introduced = dataclasses.replace(total, failures=list(total.failures))
                    row.inherited = _no_error(total, again, tolerance)
                elif _identical(again, expected[name]):
                    row.introduced = _no_error(total, again, tolerance)
                    row.inherited = dataclasses.replace(total, failures=list(total.failures))
                else:
                    row.introduced = compare(name, again, expected[name], rel_floor=floor).check(tolerance)
                    row.inherited = compare(name, actual[name], again, rel_floor=floor).check(tolerance)
                row.replayed_nodes = len(replay.units[name])
            if name in intended:
                row.verdict = INTENDED
            elif not row.own.passed:
                row.verdict = INTRODUCES
            elif not total.passed:
                row.verdict = INHERITS
            rows.append(row)
        del actual, expected, replayed
        if progress is not None:
            progress(min(start + chunk, len(items)), len(items))
    return rows


def _identical(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit for bit the same values (NaN equal to NaN), same type and shape."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return bool(np.array_equal(a, b, equal_nan=np.issubdtype(a.dtype, np.floating)))


def _no_error(like: OutputParity, array: np.ndarray, tolerance: Tolerance) -> OutputParity:
    """What ``compare(array, array)`` gives, without its cost: no error, scaled by ``array``
    (``like`` is a comparison of the same value, for the shape and type fields)."""
    finite = np.abs(array[np.isfinite(array)]) if np.issubdtype(array.dtype, np.floating) else np.abs(array)
    return dataclasses.replace(
        like,
        max_abs=0.0,
        max_rel=0.0,
        mean_abs=0.0,
        cosine=1.0,
        nan_count=0,
        inf_count=0,
        problem=None,
        failures=[],
        argmax_agreement=None if like.argmax_agreement is None else 1.0,
        scale=float(finite.max()) if finite.size else 0.0,
    ).check(tolerance)


def _report(
    model: ir.Model,
    reference: str,
    evaluation: str,
    tolerance: Tolerance,
    rows: list[Divergence],
    intended: Mapping[str, str],
    replay: _Replay,
    model_values: object = None,
) -> DiffReport:
    rows.sort(key=lambda r: r.position)
    # what an intended change sets off downstream: values beyond tolerance whose unit reads an intended
    # value, or a value that is itself beyond tolerance through one (a Softmax that absorbs it ends it)
    tainted = set(intended)
    for row in rows:
        if row.verdict == INHERITS and any(v.name in tainted for v in replay.frontier.get(row.value, ())):
            row.from_intended = True
            tainted.add(row.value)
    first = next((r for r in rows if r.verdict == INTRODUCES), None)
    nonfinite = next((r for r in rows if r.verdict != INTENDED and r.own.nan_count + r.own.inf_count), None)
    inherited = next((r for r in rows if r.verdict == INHERITS and not r.from_intended), None)
    culprit = min((r for r in (first, nonfinite) if r is not None), key=lambda r: r.position, default=None)
    if culprit is None:
        path = rows[-10:]
    else:
        index = rows.index(culprit)
        path = rows[max(0, index - 9) : index + 1]
    notes = []
    if replay.failed:
        notes.append(
            f"{replay.failed} value(s) could not be replayed on the reference's inputs and are judged by their "
            f"total error: {'; '.join(replay.failures)}{'; ...' if replay.failed > len(replay.failures) else ''}"
        )
    values = sum(len(n.outputs) for n in model.graph)
    compared = {r.value for r in rows}
    return DiffReport(
        model=str(model.meta.get(SOURCE_PATH_KEY, "model")),
        reference=reference,
        evaluation=evaluation,
        tolerance=tolerance.name,
        compared=len(rows),
        values_in_model=values,
        first=first,
        first_nonfinite=nonfinite,
        first_inherited=inherited,
        path=path,
        rows=rows,
        intended={name: rule for name, rule in intended.items() if name in compared or name in replay.borrowed},
        notes=notes,
        headroom=model_values.headroom if isinstance(model_values, _Float16Values) else None,
    )


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

    ``inputs`` are the model's feeds by name; the module gets copies of them positionally, in
    the model's input order (as it was exported). A module's introduced error is its ONNX
    nodes replayed on torch's own outputs of the modules (and the graph inputs) they read.
    A float16 model is evaluated, and replayed, in true float16 (tolerance
    ``fp16-intermediate`` then, ``fp32-intermediate`` otherwise).
    """
    torch = require("torch", "diff against a torch module")
    tolerance = tolerance or PROFILES["fp16-intermediate" if _is_low_precision(model) else "fp32-intermediate"]
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
                for node in order
                if id(node) in nodes
                for value in node.outputs
                if _comparable(value)
                and (value.is_graph_output() or any(id(u.node) not in nodes for u in value.uses()))
            ),
            key=lambda item: -item[0],
        )
        used: set[int] = set()
        for tensor in captured[path][call]:
            for pos, node, value in leaving:
                if id(value) not in used and _same_shape(value, tensor):
                    used.add(id(value))
                    innermost = pairs.get(value_name(value))
                    if innermost is None or path.count(".") > innermost[3].count("."):
                        pairs[value_name(value)] = (
                            pos,
                            node,
                            value,
                            path,
                            tensor,
                        )  # the innermost module names a value
                    break
    unique = sorted(pairs.values(), key=lambda item: item[0])
    if not unique:
        raise BadInputError("no ONNX value could be mapped to a torch submodule (node names carry no module scopes)")
    items = [_Item(pos, node, value, path) for pos, node, value, path, _ in unique]
    actual, evaluation = _values_of(model, inputs, [value_name(item.value) for item in items])
    intended = intended_changes(model)
    replay = _Replay(model, order, [item.value for item in items], inputs, borrowed={})
    reference = _Captured({value_name(value): tensor for _, _, value, _, tensor in unique})
    rows = _compare_all(model, items, actual, reference, replay, tolerance, intended, chunk, progress)
    label = f"the torch module {type(module).__name__}"
    return _report(model, label, evaluation, tolerance, rows, intended, replay, actual)


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
            for index, gid in enumerate(sorted(first, key=lambda gid: first[gid])):
                split[(path, index)] = groups[gid]
        else:
            split[(path, call)] = nodes
    return split


def _capture(module, model: ir.Model, inputs, torch) -> dict[str, list[list[np.ndarray]]]:
    """Every submodule's float outputs, per call, as float32 arrays copied when the hook fires.

    Copies, never views: the module's caller may change the returned tensor in place
    afterwards (FunASR: ``x = self.fsmn_block(x); ...; x += inputs``), a module may return a
    view of a tensor that changes later or the same buffer on every call. The module also
    runs on copies of the feeds, so in-place ops on its inputs (``xs_pad *= scale``) cannot
    change what the ONNX model is fed.
    """
    captured: dict[str, list[list[np.ndarray]]] = {}
    handles = []

    def hook(name):
        def record(_module, _args, output):
            arrays = [a for a in flatten_outputs(output) if np.issubdtype(a.dtype, np.floating)]
            captured.setdefault(name, []).append([np.array(a, dtype=np.float32, copy=True) for a in arrays])

        return record

    for name, submodule in module.named_modules():
        if name:
            handles.append(submodule.register_forward_hook(hook(name)))
    names = [v.name for v in model.graph.inputs if v.name in inputs]
    tensors = [torch.from_numpy(np.array(inputs[name], copy=True)) for name in names]
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            module(*tensors)
    except (RuntimeError, TypeError, ValueError, IndexError) as error:
        shapes = ", ".join(f"{name} {list(np.shape(inputs[name]))}" for name in names)
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise BadInputError(
            f"the torch module {type(module).__name__} cannot run on the inputs ({shapes}, passed positionally in "
            f"the ONNX input order): {type(error).__name__}: {first}; give inputs it can run on with --inputs"
        ) from None
    finally:
        module.train(was_training)
        for handle in handles:
            handle.remove()
    return captured


# ----------------------------------------------------------------------------- onnx vs onnx


def _feeds_for(model: ir.Model, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``inputs`` in the types ``model`` declares (float32 inputs for a float16 model and back)."""
    declared = {v.name: v.dtype for v in model.graph.inputs if v.dtype is not None}
    return {
        name: np.asarray(array).astype(declared[name].numpy(), copy=False) if name in declared else array
        for name, array in inputs.items()
    }


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

    Each value's introduced error is its producing node (with any nodes in between whose
    values the reference lacks) run on the reference's values of its inputs. A float16 side
    is evaluated, and replayed, in true float16 (onnxruntime's CPU provider would hide its
    overflow); the tolerance defaults to ``fp16-intermediate`` then. Values either model's
    provenance records as changed on purpose are not divergences (see the module docstring).
    """
    patch.infer_types(model)
    patch.infer_types(reference)
    float16 = _is_low_precision(model) or _is_low_precision(reference)
    tolerance = tolerance or PROFILES["fp16-intermediate" if float16 else "fp32-intermediate"]
    theirs = {v.name: v for n in reference.graph for v in n.outputs if v.name}
    order = _topological(model)
    items = []
    for position, node in enumerate(order):
        for value in node.outputs:
            other = theirs.get(value_name(value))
            if other is not None and _comparable(value, exact_too=True) and _comparable(other, exact_too=True):
                scopes = module_scopes(node)
                items.append(_Item(position, node, value, scopes[-1] if scopes else None))
    if not items:
        raise BadInputError("the two models share no intermediate value names to compare")
    names = [value_name(item.value) for item in items]
    intended = intended_changes(model, reference)
    # an intended change held as a weight: whoever reads it is replayed on the reference's version
    borrowed: dict[str, np.ndarray] = {}
    for name in intended:
        weight = reference.graph.initializers[name].const_value if name in reference.graph.initializers else None
        if name in model.graph.initializers and weight is not None:
            borrowed[name] = weight.numpy()
    actual, model_evaluation = _values_of(model, inputs, names)
    expected, reference_evaluation = _values_of(reference, _feeds_for(reference, inputs), names)
    replay = _Replay(model, order, [item.value for item in items], inputs, borrowed)
    rows = _compare_all(model, items, actual, expected, replay, tolerance, intended, chunk, progress)
    label = str(reference.meta.get(SOURCE_PATH_KEY, "the reference model"))
    evaluation = f"model: {model_evaluation}; reference: {reference_evaluation}"
    return _report(model, label, evaluation, tolerance, rows, intended, replay, actual)
