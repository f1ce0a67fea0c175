"""Prepend a front end to an encoder: bind its inputs, align opsets and IR, avoid name clashes.

The encoder's feature input (float [B, T, D]) and length input (int [B]) are found by
the names exporters give them and by type and rank; the front end is authored at the
encoder's opset and emits lengths in the encoder's integer type; everything it adds keeps
its ``svs/frontend/`` prefix. The encoder's other inputs, outputs, metadata and external
data stay as they were.
"""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

from svsurgery.errors import BadInputError
from svsurgery.frontend.build import FEATURE_LENGTHS, FEATURES, WAVEFORM, WAVEFORM_LENGTHS

__all__ = ["FEATURE_INPUT_NAMES", "LENGTH_INPUT_NAMES", "EncoderInputs", "find_encoder_inputs", "prepend_frontend"]

# What exporters call them: FunASR, sherpa-onnx, WeNet/icefall, Hugging Face, generic.
FEATURE_INPUT_NAMES = ("speech", "x", "feats", "features", "fbank", "xs", "input_features", "speech_feats", "audio_feats", "input")
LENGTH_INPUT_NAMES = (
    "speech_lengths", "x_length", "x_lens", "x_lengths", "feats_length", "feats_lengths", "feature_lengths",
    "speech_length", "xs_lens", "input_lengths", "lengths", "length",
)  # fmt: skip
_FLOATS = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE, ir.DataType.BFLOAT16)
_INTEGERS = (ir.DataType.INT32, ir.DataType.INT64)


@dataclasses.dataclass
class EncoderInputs:
    features: ir.Value
    lengths: ir.Value | None
    how: str  # how they were found, for the report

    @property
    def feature_dim(self) -> int | str | None:
        shape = self.features.shape
        if shape is None or len(shape) != 3:
            return None
        dim = shape[2]
        return dim if isinstance(dim, int) else dim.value

    @property
    def length_dtype(self) -> ir.DataType:
        return self.lengths.dtype if self.lengths is not None else ir.DataType.INT64


def _describe(value: ir.Value) -> str:
    shape = "?" if value.shape is None else "[" + ", ".join(str(d) for d in value.shape) + "]"
    return f"{value.name} {value.dtype.name if value.dtype else '?'} {shape}"


def find_encoder_inputs(model: ir.Model, feature_input: str | None = None, length_input: str | None = None) -> EncoderInputs:
    inputs = {v.name: v for v in model.graph.inputs}
    listing = ", ".join(_describe(v) for v in model.graph.inputs)
    hows = []
    if feature_input is not None:
        if feature_input not in inputs:
            raise BadInputError(f"--feature-input {feature_input}: the encoder has no such input (inputs: {listing})")
        features = inputs[feature_input]
        hows.append(f"features: '{feature_input}' (--feature-input)")
    else:
        candidates = [v for v in inputs.values() if v.dtype in _FLOATS and v.shape is not None and len(v.shape) == 3]
        named = [v for name in FEATURE_INPUT_NAMES for v in candidates if v.name == name]
        if not candidates:
            raise BadInputError(f"the encoder has no float [B, T, D] input to feed features into (inputs: {listing})")
        if named:
            features = named[0]
            hows.append(f"features: '{features.name}' (by name)")
        elif len(candidates) == 1:
            features = candidates[0]
            hows.append(f"features: '{features.name}' (the only float [B, T, D] input)")
        else:
            raise BadInputError(
                "several float [B, T, D] inputs could take the features ("
                + ", ".join(v.name for v in candidates) + "); choose one with --feature-input"
            )
    if features.dtype not in _FLOATS or features.shape is None or len(features.shape) != 3:
        raise BadInputError(f"feature input {_describe(features)} is not a float [B, T, D] tensor")

    lengths = None
    if length_input is not None:
        if length_input not in inputs:
            raise BadInputError(f"--length-input {length_input}: the encoder has no such input (inputs: {listing})")
        lengths = inputs[length_input]
        hows.append(f"lengths: '{length_input}' (--length-input)")
    else:
        candidates = [v for v in inputs.values() if v.dtype in _INTEGERS and v.shape is not None and len(v.shape) == 1]
        named = [v for name in LENGTH_INPUT_NAMES for v in candidates if v.name == name]
        named = named or [v for v in candidates if "len" in v.name.lower()]
        if named:
            lengths = named[0]
            hows.append(f"lengths: '{lengths.name}' (by name)")
        else:
            hows.append("lengths: none found (give --length-input if the encoder takes one)")
    if lengths is not None and (lengths.dtype not in _INTEGERS or lengths.shape is None or len(lengths.shape) != 1):
        raise BadInputError(f"length input {_describe(lengths)} is not an int32/int64 [B] tensor")
    return EncoderInputs(features, lengths, "; ".join(hows))


def prepend_frontend(encoder: ir.Model, frontend: ir.Model, binding: EncoderInputs, *, keep_features: bool = False) -> ir.Model:
    """Fuse in place: ``frontend``'s nodes move into ``encoder``, whose feature and length
    inputs are replaced by ``waveform`` and ``waveform_lengths``. Returns ``encoder``."""
    graph, source = encoder.graph, frontend.graph
    if encoder.opset_imports.get("", None) != frontend.opset_imports.get(""):
        raise BadInputError(
            f"front end opset {frontend.opset_imports.get('')} differs from the encoder's {encoder.opset_imports.get('')}"
        )
    remaining = [v for v in graph.inputs if v is not binding.features and v is not binding.lengths]
    clash = [v.name for v in remaining if v.name in (WAVEFORM, WAVEFORM_LENGTHS)]
    if clash:
        raise BadInputError(f"the encoder already has an input named '{clash[0]}'; the fused model needs that name")
    waveform, waveform_lengths = source.inputs
    features, lengths, *extras = source.outputs  # extras: a VAD front end's segments [K, 2]
    _rename_clashes(encoder, frontend, keep=(binding.features.name, binding.lengths.name if binding.lengths else None))
    encoder_outputs = list(graph.outputs)

    nodes = list(source)
    source.remove(nodes)
    initializers = list(source.initializers.values())
    for value in initializers:
        source.initializers.pop(value.name)
    source.inputs.clear()
    source.outputs.clear()
    for value in initializers:
        graph.register_initializer(value)
    if len(graph) > 0:
        graph.insert_before(next(iter(graph)), nodes)
    else:
        graph.extend(nodes)

    to_encoder, lengths_to_encoder = features, lengths
    if extras:  # the front end decides the batch (one row per segment): the encoder follows it
        to_encoder, lengths_to_encoder = _rows_for_encoder(graph, nodes[-1], features, lengths, extras[0], remaining, encoder_outputs)
    binding.features.replace_all_uses_with(to_encoder, replace_graph_outputs=True)
    if binding.lengths is not None:
        binding.lengths.replace_all_uses_with(lengths_to_encoder, replace_graph_outputs=True)
    graph.inputs[:] = [waveform, waveform_lengths, *remaining]
    graph.outputs.extend(extras)
    if keep_features:
        interface = {v.name for v in (*remaining, *graph.outputs)}
        features.name = FEATURES if FEATURES not in interface else "svs/frontend/features"
        lengths.name = FEATURE_LENGTHS if FEATURE_LENGTHS not in interface else "svs/frontend/feature_lengths"
        graph.outputs.extend([features, lengths])
    else:
        features.name = binding.features.name  # what the encoder called them, for people reading the graph
        if binding.lengths is not None:
            lengths.name = binding.lengths.name
    encoder.ir_version = max(encoder.ir_version, frontend.ir_version)
    for key, value in frontend.metadata_props.items():
        encoder.metadata_props[key] = value
    return encoder


def _rows_for_encoder(graph, after: ir.Node, features, lengths, segments, others, outputs) -> tuple[ir.Value, ir.Value]:
    """Feed the encoder one row per segment: its other inputs (language ids...), given for the
    one recording, are broadcast to the segments; with no segment at all it still gets one
    empty row (encoders rarely accept a batch of 0) and its outputs are cut back to none."""
    from svsurgery.frontend._ops import GraphOps

    g = GraphOps(graph, graph.opset_imports.get("", 13))  # appends its nodes at the end of the graph
    op = g.op
    existing = {id(n) for n in graph}
    count = g.dim(segments, 0)  # K
    rows = op.Max(count, g.i64(1))
    missing = op.Sub(rows, count)  # 1 when K = 0
    padded_features = op.Pad(features, op.Concat(g.i64(0, 0, 0), missing, g.i64(0, 0), axis=0))
    padded_lengths = op.Pad(lengths, op.Concat(g.i64(0), missing, axis=0))
    expanded_inputs = []
    for value in others:
        if value.shape is None or len(value.shape) == 0 or (isinstance(value.shape[0], int) and value.shape[0] != 1):
            continue
        shape = op.Concat(rows, op.Slice(op.Shape(value), g.i64(1), g.i64(2**62), g.i64(0)), axis=0)
        expanded_inputs.append((value, op.Expand(value, shape)))
        value.shape = ir.Shape([1, *list(value.shape)[1:]])  # given once, for the one recording
    feeding = [n for n in graph if id(n) not in existing]
    graph.remove(feeding)
    graph.insert_after(after, feeding)  # between the front end and the encoder
    feeding_ids = {id(n) for n in feeding}
    for value, expanded in expanded_inputs:
        for use in list(value.uses()):
            if id(use.node) not in feeding_ids:  # the broadcast's own Shape and Expand keep reading the input
                use.node.replace_input_with(use.idx, expanded)
    for index, output in enumerate(list(graph.outputs)):
        if output in outputs and output.shape is not None and len(output.shape) >= 1:
            cut = op.Slice(output, g.i64(0), count, g.i64(0))  # appended after the encoder
            graph.outputs[index] = cut
            cut.name, output.name = output.name, f"svs/frontend/rows/{output.name}"
            cut.dtype, cut.shape = output.dtype, output.shape
    for node in graph:
        if id(node) not in existing:
            node.name = f"svs/frontend/rows/{node.name or node.op_type}"
    return padded_features, padded_lengths


def _rename_clashes(encoder: ir.Model, frontend: ir.Model, keep: tuple[str | None, ...]) -> None:
    """Front-end names are prefixed; any that still exist in the encoder get a suffix."""
    taken = {v.name for g in encoder.graphs() for v in (*g.inputs, *g.initializers.values()) if v.name}
    taken |= {v.name for g in encoder.graphs() for n in g for v in n.outputs if v.name}
    taken -= {name for name in keep if name}
    node_names = {n.name for g in encoder.graphs() for n in g if n.name}
    graph = frontend.graph
    values = [*graph.initializers.values(), *(v for n in graph for v in n.outputs)]
    for value in values:
        if value.name in taken:
            base, counter = value.name, 1
            while f"{base}_{counter}" in taken:
                counter += 1
            ir.convenience.rename_values(value, f"{base}_{counter}")
    for node in graph:
        if node.name in node_names:
            node.name = f"{node.name}_fe"
