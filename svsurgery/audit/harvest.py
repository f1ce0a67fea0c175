"""The worst utterances, kept as golden files (their inputs and the reference pipeline's
outputs, with the versions that made them): ``svsurgery check MODEL worst/01-ID.npz`` replays one
anywhere, and ``svsurgery audit MODEL --golden-dir OUT/worst`` audits them all again.

A fused model's golden file holds its inputs (``waveform`` [1, N], ``waveform_lengths`` and the
other inputs) and what the model should output: each compared output with one row per span,
zero-padded to the longest (as the fused model pads), and ``segments`` [K, 2] ms. An encoder's
holds the worst span's features and the reference encoder's outputs for them.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from svsurgery import golden
from svsurgery.audit.corpus import Entry, read_audio
from svsurgery.audit.deployed import fused_feeds
from svsurgery.audit.reference import ReferencePipeline
from svsurgery.audit.spec import ENCODER, FUSED_VAD, AuditSpec

__all__ = ["golden_arrays", "harvest", "safe_name", "worst_span"]


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:80] or "utterance"


def _stack(rows: list[np.ndarray]) -> np.ndarray:
    rows = [np.asarray(r) for r in rows]
    if not rows or rows[0].ndim == 0:
        return np.asarray(rows)
    longest = max(r.shape[0] for r in rows)
    batch = np.zeros((len(rows), longest, *rows[0].shape[1:]), dtype=rows[0].dtype)
    for k, row in enumerate(rows):
        batch[k, : row.shape[0]] = row
    return batch


def worst_span(row: dict) -> int | None:
    """Index (in the reference's spans) of the span with the smallest cosine; else the first."""
    if not row["spans_reference"]:
        return None
    if row["span_cosine"]:
        shared = [k for k, span in enumerate(row["spans_reference"]) if span in row["spans_model"]]
        return shared[int(np.argmin(row["span_cosine"]))]
    return 0


def golden_arrays(spec: AuditSpec, pipeline, waveform: np.ndarray, row: dict):
    """(inputs, outputs, reference run) of the golden file for one utterance."""
    reference = pipeline.run(waveform)
    if spec.model_kind == ENCODER:
        k = worst_span(row) or 0
        features = reference.features[k]
        name, lengths = spec.deployed_inputs
        inputs = {name: features[None]}
        if lengths:
            inputs[lengths] = np.array([features.shape[0]], spec.deployed_length_dtype)
        inputs.update({o.name: o.zeros() for o in spec.others})
        outputs = {n: np.asarray(reference.rows[k][n])[None] for n in spec.outputs}
        return inputs, outputs, reference
    inputs = fused_feeds(spec, waveform)
    outputs = {n: _stack([r[n] for r in reference.rows]) for n in spec.outputs} if reference.rows else {}
    if spec.model_kind == FUSED_VAD:
        outputs["segments"] = np.asarray(reference.spans, np.int64).reshape(-1, 2)
    return inputs, outputs, reference


def harvest(spec: AuditSpec, worst: list[dict], entries: dict[int, Entry], folder: Path, plan=None) -> list[dict]:
    """Write one golden file per worst row into ``folder``; returns [{id, path, rank}]."""
    written: list[dict] = []
    if not worst:
        return written
    folder.mkdir(parents=True, exist_ok=True)
    pipeline = None
    for rank, row in enumerate(worst, 1):
        entry = entries[row["index"]]
        target = folder / f"{rank:02d}-{safe_name(entry.id)}.npz"
        if plan is not None:
            plan.write(target, "worst-utterance golden file")
        if entry.golden:
            assert entry.path is not None, "golden entries are listed from their files"
            stored = golden.load(entry.path)
            golden.save(
                target,
                stored.inputs,
                stored.outputs,
                source=f"{stored.meta.get('source', 'golden')} (worst in an audit)",
            )
        else:
            if pipeline is None:
                pipeline = ReferencePipeline(spec)
            waveform = read_audio(entry, spec.sample_rate)
            inputs, outputs, _ = golden_arrays(spec, pipeline, waveform, row)
            if not outputs:
                continue
            source = (
                f"svsurgery audit: the reference pipeline ({spec.reference.describe()}; "
                f"front end {pipeline.frontend_description};"
                f" VAD {pipeline.vad.description if pipeline.vad else 'none'}) "
                f"on utterance {entry.id} ({entry.path})"
            )
            golden.save(target, inputs, outputs, source=source)
        if plan is not None:
            plan.written(target)
        written.append(
            {
                "rank": rank,
                "id": entry.id,
                "path": str(target),
                "token_error_rate": row["token_error_rate"],
                "cosine_min": row["cosine_min"],
                "segments_identical": row["segments_identical"],
            }
        )
    return written
