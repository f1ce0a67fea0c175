"""Element types as sets of values: which conversions are exact, and what each type can hold.

A conversion from type A to type B is *lossless* when every value A can hold is exactly
representable in B, so ``Cast(B)`` is injective on A and ``Cast(C) . Cast(B) == Cast(C)``
for any C. That is a property of the types, decided here from their ranges and
mantissas, never from a list of casts someone found harmless: onnxruntime once removed
f64 -> f32 -> f64 chains as "redundant" and had to revert it over accuracy (issue 17953).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

__all__ = ["FLOAT_TYPES", "INTEGER_TYPES", "LOW_PRECISION_TYPES", "TypeRange", "is_lossless", "type_range"]

FLOAT_TYPES = frozenset({ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.FLOAT, ir.DataType.DOUBLE})
# the 16-bit float types: a model computing in one of them is judged in true float16 arithmetic
LOW_PRECISION_TYPES = frozenset({ir.DataType.FLOAT16, ir.DataType.BFLOAT16})
INTEGER_TYPES = frozenset(
    {
        ir.DataType.INT8,
        ir.DataType.INT16,
        ir.DataType.INT32,
        ir.DataType.INT64,
        ir.DataType.UINT8,
        ir.DataType.UINT16,
        ir.DataType.UINT32,
        ir.DataType.UINT64,
    }
)


@dataclasses.dataclass(frozen=True)
class TypeRange:
    """The values a type holds: [lowest, highest], and for floats the significand bits
    (implicit bit included), i.e. every integer up to 2**digits is exact."""

    lowest: float
    highest: float
    digits: int | None  # None for integer types: every integer in range is exact
    is_float: bool


_FLOAT_DIGITS = {ir.DataType.FLOAT16: 11, ir.DataType.BFLOAT16: 8, ir.DataType.FLOAT: 24, ir.DataType.DOUBLE: 53}
_FLOAT_EXPONENT_MAX = {
    ir.DataType.FLOAT16: 15,
    ir.DataType.BFLOAT16: 127,
    ir.DataType.FLOAT: 127,
    ir.DataType.DOUBLE: 1023,
}
_FLOAT_EXPONENT_MIN = {
    ir.DataType.FLOAT16: -14,
    ir.DataType.BFLOAT16: -126,
    ir.DataType.FLOAT: -126,
    ir.DataType.DOUBLE: -1022,
}


def type_range(dtype: ir.DataType) -> TypeRange | None:
    """The range of a numeric type (bool counts as the integers 0 and 1); None otherwise."""
    if dtype == ir.DataType.BOOL:
        return TypeRange(0, 1, None, False)
    if dtype in INTEGER_TYPES:
        info = np.iinfo(dtype.numpy())
        return TypeRange(int(info.min), int(info.max), None, False)
    if dtype in FLOAT_TYPES:
        digits = _FLOAT_DIGITS[dtype]
        highest = (2 - 2.0 ** (1 - digits)) * 2.0 ** _FLOAT_EXPONENT_MAX[dtype]
        return TypeRange(-highest, highest, digits, True)
    return None


def is_lossless(source: ir.DataType, target: ir.DataType) -> bool:
    """True when every value of ``source`` is exactly representable in ``target``."""
    if source == target:
        return True
    src, dst = type_range(source), type_range(target)
    if src is None or dst is None:
        return False
    if src.is_float:
        if not dst.is_float:
            return False  # fractions, inf and NaN have no integer image
        # every float of src is exact in dst when dst has at least its significand bits and exponent range
        assert src.digits is not None and dst.digits is not None, "float ranges have their digits"
        return (
            dst.digits >= src.digits
            and _FLOAT_EXPONENT_MAX[target] >= _FLOAT_EXPONENT_MAX[source]
            and _FLOAT_EXPONENT_MIN[target] - dst.digits <= _FLOAT_EXPONENT_MIN[source] - src.digits
        )
    if src.lowest < dst.lowest or src.highest > dst.highest:
        return False
    if dst.is_float:  # integers are exact up to 2**digits
        assert dst.digits is not None, "float ranges have their digits"
        return max(abs(src.lowest), src.highest) <= 2**dst.digits
    return True
