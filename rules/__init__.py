"""The rule catalog: one family per module, applied by the engine in catalog order.

Each module defines ``FAMILY`` (a :class:`svsurgery.family.RuleFamily`): what it fixes,
when it is safe, references, and its rewrites (onnxscript rules or onnx_ir passes).
"""

from __future__ import annotations

from svsurgery.errors import BadInputError
from svsurgery.family import RuleFamily
from svsurgery.rules import casts, layer_norm, lossy_casts, masks, positional, softmax

__all__ = ["CATALOG", "select"]

# layer-norm first: below opset 17 it converts the model, and the conversion brings every
# value's type, which the cast rules then need without another shape inference.
# The precision families (mask-fill for float16 and -inf fills; softmax-fp32 and
# positional-fp32 only for models computed in float16) come before lossy-casts, which
# judges single sites against whatever precision the model has by then.
CATALOG: tuple[RuleFamily, ...] = (
    layer_norm.FAMILY,
    casts.FAMILY,
    masks.FAMILY,
    softmax.FAMILY,
    positional.FAMILY,
    lossy_casts.FAMILY,
)


def select(ids: str | list[str] | None) -> list[RuleFamily]:
    """Families by id (comma-separated or a list), in the order given; all of them for None."""
    if ids is None:
        return list(CATALOG)
    wanted = [i.strip() for i in (ids.split(",") if isinstance(ids, str) else ids) if i.strip()]
    known = {family.id: family for family in CATALOG}
    unknown = [i for i in wanted if i not in known]
    if unknown:
        raise BadInputError(f"unknown rule {unknown[0]!r}; the catalog has: {', '.join(known)}")
    return [known[i] for i in wanted]
