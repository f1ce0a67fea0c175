"""Was a change for the better or the worse? Parity before and after, compared output by output.

The engine keeps a pass when parity did not get worse than before by more than a small
margin (and stayed within tolerance if it was within it), and, for passes that change
computed values on purpose, only when parity strictly improved. "Worse" is per output:
more NaN/Inf values, integer outputs that stop matching, a max abs error that grows by
more than the margin, a cosine that drops, or fewer positions whose argmax agrees.

For models computed in float16, :func:`judge_headroom` also weighs headroom (how far the
inputs can be scaled before something computed in float16 overflows,
:mod:`svsurgery.parity.headroom`): a pass that raises it is kept when parity stays within
the tolerance by cosine and argmax (a max relative error on near-zero values, which rounding
to float16 moves either way, is no reason to throw away protection against overflow), and a
pass that lowers it below the required headroom is rolled back however its parity looks.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from svsurgery.parity.headroom import PROFILE_CAP, Headroom, compare, format_headroom
from svsurgery.parity.metrics import OutputParity, ParityResult, Tolerance

__all__ = [
    "HEADROOM_MARGIN",
    "Margin",
    "improvement",
    "judge_headroom",
    "judge_improvement",
    "regression",
    "within_by_cosine_and_argmax",
]

HEADROOM_MARGIN = 0.1  # headroom must move by more than 10 % to count as raised or lowered


@dataclasses.dataclass(frozen=True)
class Margin:
    """How much worse a figure may get before a pass counts as a regression.

    A max abs error may grow by ``relative`` of itself or by ``ulps`` rounding steps of
    the output's type at the output's scale (max |reference|), whichever is larger:
    rewrites of the same math move the last few bits (of float32 or of float16), which is
    not a regression.
    """

    relative: float = 0.25
    ulps: float = 4.0
    cosine: float = 1e-7
    argmax: float = 0.0

    def allowed_growth(self, before: OutputParity) -> float:
        step = before.epsilon or float(np.finfo(np.float32).eps)
        return max(self.relative * before.max_abs, self.ulps * step * max(before.scale, 1e-30))


def _worse(before: OutputParity, after: OutputParity, margin: Margin) -> str | None:
    name = after.name
    if after.problem:
        return f"{name}: {after.problem}"
    if after.nan_count + after.inf_count > before.nan_count + before.inf_count:
        return f"{name}: NaN/Inf values {before.nan_count + before.inf_count} -> {after.nan_count + after.inf_count}"
    if after.nan_count + after.inf_count < before.nan_count + before.inf_count:
        return None  # fewer NaN/Inf: the other figures were measured over different values
    if after.exact:
        return f"{name}: integer values now differ" if after.max_abs > before.max_abs else None
    if after.max_abs > before.max_abs + margin.allowed_growth(before):
        return f"{name}: max abs error {before.max_abs:.3g} -> {after.max_abs:.3g}"
    if after.cosine < before.cosine - margin.cosine:
        return f"{name}: cosine {before.cosine:.8f} -> {after.cosine:.8f}"
    if before.argmax_agreement is not None and after.argmax_agreement is not None:
        if after.argmax_agreement < before.argmax_agreement - margin.argmax:
            return f"{name}: argmax agreement {before.argmax_agreement:.4%} -> {after.argmax_agreement:.4%}"
    return None


def regression(before: ParityResult, after: ParityResult, margin: Margin = Margin()) -> str | None:
    """Why ``after`` is worse than ``before`` (None when it is not)."""
    if before.passed and not after.passed:
        return "left tolerance: " + "; ".join(after.failures())
    previous = before.by_name()
    for output in after.outputs:
        if output.name in previous:
            reason = _worse(previous[output.name], output, margin)
            if reason:
                return reason
    return None


def improvement(before: ParityResult, after: ParityResult, margin: Margin = Margin()) -> str | None:
    """How ``after`` is strictly better than ``before``, or None (see :func:`judge_improvement`)."""
    return judge_improvement(before, after, margin)[0]


def judge_improvement(before: ParityResult, after: ParityResult, margin: Margin = Margin()) -> tuple[str | None, str]:
    """(how ``after`` is strictly better than ``before``, or None; the reason for the verdict).

    Strictly better: no output got worse beyond rounding noise (a pass accepted for improving
    must not trade one output for another; a cosine that moves by less than the margin's, or
    a max abs error that grows by less than one rounding step of the output's type at its
    scale, is the last bit of arithmetic, not a trade), and some output improved beyond the
    margin: fewer
    NaN/Inf values, integer values that now match, more positions whose argmax agrees, a
    max abs error that drops by more than the margin, or a cosine that rises by more
    than it. The reason names what decided, in either case.
    """
    strict = Margin(relative=0.0, ulps=1.0, cosine=margin.cosine, argmax=0.0)
    worse = regression(before, after, strict)
    if worse:
        return None, f"parity did not improve (this rule is kept only when it does): got worse: {worse}"
    previous = before.by_name()
    unmoved = []
    for output in after.outputs:
        old = previous.get(output.name)
        if old is None or output.problem:
            continue
        if output.nan_count + output.inf_count < old.nan_count + old.inf_count:
            better = (
                f"{output.name}: NaN/Inf values {old.nan_count + old.inf_count}"
                f" -> {output.nan_count + output.inf_count}"
            )
            return better, f"improves {better}"
        if output.exact:
            if output.max_abs < old.max_abs:
                return f"{output.name}: integer values now match", f"improves {output.name}: integer values now match"
            continue
        if old.argmax_agreement is not None and output.argmax_agreement is not None:
            if output.argmax_agreement > old.argmax_agreement:
                better = f"{output.name}: argmax agreement {old.argmax_agreement:.4%} -> {output.argmax_agreement:.4%}"
                return better, f"improves {better}"
        needed = margin.allowed_growth(old)
        if old.max_abs - output.max_abs > needed:
            better = f"{output.name}: max abs error {old.max_abs:.3g} -> {output.max_abs:.3g}"
            return better, f"improves {better}"
        if output.cosine - old.cosine > margin.cosine:
            better = f"{output.name}: cosine {old.cosine:.8f} -> {output.cosine:.8f}"
            return better, f"improves {better}"
        unmoved.append(
            f"{output.name}: max abs {old.max_abs:.3g} -> {output.max_abs:.3g}"
            f" (a drop of more than {needed:.2g} counts), "
            f"cosine {old.cosine:.8f} -> {output.cosine:.8f} (a rise of more than {margin.cosine:g} counts)"
        )
    return (
        None,
        "parity did not improve (this rule is kept only when it does): nothing moved beyond the margin: "
        + "; ".join(unmoved),
    )


def within_by_cosine_and_argmax(before: ParityResult, after: ParityResult, tolerance: Tolerance) -> str | None:
    """Why ``after`` is not within ``tolerance`` by cosine and argmax (None when it is): every
    output comparable, no more NaN/Inf than before, integer outputs equal, cosine and argmax
    agreement at the tolerance's bounds. Max abs and max rel errors are not looked at."""
    previous = before.by_name()
    for output in after.outputs:
        old = previous.get(output.name)
        if output.problem:
            return f"{output.name}: {output.problem}"
        if old is not None and output.nan_count + output.inf_count > old.nan_count + old.inf_count:
            return (
                f"{output.name}: NaN/Inf values {old.nan_count + old.inf_count}"
                f" -> {output.nan_count + output.inf_count}"
            )
        if output.exact:
            if output.max_abs != 0:
                return f"{output.name}: integer values differ"
            continue
        if tolerance.min_cosine is not None and not output.cosine >= tolerance.min_cosine:
            return f"{output.name}: cosine {output.cosine:.7f} < {tolerance.min_cosine}"
        if tolerance.min_argmax_agreement is not None and output.argmax_agreement is not None:
            if not output.argmax_agreement >= tolerance.min_argmax_agreement:
                return (
                    f"{output.name}: argmax agreement {output.argmax_agreement:.4%}"
                    f" < {tolerance.min_argmax_agreement:.4%}"
                )
    return None


def judge_headroom(
    before: ParityResult,
    after: ParityResult,
    headroom_before: Headroom,
    headroom_after: Headroom,
    tolerance: Tolerance,
    required: float,
) -> tuple[str | None, str | None]:
    """(why the pass is kept for its headroom, or None; why it is rolled back for it, or None).

    Headroom profiles are compared tightest first (:func:`svsurgery.parity.headroom.compare`).
    Kept: the first headroom that moved rose by more than :data:`HEADROOM_MARGIN` and ``after``
    is within ``tolerance`` by cosine and argmax. Rolled back: the first that moved fell by
    more than the margin to below ``required`` (1000x to 500x costs nothing that matters).
    Neither: headroom did not move, or rose while parity left the tolerance; parity decides.
    """
    direction, old, new = compare(headroom_before, headroom_after, HEADROOM_MARGIN)
    if direction > 0:
        if within_by_cosine_and_argmax(before, after, tolerance) is not None:
            return None, None  # the rise does not excuse leaving the tolerance
        if old == headroom_before.headroom:
            moved = f"raises headroom {format_headroom(old)} -> {format_headroom(headroom_after.headroom)}"
            if headroom_before.site is not None:
                moved += f" (was {headroom_before.site.describe()})"
        else:
            to = f"to {format_headroom(new)}" if new < PROFILE_CAP else f"to beyond {PROFILE_CAP:g}x (or into float32)"
            moved = (
                f"raises headroom where it was {format_headroom(old)} {to}"
                f" (the model's minimum: {format_headroom(headroom_after.headroom)})"
            )
        summary = after.summary()
        argmax = "" if summary["min_argmax"] is None else f", argmax {summary['min_argmax']:.4%}"
        return (
            f"{moved}; parity within {tolerance.name} by cosine and argmax: "
            f"cosine {summary['min_cosine']:.7f}{argmax} (max rel {summary['max_rel']:.3g} not weighed)"
        ), None
    if direction < 0 and new < required:
        where = f"; now {headroom_after.site.describe()}" if headroom_after.site else ""
        return (
            None,
            f"lowers headroom where it was {format_headroom(old)} to {format_headroom(new)},"
            f" below the {required:g}x required{where}",
        )
    return None, None
