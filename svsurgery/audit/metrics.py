"""Per-utterance figures: one row of the audit for one utterance, from its two sides.

- **segments**: the spans (ms) each side decoded; identical or not; when both have as many,
  the largest and mean boundary difference in ms;
- **outputs**, per span both sides share (same [start, end]): cosine and max abs of the
  compared output over the span's valid frames (a side's zero padding past the other's
  extent is cut), the smallest cosine and the largest error over the utterance, NaN/Inf the
  reference does not have, and whether integer outputs (lengths) are equal;
- **tokens** (CTC outputs): greedy decoding of every span on each side, concatenated in
  order, and their token error rate against each other: edit distance / reference length
  (0 when both are empty, 1 when only the reference is). This counts every span, so a
  segmentation difference shows here too.

Row columns are fixed (:data:`COLUMNS`); columns starting with ``time_`` are timings, the
only figures that differ between two runs of the same audit, and are left out of the
comparison of rows between runs and engines (:func:`comparable`).
"""

from __future__ import annotations

import math
import re

import numpy as np

from svsurgery.audit.corpus import duration_bucket, snr_bucket
from svsurgery.audit.reference import SideRun
from svsurgery.parity.metrics import compare, greedy_ctc_tokens, token_error_rate

__all__ = ["COLUMNS", "TIMING_PREFIX", "bad_row", "comparable", "compare_sides", "primary_output"]

TIMING_PREFIX = "time_"
_CTC = re.compile(r"ctc", re.IGNORECASE)

# column -> Arrow type name (see svsurgery.audit.store): the schema of rows.parquet
COLUMNS: dict[str, str] = {
    "index": "int64",
    "id": "string",
    "path": "string",
    "language": "string",
    "status": "string",  # ok | bad
    "reason": "string",  # why an entry is bad
    "duration_s": "float64",
    "snr_db": "float64",
    "duration_bucket": "string",
    "snr_bucket": "string",
    "spans_model": "list<list<int64>>",
    "spans_reference": "list<list<int64>>",
    "segments_identical": "bool",
    "boundary_max_ms": "float64",
    "boundary_mean_ms": "float64",
    "spans_compared": "int64",
    "span_cosine": "list<float64>",
    "span_max_abs": "list<float64>",
    "cosine_min": "float64",
    "cosine_mean": "float64",
    "max_abs": "float64",
    "max_rel": "float64",
    "nonfinite": "int64",
    "integers_equal": "bool",
    "output": "string",
    "tokens_model": "list<int64>",
    "tokens_reference": "list<int64>",
    "token_edits": "int64",
    "token_error_rate": "float64",
    "tokens_differ": "bool",
    "time_model_s": "float64",
    "time_reference_s": "float64",
}


def comparable(row: dict) -> dict:
    """The row without its timings: what two runs of the same audit must agree on exactly."""
    return {k: v for k, v in row.items() if not k.startswith(TIMING_PREFIX)}


def _empty(entry, **figures) -> dict:
    row = dict.fromkeys(COLUMNS)
    row.update(index=entry.index, id=entry.id, path=entry.path, language=entry.language)
    row.update(figures)
    return row


def bad_row(entry, reason: str, **figures) -> dict:
    """The row of an entry that could not be audited, with the reason."""
    return _empty(entry, status="bad", reason=reason, **figures)


def primary_output(names, reference_row: dict[str, np.ndarray] | None = None) -> str:
    """The output the figures are about: the first CTC/logit-like float output, else the first float one."""
    floats = [
        n for n in names if reference_row is None or np.issubdtype(np.asarray(reference_row[n]).dtype, np.floating)
    ]
    for name in floats:
        if _CTC.search(name) or re.search(r"logit", name, re.IGNORECASE):
            return name
    return (floats or list(names))[0]


def _trim(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cut zero padding: when the two differ only in their first axis and the longer one's
    extra frames are all zero (a side that pads rows to the longest), compare the common part."""
    if a.shape == b.shape or a.ndim != b.ndim or a.ndim == 0 or a.shape[1:] != b.shape[1:]:
        return a, b
    n = min(a.shape[0], b.shape[0])
    longer = a if a.shape[0] > n else b
    if np.any(longer[n:]):
        return a, b
    return a[:n], b[:n]


def _tokens(rows: list[dict[str, np.ndarray]], name: str) -> list[int]:
    tokens: list[int] = []
    for row in rows:
        value = np.asarray(row[name])
        if value.ndim == 2 and value.shape[0] > 0:
            tokens.extend(greedy_ctc_tokens(value)[0])
    return tokens


def _cosine(actual: np.ndarray, expected: np.ndarray) -> float:
    """Cosine similarity with numpy's pairwise summation, never BLAS: a BLAS dot product splits its
    sum by the thread count, which Ray actors and pool processes set differently, and the last
    bits would differ between engines. Non-finite values where the reference is finite count as
    0, as in svsurgery.parity.metrics.compare."""
    a = actual.astype(np.float64).ravel()
    e = expected.astype(np.float64).ravel()
    finite = np.isfinite(e)
    a = np.where(finite & np.isfinite(a), a, 0.0)
    e = np.where(finite, e, 0.0)
    norms = math.sqrt(float(np.sum(a * a)) * float(np.sum(e * e)))
    if norms == 0:
        return 1.0 if np.array_equal(a, e) else 0.0
    return float(np.sum(a * e)) / norms


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def compare_sides(
    entry,
    deployed: SideRun,
    reference: SideRun,
    outputs: tuple[str, ...],
    *,
    duration_s: float | None,
    snr_db: float | None,
) -> dict:
    """The audit's row for one utterance."""
    model_spans = np.asarray(deployed.spans, np.int64).reshape(-1, 2)
    reference_spans = np.asarray(reference.spans, np.int64).reshape(-1, 2)
    identical = model_spans.shape == reference_spans.shape and bool(np.array_equal(model_spans, reference_spans))
    boundary_max = boundary_mean = None
    if model_spans.shape == reference_spans.shape and len(model_spans):
        difference = np.abs(model_spans - reference_spans).astype(np.float64)
        boundary_max, boundary_mean = float(difference.max()), float(difference.mean())
    elif model_spans.shape == reference_spans.shape:
        boundary_max = boundary_mean = 0.0

    name = primary_output(outputs, reference.rows[0] if reference.rows else None)
    by_span = {tuple(span): k for k, span in enumerate(model_spans.tolist())}
    cosines, errors, relative, nonfinite, integers_equal = [], [], [], 0, True
    for k, span in enumerate(reference_spans.tolist()):
        j = by_span.get(tuple(span))
        if j is None:
            continue
        for output in outputs:
            actual, expected = _trim(np.asarray(deployed.rows[j][output]), np.asarray(reference.rows[k][output]))
            if not np.issubdtype(expected.dtype, np.floating):
                integers_equal = (
                    integers_equal and actual.shape == expected.shape and bool(np.array_equal(actual, expected))
                )
                continue
            if output != name:
                continue
            parity = compare(output, actual, expected, class_axis=False)
            cosines.append(_cosine(actual, expected) if parity.problem is None else float(parity.cosine))
            errors.append(float(parity.max_abs))
            relative.append(float(parity.max_rel))
            nonfinite += parity.nan_count + parity.inf_count

    tokens_model = tokens_reference = None
    edits = rate = differ = None
    first = reference.rows[0][name] if reference.rows else (deployed.rows[0][name] if deployed.rows else None)
    if _CTC.search(name) and (first is None or np.ndim(first) >= 2):
        tokens_model, tokens_reference = _tokens(deployed.rows, name), _tokens(reference.rows, name)
        rate = token_error_rate([tokens_reference], [tokens_model])
        edits = round(rate * len(tokens_reference)) if tokens_reference else len(tokens_model)
        differ = tokens_model != tokens_reference

    return _empty(
        entry,
        status="ok",
        duration_s=duration_s,
        snr_db=_finite(snr_db) if snr_db is not None else None,
        duration_bucket=duration_bucket(duration_s),
        snr_bucket=snr_bucket(snr_db),
        spans_model=model_spans.tolist(),
        spans_reference=reference_spans.tolist(),
        segments_identical=identical,
        boundary_max_ms=boundary_max,
        boundary_mean_ms=boundary_mean,
        spans_compared=len(cosines),
        span_cosine=cosines,
        span_max_abs=[e if math.isfinite(e) else None for e in errors],
        cosine_min=min(cosines) if cosines else None,
        cosine_mean=float(np.mean(cosines)) if cosines else None,
        max_abs=_finite(max(errors)) if errors else None,
        max_rel=_finite(max(relative)) if relative else None,
        nonfinite=nonfinite,
        integers_equal=integers_equal,
        output=name,
        tokens_model=tokens_model,
        tokens_reference=tokens_reference,
        token_edits=edits,
        token_error_rate=rate,
        tokens_differ=differ,
        time_model_s=deployed.seconds,
        time_reference_s=reference.seconds,
    )
