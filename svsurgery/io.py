"""Model I/O: load untrusted ONNX files, save atomically, and the validity gate.

``load`` turns every way a file can be unusable (missing, a folder, empty, not
protobuf, truncated, external data missing or escaping its folder, an IR version or
opset this onnx cannot handle) into one :class:`BadInputError` line; external data
stays on disk and is memory-mapped on first use. ``save`` writes into a temporary
folder beside the target, runs the validity gate on what it wrote, and only then
renames into place, so a failure leaves no partial output and the input untouched.
``validate`` is the gate itself: ``onnx.checker`` with full shape inference, then an
onnxruntime CPU session.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from svsurgery.errors import BadInputError, CheckFailedError

__all__ = [
    "EXTERNAL_DATA_THRESHOLD",
    "MAX_PROTOBUF_BYTES",
    "SOURCE_FILES_KEY",
    "SOURCE_PATH_KEY",
    "all_tensors",
    "estimated_size",
    "external_tensors",
    "external_data_inlined",
    "load",
    "save",
    "to_proto",
    "validate",
    "validate_file",
]

# Protobuf cannot serialize a message of 2 GiB or more; stay clear of it with a margin
# for the graph itself.
MAX_PROTOBUF_BYTES = 2**31 - 1
EXTERNAL_DATA_THRESHOLD = int(1.8 * 2**30)
_MIN_DEFAULT_OPSET = 7  # onnxruntime's oldest supported ai.onnx opset

SOURCE_PATH_KEY = "svsurgery.source_path"
SOURCE_FILES_KEY = "svsurgery.source_files"


def load(path: str | os.PathLike) -> ir.Model:
    """Load an ONNX model as an onnx_ir model, refusing unusable files with one clear line.

    External data is checked (present, inside the model's folder, large enough for
    every tensor's offset and length) but not read: tensors are memory-mapped lazily.
    The model's ``meta`` records the files it came from so :func:`save` can refuse to
    overwrite them.
    """
    path = Path(path)
    label = str(path)
    if not path.exists():
        raise BadInputError(f"{label}: no such file")
    if path.is_dir():
        candidates = sorted(p.name for p in path.glob("*.onnx"))
        hint = f" (it holds {', '.join(candidates[:3])})" if candidates else ""
        raise BadInputError(f"{label}: is a folder, not an ONNX file{hint}")
    size = path.stat().st_size
    if size == 0:
        raise BadInputError(f"{label}: empty file (0 bytes), not an ONNX model")
    try:
        proto = onnx.load_model(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, UnicodeDecodeError) as error:
        raise BadInputError(
            f"{label}: its {size} bytes do not parse as an ONNX model (truncated, or not an ONNX file): "
            f"{_first_line(error) or type(error).__name__}"
        ) from None
    _check_structure(proto, label)
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as error:  # noqa: BLE001 - any deserialization failure is bad input
        raise BadInputError(f"{label}: cannot be read as an ONNX model: {_first_line(error)}") from None
    del proto
    base_dir = path.resolve().parent
    ir.external_data.set_base_dir(model.graph, base_dir)
    data_files = _check_external_data(model, base_dir, label)
    model.meta[SOURCE_PATH_KEY] = str(path.resolve())
    model.meta[SOURCE_FILES_KEY] = frozenset({str(path.resolve()), *data_files})
    return model


def _check_structure(proto: onnx.ModelProto, label: str) -> None:
    """Refuse protos that parsed but cannot be a complete, supported model."""
    if not proto.HasField("graph"):
        raise BadInputError(f"{label}: not an ONNX model (no graph; the file is truncated or of another kind)")
    if proto.ir_version <= 0:
        raise BadInputError(f"{label}: not an ONNX model (no IR version; the file is truncated or of another kind)")
    if proto.ir_version > onnx.IR_VERSION:
        raise BadInputError(
            f"{label}: IR version {proto.ir_version} is newer than this onnx {onnx.__version__} "
            f"supports (at most {onnx.IR_VERSION}); upgrade onnx and onnxruntime"
        )
    if not proto.opset_import:
        raise BadInputError(f"{label}: the model declares no opset imports (truncated file?)")
    max_opset = onnx.defs.onnx_opset_version()
    for opset in proto.opset_import:
        if opset.domain not in ("", "ai.onnx"):
            continue
        if opset.version > max_opset:
            raise BadInputError(
                f"{label}: ai.onnx opset {opset.version} is newer than this onnx {onnx.__version__} "
                f"supports (at most {max_opset})"
            )
        if opset.version < _MIN_DEFAULT_OPSET:
            raise BadInputError(
                f"{label}: ai.onnx opset {opset.version} is older than onnxruntime supports "
                f"(at least {_MIN_DEFAULT_OPSET}); convert it with onnx.version_converter first"
            )


def all_tensors(model: ir.Model) -> Iterator[ir.TensorProtocol]:
    """Every initializer and tensor attribute in the model, subgraphs and functions included."""
    graphs: list[ir.Graph | ir.Function] = [model.graph, *model.functions.values()]
    for graph in graphs:
        if isinstance(graph, ir.Graph):
            for value in graph.initializers.values():
                if value.const_value is not None:
                    yield value.const_value
        for node in ir.traversal.RecursiveGraphIterator(graph):
            for attr in node.attributes.values():
                if attr.is_ref():
                    continue
                if attr.type == ir.AttributeType.TENSOR:
                    yield attr.value
                elif attr.type == ir.AttributeType.TENSORS:
                    yield from attr.value
                elif attr.type == ir.AttributeType.GRAPH:
                    yield from (v.const_value for v in attr.value.initializers.values() if v.const_value is not None)
                elif attr.type == ir.AttributeType.GRAPHS:
                    for subgraph in attr.value:
                        yield from (
                            v.const_value for v in subgraph.initializers.values() if v.const_value is not None
                        )


def external_tensors(model: ir.Model) -> list[ir.ExternalTensor]:
    return [t for t in all_tensors(model) if isinstance(t, ir.ExternalTensor)]


def _check_external_data(model: ir.Model, base_dir: Path, label: str) -> set[str]:
    """Check every external-data reference without reading it; return the files used.

    Models are untrusted: a location that is absolute, climbs out with ``..`` or is a
    link pointing outside the model's folder is refused, and offsets and lengths are
    checked against the file before anything is mapped.
    """
    files: set[str] = set()
    sizes: dict[Path, int] = {}
    base_real = base_dir.resolve()
    for tensor in external_tensors(model):
        location = str(tensor.location)
        where = f"{label}: tensor '{tensor.name}' stores its data in '{location}'"
        if not location or os.path.isabs(location) or Path(location).is_absolute():
            raise BadInputError(f"{where}, an absolute path; only paths inside the model's folder are read")
        resolved = (base_dir / location).resolve()
        if base_real != resolved and base_real not in resolved.parents:
            raise BadInputError(f"{where}, which points outside the model's folder; refusing to read it")
        if resolved not in sizes:
            if not resolved.is_file():
                raise BadInputError(f"{where}, which does not exist beside the model (missing external data file)")
            sizes[resolved] = resolved.stat().st_size
        offset = tensor.offset or 0
        length = tensor.length
        if length is None:
            length = tensor.nbytes
        if offset < 0 or offset + length > sizes[resolved]:
            raise BadInputError(
                f"{where} at bytes {offset}..{offset + length}, but that file has only {sizes[resolved]} bytes "
                "(truncated external data)"
            )
        files.add(str(resolved))
    return files


# ----------------------------------------------------------------------------- saving


def save(
    model: ir.Model,
    path: str | os.PathLike,
    *,
    overwrite_input: bool = False,
    external_data: bool | None = None,
    validate_model: bool = True,
) -> Path:
    """Write ``model`` to ``path`` atomically and return the path written.

    The model (and its external data, written as ``<name>.data`` beside it) goes to a
    temporary folder next to ``path``; the validity gate runs on those files; only then
    are they renamed into place, data file first. Any failure leaves no output and
    nothing the user had is touched.

    Args:
        overwrite_input: allow writing over the file the model was loaded from (or its
            external data); refused otherwise.
        external_data: ``True``/``False`` to force; ``None`` keeps external data when the
            model was loaded with it and switches to it when the model would exceed
            protobuf's 2 GB limit.
        validate_model: run :func:`validate_file` before committing the write.
    """
    target = Path(path).absolute()
    if target.is_dir():
        raise BadInputError(f"{path}: is a folder; give the path of the .onnx file to write")
    if not target.parent.is_dir():
        raise BadInputError(f"{path}: the folder {target.parent} does not exist")
    had_external = bool(external_tensors(model))
    if external_data is None:
        external_data = had_external or estimated_size(model) > EXTERNAL_DATA_THRESHOLD
    data_name = target.name + ".data"
    written = [target.resolve()] + ([(target.parent / data_name).resolve()] if external_data else [])
    sources = model.meta.get(SOURCE_FILES_KEY, frozenset())
    clobbered = [p for p in written if str(p) in sources]
    if clobbered and not overwrite_input:
        raise BadInputError(
            f"{path}: refusing to overwrite the input model ({clobbered[0]}); choose another output "
            "path or ask for it explicitly (--in-place)"
        )

    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.tmp-") as staging:
        staged = Path(staging) / target.name
        if clobbered:
            # Tensors mapped from a file about to be replaced are read into memory for good.
            rewritten = {str(p) for p in clobbered}
            _replace_external_tensors(model, lambda t: str(Path(t.path).resolve()) in rewritten, permanent=True)
        with contextlib.nullcontext() if external_data else external_data_inlined(model):
            if external_data:
                ir.save(model, staged, external_data=data_name, size_threshold_bytes=1024)
            else:
                if estimated_size(model) > EXTERNAL_DATA_THRESHOLD:
                    raise BadInputError(
                        f"{path}: the model is over protobuf's 2 GB limit and must be saved with external data"
                    )
                ir.save(model, staged)
        if validate_model:
            validate_file(staged, label=str(path))
        if external_data:
            os.replace(Path(staging) / data_name, target.parent / data_name)
        os.replace(staged, target)
    return target


def estimated_size(model: ir.Model) -> int:
    """Bytes of tensor data in the model (what decides the 2 GB protobuf limit)."""
    return sum(t.nbytes for t in all_tensors(model))


@contextlib.contextmanager
def external_data_inlined(model: ir.Model) -> Iterator[ir.Model]:
    """Within the block, external initializers are held in memory (restored after)."""
    restore = _replace_external_tensors(model, lambda t: True, permanent=False)
    try:
        yield model
    finally:
        for value, tensor in restore:
            value.const_value = tensor


def _replace_external_tensors(model: ir.Model, select, permanent: bool) -> list[tuple[ir.Value, ir.TensorProtocol]]:
    replaced = []
    for graph in model.graphs():
        for value in graph.initializers.values():
            tensor = value.const_value
            if isinstance(tensor, ir.ExternalTensor) and select(tensor):
                value.const_value = ir.Tensor(tensor.numpy(), name=tensor.name)
                if not permanent:
                    replaced.append((value, tensor))
    return replaced


def to_proto(model: ir.Model, *, inline_external_data: bool = False) -> onnx.ModelProto:
    """Serialize to a ModelProto; with ``inline_external_data`` the proto is self-contained
    (for onnxruntime sessions from bytes, the checker, onnx-graphsurgeon)."""
    if not inline_external_data:
        return ir.to_proto(model)
    with external_data_inlined(model):
        return ir.to_proto(model)


# ----------------------------------------------------------------------------- validity gate


def validate(model: ir.Model, label: str = "model"):
    """The validity gate on an in-memory model: checker (full) + onnxruntime CPU session.

    Raises :class:`CheckFailedError` naming the node and the reason; returns the
    onnxruntime session it loaded (default optimizations), ready to run.
    """
    if estimated_size(model) > EXTERNAL_DATA_THRESHOLD:
        with tempfile.TemporaryDirectory(prefix="svsurgery-validate-") as staging:
            staged = Path(staging) / "model.onnx"
            ir.save(model, staged, external_data="model.onnx.data", size_threshold_bytes=1024)
            return validate_file(staged, label=label)
    proto = to_proto(model, inline_external_data=True)
    _run_checker(lambda: onnx.checker.check_model(proto, full_check=True), label)
    return _run_session(proto.SerializeToString(), label, lambda: proto)


def validate_file(path: str | os.PathLike, label: str | None = None):
    """The validity gate on a saved model (external data beside it is followed); returns the session."""
    label = label or str(path)
    _run_checker(lambda: onnx.checker.check_model(str(path), full_check=True), label)
    return _run_session(str(path), label, lambda: onnx.load_model(str(path), load_external_data=False))


def _run_checker(check, label: str) -> None:
    try:
        check()
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise CheckFailedError(f"{label}: fails onnx.checker: {describe_onnx_error(error)}") from None


def _run_session(model: bytes | str, label: str, proto_for_diagnosis):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors come back as exceptions; keep stderr quiet
    try:
        return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001 - onnxruntime raises several unrelated types
        nodes = [(n.name, n.op_type, n.domain) for n in proto_for_diagnosis().graph.node]
        raise CheckFailedError(f"{label}: onnxruntime cannot load it: {describe_onnx_error(error, nodes)}") from None


_NODE_PATTERNS = (
    re.compile(r"\(op_type:(?P<op>[\w.]+), node name: (?P<name>[^)]*)\)"),
    re.compile(r"Name: ?(?P<name>\S*) OpType: ?(?P<op>[\w.]+)"),
    re.compile(r"name: (?P<name>\S*) OpType: (?P<op>[\w.]+)"),
    re.compile(r"Node \((?P<name>[^)]*)\) Op \((?P<op>[\w.]+)\)"),
    re.compile(r"Node \((?P<name>[^)]*)\)"),
)


_OP_MENTION = re.compile(r"(?P<domain>[\w.]*):(?P<op>\w+)\((?:-?\d+)\)")


def describe_onnx_error(error: BaseException, nodes: list[tuple[str, str, str]] | None = None) -> str:
    """Condense an onnx/onnxruntime error into one line that names the node when it can.

    ``nodes`` ((name, op_type, domain) of the main graph) lets a message that only names
    an operator (``com.example:Op(-1) is not a registered function/op``) name the node.
    """
    text = str(error)
    text = re.sub(r"\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    text = re.sub(r"^Load model from \S+ failed: ?", "", text)
    node = ""
    for pattern in _NODE_PATTERNS:
        match = pattern.search(text)
        if match:
            groups = match.groupdict()
            node = f"node '{groups['name']}'" + (f" ({groups['op']})" if groups.get("op") else "")
            break
    if not node and nodes and (mention := _OP_MENTION.search(text)):
        domain, op_type = mention["domain"], mention["op"]
        for name, node_op, node_domain in nodes:
            if node_op == op_type and (node_domain or "") in (domain, "ai.onnx" if not domain else domain):
                node = f"node '{name}' ({op_type})"
                break
    reason = " ".join(line.strip() for line in text.splitlines() if line.strip() and "==> Context" not in line)
    reason = re.sub(r"/onnxruntime_src/\S+ \S+ ", "", reason)
    if len(reason) > 400:
        reason = reason[:400] + "..."
    return f"{node}: {reason}" if node else reason


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""
