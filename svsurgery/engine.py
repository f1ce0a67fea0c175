"""The pass loop: rewrite -> validity gate -> parity against the reference -> keep or roll back.

For each selected rule family, in order: snapshot the model, apply the family (inside
If/Loop/Scan bodies and functions too), run the validity gate (``onnx.checker`` with
shape inference, an onnxruntime session), compare the outputs with the reference's,
and keep the pass only when parity did not get worse than before by more than a small
margin and did not leave tolerance (for families that change values on purpose: only
when it strictly improved). Anything else is rolled back to the snapshot and the report
says why. Families with sites are applied and judged one site at a time (or whole first,
and site by site only when the whole pass is rolled back).

For models computed in float16 every candidate's headroom is measured too (how far the
inputs can be scaled before a value computed in float16 overflows,
:mod:`svsurgery.parity.headroom`): a pass that raises it is kept when parity stays within
tolerance by cosine and argmax, one that lowers it below the required headroom is rolled
back (:func:`svsurgery.parity.judge.judge_headroom`), and with ``min_headroom`` a result
that overflows at inputs scaled by less than that fails, naming the value.

The reference is evaluated once, on inputs it brings (golden files), inputs the caller
gives, or inputs generated from the model's signature; every pass is held to the same
expected outputs. The model passed in is never changed: :func:`fix` works on a copy.
"""

from __future__ import annotations

import dataclasses
import os
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx_ir as ir
from rich import box
from rich.markup import escape
from rich.table import Table

from svsurgery import patch, rules
from svsurgery.dtypes import LOW_PRECISION_TYPES
from svsurgery.errors import BadInputError, CheckFailedError, SvsError
from svsurgery.golden import versions
from svsurgery.model_io import SOURCE_PATH_KEY, load, value_names
from svsurgery.parity.headroom import DEFAULT_MIN_HEADROOM, Headroom, format_headroom
from svsurgery.parity.inputs import ParityInputs, check_feeds, generate_inputs, runs_on
from svsurgery.parity.judge import Margin, judge_headroom, judge_improvement, regression
from svsurgery.parity.metrics import ParityResult, Tolerance
from svsurgery.parity.metrics import tolerance as tolerance_profile
from svsurgery.parity.references import Float64Reference, Reference, TorchReference
from svsurgery.precision import convert_to_float16, model_precision
from svsurgery.report import Report, dumps
from svsurgery.rules.base import Applied, ApplyOptions, RuleFamily, as_family
from svsurgery.verifier import Float16Verifier, Snapshot, Verifier

__all__ = ["FixReport", "Float16Verifier", "Step", "Verifier", "default_tolerance", "fix", "model_precision"]

ACCEPTED, ROLLED_BACK, NO_MATCH = "accepted", "rolled back", "no match"


@dataclasses.dataclass
class Step:
    """One application of one family (one site of it, for families verified site by site)."""

    family: str
    title: str
    site: str | None
    matches: int | None
    status: str  # accepted | rolled back | no match
    reason: str
    before: dict
    after: dict | None
    notes: list[str]
    findings: list[str]
    seconds: float
    changed_values: list[str] = dataclasses.field(default_factory=list)  # see Applied.changed_values
    headroom_before: float | None = None  # float16 runs: the model's headroom before and after the pass
    headroom_after: float | None = None


@dataclasses.dataclass
class FixReport(Report):
    model: str
    output: str | None
    written: bool
    reference: str
    reference_kind: str
    inputs: dict[str, str]
    tolerance: dict
    baseline: ParityResult
    final: ParityResult
    steps: list[Step]
    versions: dict
    precision: str = "FLOAT"  # what the result computes in
    evaluation: str = Verifier.evaluation  # how candidates were run
    conversion: list[str] = dataclasses.field(default_factory=list)  # what the float16 conversion did
    headroom_before: Headroom | None = None  # float16 runs: the naive conversion's headroom on the inputs
    headroom_after: Headroom | None = None  # ... and the result's
    min_headroom: float | None = None  # required of the result (None: reported, not required)

    @property
    def passed(self) -> bool:
        return self.final.passed and self.headroom_failure is None

    def to_dict(self) -> dict:
        data = super().to_dict()
        for key in ("headroom_before", "headroom_after"):  # the value, where, the tightest few: not every site
            data[key] = getattr(self, key).to_dict() if getattr(self, key) is not None else None
        return data

    @property
    def headroom_failure(self) -> str | None:
        """Why the result's headroom is not enough (None when it is, or when none is required)."""
        if (
            self.min_headroom is None
            or self.headroom_after is None
            or self.headroom_after.headroom >= self.min_headroom
        ):
            return None
        return f"{self.headroom_after.describe()}: below the required {self.min_headroom:g}x (--min-headroom)"

    def render(self, console) -> None:
        verb = "fp16" if self.precision in ("FLOAT16", "BFLOAT16") else "fix"
        console.print(f"[bold]{verb}[/bold] {escape(self.model)}")
        console.print(f"  reference: {escape(self.reference)}")
        console.print(f"  inputs: {escape('; '.join(f'{k}: {v}' for k, v in self.inputs.items()))}")
        console.print(f"  tolerance: {escape(self.tolerance['name'])}; evaluation: {escape(self.evaluation)}")
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 0))  # whole at 80 columns
        columns = ["rule", "n", "result", "max abs", "after", "cosine", "argmax"]
        headroom = self.headroom_after is not None
        if headroom:
            columns.append("headroom")
        for column in columns:
            if column in ("rule", "result"):  # words (and per-site names) fold; figures never wrap or get cut
                table.add_column(column, overflow="fold")
            else:
                table.add_column(column, justify="right", no_wrap=True)
        for step in self.steps:
            rule = step.family + (f" @ {step.site}" if step.site else "")
            colour = {ACCEPTED: "green", ROLLED_BACK: "red"}.get(step.status, "dim")
            after = step.after or {}
            argmax = "-" if not after or after.get("min_argmax") is None else f"{after['min_argmax']:.2%}"
            row = [
                escape(rule),
                "?" if step.matches is None else str(step.matches),
                f"[{colour}]{step.status}[/{colour}]",
                f"{step.before['max_abs']:.2e}",
                f"{after['max_abs']:.2e}" if after else "-",
                f"{after['min_cosine']:.7f}" if after else "-",
                argmax,
            ]
            if headroom:
                row.append(format_headroom(step.headroom_after) if after and step.headroom_after is not None else "-")
            table.add_row(*row)
        console.print(table)
        for step in self.steps:
            rule = escape(step.family + (f" @ {step.site}" if step.site else ""))
            if step.reason:
                colour = "red" if step.status == ROLLED_BACK else "green"
                console.print(f"  [{colour}]{rule} {step.status}[/{colour}]: {escape(step.reason)}")
            for note in step.notes:
                tried = "tried: " if step.status == ROLLED_BACK else ""
                console.print(f"  [cyan]{rule}[/cyan]: {tried}{escape(note)}")
            for finding in step.findings:
                console.print(f"  [yellow]{rule} found[/yellow]: {escape(finding)}")
        for line in self.conversion:
            console.print(f"  [cyan]float16 conversion[/cyan]: {escape(line)}")
        if self.headroom_before is not None and self.headroom_after is not None:
            console.print(f"  headroom before: {escape(self.headroom_before.describe())}")
            required = "" if self.min_headroom is None else f" (required: {self.min_headroom:g}x)"
            console.print(f"  headroom after: {escape(self.headroom_after.describe())}{escape(required)}")
        final = self.final.summary()
        if self.passed:
            verdict = "[green]within tolerance[/green]"
        elif self.final.passed:
            verdict = "[red]within tolerance, but " + escape(str(self.headroom_failure)) + "[/red]"
        else:
            failures = self.final.failures() + ([self.headroom_failure] if self.headroom_failure else [])
            verdict = "[red]beyond tolerance: " + escape("; ".join(failures)) + "[/red]"
        argmax = "-" if final["min_argmax"] is None else f"{final['min_argmax']:.2%}"
        console.print(
            f"final parity: max abs {final['max_abs']:.3e}, max rel {final['max_rel']:.3e}, "
            f"cosine {final['min_cosine']:.8f}, argmax {argmax} - {verdict}"
        )
        if self.written:
            console.print(f"[green]wrote[/green] {escape(str(self.output))}")


def default_tolerance(model: ir.Model, precision: ir.DataType | None = None) -> Tolerance:
    """``fp16`` for models that compute (or will compute) in float16, ``fp32`` otherwise."""
    precision = precision or model_precision(model)
    return tolerance_profile("fp16" if precision in LOW_PRECISION_TYPES else "fp32")


def fix(
    model: ir.Model | str | os.PathLike,
    families: Sequence[RuleFamily | object] | str | None = None,
    *,
    reference: Reference | None = None,
    inputs: ParityInputs | Mapping[str, np.ndarray] | None = None,
    torch_module=None,
    example_inputs: Sequence | Mapping | None = None,
    tolerance: Tolerance | str | None = None,
    margin: Margin = Margin(),
    raise_opset: bool = True,
    precision: ir.DataType | None = None,
    keep_io_types: bool = False,
    min_headroom: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[ir.Model, FixReport]:
    """Apply rule families one verified pass at a time; returns the fixed copy and the report.

    ``families``: None for the whole catalog, rule ids (``"casts,layer-norm"``), or a list
    of RuleFamily objects, onnxscript RewriteRules, onnx_ir passes or plain patch
    callables (yours go through the same verification). ``reference`` defaults to
    ``torch_module`` when given (run on ``example_inputs``, positional in the model's
    input order, or by name), else to the model evaluated in float64. ``inputs`` default
    to the reference's own (golden files), ``example_inputs``, or inputs generated from
    the signature; ``tolerance`` to :func:`default_tolerance`. The returned model carries
    provenance in metadata_props (``svsurgery.rules_applied``, ``svsurgery.parity``,
    ``svsurgery.versions``); the model passed in is not changed.

    ``precision`` FLOAT16 (default for float16 models) verifies every candidate converted
    to float16 and evaluated in true float16, lets the precision rules mark float32
    regions, and returns the float16 model (``keep_io_types``: float32 inputs and outputs).
    Its headroom is measured on every candidate and recorded before and after
    (``report.headroom_before`` / ``headroom_after``); ``min_headroom`` makes a result whose
    headroom is below it fail (``report.passed`` false, the value named).
    """
    if isinstance(model, (str, os.PathLike)):
        model = load(model)
    families = _families(families)
    label = Path(model.meta.get(SOURCE_PATH_KEY, "model")).name
    precision = precision or model_precision(model)
    low = precision in LOW_PRECISION_TYPES
    if isinstance(tolerance, str):
        tolerance = tolerance_profile(tolerance)
    tolerance = tolerance or default_tolerance(model, precision)
    if example_inputs is not None and inputs is None:
        inputs = _example_feeds(model, example_inputs)
    if isinstance(inputs, Mapping):
        inputs = ParityInputs(check_feeds(inputs, model, "inputs"), {name: "given by the caller" for name in inputs})
    if reference is None and torch_module is not None:
        reference = TorchReference(
            torch_module,
            value_names(model.graph.outputs),
            value_names(model.graph.inputs),
            by_name=isinstance(example_inputs, Mapping),
        )
    reference = reference or Float64Reference(model)
    own = reference.own_inputs()
    if own is not None:
        inputs = ParityInputs(check_feeds(own, model, reference.description), {n: "from the golden file" for n in own})
    elif inputs is None:
        inputs = generate_inputs(model, model.meta.get(SOURCE_PATH_KEY))
    with runs_on(inputs, reference.description):
        expected = reference.outputs(inputs.feeds)
    unknown = [name for name in expected if name not in {o.name for o in model.graph.outputs}]
    if unknown:
        raise BadInputError(f"the reference has outputs the model lacks: {', '.join(unknown)}")
    if low:
        verify: Verifier = Float16Verifier(expected, inputs.feeds, tolerance, label, keep_io_types)
    else:
        verify = Verifier(expected, inputs.feeds, tolerance, label)
    options = ApplyOptions(raise_opset=raise_opset, precision=precision)

    working = patch.clone(model)
    try:
        with runs_on(inputs, label):
            baseline = verify(working)
    except CheckFailedError as error:
        raise CheckFailedError(f"the input model fails the validity gate before any rule: {error}") from None
    snapshot = Snapshot(working, verify.last_proto)
    state = _State(working, baseline, getattr(verify, "headroom", None) if low else None)
    baseline_headroom = state.headroom
    judge = _Judge(verify, margin, options, min_headroom if min_headroom is not None else DEFAULT_MIN_HEADROOM)
    steps: list[Step] = []
    for family in families:
        sites = family.sites(state.model) if family.sites is not None else [None]
        if not sites:
            steps.append(
                Step(family.id, family.title, None, 0, NO_MATCH, "", state.parity.summary(), None, [], [], 0.0)
            )
            continue
        whole_first = family.sites is not None and family.sites_on_rollback
        for site in [None] if whole_first else sites:
            if progress is not None:
                progress(family.id + (f" @ {site}" if site else ""))
            state, step = _step(family, site, state, judge, snapshot)
            if step.status == ACCEPTED:
                snapshot = Snapshot(state.model, verify.last_proto)
            steps.append(step)
        if whole_first and steps[-1].status == ROLLED_BACK and len(sites) > 1:
            steps[-1].notes.append(f"rolled back as a whole: its {len(sites)} sites are tried one by one")
            for site in sites:  # keep the sites that pass alone
                if progress is not None:
                    progress(f"{family.id} @ {site}")
                state, step = _step(family, site, state, judge, snapshot)
                if step.status == ACCEPTED:
                    snapshot = Snapshot(state.model, verify.last_proto)
                steps.append(step)
    working, current = state.model, state.parity
    conversion = []
    if low:
        working, converted = convert_to_float16(working, keep_io_types=keep_io_types)
        conversion = converted.describe()

    report = FixReport(
        model=str(model.meta.get(SOURCE_PATH_KEY, "model")),
        output=None,
        written=False,
        reference=reference.description,
        reference_kind=reference.kind,
        inputs=inputs.how,
        tolerance=dataclasses.asdict(tolerance),
        baseline=baseline,
        final=current,
        steps=steps,
        versions=versions(),
        precision=precision.name,
        evaluation=verify.evaluation,
        conversion=conversion,
        headroom_before=baseline_headroom,
        headroom_after=state.headroom,
        min_headroom=min_headroom if low else None,
    )
    _record_provenance(working, report)
    return working, report


def _families(families) -> list[RuleFamily]:
    if families is None or isinstance(families, str):
        return rules.select(families)
    if all(isinstance(item, str) for item in families):
        return rules.select(list(families))
    return [as_family(item, f"user.{index}") for index, item in enumerate(families)]


def _example_feeds(model: ir.Model, example_inputs) -> ParityInputs:
    """Example inputs (tensors or arrays, positional in the model's input order, or by name) as feeds."""

    def as_array(value):
        return value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)

    names = value_names(model.graph.inputs)
    if isinstance(example_inputs, Mapping):
        arrays = {name: as_array(value) for name, value in example_inputs.items()}
    else:
        values = list(example_inputs)
        if len(values) != len(names):
            raise BadInputError(
                f"{len(values)} example inputs for a model with {len(names)} inputs ({', '.join(names)})"
            )
        arrays = dict(zip(names, map(as_array, values)))
    return ParityInputs(
        check_feeds(arrays, model, "example inputs"), {name: "example inputs given by the caller" for name in arrays}
    )


@dataclasses.dataclass(frozen=True)
class _State:
    """The last accepted model, its parity and (float16 runs) its headroom."""

    model: ir.Model
    parity: ParityResult
    headroom: Headroom | None


@dataclasses.dataclass(frozen=True)
class _Judge:
    """What every pass is judged with."""

    verify: Verifier
    margin: Margin
    options: ApplyOptions
    required_headroom: float  # a pass may not lower headroom below this (float16 runs)


def _step(
    family: RuleFamily, site: str | None, state: _State, judge: _Judge, snapshot: Snapshot
) -> tuple[_State, Step]:
    """Apply one family (or one site of it) to ``state.model`` and judge it; a pass that is not
    kept is rolled back by restoring ``snapshot`` (the last accepted state)."""
    start = time.perf_counter()
    current = state.parity
    step = Step(family.id, family.title, site, 0, NO_MATCH, "", current.summary(), None, [], [], 0.0)
    step.headroom_before = state.headroom.headroom if state.headroom is not None else None

    def kept(model: ir.Model, parity: ParityResult, headroom: Headroom | None, reason: str = "") -> tuple[_State, Step]:
        step.status, step.reason = ACCEPTED, reason
        step.seconds = time.perf_counter() - start
        return _State(model, parity, headroom), step

    def rolled_back(reason: str) -> tuple[_State, Step]:
        step.status, step.reason = ROLLED_BACK, reason
        step.seconds = time.perf_counter() - start
        return dataclasses.replace(state, model=snapshot.restore()), step

    try:
        applied = family.apply(state.model, dataclasses.replace(judge.options, site=site))
    except Exception as error:
        return rolled_back(f"the rule raised {_describe_exception(error)}")
    if not isinstance(applied, Applied):
        return rolled_back(f"apply returned {type(applied).__name__}, not Applied")
    step.matches, step.notes, step.findings = applied.matches, applied.notes, applied.findings
    step.changed_values = list(applied.changed_values)
    candidate = applied.model or state.model
    if not applied.changed:
        step.seconds = time.perf_counter() - start
        return dataclasses.replace(state, model=candidate), step
    try:
        parity = judge.verify(candidate)
    except CheckFailedError as error:
        return rolled_back(f"breaks validity: {error}")
    step.after = parity.summary()
    headroom = getattr(judge.verify, "headroom", None) if state.headroom is not None else None
    for_headroom = lowered = None
    if headroom is not None and state.headroom is not None:  # the first implies the second
        step.headroom_after = headroom.headroom
        for_headroom, lowered = judge_headroom(
            current, parity, state.headroom, headroom, judge.verify.tolerance, judge.required_headroom
        )
    if lowered is not None:
        return rolled_back(lowered)
    if family.acceptance == "improves":
        better, why = judge_improvement(current, parity, judge.margin)
        if better is not None:
            return kept(candidate, parity, headroom, why)
        return kept(candidate, parity, headroom, for_headroom) if for_headroom else rolled_back(why)
    worse = regression(current, parity, judge.margin)
    if worse is None:
        return kept(candidate, parity, headroom, for_headroom or "")
    if for_headroom:
        return kept(candidate, parity, headroom, f"{for_headroom}; by parity alone it would be rolled back ({worse})")
    return rolled_back(f"parity got worse: {worse}")


def _describe_exception(error: BaseException) -> str:
    if isinstance(error, SvsError):
        return str(error)
    frame = traceback.extract_tb(error.__traceback__)[-1] if error.__traceback__ else None
    where = f" at {Path(frame.filename).name}:{frame.lineno}" if frame else ""
    return f"{type(error).__name__}: {error}{where}"


def _record_provenance(model: ir.Model, report: FixReport) -> None:
    applied = [
        {
            "id": s.family,
            "site": s.site,
            "matches": s.matches,
            "status": s.status,
            "reason": s.reason,
            "notes": s.notes,
            "changed_values": s.changed_values if s.status == ACCEPTED else [],
        }
        for s in report.steps
    ]
    model.metadata_props["svsurgery.rules_applied"] = dumps(applied)
    model.metadata_props["svsurgery.parity"] = dumps(
        {
            "reference": report.reference,
            "reference_kind": report.reference_kind,
            "inputs": report.inputs,
            "tolerance": report.tolerance["name"],
            "before": report.baseline.summary(),
            "after": report.final.summary(),
            "passed": report.passed,
            "precision": report.precision,
            "evaluation": report.evaluation,
            "conversion": report.conversion,
            "headroom": None
            if report.headroom_after is None
            else {
                "before": report.headroom_before.to_dict() if report.headroom_before else None,
                "after": report.headroom_after.to_dict(),
                "required": report.min_headroom,
            },
            "outputs": [dataclasses.asdict(o) for o in report.final.outputs],
        }
    )
    model.metadata_props["svsurgery.versions"] = dumps(report.versions)
