"""Reports: dataclasses that render as a terminal table (rich) and as JSON.

Every command's result is a :class:`Report`; ``--json`` prints ``to_json()``,
``--report FILE`` writes it atomically (svsurgery.files), and the terminal gets ``render()``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

from svsurgery.files import write_text_atomically

__all__ = ["Report", "dumps"]


class Report:
    """Mixin for dataclass reports."""

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)  # type: ignore[call-overload]
        passed = getattr(type(self), "passed", None)
        if isinstance(passed, property):  # a verdict derived from the figures is part of the JSON too
            data["passed"] = passed.__get__(self)  # the property, read on this report
        return data

    def to_json(self, indent: int | None = 2) -> str:
        return dumps(self.to_dict(), indent=indent)

    def write_json(self, path: str | os.PathLike) -> Path:
        return write_text_atomically(path, self.to_json())

    def render(self, console) -> None:  # pragma: no cover - each report implements it
        raise NotImplementedError


def dumps(data: Any, indent: int | None = None) -> str:
    """Strict JSON (no NaN/Infinity literals: non-finite floats become "nan", "inf", "-inf")."""
    return json.dumps(_finite(data), indent=indent, default=_jsonable, allow_nan=False, sort_keys=indent is None)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
