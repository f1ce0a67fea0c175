"""``svsurgery audit``: parity of a deployed model against its reference pipeline over a whole
corpus, on one machine (a process pool) or a Ray cluster.

    from svsurgery.audit import audit
    report = audit("enc.fused.onnx", audio="corpus/", reference_model="enc.onnx", output_dir="audit-out")
    report.summary["totals"]["tokens_differ_share"]

Modules, by responsibility: :mod:`~svsurgery.audit.corpus` (entries, audio, SNR), :mod:`~svsurgery.audit.spec`
and :mod:`~svsurgery.audit.prepare` (what is compared), :mod:`~svsurgery.audit.deployed` and
:mod:`~svsurgery.audit.reference` (the two sides), :mod:`~svsurgery.audit.metrics` (per-utterance rows),
:mod:`~svsurgery.audit.aggregate` (buckets, worst), :mod:`~svsurgery.audit.store` (shards, resuming,
Parquet/JSONL), :mod:`~svsurgery.audit.engines` (local pool, Ray Data), :mod:`~svsurgery.audit.harvest`
(worst as golden files), :mod:`~svsurgery.audit.localize` (diff of the worst), :mod:`~svsurgery.audit.matrix`
(runtime matrix), :mod:`~svsurgery.audit.baseline` (drift), :mod:`~svsurgery.audit.html` (report.html),
:mod:`~svsurgery.audit.run` (the whole job).
"""

from svsurgery.audit.run import AuditReport, audit

__all__ = ["AuditReport", "audit"]
