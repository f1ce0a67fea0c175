"""Corpus-level figures from the rows: totals, buckets (duration, estimated SNR, language),
the cosine distribution, the worst utterances, the bad entries, time per audio-second.

For every group of utterances: how many, how many have identical segments, the share whose
tokens differ at all, the mean and the worst token error rate, the corpus token error rate
(all edits / all reference tokens), the mean and the worst cosine (each utterance's smallest
span cosine), the mean and the largest max abs error, and boundary differences in ms.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from svsurgery.audit.corpus import DURATION_EDGES_S, SNR_EDGES_DB

__all__ = ["COSINE_BINS", "MIN_COSINE", "diverges", "group_figures", "summarize", "worst_rows"]

# histogram of 1 - cosine (each utterance's worst span), in decades: exact agreement lands in the first bin
COSINE_BINS = (0.0, 1e-9, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 2.0 + 1e-9)


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _quantile(values, q: float) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.quantile(np.asarray(values, np.float64), q, method="lower")) if values else None


def group_figures(rows: list[dict]) -> dict:
    ok = [r for r in rows if r["status"] == "ok"]
    with_tokens = [r for r in ok if r.get("tokens_differ") is not None]
    edits = sum(r["token_edits"] or 0 for r in with_tokens)
    reference_tokens = sum(len(r["tokens_reference"] or []) for r in with_tokens)
    cosines = [r["cosine_min"] for r in ok if r["cosine_min"] is not None]
    errors = [r["max_abs"] for r in ok if r["max_abs"] is not None]
    boundaries = [r["boundary_max_ms"] for r in ok if r["boundary_max_ms"] is not None]
    return {
        "utterances": len(rows),
        "ok": len(ok),
        "bad": len(rows) - len(ok),
        "audio_s": float(sum(r["duration_s"] or 0.0 for r in ok)),
        "segments_identical": sum(bool(r["segments_identical"]) for r in ok),
        "segments_identical_share": (sum(bool(r["segments_identical"]) for r in ok) / len(ok)) if ok else None,
        "span_count_differs": sum(len(r["spans_model"] or []) != len(r["spans_reference"] or []) for r in ok),
        "boundary_ms_mean": _mean(boundaries),
        "boundary_ms_max": max(boundaries) if boundaries else None,
        "tokens_differ": sum(bool(r["tokens_differ"]) for r in with_tokens),
        "tokens_differ_share": (sum(bool(r["tokens_differ"]) for r in with_tokens) / len(with_tokens))
        if with_tokens
        else None,
        "token_error_rate_mean": _mean(r["token_error_rate"] for r in with_tokens),
        "token_error_rate_max": max((r["token_error_rate"] for r in with_tokens), default=None),
        "token_error_rate_corpus": (edits / reference_tokens)
        if reference_tokens
        else (float(edits > 0) if with_tokens else None),
        "cosine_mean": _mean(cosines),
        "cosine_min": min(cosines) if cosines else None,
        "cosine_p01": _quantile(cosines, 0.01),
        "cosine_p50": _quantile(cosines, 0.5),
        "max_abs_mean": _mean(errors),
        "max_abs_max": max(errors) if errors else None,
        "nonfinite": sum(r["nonfinite"] or 0 for r in ok),
        "integers_differ": sum(r["integers_equal"] is False for r in ok),
    }


def _buckets(rows: list[dict], column: str, order: list[str] | None = None) -> list[dict]:
    keys = sorted(
        {r[column] for r in rows if r["status"] == "ok" and r[column] is not None},
        key=(lambda k: order.index(k) if order and k in order else len(order or [])) if order else str,
    )
    return [{"bucket": key, **group_figures([r for r in rows if r[column] == key])} for key in keys]


def _bucket_order(edges, unit: str, below: bool) -> list[str]:
    labels = [f"<{edges[0]:g} {unit}"] if below else []
    labels += [f"{a:g}-{b:g} {unit}" for a, b in itertools.pairwise(edges)]
    return [*labels, f">={edges[-1]:g} {unit}"]


def cosine_histogram(rows: list[dict]) -> dict:
    """Counts of utterances per decade of 1 - cosine (their worst span)."""
    distances = [max(0.0, 1.0 - r["cosine_min"]) for r in rows if r["status"] == "ok" and r["cosine_min"] is not None]
    counts, _ = np.histogram(np.asarray(distances, np.float64), bins=np.asarray(COSINE_BINS))
    return {"one_minus_cosine_edges": list(COSINE_BINS), "counts": [int(c) for c in counts]}


def badness(row: dict) -> tuple:
    """Sort key, worst first: token error rate, then segments that differ, then the smallest cosine."""
    rate = row["token_error_rate"] if row["token_error_rate"] is not None else 0.0
    cosine = (
        row["cosine_min"]
        if row["cosine_min"] is not None
        else (-2.0 if row["spans_compared"] == 0 and row["spans_reference"] else 1.0)
    )
    error = row["max_abs"] if row["max_abs"] is not None else math.inf if row["nonfinite"] else 0.0
    return (-rate, bool(row["segments_identical"]), cosine, -error, row["index"])


MIN_COSINE = 0.99999  # the "frontend" tolerance profile's: a faithful pipeline keeps every span above it


def diverges(row: dict) -> bool:
    """Beyond tolerance: tokens or segments differ, NaN/Inf appear, or a span's cosine is below MIN_COSINE."""
    cosine = row["cosine_min"]
    return bool(
        row["tokens_differ"]
        or not row["segments_identical"]
        or row["nonfinite"]
        or (cosine is not None and cosine < MIN_COSINE)
        or row["integers_equal"] is False
    )


def worst_rows(rows: list[dict], count: int) -> list[dict]:
    """The ``count`` worst audited utterances that differ at all (token, segment, or not bit-equal)."""
    ok = [r for r in rows if r["status"] == "ok"]
    ranked = sorted(ok, key=badness)
    differing = [
        r
        for r in ranked
        if r["tokens_differ"] or not r["segments_identical"] or (r["max_abs"] or 0) > 0 or r["nonfinite"]
    ]
    return differing[:count]


def summarize(rows: list[dict]) -> dict:
    ok = [r for r in rows if r["status"] == "ok"]
    audio = sum(r["duration_s"] or 0.0 for r in ok)
    model_time = sum(r["time_model_s"] or 0.0 for r in ok)
    reference_time = sum(r["time_reference_s"] or 0.0 for r in ok)
    return {
        "totals": group_figures(rows),
        "buckets": {
            "duration": _buckets(rows, "duration_bucket", _bucket_order(DURATION_EDGES_S, "s", below=False)),
            "snr": _buckets(rows, "snr_bucket", _bucket_order(SNR_EDGES_DB, "dB", below=True)),
            "language": _buckets(rows, "language"),
        },
        "cosine_histogram": cosine_histogram(rows),
        "bad_entries": [
            {"index": r["index"], "id": r["id"], "path": r["path"], "reason": r["reason"]}
            for r in rows
            if r["status"] != "ok"
        ],
        "timing": {
            "model_ms_per_audio_s": 1000 * model_time / audio if audio else None,
            "reference_ms_per_audio_s": 1000 * reference_time / audio if audio else None,
        },
    }
