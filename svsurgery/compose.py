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
from svsurgery.frontend._ops import GraphOps
from svsurgery.frontend.build import FEATURE_LENGTHS, FEATURES, WAVEFORM, WAVEFORM_LENGTHS
from svsurgery.model_io import value_names
from svsurgery.vad.build import SEGMENTS
from svsurgery.vad.loop_state import LoopState

__all__ = ["FEATURE_INPUT_NAMES", "LENGTH_INPUT_NAMES", "EncoderInputs", "find_encoder_inputs", "prepend_frontend"]

# What exporters call them: FunASR, sherpa-onnx, WeNet/icefall, Hugging Face, generic.
FEATURE_INPUT_NAMES = (
    "speech",
    "x",
    "feats",
    "features",
    "fbank",
    "xs",
    "input_features",
    "speech_feats",
    "audio_feats",
    "input",
)
LENGTH_INPUT_NAMES = (
    "speech_lengths",
    "x_length",
    "x_lens",
    "x_lengths",
    "feats_length",
    "feats_lengths",
    "feature_lengths",
    "speech_length",
    "xs_lens",
    "input_lengths",
    "lengths",
    "length",
)
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
        if self.lengths is None:
            return ir.DataType.INT64
        assert self.lengths.dtype is not None, "find_encoder_inputs takes only int32/int64 lengths"
        return self.lengths.dtype


def _describe(value: ir.Value) -> str:
    shape = "?" if value.shape is None else "[" + ", ".join(str(d) for d in value.shape) + "]"
    return f"{value.name} {value.dtype.name if value.dtype else '?'} {shape}"


def find_encoder_inputs(
    model: ir.Model, feature_input: str | None = None, length_input: str | None = None
) -> EncoderInputs:
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
                + ", ".join(value_names(candidates))
                + "); choose one with --feature-input"
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
        named = named or [v for v, name in zip(candidates, value_names(candidates)) if "len" in name.lower()]
        if named:
            lengths = named[0]
            hows.append(f"lengths: '{lengths.name}' (by name)")
        else:
            hows.append("lengths: none found (give --length-input if the encoder takes one)")
    if lengths is not None and (lengths.dtype not in _INTEGERS or lengths.shape is None or len(lengths.shape) != 1):
        raise BadInputError(f"length input {_describe(lengths)} is not an int32/int64 [B] tensor")
    return EncoderInputs(features, lengths, "; ".join(hows))


def prepend_frontend(
    encoder: ir.Model, frontend: ir.Model, binding: EncoderInputs, *, keep_features: bool = False
) -> ir.Model:
    """Fuse in place: ``frontend``'s nodes move into ``encoder``, whose feature and length
    inputs are replaced by ``waveform`` and ``waveform_lengths``. Returns ``encoder``.

    Outputs: the encoder's, then a VAD front end's ``segments`` (the encoder then runs once
    per segment row, see :func:`_encoder_per_row`), then ``features``/``feature_lengths``
    with ``keep_features``, then the front end's remaining outputs (the entry's report:
    ``waveform_nonfinite``, ``waveform_clipped``, ``waveform_lengths_used``)."""
    graph, source = encoder.graph, frontend.graph
    if encoder.opset_imports.get("", None) != frontend.opset_imports.get(""):
        raise BadInputError(
            f"front end opset {frontend.opset_imports.get('')} differs from the encoder's "
            f"{encoder.opset_imports.get('')}"
        )
    remaining = [v for v in graph.inputs if v is not binding.features and v is not binding.lengths]
    clash = [v.name for v in remaining if v.name in (WAVEFORM, WAVEFORM_LENGTHS)]
    if clash:
        raise BadInputError(f"the encoder already has an input named '{clash[0]}'; the fused model needs that name")
    waveform, waveform_lengths = source.inputs
    features, lengths, *extras = source.outputs  # a VAD front end's segments [K, 2], the entry's report
    segments = next((v for v in extras if v.name == SEGMENTS), None)
    extras = [v for v in extras if v is not segments]
    wanted = binding.features.dtype
    if wanted is not None and features.dtype is not None and wanted != features.dtype:
        # a float16 (or double) encoder: the front end computes in float32, its features are
        # rounded once where the encoder reads them, as the step-by-step pipeline rounds them
        cast = ir.node("Cast", [features], attributes={"to": wanted}, name="svs/frontend/Cast_features")
        source.append(cast)
        cast.outputs[0].dtype, cast.outputs[0].shape = wanted, features.shape
        cast.outputs[0].name = "svs/frontend/features_as_encoder_dtype"
        features = cast.outputs[0]
    _rename_clashes(encoder, frontend, keep=(binding.features.name, binding.lengths.name if binding.lengths else None))
    encoder_outputs = list(graph.outputs)

    nodes = list(source)
    source.remove(nodes)
    initializers = list(source.initializers.values())
    for name in list(source.initializers):
        source.initializers.pop(name)
    source.inputs.clear()
    source.outputs.clear()
    for value in initializers:
        graph.register_initializer(value)
    if len(graph) > 0:
        graph.insert_before(next(iter(graph)), nodes)
    else:
        graph.extend(nodes)

    if segments is not None:  # the front end decides the batch (one row per segment): the encoder runs per row
        encoder_nodes = [n for n in graph if id(n) not in {id(m) for m in nodes}]
        graph.remove(encoder_nodes)
        _encoder_per_row(graph, encoder_nodes, binding, features, lengths, segments, remaining, encoder_outputs)
        graph.outputs.append(segments)
    else:
        binding.features.replace_all_uses_with(features, replace_graph_outputs=True)
        if binding.lengths is not None:
            binding.lengths.replace_all_uses_with(lengths, replace_graph_outputs=True)
    graph.inputs[:] = [waveform, waveform_lengths, *remaining]
    if keep_features:
        interface = {v.name for v in (*remaining, *graph.outputs)}
        features.name = FEATURES if FEATURES not in interface else "svs/frontend/features"
        lengths.name = FEATURE_LENGTHS if FEATURE_LENGTHS not in interface else "svs/frontend/feature_lengths"
        graph.outputs.extend([features, lengths])
    elif segments is None:  # per row, the encoder's names go to each row's slice inside the Loop
        features.name = binding.features.name  # what the encoder called them, for people reading the graph
        if binding.lengths is not None:
            lengths.name = binding.lengths.name
    graph.outputs.extend(extras)  # what the entry did to the waveform, last
    encoder.ir_version = max(encoder.ir_version, frontend.ir_version)
    encoder.metadata_props.update(frontend.metadata_props)
    return encoder


def _encoder_per_row(
    graph: ir.Graph,
    encoder_nodes: list[ir.Node],
    binding: EncoderInputs,
    features: ir.Value,
    lengths: ir.Value,
    segments: ir.Value,
    others: list[ir.Value],
    outputs: list[ir.Value],
) -> None:
    """Run the encoder once per segment row, each at its own length, inside one Loop.

    The encoder's nodes move into the Loop's body; its initializers stay in the outer graph,
    read from the body (nothing is copied per iteration). Iteration j takes row ``order[j]``
    (rows by decreasing feature length, ties in row order), cut to its valid frames
    ``features[row, :length]`` -- no attention or convolution work is spent on padding, and
    each row gets exactly what the encoder gives that row alone. The encoder's other inputs
    (language ids...) are given once for the recording ([1, ...]) and read as they are.

    Each output is padded (zeros) to the largest shape seen so far, which, as the longest
    row runs first, is the longest row's; the Loop stacks them and a Gather puts the rows
    back in segment order. So the outputs keep their names, dtypes and [K, ...] shapes, with
    zeros past each row's own extent. An encoder whose outputs grew for a shorter input would
    make the stacked shapes differ: onnxruntime then fails loudly instead of cropping. With no
    segment the encoder still runs once on an empty row (encoders rarely accept a batch of
    0: SenseVoice gives its query frames) and the outputs are cut back to K = 0 rows.
    """
    shapes: dict[int, ir.Shape] = {}  # id(output) -> its shape, known for every output
    for output in outputs:
        if output.shape is None:
            raise BadInputError(f"encoder output '{output.name}' has no known rank; the per-segment encoder needs one")
        if output.dtype is None:
            raise BadInputError(f"encoder output '{output.name}' has no known type; the per-segment encoder needs one")
        shapes[id(output)] = output.shape
    for value in others:  # given once, for the one recording
        if value.shape is not None and len(value.shape) >= 1 and not isinstance(value.shape[0], int):
            value.shape = ir.Shape([1, *list(value.shape)[1:]])
    g = GraphOps(graph, graph.opset_imports.get("", 13))  # appends its nodes at the end of the graph
    op = g.op
    existing, initializers_before = {id(n) for n in graph}, set(graph.initializers)
    count = g.dim(segments, 0)  # K
    rows = op.Max(count, g.i64(1))
    missing = op.Sub(rows, count)  # 1 when K = 0: one empty row
    features = op.Pad(features, op.Concat(g.i64(0, 0, 0), missing, g.i64(0, 0), axis=0))
    lengths = op.Pad(lengths, op.Concat(g.i64(0), missing, axis=0))
    wide_lengths = op.Cast(lengths, to=ir.DataType.INT64)
    order = op.TopK(wide_lengths, rows, axis=0, largest=1, sorted=1, _outputs=2)[1]  # longest first, ties in order
    position = g.range_(rows)
    back = op.ScatterElements(position, order, position, axis=0)  # back[order[j]] = j
    back = op.Slice(back, g.i64(0), count, g.i64(0))  # the K real rows, in segment order
    one, zero = g.i64(1), g.i64(0)
    padded = [o for o in outputs if len(shapes[id(o)]) >= 2]  # rank 1 ([B]): a scalar per row, nothing to pad
    state = LoopState(g)
    for i, o in enumerate(padded):  # the largest shape of each output so far (without the batch axis)
        state.carry(f"size_{i}", g.i64(*([0] * (len(shapes[id(o)]) - 1))), shape=(len(shapes[id(o)]) - 1,))
    for o in outputs:
        dtype = o.dtype
        assert dtype is not None, "checked above"
        state.scan(f"row_{o.name}", dtype, tuple(shapes[id(o)])[1:])

    def step(bop, index, now):
        graph_body = bop.builder.graph
        row = bop.Unsqueeze(bop.Gather(order, index, axis=0), zero)  # [1]
        length = bop.Gather(wide_lengths, row, axis=0)
        row_features = bop.Slice(
            features, bop.Concat(row, zero, axis=0), bop.Concat(bop.Add(row, one), length, axis=0), g.i64(0, 1)
        )
        row_length = bop.Gather(lengths, row, axis=0)
        graph_body.extend(encoder_nodes)
        binding.features.replace_all_uses_with(row_features)
        if binding.lengths is not None:
            binding.lengths.replace_all_uses_with(row_length)
        row_features.name = binding.features.name  # what the encoder calls them, for people reading the graph
        row_features.dtype, row_features.shape = (
            binding.features.dtype,
            ir.Shape([1, "frames", *list(binding.features.shape)[2:]]),
        )
        if binding.lengths is not None:
            row_length.name = binding.lengths.name
        result = {}
        for output in outputs:
            squeezed = bop.Squeeze(output, zero)
            if len(output.shape) >= 2:
                size = f"size_{padded.index(output)}"
                own = bop.Shape(squeezed)
                target = bop.Max(getattr(now, size), own)
                pads = bop.Concat(g.i64(*([0] * (len(output.shape) - 1))), bop.Sub(target, own), axis=0)
                squeezed = bop.Pad(squeezed, pads)
                result[size] = target
            result[f"row_{output.name}"] = squeezed
        return result

    _, stacked = state.loop(op.Squeeze(rows, zero), step, name="encoder_per_row")
    loop_body = getattr(stacked, f"row_{outputs[0].name}").producer().attributes["body"].value
    finals = []
    for output in outputs:
        final = op.Gather(getattr(stacked, f"row_{output.name}"), back, axis=0)
        final.dtype, final.shape = output.dtype, output.shape
        graph.outputs[graph.outputs.index(output)] = final
        final.name, output.name = output.name, f"svs/frontend/rows/{output.name}"
        finals.append(final)
    # what this adds is named svs/frontend/rows/... (body: .../body/...): recognisable in a
    # viewer, and apart from each other (both builders number their values from 0)
    keep = {id(v) for v in (*finals, *_binding_values(loop_body, binding))}
    encoder_ids = {id(n) for n in encoder_nodes}
    for prefix, nodes in (
        ("svs/frontend/rows/", [n for n in graph if id(n) not in existing]),
        ("svs/frontend/rows/body/", [n for n in loop_body if id(n) not in encoder_ids]),
    ):
        for node in nodes:
            node.name = prefix + (node.name or node.op_type)
            for value in node.outputs:
                if id(value) not in keep and value.name and not value.name.startswith(prefix):
                    value.name = prefix + value.name
    for value in (*loop_body.inputs, *loop_body.outputs):
        if id(value) not in keep and not value.name.startswith("svs/"):
            value.name = "svs/frontend/rows/body/" + value.name
    for name in [n for n in graph.initializers if n not in initializers_before]:
        ir.convenience.rename_values(graph.initializers[name], "svs/frontend/rows/" + name)


def _binding_values(body: ir.Graph, binding: EncoderInputs) -> list[ir.Value]:
    """The values in ``body`` that carry the encoder's input names (a row's features and length)."""
    names = {binding.features.name, binding.lengths.name if binding.lengths is not None else None}
    return [v for n in body for v in n.outputs if v.name in names]


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
