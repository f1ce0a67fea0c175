"""What an audit compares, in one picklable value: every worker (a process of the local pool
or a Ray actor) builds its deployed side and its reference side from an :class:`AuditSpec`."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort

from svsurgery.frontend.build import frontend_metadata
from svsurgery.frontend.config import FrontendConfig
from svsurgery.model_io import SOURCE_FILES_KEY, load
from svsurgery.report import _finite, dumps
from svsurgery.vad.options import SegmentOptions

__all__ = ["AuditSpec", "OtherInput", "ReferenceSpec", "RuntimeSetting", "file_digest", "model_digest"]

FUSED_VAD, FUSED, ENCODER = "fused-vad", "fused", "encoder"
OPTIMIZATION_LEVELS = ("disabled", "basic", "extended", "all")


@dataclasses.dataclass(frozen=True)
class RuntimeSetting:
    """How onnxruntime runs a model. The audit's own setting (the "reference setting" of the
    runtime matrix) is one thread, all graph optimisations, the CPU provider: deterministic, so
    rows do not depend on the engine or the machine's load."""

    threads: int = 1  # intra-op threads; 0: onnxruntime's default (all cores)
    optimization: str = "all"  # disabled | basic | extended | all
    provider: str = "CPUExecutionProvider"

    @property
    def label(self) -> str:
        threads = "all" if self.threads == 0 else str(self.threads)
        provider = self.provider.removesuffix("ExecutionProvider")
        return f"{provider}, {threads} thread{'s' if threads != '1' else ''}, optimisation {self.optimization}"

    def session(self, model: str | bytes):
        levels = {
            "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }
        options = ort.SessionOptions()
        options.log_severity_level = 4
        options.graph_optimization_level = levels[self.optimization]
        if self.threads:
            options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        source = str(model) if isinstance(model, (str, os.PathLike)) else model
        return ort.InferenceSession(source, sess_options=options, providers=[self.provider])


@dataclasses.dataclass(frozen=True)
class OtherInput:
    """An encoder input the audit does not derive from audio (language, textnorm...): fed zeros."""

    name: str
    dtype: str  # numpy dtype name
    rank: int

    def zeros(self) -> np.ndarray:
        return np.zeros([1] * max(self.rank, 1) if self.rank else [], dtype=self.dtype)


@dataclasses.dataclass(frozen=True)
class ReferenceSpec:
    kind: str  # "onnx" (the original model), "torch" (the module), "golden" (stored outputs)
    path: str | None = None  # ORIG.onnx, or the golden folder
    torch: str | None = None  # MODULE_SPEC
    weights: str | None = None

    def describe(self) -> str:
        if self.kind == "onnx":
            return f"the original model {self.path} (onnxruntime, 1 thread)"
        if self.kind == "torch":
            return f"the torch module {self.torch}" + (f" with {self.weights}" if self.weights else "")
        return f"golden outputs in {self.path}"


@dataclasses.dataclass(frozen=True)
class AuditSpec:
    """Everything a worker needs; equal specs give equal rows."""

    model: str  # the deployed model (absolute path)
    model_kind: str  # fused-vad (waveform in, one row per span) | fused (waveform in) | encoder (features in)
    reference: ReferenceSpec
    frontend: FrontendConfig | None  # the reference pipeline's front end (None: golden)
    vad: object | None  # the reference VAD's options (svsurgery.vad.*VadOptions); None: the whole utterance
    segmentation: SegmentOptions
    sample_rate: int
    deployed_inputs: tuple[str, str | None]  # encoder kind: (features, lengths) inputs of the deployed model
    deployed_length_dtype: str
    reference_inputs: tuple[str, str | None]  # the reference encoder's (features, lengths) inputs
    reference_length_dtype: str
    others: tuple[OtherInput, ...]  # the encoder's other inputs, fed zeros on both sides
    outputs: tuple[str, ...]  # the encoder outputs compared, by name
    setting: RuntimeSetting = RuntimeSetting()

    def span_feeds(self, features: np.ndarray, side: Literal["deployed", "reference"]) -> dict[str, np.ndarray]:
        """One span's feeds for the ``side`` ("deployed" or "reference") encoder: its features as a
        batch of one, its length input when it has one, zeros for the other inputs."""
        name, lengths = self.deployed_inputs if side == "deployed" else self.reference_inputs
        length_dtype = self.deployed_length_dtype if side == "deployed" else self.reference_length_dtype
        feeds = {name: features[None]}
        if lengths:
            feeds[lengths] = np.array([features.shape[0]], length_dtype)
        feeds.update({o.name: o.zeros() for o in self.others})
        return feeds

    def fingerprint(self, digests: dict[str, str]) -> str:
        """What a finished shard must have been computed with to be reused on a rerun."""
        data = {
            "model_kind": self.model_kind,
            "digests": digests,
            "reference": dataclasses.asdict(self.reference),
            "frontend": _describe_frontend(self.frontend),
            "vad": _options(self.vad),
            "segmentation": _options(self.segmentation),
            "inputs": [self.deployed_inputs, self.reference_inputs, [dataclasses.asdict(o) for o in self.others]],
            "outputs": list(self.outputs),
            "setting": dataclasses.asdict(self.setting),
            "rows": ROW_FORMAT,
        }
        return hashlib.sha256(dumps(data).encode()).hexdigest()


ROW_FORMAT = 1  # bumped when the rows' columns change: shards of another format are recomputed


def _options(value) -> dict | None:
    if value is None:
        return None
    return json.loads(json.dumps(_finite(dataclasses.asdict(value)), default=str))


def _describe_frontend(config) -> dict | None:
    if config is None:
        return None
    described = frontend_metadata(config.fbank, config.lfr, config.cmvn)
    if config.cmvn is not None:  # the values, not only where they came from
        digest = hashlib.sha256(
            np.asarray(config.cmvn.shift, np.float64).tobytes() + np.asarray(config.cmvn.scale, np.float64).tobytes()
        )
        described["cmvn_sha256"] = digest.hexdigest()
    return json.loads(json.dumps(described, default=str))


def file_digest(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_digest(path: str | os.PathLike) -> str:
    """sha256 of a model file and, in name order, its external data files."""
    path = Path(path)
    files = sorted(load(path).meta.get(SOURCE_FILES_KEY, ()) or [str(path.absolute())])
    digest = hashlib.sha256()
    for name in files:
        digest.update(Path(name).name.encode() + b"\0" + file_digest(name).encode())
    return digest.hexdigest() if len(files) > 1 else file_digest(path)
