"""Parity metrics between an output and its reference, and named tolerance profiles.

Every comparison in svsurgery reports the same named metrics: max abs error, max relative
error (relative to max(|reference|, a floor) so near-zero references do not explode),
mean abs error, cosine similarity, argmax agreement and NaN/Inf counts; for CTC outputs
also the token error rate of greedy decoding. Tolerances live in profiles, never as loose
literals. Integer outputs (lengths, ids) must be equal, whatever the profile.

Argmax agreement is measured only where the last axis is a class axis (outputs named as
logits, scores, probabilities; never hidden states, whose channels carry no ranking), and
only over positions whose reference has a real margin: where the reference's top two
classes are closer than the error the tolerance itself admits there, either answer is
within tolerance, so the position is a tie, counted apart and not a disagreement.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np

from svsurgery.errors import BadInputError

__all__ = [
    "PROFILES",
    "OutputParity",
    "ParityResult",
    "Tolerance",
    "compare",
    "compare_outputs",
    "greedy_ctc_tokens",
    "has_class_axis",
    "token_error_rate",
    "tolerance",
]


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """Bounds an output must meet; None means not checked."""

    name: str
    max_abs: float | None = None
    max_rel: float | None = None
    min_cosine: float | None = None
    min_argmax_agreement: float | None = None  # fraction of positions whose argmax agrees
    rel_floor: float = 1e-3  # max_rel divides by max(|reference|, rel_floor * max|reference|)

    def admitted_error(self, reference: np.ndarray, scale: float) -> np.ndarray | float:
        """The absolute error these bounds admit at each reference value (0 when unbounded:
        only exact ties are ties then)."""
        bounds: list[np.ndarray | float] = []
        if self.max_abs is not None:
            bounds.append(self.max_abs)
        if self.max_rel is not None:
            bounds.append(self.max_rel * np.maximum(np.abs(reference), self.rel_floor * scale))
        if not bounds:
            return 0.0
        return bounds[0] if len(bounds) == 1 else np.minimum(bounds[0], bounds[1])


PROFILES: dict[str, Tolerance] = {
    # the same computation, reordered: fused graph vs the same graphs run one after the other,
    # a float32 rewrite vs the torch module it was exported from
    "fp32-strict": Tolerance("fp32-strict", max_abs=1e-5, min_cosine=0.999999, min_argmax_agreement=1.0),
    # a float32 model against its reference (torch, float64 shadow, golden outputs), scale-free
    "fp32": Tolerance("fp32", max_rel=1e-3, min_cosine=0.99999, min_argmax_agreement=1.0),
    # a float16 model against a float32/float64 reference: errors are relative to 5 % of the
    # output's scale at least (float16 keeps 3 decimal digits; near-zero logits carry no more)
    "fp16": Tolerance("fp16", max_rel=5e-2, min_cosine=0.9999, min_argmax_agreement=0.999, rel_floor=5e-2),
    # each span of a segmented recording run in one padded batch vs run alone (VAD fusion)
    "segments": Tolerance("segments", max_abs=1e-4, min_cosine=0.999999, min_argmax_agreement=1.0),
    # intermediate activations (svsurgery diff): no argmax (hidden channels tie), scale-relative errors
    "fp32-intermediate": Tolerance("fp32-intermediate", max_rel=1e-2, min_cosine=0.99999),
    "fp16-intermediate": Tolerance("fp16-intermediate", max_rel=5e-2, min_cosine=0.999, rel_floor=5e-2),
    # a different but faithful implementation of the same math upstream (front ends)
    "frontend": Tolerance("frontend", min_cosine=0.99999, min_argmax_agreement=1.0),
}


def tolerance(name: str, **overrides: float | None) -> Tolerance:
    """A profile by name, with any bound overridden (None values leave the profile's)."""
    if name not in PROFILES:
        raise BadInputError(f"tolerance profile {name!r}: expected one of {', '.join(PROFILES)}")
    changes: dict[str, Any] = {key: value for key, value in overrides.items() if value is not None}
    return dataclasses.replace(PROFILES[name], **changes) if changes else PROFILES[name]


@dataclasses.dataclass
class OutputParity:
    name: str
    shape: list[int]
    max_abs: float
    max_rel: float
    mean_abs: float
    cosine: float
    argmax_agreement: float | None  # over positions with a real margin; None without a class axis
    nan_count: int  # NaN where the reference has none
    inf_count: int  # Inf where the reference is finite
    passed: bool | None = None
    failures: list[str] = dataclasses.field(default_factory=list)
    scale: float = 0.0  # max |reference|: what an absolute error is relative to
    exact: bool = False  # integer output: must be equal
    epsilon: float = 0.0  # machine epsilon of the compared output's type (its rounding step at 1.0)
    problem: str | None = None  # no comparison possible (shape mismatch, missing output)
    argmax_positions: int = 0  # positions whose argmax was compared (ties excluded)
    argmax_ties: int = 0  # positions whose reference top-2 margin is within the tolerance's error
    token_error_rate: float | None = None  # CTC outputs: greedy tokens' edit distance / reference tokens

    def check(self, tolerance: Tolerance) -> OutputParity:
        failures = [self.problem] if self.problem else []
        if self.nan_count or self.inf_count:
            failures.append(f"{self.nan_count} NaN / {self.inf_count} Inf values")
        if self.exact:
            if self.max_abs != 0:
                failures.append(f"integer values differ (max abs {self.max_abs:g})")
            self.failures = failures
            self.passed = not failures
            return self
        if tolerance.max_abs is not None and not self.max_abs <= tolerance.max_abs:
            failures.append(f"max abs {self.max_abs:.3g} > {tolerance.max_abs:g}")
        if tolerance.max_rel is not None and not self.max_rel <= tolerance.max_rel:
            failures.append(f"max rel {self.max_rel:.3g} > {tolerance.max_rel:g}")
        if tolerance.min_cosine is not None and not self.cosine >= tolerance.min_cosine:
            failures.append(f"cosine {self.cosine:.7f} < {tolerance.min_cosine}")
        if (
            tolerance.min_argmax_agreement is not None
            and self.argmax_agreement is not None
            and not self.argmax_agreement >= tolerance.min_argmax_agreement
        ):
            failures.append(
                f"argmax agreement {self.argmax_agreement:.4%} < {tolerance.min_argmax_agreement:.4%} "
                f"(over {self.argmax_positions} positions with a real margin; {self.argmax_ties} ties not counted)"
            )
        self.failures = failures
        self.passed = not failures
        return self


_CLASS_AXIS = re.compile(r"logit|score|prob|posterior|class|label|token|ctc", re.IGNORECASE)
_HIDDEN = re.compile(r"hidden|state|embed|feature|encoder_out(?!_lens)|pooler", re.IGNORECASE)
_CTC = re.compile(r"ctc", re.IGNORECASE)
CTC_BLANK = 0  # FunASR's, wav2vec2's and NeMo's CTC heads put blank at index 0


def has_class_axis(name: str, shape: Collection[int]) -> bool:
    """Whether an output's last axis ranks classes (logits, scores, probabilities), by its name."""
    shape = list(shape)
    return bool(shape) and shape[-1] > 1 and bool(_CLASS_AXIS.search(name)) and not _HIDDEN.search(name)


def compare(
    name: str,
    actual: np.ndarray,
    expected: np.ndarray,
    rel_floor: float = 1e-3,
    *,
    tolerance: Tolerance | None = None,
    class_axis: bool | None = None,
) -> OutputParity:
    """Metrics of ``actual`` against ``expected`` (computed in float64).

    ``class_axis``: whether the last axis ranks classes (None: decided from the name, see
    :func:`has_class_axis`); ``tolerance``: the bounds whose admitted error makes a
    near-tie of the reference a tie rather than a disagreement (None: exact ties only).
    """
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf where both overflowed: handled below
        return _compare(name, actual, expected, rel_floor, tolerance, class_axis)


def _compare(name, actual, expected, rel_floor, tolerance, class_axis) -> OutputParity:
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    exact = not np.issubdtype(expected.dtype, np.floating)
    epsilon = float(np.finfo(actual.dtype).eps) if np.issubdtype(actual.dtype, np.floating) else 0.0
    if actual.shape != expected.shape:
        return OutputParity(
            name,
            list(actual.shape),
            math.inf,
            math.inf,
            math.inf,
            -1.0,
            0.0,
            0,
            0,
            exact=exact,
            epsilon=epsilon,
            problem=f"shape {list(actual.shape)} != reference {list(expected.shape)}",
        )
    a = actual.astype(np.float64)
    e = expected.astype(np.float64)
    # NaN/Inf the reference does not have (a masked -inf that both share is not an overflow)
    nan_count = int((np.isnan(a) & ~np.isnan(e)).sum())
    inf_count = int((np.isinf(a) & np.isfinite(e)).sum())
    if a.size == 0:
        return OutputParity(name, list(a.shape), 0.0, 0.0, 0.0, 1.0, None, 0, 0, exact=exact, epsilon=epsilon)
    finite = np.isfinite(a) & np.isfinite(e)
    difference = np.abs(np.where(finite, a - e, 0.0))
    difference = np.where(np.isfinite(a) == np.isfinite(e), difference, math.inf)
    scale = float(np.abs(np.where(np.isfinite(e), e, 0)).max())
    denominator = np.maximum(np.abs(e), rel_floor * max(scale, 1e-30))
    max_rel = float(np.max(np.where(np.isfinite(denominator), difference / denominator, 0.0)))
    # where the reference is finite and the output is not, the output counts as 0: a NaN is a miss
    reference_finite = np.isfinite(e)
    af = np.where(reference_finite & np.isfinite(a), a, 0.0).ravel()
    ef = np.where(reference_finite, e, 0.0).ravel()
    norms = float(np.linalg.norm(af) * np.linalg.norm(ef))
    cosine = float(af @ ef / norms) if norms > 0 else (1.0 if np.array_equal(af, ef) else 0.0)
    parity = OutputParity(
        name=name,
        shape=list(a.shape),
        max_abs=float(difference.max()),
        max_rel=max_rel,
        mean_abs=float(difference.mean()),
        cosine=cosine,
        argmax_agreement=None,
        nan_count=nan_count,
        inf_count=inf_count,
        scale=scale,
        exact=exact,
        epsilon=epsilon,
    )
    if class_axis is None:
        class_axis = has_class_axis(name, a.shape)
    if not exact and class_axis and a.ndim >= 1 and a.shape[-1] > 1:
        _argmax_agreement(parity, a, e, tolerance, scale)
        if _CTC.search(name) and a.ndim >= 2:
            parity.token_error_rate = token_error_rate(greedy_ctc_tokens(e), greedy_ctc_tokens(a))
    return parity


def _argmax_agreement(
    parity: OutputParity, a: np.ndarray, e: np.ndarray, tolerance: Tolerance | None, scale: float
) -> None:
    """Agreement over positions whose reference top-2 margin exceeds the admitted error."""
    rows_a = np.where(np.isnan(a), -np.inf, a).reshape(-1, a.shape[-1])
    rows_e = np.where(np.isnan(e), -np.inf, e).reshape(-1, e.shape[-1])
    top_two = -np.partition(-rows_e, 1, axis=-1)[:, :2]
    with np.errstate(invalid="ignore"):
        margin = top_two[:, 0] - top_two[:, 1]
    admitted = tolerance.admitted_error(top_two[:, 0], scale) if tolerance is not None else 0.0
    tie = ~(margin > admitted)  # NaN margins (-inf - -inf) count as ties
    agree = np.argmax(rows_a, axis=-1) == np.argmax(rows_e, axis=-1)
    counted = ~tie
    parity.argmax_ties = int(tie.sum())
    parity.argmax_positions = int(counted.sum())
    parity.argmax_agreement = float(agree[counted].mean()) if parity.argmax_positions else None


def greedy_ctc_tokens(logits: np.ndarray, blank: int = CTC_BLANK) -> list[list[int]]:
    """Greedy CTC decoding of [..., T, V] scores: best class per frame, repeats merged, blanks dropped."""
    best = np.argmax(np.where(np.isnan(logits), -np.inf, logits), axis=-1)
    best = best.reshape(-1, best.shape[-1])
    sequences = []
    for row in best:
        keep = np.ones(row.shape, dtype=bool)
        keep[1:] = row[1:] != row[:-1]
        sequences.append([int(t) for t in row[keep] if t != blank])
    return sequences


def token_error_rate(reference: list[list[int]], hypothesis: list[list[int]]) -> float:
    """Edit distance (substitutions, insertions, deletions) summed over rows / reference tokens."""
    errors = sum(_edit_distance(r, h) for r, h in zip(reference, hypothesis))
    total = sum(len(r) for r in reference)
    return errors / total if total else float(errors > 0)


def _edit_distance(reference: list[int], hypothesis: list[int]) -> int:
    previous = np.arange(len(hypothesis) + 1)
    for i, token in enumerate(reference, 1):
        current = np.empty_like(previous)
        current[0] = i
        substitution = previous[:-1] + (np.asarray(hypothesis) != token)
        deletion = previous[1:] + 1
        best = np.minimum(substitution, deletion)
        for j in range(1, len(previous)):  # insertions chain along the row
            current[j] = min(best[j - 1], current[j - 1] + 1)
        previous = current
    return int(previous[-1])


@dataclasses.dataclass
class ParityResult:
    """Every output of a model compared with its reference under one tolerance."""

    tolerance: str
    outputs: list[OutputParity]

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    def by_name(self) -> dict[str, OutputParity]:
        return {o.name: o for o in self.outputs}

    def summary(self) -> dict[str, float | None]:
        """The worst figure of each metric over the float outputs (for one-line reports)."""
        floats = [o for o in self.outputs if not o.exact] or self.outputs
        agreements = [o.argmax_agreement for o in floats if o.argmax_agreement is not None]
        token_errors = [o.token_error_rate for o in floats if o.token_error_rate is not None]
        return {
            "max_abs": max((o.max_abs for o in floats), default=0.0),
            "max_rel": max((o.max_rel for o in floats), default=0.0),
            "min_cosine": min((o.cosine for o in floats), default=1.0),
            "min_argmax": min(agreements) if agreements else None,
            "nan_inf": sum(o.nan_count + o.inf_count for o in self.outputs),
            "max_token_error_rate": max(token_errors) if token_errors else None,
        }

    def failures(self) -> list[str]:
        return [f"{o.name}: {f}" for o in self.outputs for f in o.failures]


def compare_outputs(
    actual: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray], tolerance: Tolerance
) -> ParityResult:
    """Each expected output against the actual one of the same name."""
    results = []
    for name, value in expected.items():
        if name not in actual:
            missing = OutputParity(
                name, [], math.inf, math.inf, math.inf, -1.0, None, 0, 0, problem=f"the model has no output '{name}'"
            )
            results.append(missing.check(tolerance))
            continue
        parity = compare(name, actual[name], value, rel_floor=tolerance.rel_floor, tolerance=tolerance)
        results.append(parity.check(tolerance))
    return ParityResult(tolerance.name, results)
