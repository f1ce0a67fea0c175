"""InstanceNormalization / GroupNormalization statistics in float32 in float16 models.

InstanceNormalization has no ``stash_type``: the ONNX spec computes its mean and variance
in the input's type, and so do onnx.reference and runtimes whose kernels follow it. In
float16 the variance accumulates a sum of squared deviations over every position of an
instance (3199 frames after wav2vec2's first convolution on one second of audio), which
passes 65504 once the deviations' mean square passes 65504 / N (about 20 for N = 3199):
the variance becomes inf, and every output of that channel collapses to its bias, with no
NaN and no inf left to notice. PyTorch exports GroupNorm as InstanceNormalization between
Reshapes (wav2vec2's ``feat_extract_norm="group"``); GroupNormalization (opset 21: the
opset-18 definition is deprecated and refused by onnx.checker) computes them in its
``stash_type``, float32 unless it says otherwise. For models computed in float16 this family
marks each InstanceNormalization to compute in float32: the conversion casts its input up
and its output down once, so its statistics are float32 whatever the runtime's kernel does;
a GroupNormalization whose ``stash_type`` is not float32 gets ``stash_type`` float32. Float32 models are left as
they are. Verified whole, then node by node if the whole pass is rolled back.
"""

from __future__ import annotations

import onnx_ir as ir

from svsurgery.patch import all_graphs
from svsurgery.precision import keep_in_float32, kept_in_float32
from svsurgery.rules._matches import site_of
from svsurgery.rules.base import Applied, ApplyOptions, RuleFamily

__all__ = ["FAMILY", "float16_statistics"]

_NORMALIZATIONS = frozenset({"InstanceNormalization", "GroupNormalization"})


def float16_statistics(node: ir.Node) -> bool:
    """Does ``node`` compute its statistics in its input's type (no float32 ``stash_type``)?"""
    if node.op_type not in _NORMALIZATIONS or node.domain not in ("", "ai.onnx") or kept_in_float32(node):
        return False
    if node.op_type == "InstanceNormalization":
        return True
    stash = node.attributes.get("stash_type")  # GroupNormalization-21: float32 unless it says otherwise
    return stash is not None and stash.value != int(ir.DataType.FLOAT)


def _nodes(model: ir.Model) -> list[ir.Node]:
    return [node for graph in all_graphs(model) for node in graph if float16_statistics(node)]


def _sites(model: ir.Model) -> list[str]:
    return [site_of(node) for node in _nodes(model)]


def _apply(model: ir.Model, options: ApplyOptions) -> Applied:
    if not options.low_precision:
        return Applied(
            0, notes=["the model computes in float32: normalisation statistics already do (see svsurgery fp16)"]
        )
    nodes = [n for n in _nodes(model) if options.site is None or site_of(n) == options.site]
    for node in nodes:
        if node.op_type == "GroupNormalization":  # its statistics are what stash_type says: float32
            node.attributes["stash_type"] = ir.AttrInt64("stash_type", int(ir.DataType.FLOAT))
        else:
            keep_in_float32(node, f"{FAMILY.id}: {node.op_type} statistics in float32")
    if not nodes:
        return Applied(0)
    notes = []
    for kind, what in (
        ("InstanceNormalization", "compute in float32 (statistics and all)"),
        ("GroupNormalization", "compute their statistics in float32 (stash_type)"),
    ):
        count = sum(n.op_type == kind for n in nodes)
        if count:
            notes.append(f"{count} {kind} nodes {what}")
    return Applied(len(nodes), notes=notes)


FAMILY = RuleFamily(
    id="instance-norm",
    title="InstanceNormalization / GroupNormalization (no float32 stash_type) computed in float32 in float16 models",
    fixes=(
        "in float16 their variance sums squared deviations over every frame of an instance and overflows "
        "(wav2vec2's GroupNorm over ~1600-3200 frames): channels collapse to their bias, silently"
    ),
    safe_when=(
        "float16 models; InstanceNormalization cast to float32 and back once, GroupNormalization's stash_type set to "
        "float32; kept when parity improves or headroom rises"
    ),
    references=(
        "ONNX InstanceNormalization: https://onnx.ai/onnx/operators/onnx__InstanceNormalization.html",
        "ONNX GroupNormalization-21 (stash_type added): https://onnx.ai/onnx/operators/onnx__GroupNormalization.html",
    ),
    apply=_apply,
    acceptance="improves",
    sites=_sites,
    sites_on_rollback=True,
)
