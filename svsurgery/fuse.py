"""fuse-preproc: one model from raw waveform to encoder outputs, verified.

the encoder (a model, or a path loaded) -> find its feature/length inputs -> discover the
front-end settings it was shipped with -> build the front end at the encoder's opset ->
verify on a built-in waveform against (a) the same front-end graph run separately then the
encoder (the fusion itself must be exact) and (b) the reference pipeline, kaldi-native-fbank
(or the float64 statement when knf is absent) + FunASR's LFR and CMVN in numpy +
onnxruntime on the original encoder -> record options, sources, versions and parity in
metadata_props (strict JSON) -> return the fused model and the report. Nothing is written
here: the caller saves the model when the report passed (the command line through its file
plan, as ``fix`` does).
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import onnx
import onnx_ir as ir
from rich.markup import escape
from rich.table import Table

from svsurgery._version import __version__
from svsurgery.compose import EncoderInputs, find_encoder_inputs, prepend_frontend
from svsurgery.dtypes import LOW_PRECISION_TYPES
from svsurgery.errors import BadInputError
from svsurgery.frontend import build as build_frontend
from svsurgery.frontend import knf, numpy_statement
from svsurgery.frontend._ops import MIN_OPSET
from svsurgery.frontend.build import FEATURE_LENGTHS, FEATURES, WAVEFORM, WAVEFORM_LENGTHS, frontend_metadata
from svsurgery.frontend.config import FrontendConfig, discover
from svsurgery.frontend.options import LfrOptions
from svsurgery.model_io import SOURCE_PATH_KEY, load, value_names
from svsurgery.opset import ai_onnx_opset, convert_opset
from svsurgery.parity.metrics import PROFILES, OutputParity, Tolerance, compare, compare_outputs
from svsurgery.parity.waveforms import speech_like
from svsurgery.patch import clone
from svsurgery.report import Report, dumps
from svsurgery.runtime import inference_session
from svsurgery.vad import build_vad_frontend
from svsurgery.vad import numpy_statement as vad_statement
from svsurgery.vad.mode import VadMode
from svsurgery.vad.options import SegmentOptions

__all__ = ["FuseReport", "fuse_preprocessing", "verification_waveforms"]

_NUMPY_INTEGERS = {ir.DataType.INT32: np.int32, ir.DataType.INT64: np.int64}


def verification_waveforms() -> list[np.ndarray]:
    """Two rows of different lengths, so per-row lengths are exercised too."""
    speech = speech_like(4.0, seed=0)
    return [speech, speech_like(2.3, seed=1)]


@dataclasses.dataclass
class FuseReport(Report):
    encoder: str
    output: str | None  # where the caller wrote the fused model (None: not written)
    written: bool  # set by the caller that saved it (fuse_preprocessing writes nothing)
    inputs_found: str
    sources: dict[str, str]
    notices: list[str]
    frontend: dict
    reference_frontend: str
    waveform: str
    fused_vs_two_step: list[OutputParity]
    fused_vs_reference: list[OutputParity]
    passed: bool

    def render(self, console) -> None:
        console.print(f"[bold]fuse-preproc[/bold] {escape(self.encoder)}")
        for setting, source in self.sources.items():
            console.print(f"  {setting}: {escape(source)}")
        console.print(f"  inputs: {escape(self.inputs_found)}")
        for notice in self.notices:
            console.print(f"  [yellow]note[/yellow]: {escape(notice)}")
        console.print(
            f"parity of the fused model on the {escape(self.waveform)}, against\n"
            "  two-step:  the same front-end graph run separately, then the original encoder\n"
            f"  reference: {escape(self.reference_frontend)} + LFR + CMVN in numpy, then the original encoder"
        )
        table = Table()
        for column in ("vs", "output", "max abs", "max rel", "cosine", "argmax", "ok"):
            table.add_column(column, justify="left" if column in ("vs", "output") else "right")
        for label, rows in (("two-step", self.fused_vs_two_step), ("reference", self.fused_vs_reference)):
            for row in rows:
                agreement = "-" if row.argmax_agreement is None else f"{row.argmax_agreement:.2%}"
                verdict = "[green]yes[/green]" if row.passed else "[red]no[/red]: " + escape("; ".join(row.failures))
                table.add_row(
                    escape(label),
                    escape(row.name),
                    f"{row.max_abs:.2e}",
                    f"{row.max_rel:.2e}",
                    f"{row.cosine:.8f}",
                    agreement,
                    verdict,
                )
                label = ""
        console.print(table)
        if self.written:
            console.print(f"[green]wrote[/green] {escape(str(self.output))}")
        elif not self.passed:
            console.print("[red]parity beyond tolerance: nothing written[/red]")


def _feeds_for_other_inputs(model: ir.Model, binding: EncoderInputs, batch: int) -> dict[str, np.ndarray]:
    """Zeros for inputs the front end does not provide (language ids, flags...), batch-sized."""
    feeds: dict[str, np.ndarray] = {}
    for name, value in zip(value_names(model.graph.inputs), model.graph.inputs):
        if value is binding.features or value is binding.lengths:
            continue
        if value.dtype is None or value.shape is None:
            raise BadInputError(
                f"encoder input '{value.name}' has no declared type or shape to fill in for verification"
            )
        shape = [d if isinstance(d, int) else (batch if i == 0 else 1) for i, d in enumerate(value.shape)]
        feeds[name] = np.zeros(shape, dtype=value.dtype.numpy())
    return feeds


def _reference_features(rows, config: FrontendConfig) -> tuple[list[np.ndarray], str]:
    use_knf = knf.available()
    features = []
    for row in rows:
        fbank = knf.fbank(row, config.fbank) if use_knf else numpy_statement.fbank(row, config.fbank)
        stacked = numpy_statement.apply_lfr(fbank, config.lfr)
        if config.cmvn is not None:
            stacked = numpy_statement.apply_cmvn(stacked, config.cmvn.shift, config.cmvn.scale)
        features.append(stacked.astype(np.float32))
    return features, (knf.version() if use_knf else "float64 reference fbank (kaldi-native-fbank not installed)")


def _pad(rows: list[np.ndarray], width: int | None = None) -> np.ndarray:
    length = max([r.shape[0] for r in rows] + [width or 0])
    batch = np.zeros((len(rows), length, *rows[0].shape[1:]), dtype=rows[0].dtype)
    for i, row in enumerate(rows):
        batch[i, : row.shape[0]] = row
    return batch


def fuse_preprocessing(
    encoder: ir.Model | str | os.PathLike,
    *,
    config: str | os.PathLike | None = None,
    cmvn: str | os.PathLike | None = None,
    lfr: LfrOptions | None = None,
    preset: str = "sensevoice",
    use_cmvn: bool = True,
    feature_input: str | None = None,
    length_input: str | None = None,
    keep_features: bool = False,
    vad: VadMode | None = None,
    segmentation: SegmentOptions | None = None,
) -> tuple[ir.Model, FuseReport]:
    """The front end fused into ``encoder`` (a model, left as it is, or the path of one), and
    the report of its verification. Nothing is written: save the model when ``report.passed``
    (and set ``report.output``/``report.written`` to say so). Settings are discovered beside
    the model's file (config.yaml, am.mvn; a model not loaded from a file has only its
    metadata and the flags).

    With ``vad``, the fused model takes one recording, finds its speech, cuts it into spans
    (``segmentation``: FunASR's merge_vad by default) and runs the encoder on each span at its
    own length (one Loop; outputs one row per span, zero past each row's extent); it also
    outputs ``segments`` [K, 2] in ms. Every fused model ends with the entry's report,
    ``waveform_nonfinite``, ``waveform_clipped``, ``waveform_lengths_used`` (int64 [B]; see
    :func:`svsurgery.frontend.build.sanitize_waveform`).
    """
    original: ir.Model | str | os.PathLike
    if isinstance(encoder, ir.Model):
        original, model = encoder, clone(encoder)  # the references run the caller's model; the copy is fused
        encoder_path = model.meta.get(SOURCE_PATH_KEY)
        label = str(encoder_path or "the encoder (in memory)")
    else:
        original, model = encoder, load(encoder)  # onnxruntime reads the file itself (external data followed)
        encoder_path = label = str(encoder)
    found = discover(model, encoder_path, config=config, cmvn=cmvn, lfr=lfr, preset=preset, use_cmvn=use_cmvn)
    binding = find_encoder_inputs(model, feature_input, length_input)
    produced = found.fbank.feature_dim * found.lfr.m
    dim = binding.feature_dim
    if isinstance(dim, int) and dim != produced:
        raise BadInputError(
            f"encoder input '{binding.features.name}' takes D={dim} features per frame, but the front end makes "
            f"{produced} ({found.fbank.feature_dim} fbank x LFR m={found.lfr.m}, from {found.sources['fbank']} / "
            f"{found.sources['lfr']}); check --preset/--lfr/--config"
        )
    notices = list(found.notices)
    if not isinstance(dim, int):
        notices.append(
            f"feature dimension of '{binding.features.name}' is not fixed in the model; the front end makes {produced}"
        )
    opset = ai_onnx_opset(model)
    needed = MIN_OPSET if vad is None else vad.validate().required_opset()
    if opset is None or opset < needed:
        model = convert_opset(model, needed, label=label)
        binding = find_encoder_inputs(model, feature_input, length_input)
        notices.append(f"encoder converted from ai.onnx opset {opset} to {needed} (the front end needs {needed})")
        opset = needed
    frontend_model = build_frontend(found.fbank, found.lfr, found.cmvn, opset=opset, length_dtype=binding.length_dtype)
    if binding.features.dtype in LOW_PRECISION_TYPES:
        notices.append(
            f"the encoder reads {binding.features.dtype.name} features: the front end computes in float32 and its "
            "features are rounded once where the encoder reads them; fused vs two-step is judged by the fp16 "
            "profile (onnxruntime's CPU float16 kernels round differently inside the fused graph)"
        )
    if vad is not None:
        return _fuse_with_vad(
            model,
            original,
            label,
            frontend_model,
            found,
            binding,
            notices,
            vad,
            segmentation or SegmentOptions(),
            opset=opset,
            keep_features=keep_features,
        )

    rows = verification_waveforms()
    waveform_batch = _pad([r[:, None] for r in rows])[:, :, 0]
    waveform_lengths = np.array([r.size for r in rows], np.int64)
    others = _feeds_for_other_inputs(model, binding, len(rows))
    encoder_session = inference_session(original)
    features_name, features_dtype = binding.features.name, binding.features.dtype
    assert features_name is not None and features_dtype is not None, "find_encoder_inputs checked the feature input"

    def run_encoder(features: np.ndarray, lengths: np.ndarray) -> dict[str, np.ndarray]:
        feeds = {features_name: features.astype(features_dtype.numpy()), **others}
        if binding.lengths is not None:
            assert binding.lengths.name is not None, "a graph input has a name"
            feeds[binding.lengths.name] = lengths.astype(_NUMPY_INTEGERS[binding.length_dtype])
        names = [o.name for o in encoder_session.get_outputs()]
        return dict(zip(names, encoder_session.run(names, feeds)))

    reference_rows, reference_name = _reference_features(rows, found)
    reference_outputs = run_encoder(_pad(reference_rows), np.array([r.shape[0] for r in reference_rows]))
    frontend_session = inference_session(frontend_model)
    graph_features, graph_lengths = frontend_session.run(
        [FEATURES, FEATURE_LENGTHS], {WAVEFORM: waveform_batch, WAVEFORM_LENGTHS: waveform_lengths}
    )
    two_step_outputs = run_encoder(graph_features, graph_lengths)

    fused = prepend_frontend(model, frontend_model, binding, keep_features=keep_features)
    fused_session = inference_session(fused)
    fused_names = [o.name for o in fused_session.get_outputs()]
    fused_outputs = dict(
        zip(
            fused_names,
            fused_session.run(fused_names, {WAVEFORM: waveform_batch, WAVEFORM_LENGTHS: waveform_lengths, **others}),
        )
    )

    vs_two_step = compare_outputs(fused_outputs, two_step_outputs, _two_step_tolerance(binding, "fp32-strict")).outputs
    vs_reference = compare_outputs(fused_outputs, reference_outputs, PROFILES["frontend"]).outputs
    passed = all(p.passed for p in vs_two_step + vs_reference)
    options = frontend_metadata(found.fbank, found.lfr, found.cmvn)
    report = FuseReport(
        encoder=label,
        output=None,
        written=False,
        inputs_found=binding.how,
        sources=found.sources,
        notices=notices,
        frontend=options,
        reference_frontend=reference_name,
        waveform=(
            f"built-in speech-like waveform, {len(rows)} rows of {', '.join(f'{r.size / 16000:.2f} s' for r in rows)}"
        ),
        fused_vs_two_step=vs_two_step,
        fused_vs_reference=vs_reference,
        passed=passed,
    )
    return _record(fused, report)


def _record(fused: ir.Model, report: FuseReport, **extra) -> tuple[ir.Model, FuseReport]:
    """Provenance and parity into metadata_props, as strict JSON (a non-finite number is written
    "inf"/"nan", as the engine writes its records)."""
    fused.metadata_props["svsurgery.fuse"] = dumps(
        {
            "svsurgery": __version__,
            "onnx": onnx.__version__,
            "sources": report.sources,
            "reference": report.reference_frontend,
            **extra,
            "parity": {
                "fused_vs_two_step": [dataclasses.asdict(p) for p in report.fused_vs_two_step],
                "fused_vs_reference": [dataclasses.asdict(p) for p in report.fused_vs_reference],
            },
        }
    )
    return fused, report


def vad_verification_waveform() -> np.ndarray:
    """20 s of the built-in speech-like waveform: pauses for the VAD, more than one 15 s span."""
    return speech_like(20.0, seed=3)


def _fuse_with_vad(
    model, original, label, frontend_model, found, binding, notices, vad, segmentation, *, opset, keep_features
) -> tuple[ir.Model, FuseReport]:
    """The VAD fusion, verified against the same pipeline run step by step: the VAD and the
    segmentation in numpy, then each span through the front end and the encoder alone (as
    FunASR decodes each span alone), and against kaldi-native-fbank features per span."""
    waveform = vad_verification_waveform()
    vad_reference_run = vad.reference()
    found_segments, vad_reference_name = vad_reference_run.segments(waveform), vad_reference_run.description
    spans = vad_statement.segment(found_segments, segmentation)
    pieces = vad_statement.cut_rows(waveform, spans, vad.samp_freq)
    others = _feeds_for_other_inputs(model, binding, 1)
    encoder_session = inference_session(original)
    frontend_session = inference_session(frontend_model)

    def encoder_alone(features: np.ndarray) -> dict[str, np.ndarray]:
        feeds = {binding.features.name: features[None].astype(binding.features.dtype.numpy()), **others}
        if binding.lengths is not None:
            feeds[binding.lengths.name] = np.array([features.shape[0]], _NUMPY_INTEGERS[binding.length_dtype])
        names = [o.name for o in encoder_session.get_outputs()]
        return dict(zip(names, encoder_session.run(names, feeds)))

    two_step, reference_runs = [], []
    reference_rows, reference_name = _reference_features(pieces, found)
    for piece, reference_features in zip(pieces, reference_rows):
        features, lengths = frontend_session.run(
            [FEATURES, FEATURE_LENGTHS], {WAVEFORM: piece[None], WAVEFORM_LENGTHS: np.array([piece.size])}
        )
        two_step.append(encoder_alone(features[0, : lengths[0]]))
        reference_runs.append(encoder_alone(reference_features))

    vad_model = build_vad_frontend(
        vad, segmentation, found.fbank, found.lfr, found.cmvn, opset=opset, length_dtype=binding.length_dtype
    )
    fused = prepend_frontend(model, vad_model, binding, keep_features=keep_features)
    fused_session = inference_session(fused)
    names = [o.name for o in fused_session.get_outputs()]
    fused_outputs = dict(
        zip(
            names,
            fused_session.run(names, {WAVEFORM: waveform[None], WAVEFORM_LENGTHS: np.array([waveform.size]), **others}),
        )
    )

    vs_two_step = _per_span_parity(fused_outputs, two_step, spans, _two_step_tolerance(binding, "segments"))
    vs_reference = _per_span_parity(fused_outputs, reference_runs, spans, PROFILES["frontend"])
    passed = all(p.passed for p in vs_two_step + vs_reference)
    options = {
        **frontend_metadata(found.fbank, found.lfr, found.cmvn),
        "vad": json.loads(vad_model.metadata_props["svsurgery.frontend"])["vad"],
        "segmentation": dataclasses.asdict(segmentation),
    }
    report = FuseReport(
        encoder=label,
        output=None,
        written=False,
        inputs_found=binding.how,
        sources=found.sources,
        notices=[*notices, f"VAD segments checked against {vad_reference_name}"],
        frontend=options,
        reference_frontend=reference_name,
        waveform=(
            f"built-in speech-like waveform of {waveform.size / 16000:.1f} s: {len(spans)} spans {spans.tolist()} ms"
        ),
        fused_vs_two_step=vs_two_step,
        fused_vs_reference=vs_reference,
        passed=passed,
    )
    return _record(fused, report, vad=options["vad"], segmentation=options["segmentation"])


def _two_step_tolerance(binding: EncoderInputs, full_precision: str) -> Tolerance:
    """Fused vs the same graphs run one after the other: the same arithmetic, except that a float16
    encoder's kernels may round differently inside the fused graph (onnxruntime's CPU provider)."""
    return PROFILES["fp16" if binding.features.dtype in LOW_PRECISION_TYPES else full_precision]


def _per_span_parity(fused: dict, alone: list[dict], spans: np.ndarray, tolerance) -> list[OutputParity]:
    """Each output of the fused model, row by row, against the runs of each span alone (valid
    frames only: a row's own run is as long as its valid part); plus the segments themselves."""
    results = []
    segments = fused.get("segments")
    same = segments is not None and np.array_equal(segments, spans)
    problem = None if same else f"segments {None if segments is None else segments.tolist()} != {spans.tolist()}"
    results.append(
        OutputParity(
            "segments",
            [len(spans), 2],
            0.0 if same else float("inf"),
            0.0,
            0.0,
            1.0,
            None,
            0,
            0,
            exact=True,
            problem=problem,
        ).check(tolerance)
    )
    if not same or not alone:
        return results
    for name in alone[0]:
        actual, expected = [], []
        for row, run in enumerate(alone):
            reference_value = run[name][0]
            produced = fused[name][row]
            if reference_value.ndim >= 1:
                produced = produced[: reference_value.shape[0]]
            actual.append(np.asarray(produced).reshape(-1))
            expected.append(np.asarray(reference_value).reshape(-1))
        parity = compare(name, np.concatenate(actual), np.concatenate(expected), rel_floor=tolerance.rel_floor)
        results.append(parity.check(tolerance))
    return results
