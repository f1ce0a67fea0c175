"""Where the worst utterance diverges, named: the first stage of the pipeline, and in the
encoder the first value, that introduces the divergence.

1. **front end and VAD** (fused models), stage by stage on the worst recording, with the
   deployed graph's own intermediate values exposed: its ``segments`` against the reference
   VAD's spans; the value its CMVN reads (fbank + LFR) against kaldi-native-fbank + LFR of the
   worst span; its CMVN constants against the reference's am.mvn; its features against the
   reference features. Stages are found by structure (the CMVN is ``Mul(Add(x, shift), scale)``
   with [D] constants), not by generated value names, which change between svsurgery versions.
2. **encoder**: the encoder inside the deployed model (cut out of the fused graph, weights and
   node names as they are) against the reference encoder -- :func:`svsurgery.divergence.diff_models`
   for the original ONNX, :func:`svsurgery.divergence.diff` for the torch module -- on the
   reference front end's features of the worst span, naming the module or value that
   introduces the error (and the constants its node reads that differ from the reference's).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from svsurgery import patch
from svsurgery.audit.deployed import SEGMENTS, fused_feeds
from svsurgery.audit.spec import ENCODER, FUSED_VAD, AuditSpec
from svsurgery.divergence import DiffReport, diff, diff_models
from svsurgery.model_io import load
from svsurgery.parity.metrics import PROFILES, compare
from svsurgery.patch import value_name
from svsurgery.runtime import run
from svsurgery.torchspec import load_module

__all__ = ["Localization", "encoder_inside", "find_cmvn", "localize"]

PER_ROW_BODY = "encoder_per_row"  # svsurgery.compose names the per-span Loop's body so
ROWS_PREFIX = "svs/frontend/rows/"
FRONTEND_PREFIX = "svs/frontend/"


@dataclasses.dataclass
class Localization:
    """The diff reports of the worst utterance (None where a step did not run) and what decided."""

    utterance: str
    span: list[int] | None
    culprit: dict | None  # the first place that introduces the divergence: step, value, node, op, module, failures
    encoder: DiffReport | None  # step 2 (None when it did not run)
    notes: list[str]

    def to_dict(self) -> dict:
        def brief(report):
            if report is None:
                return None
            data = report.to_dict()
            data.pop("rows", None)  # every compared value: kept out of summary.json (the diff JSON has them)
            return data

        return {
            "utterance": self.utterance,
            "span": self.span,
            "culprit": self.culprit,
            "notes": self.notes,
            "encoder": brief(self.encoder),
        }


# ----------------------------------------------------------------------------- the encoder inside a fused model


def encoder_inside(model_path: str | Path) -> ir.Model | None:
    """The encoder of a fused model as a standalone model (its inputs and outputs under the
    encoder's own names, its weights and node names as in the fused graph); None when the
    model is not fused by svsurgery or the encoder cannot be told apart."""
    proto = onnx.load(str(model_path))
    graph = proto.graph
    if "waveform" not in {i.name for i in graph.input}:
        return None
    loop = next(
        (n for n in graph.node if n.op_type == "Loop" and (b := _body(n)) is not None and b.name == PER_ROW_BODY), None
    )
    others = [i for i in graph.input if i.name not in ("waveform", "waveform_lengths")]
    outer_types = {v.name: v for v in (*graph.input, *graph.output, *graph.value_info)}
    if loop is not None:
        inferred = onnx.shape_inference.infer_shapes(proto)
        loop_inferred = next(n for n in inferred.graph.node if n.name == loop.name and n.op_type == "Loop")
        body = _body(loop_inferred)
        assert body is not None, "the Loop found above has a body"
        types = {v.name: v for v in body.value_info}
        produced = {o for n in body.node for o in n.output}
        nodes = list(body.node)
        start = next((i for i, n in enumerate(nodes) if n.op_type == "Slice" and n.input[0] not in produced), None)
        if start is None:
            return None
        features = nodes[start].output[0]
        cut = start
        lengths = None
        if (
            start + 1 < len(nodes)
            and nodes[start + 1].op_type == "Gather"
            and nodes[start + 1].input[0] not in produced
        ):
            lengths, cut = nodes[start + 1].output[0], start + 1
        encoder_nodes = nodes[cut + 1 :]
        outputs = [n.input[0] for n in encoder_nodes if n.op_type == "Squeeze" and n.input[0].startswith(ROWS_PREFIX)]
        renames = {name: name[len(ROWS_PREFIX) :] for name in outputs}
        input_types = [types.get(features), types.get(lengths) if lengths else None]
    else:  # a plain fused model: the front end's nodes carry the svs/frontend/ prefix
        inferred = onnx.shape_inference.infer_shapes(proto)
        types = {v.name: v for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)}
        frontend = [n for n in graph.node if n.name.startswith(FRONTEND_PREFIX)]
        encoder_nodes = [n for n in graph.node if not n.name.startswith(FRONTEND_PREFIX)]
        made = {o for n in frontend for o in n.output}
        read = [i for n in encoder_nodes for i in n.input if i in made]
        cut_values = list(dict.fromkeys(read))
        features = next((v for v in cut_values if _rank(types.get(v)) == 3), None)
        lengths = next((v for v in cut_values if _rank(types.get(v)) == 1), None)
        if features is None:
            return None
        outputs = [
            o.name
            for o in graph.output
            if o.name
            not in ("waveform_nonfinite", "waveform_clipped", "waveform_lengths_used", "features", "feature_lengths")
        ]
        renames = {}
        input_types = [types.get(features), types.get(lengths) if lengths else None]
    features_type, lengths_type = input_types
    if features_type is None or (lengths and lengths_type is None):
        return None
    needed = _backwards(encoder_nodes, outputs)
    reads = {i for n in needed for i in _all_inputs(n)}
    initializers = [t for t in graph.initializer if t.name in reads]
    known = (
        {i.name for i in initializers}
        | {o for n in needed for o in n.output}
        | {features, lengths}
        | {o.name for o in others}
    )
    if any(name and name not in known for n in needed for name in n.input):
        return None  # the encoder reads something computed outside it: not a cut we understand
    inputs = [
        _retyped(features_type, features),
        *([_retyped(lengths_type, lengths)] if lengths and lengths_type is not None else []),
        *others,
    ]
    out_infos = []
    for name in outputs:
        info = outer_types.get(renames.get(name, name))
        out_infos.append(
            _retyped(info, renames.get(name, name))
            if info is not None
            else onnx.helper.make_empty_tensor_value_info(renames.get(name, name))
        )
    renamed_nodes = []
    for node in needed:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        for index, name in enumerate(copy.output):
            if name in renames:
                copy.output[index] = renames[name]
        for index, name in enumerate(copy.input):
            if name in renames:
                copy.input[index] = renames[name]
        renamed_nodes.append(copy)
    encoder_graph = onnx.helper.make_graph(renamed_nodes, "svsurgery_encoder_inside", inputs, out_infos, initializers)
    encoder = onnx.helper.make_model(encoder_graph, opset_imports=list(proto.opset_import), ir_version=proto.ir_version)
    encoder.functions.extend(proto.functions)
    model = ir.serde.deserialize_model(encoder)
    model.meta["svsurgery.source_path"] = f"{model_path} (the encoder inside)"
    return model


def _operand(node: ir.Node, index: int) -> ir.Value:
    """An input the front end's CMVN Add/Mul always has (find_cmvn read it as a constant or found it)."""
    value = node.inputs[index]
    assert value is not None, f"{node.op_type} '{node.name}' has input {index}"
    return value


def _body(node: onnx.NodeProto) -> onnx.GraphProto | None:
    return next((a.g for a in node.attribute if a.name == "body"), None)


def _rank(info) -> int | None:
    if info is None or not info.type.tensor_type.HasField("shape"):
        return None
    return len(info.type.tensor_type.shape.dim)


def _retyped(info: onnx.ValueInfoProto, name: str) -> onnx.ValueInfoProto:
    copy = onnx.ValueInfoProto()
    copy.CopyFrom(info)
    copy.name = name
    return copy


def _all_inputs(node: onnx.NodeProto) -> list[str]:
    """What a node reads, its subgraphs' outer-scope reads included."""
    names = [i for i in node.input if i]
    for attribute in node.attribute:
        for sub in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
            inner = (
                {o for n in sub.node for o in n.output}
                | {i.name for i in sub.input}
                | {t.name for t in sub.initializer}
            )
            names += [i for n in sub.node for i in _all_inputs(n) if i not in inner]
    return names


def _backwards(nodes: list[onnx.NodeProto], outputs: list[str]) -> list[onnx.NodeProto]:
    producer = {o: i for i, n in enumerate(nodes) for o in n.output}
    wanted, keep = list(outputs), set()
    while wanted:
        name = wanted.pop()
        index = producer.get(name)
        if index is None or index in keep:
            continue
        keep.add(index)
        wanted.extend(_all_inputs(nodes[index]))
    return [n for i, n in enumerate(nodes) if i in keep]


# ----------------------------------------------------------------------------- front end stages


def _constant(model: ir.Model, value: ir.Value | None) -> np.ndarray | None:
    if value is None:
        return None
    if value.const_value is not None:
        return np.asarray(value.const_value.numpy())
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and "value" in producer.attributes:
        return np.asarray(producer.attributes["value"].value.numpy())
    return None


def find_cmvn(model: ir.Model, dim: int) -> tuple[ir.Node, ir.Node, np.ndarray, np.ndarray] | None:
    """The front end's CMVN in a fused graph: ``Mul(Add(x, shift), scale)`` with constant [D]
    vectors (svsurgery.frontend.cmvn), as (add, mul, shift, scale)."""
    for node in model.graph:
        if node.op_type != "Add" or not (node.name or "").startswith(FRONTEND_PREFIX):
            continue
        shift = _constant(model, node.inputs[1])
        if shift is None or shift.shape != (dim,):
            continue
        readers = [use.node for use in node.outputs[0].uses()]
        if len(readers) == 1 and readers[0].op_type == "Mul":
            scale = _constant(model, readers[0].inputs[1])
            if scale is not None and scale.shape == (dim,):
                return node, readers[0], shift, scale
    return None


def _frontend_stages(
    spec: AuditSpec, waveform: np.ndarray, reference_run, k: int, pipeline, notes: list[str]
) -> dict | None:
    """The deployed front end against the reference's, stage by stage on the worst span: the
    segments, fbank + LFR (the value CMVN reads), the CMVN constants, the features. Returns the
    culprit, or None when the front end agrees (the encoder is next)."""
    model = load(spec.model)
    names = [value_name(o) for o in model.graph.outputs]
    config = spec.frontend
    assert config is not None, "only a golden reference has no front end, and it is not localized"
    dim = config.fbank.feature_dim * config.lfr.m
    found = find_cmvn(model, dim) if config.cmvn is not None else None
    exposed = []
    if found is not None:
        add, mul, shift, scale = found
        exposed = patch.expose(model, [_operand(add, 0), mul.outputs[0]])
    outputs = run(model, fused_feeds(spec, waveform), [*names, *(value_name(v) for v in exposed)], optimize=False)
    if spec.model_kind == FUSED_VAD:
        segments = np.asarray(outputs[SEGMENTS], np.int64).reshape(-1, 2)
        if not np.array_equal(segments, reference_run.spans):
            return {
                "step": "VAD",
                "value": SEGMENTS,
                "node": "(the VAD and segmentation)",
                "op_type": "-",
                "module": "VAD / segmentation",
                "failures": [f"segments {segments.tolist()} ms != the reference's {reference_run.spans.tolist()} ms"],
                "constants_differing": [],
            }
    if found is None:
        notes.append(
            "the front end's CMVN could not be found in the graph;"
            " front end compared only through the encoder's outputs"
        )
        return None
    tolerance = PROFILES["frontend"]
    stacked = pipeline.stacked(reference_run.pieces[k])
    before = np.asarray(outputs[value_name(exposed[0])])[k][: stacked.shape[0]]
    parity = compare("fbank + LFR", before, stacked, class_axis=False).check(tolerance)
    if not parity.passed:
        producer = _operand(add, 0).producer()
        return {
            "step": "front end",
            "value": _operand(add, 0).name,
            "node": producer.name if producer else "?",
            "op_type": producer.op_type if producer else "?",
            "module": "fbank / LFR",
            "failures": [
                f"fbank + LFR against {pipeline.frontend_description.split(' + ')[0]}: " + "; ".join(parity.failures)
            ],
            "constants_differing": [],
        }
    assert config.cmvn is not None, "find_cmvn is only asked when the front end has a CMVN"
    differing = []
    for label, node, mine, theirs in (
        ("shift", add, shift, config.cmvn.shift),
        ("scale", mul, scale, config.cmvn.scale),
    ):
        difference = np.abs(mine.astype(np.float64) - np.asarray(theirs, np.float64))
        if float(difference.max()) > 1e-6 * max(1.0, float(np.abs(theirs).max())):
            differing.append(
                {
                    "name": f"CMVN {label} ({_operand(node, 1).name})",
                    "shape": list(mine.shape),
                    "max_abs_difference": float(difference.max()),
                }
            )
    after = np.asarray(outputs[value_name(exposed[1])])[k][: stacked.shape[0]]
    features = compare("features", after, reference_run.features[k], class_axis=False).check(tolerance)
    if differing or not features.passed:
        return {
            "step": "front end",
            "value": mul.outputs[0].name,
            "node": f"{add.name} / {mul.name}",
            "op_type": "Add/Mul",
            "module": "CMVN",
            "failures": [
                f"against {config.cmvn.source}: " + ("; ".join(features.failures) or "features within tolerance")
            ],
            "constants_differing": differing,
        }
    return None


# ----------------------------------------------------------------------------- the diff of the worst


def localize(
    spec: AuditSpec, entry_id: str, waveform: np.ndarray, k: int | None, reference_run, pipeline
) -> Localization:
    """Both steps on one utterance (see the module docstring); ``k``: the reference span to look at."""
    notes: list[str] = []
    encoder_report = None
    culprit = None
    span = reference_run.spans[k].tolist() if k is not None else None
    if spec.model_kind != ENCODER and k is not None:
        culprit = _frontend_stages(spec, waveform, reference_run, k, pipeline, notes)
    if culprit is None and k is not None:
        model = load(spec.model) if spec.model_kind == ENCODER else encoder_inside(spec.model)
        if model is None:
            notes.append("the encoder inside the model could not be cut out; encoder not compared value by value")
        else:
            features = reference_run.features[k]
            features_name, lengths_name = spec.deployed_inputs
            feeds = {features_name: features[None].astype(np.float32)}
            if lengths_name:
                feeds[lengths_name] = np.array([features.shape[0]], spec.deployed_length_dtype)
            feeds.update({o.name: o.zeros() for o in spec.others})
            reference_path, torch_spec = spec.reference.path, spec.reference.torch
            if spec.reference.kind == "onnx":
                assert reference_path is not None, "an onnx reference names its model"
                encoder_report = diff_models(model, load(reference_path), feeds)
            elif spec.reference.kind == "torch":
                assert torch_spec is not None, "a torch reference names its module"
                encoder_report = diff(load_module(torch_spec, spec.reference.weights), model, feeds)
            if encoder_report is not None:
                first = encoder_report.first or encoder_report.first_nonfinite
                if first is not None:
                    culprit = _culprit(
                        "encoder",
                        first,
                        model,
                        load(reference_path) if reference_path is not None and spec.reference.kind == "onnx" else None,
                    )
                else:
                    notes.append(
                        "the encoder inside the model agrees with the reference encoder value by value on this span"
                    )
    return Localization(entry_id, span, culprit, encoder_report, notes)


def _culprit(step: str, row, model: ir.Model, reference: ir.Model | None) -> dict:
    """The first value introducing the divergence, and the constants its node reads that differ
    from the reference's of the same name (a planted weight)."""
    found = {
        "step": step,
        "value": row.value,
        "node": row.node,
        "op_type": row.op_type,
        "module": row.module,
        "failures": list(row.own.failures),
        "constants_differing": [],
    }
    if reference is None:
        return found
    node = next((n for n in model.graph if n.name == row.node), None)
    theirs = {n.outputs[0].name: n.outputs[0] for n in reference.graph if n.op_type == "Constant" and n.outputs}
    theirs.update(reference.graph.initializers)
    for value in node.inputs if node is not None else []:
        if value is None:
            continue  # a missing optional input: no constant to compare
        mine = _constant(model, value)
        other = _constant(reference, theirs.get(value.name)) if value is not None else None
        if mine is None or other is None:
            continue
        if mine.shape != other.shape or not np.array_equal(mine, other):
            found["constants_differing"].append(
                {
                    "name": value.name,
                    "shape": list(mine.shape),
                    "max_abs_difference": float(np.max(np.abs(mine.astype(np.float64) - other.astype(np.float64))))
                    if mine.shape == other.shape
                    else None,
                }
            )
    return found
