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
import glob
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from svsurgery.errors import BadInputError, CheckFailedError
from svsurgery.files import commit_guard, remove_stale_staging, staging_name
from svsurgery.patch import all_graphs

__all__ = [
    "EXTERNAL_DATA_KEY",
    "EXTERNAL_DATA_THRESHOLD",
    "MAX_PROTOBUF_BYTES",
    "SOURCE_FILES_KEY",
    "SOURCE_PATH_KEY",
    "all_tensors",
    "estimated_size",
    "external_data_inlined",
    "external_tensors",
    "load",
    "save",
    "to_proto",
    "validate",
    "validate_file",
    "validate_with_proto",
    "value_names",
]

# Protobuf cannot serialize a message of 2 GiB or more; stay clear of it with a margin
# for the graph itself.
MAX_PROTOBUF_BYTES = 2**31 - 1
EXTERNAL_DATA_THRESHOLD = int(1.8 * 2**30)
_MIN_DEFAULT_OPSET = 7  # onnxruntime's oldest supported ai.onnx opset

SOURCE_PATH_KEY = "svsurgery.source_path"
SOURCE_FILES_KEY = "svsurgery.source_files"
# the model came with external data: saving keeps it that way, even after its tensors were
# read into memory (a rollback restores a self-contained copy)
EXTERNAL_DATA_KEY = "svsurgery.external_data"


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
    except Exception as error:
        raise BadInputError(f"{label}: cannot be read as an ONNX model: {_first_line(error)}") from None
    del proto
    base_dir = path.resolve().parent
    ir.external_data.set_base_dir(model.graph, base_dir)
    data_files = _check_external_data(model, base_dir, label)
    model.meta[SOURCE_PATH_KEY] = str(path.resolve())
    model.meta[SOURCE_FILES_KEY] = frozenset({str(path.resolve()), *data_files})
    model.meta[EXTERNAL_DATA_KEY] = bool(data_files)
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
    for graph in all_graphs(model):
        if isinstance(graph, ir.Graph):  # functions hold no initializers
            for value in graph.initializers.values():
                if value.const_value is not None:
                    yield value.const_value
        for node in graph:
            for attr in node.attributes.values():
                if attr.is_ref():
                    continue
                if attr.type == ir.AttributeType.TENSOR:
                    yield attr.value
                elif attr.type == ir.AttributeType.TENSORS:
                    yield from attr.value
                elif attr.type == ir.AttributeType.GRAPHS:
                    for subgraph in attr.value:
                        yield from (v.const_value for v in subgraph.initializers.values() if v.const_value is not None)


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

    The model (and its external data) goes to a staging folder next to ``path``; the
    validity gate runs on those files; only then are they renamed into place. A reader
    never sees a model beside data that is not its own: the data file gets a name no
    file has yet (``<name>.data``, or ``<name>.<token>.data`` when that exists), it is
    renamed in first, the model last (the one step that switches readers from the old
    pair to the new), and only then is the data file of the model replaced removed.
    Any failure or interrupt before the last rename leaves the old files as they were.

    Args:
        overwrite_input: allow writing over the file the model was loaded from; refused
            otherwise.
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
    sources = model.meta.get(SOURCE_FILES_KEY, frozenset())
    if str(target.resolve()) in sources and not overwrite_input:
        raise BadInputError(
            f"{path}: refusing to overwrite the input model ({target.resolve()}); choose another output "
            "path or ask for it explicitly (--in-place)"
        )
    if external_data is None:
        external_data = (
            bool(external_tensors(model))
            or bool(model.meta.get(EXTERNAL_DATA_KEY))
            or estimated_size(model) > EXTERNAL_DATA_THRESHOLD
        )
    if not external_data and estimated_size(model) > EXTERNAL_DATA_THRESHOLD:
        raise BadInputError(f"{path}: the model is over protobuf's 2 GB limit and must be saved with external data")

    remove_stale_staging(target)
    replaced_data = _own_data_files(target)
    _remove_orphan_data_files(target, keep=replaced_data)
    data_name = _fresh_data_name(target) if external_data else None
    # Tensors mapped from a data file this save removes are read into memory for good.
    doomed = {str(p.resolve()) for p in replaced_data}
    if doomed & set(sources):
        _replace_external_tensors(model, lambda t: str(Path(t.path).resolve()) in doomed, permanent=True)

    staging = staging_name(target)
    staging.mkdir()
    try:
        staged = staging / target.name
        if data_name is not None:
            ir.save(model, staged, external_data=data_name, size_threshold_bytes=1024)
        else:
            with external_data_inlined(model):
                ir.save(model, staged)
        if validate_model:
            validate_file(staged, label=str(path))
        with commit_guard():
            if data_name is not None:
                os.replace(staging / data_name, target.parent / data_name)
            os.replace(staged, target)
            for old in replaced_data:
                if data_name is None or old.name != data_name:
                    with contextlib.suppress(OSError):
                        old.unlink()
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


_OWN_DATA = re.compile(r"^(?P<name>.+?)(?:\.[0-9a-f]{8})?\.data$")


def _is_own_data_name(target: Path, name: str) -> bool:
    """``<target>.data`` or ``<target>.<8 hex>.data``: the names :func:`save` gives data files."""
    match = _OWN_DATA.match(name)
    return match is not None and match["name"] == target.name


def _own_data_files(target: Path) -> list[Path]:
    """The data files the model now at ``target`` references under the names :func:`save` gives."""
    if not target.is_file():
        return []
    try:
        existing = ir.serde.deserialize_model(onnx.load_model(str(target), load_external_data=False))
    except Exception:
        return []
    found = set()
    for tensor in external_tensors(existing):
        location = str(tensor.location)
        if Path(location).name == location and _is_own_data_name(target, location):
            found.add(target.parent / location)
    return sorted(found)


def _remove_orphan_data_files(target: Path, keep: list[Path]) -> None:
    """Data files named as :func:`save` names them that no model references any more: left by
    a save killed between its two renames. ``<target>.data`` itself is never removed here
    (other tools use that name too); only the token-named ones svsurgery alone creates."""
    keep_names = {p.name for p in keep}
    for entry in target.parent.glob(f"{glob.escape(target.name)}.*.data"):
        if entry.name not in keep_names and re.fullmatch(re.escape(target.name) + r"\.[0-9a-f]{8}\.data", entry.name):
            with contextlib.suppress(OSError):
                entry.unlink()


def _fresh_data_name(target: Path) -> str:
    plain = f"{target.name}.data"
    if not (target.parent / plain).exists():
        return plain
    while True:
        name = f"{target.name}.{secrets.token_hex(4)}.data"
        if not (target.parent / name).exists():
            return name


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
    replaced: list[tuple[ir.Value, ir.TensorProtocol]] = []
    for graph in model.graphs():
        for value in graph.initializers.values():
            tensor = value.const_value
            if isinstance(tensor, ir.ExternalTensor) and select(tensor):
                value.const_value = ir.Tensor(tensor.numpy(), name=tensor.name)
                if not permanent:
                    replaced.append((value, tensor))
    return replaced


def value_names(values: Iterable[ir.Value]) -> list[str]:
    """The names of a graph's inputs or outputs, in order (ONNX requires every one to be named)."""
    names = []
    for value in values:
        assert value.name is not None, "a graph input or output always has a name"
        names.append(value.name)
    return names


def to_proto(model: ir.Model, *, inline_external_data: bool = False) -> onnx.ModelProto:
    """Serialize to a ModelProto; with ``inline_external_data`` the proto is self-contained
    (for onnxruntime sessions from bytes, the checker, onnx-graphsurgeon)."""
    if not inline_external_data:
        return ir.to_proto(model)
    with external_data_inlined(model):
        return ir.to_proto(model)


# ----------------------------------------------------------------------------- validity gate


def validate(model: ir.Model, label: str = "model", *, optimize: bool = True):
    """The validity gate on an in-memory model: checker (full) + onnxruntime CPU session.

    Raises :class:`CheckFailedError` naming the node and the reason; returns the
    onnxruntime session it loaded, ready to run (``optimize=False``: graph optimizations
    off, the graph as written; a third of the load time on large graphs).
    """
    return validate_with_proto(model, label, optimize=optimize)[0]


def validate_with_proto(model: ir.Model, label: str = "model", *, optimize: bool = True):
    """:func:`validate`, also returning the self-contained ModelProto it checked (None when the
    model is over protobuf's limit and was checked from files)."""
    if estimated_size(model) > EXTERNAL_DATA_THRESHOLD:
        with tempfile.TemporaryDirectory(prefix="svsurgery-validate-") as staging:
            staged = Path(staging) / "model.onnx"
            ir.save(model, staged, external_data="model.onnx.data", size_threshold_bytes=1024)
            return validate_file(staged, label=label, optimize=optimize), None
    proto = to_proto(model, inline_external_data=True)
    _run_checker(lambda: onnx.checker.check_model(proto, full_check=True), label)
    return _run_session(proto.SerializeToString(), label, lambda: proto, optimize), proto


def validate_file(path: str | os.PathLike, label: str | None = None, *, optimize: bool = True):
    """The validity gate on a saved model (external data beside it is followed); returns the session."""
    label = label or str(path)
    _run_checker(lambda: onnx.checker.check_model(str(path), full_check=True), label)
    return _run_session(str(path), label, lambda: onnx.load_model(str(path), load_external_data=False), optimize)


def _run_checker(check, label: str) -> None:
    try:
        check()
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise CheckFailedError(f"{label}: fails onnx.checker: {describe_onnx_error(error)}") from None


def _run_session(model: bytes | str, label: str, proto_for_diagnosis, optimize: bool = True):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # errors come back as exceptions (3 would still log them to stderr)
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as error:
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
