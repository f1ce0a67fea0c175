"""funasr-onnx's E2EVadModel driven as FunASR 1.4.16's offline ``generate()`` drives its own:
the reference the fsmn mode is checked against (a test dependency, installed with --no-deps).

FunASR cuts the input into 60 s chunks; before each chunk its dynamic schedule sets the end
silence from the speech accumulated while a segment stayed open across chunks (reset when a
chunk completed a segment) and speech_noise_thres to 0.5; the state machine itself is the
same one funasr-onnx ships. ``funasr_onnx/__init__`` imports librosa, which its E2EVadModel
does not need, so the module is loaded from its file.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys

import numpy as np

from svsurgery.errors import MissingDependencyError
from svsurgery.vad.fsmn import DYNAMIC_SILENCE_SCHEDULE, DYNAMIC_SPEECH_NOISE_THRES, FsmnVad, chunk_starts

__all__ = ["e2e_vad_module", "funasr_onnx_module", "funasr_segments"]


def funasr_onnx_module(relative: str):
    """A module of funasr-onnx (``"utils.e2e_vad"``) loaded from its file, without running
    funasr_onnx/__init__ (which imports librosa)."""
    name = "svsurgery_funasr_onnx_" + relative.replace(".", "_")
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec("funasr_onnx")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError("the fsmn reference needs funasr-onnx: pip install --no-deps funasr-onnx==0.4.3")
    path = f"{next(iter(spec.submodule_search_locations))}/{relative.replace('.', '/')}.py"
    module_spec = importlib.util.spec_from_file_location(name, path)
    assert module_spec is not None and module_spec.loader is not None, "a .py path always has a spec with a loader"
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    module_spec.loader.exec_module(module)
    return module


def e2e_vad_module():
    """funasr_onnx.utils.e2e_vad: E2EVadModel, the fsmn state machine."""
    return funasr_onnx_module("utils.e2e_vad")


def funasr_segments(scores: np.ndarray, waveform: np.ndarray, vad: FsmnVad) -> np.ndarray:
    """[K, 2] int64 ms from funasr-onnx's E2EVadModel for network outputs ``scores`` [1, T, C]
    of ``waveform`` [N] (samples in [-1, 1])."""
    module = e2e_vad_module()
    machine = vad.machine
    post_args = {**dataclasses.asdict(machine), "sil_pdf_ids": list(machine.sil_pdf_ids)}
    if vad.dynamic:
        post_args["speech_noise_thres"] = DYNAMIC_SPEECH_NOISE_THRES
    detector = module.E2EVadModel(post_args)
    frames = scores.shape[1]
    rate = machine.sample_rate
    hop, window = int(machine.frame_in_ms * rate / 1000), int(machine.frame_length_ms * rate / 1000)
    chunk_samples = int(vad.options.chunk_size_ms * rate / 1000)
    first, period = chunk_starts(vad)
    starts = [0] + [first + (k - 1) * period for k in range(1, waveform.size // chunk_samples + 1)]
    starts = [s for s in starts if s < frames] or [0]
    bounds = list(zip(starts, [*starts[1:], frames]))
    accumulated: float = 0  # ms of open speech, in chunk_size_ms steps
    in_speech, found = False, []
    speech_to_silence = machine.speech_to_sil_time_thres
    for index, (begin, end) in enumerate(bounds):
        if vad.dynamic:
            if detector.vad_state_machine.value == 2 or in_speech:  # a segment is open across the chunk start
                accumulated += vad.options.chunk_size_ms
                in_speech = True
            silence = next(ms for limit, ms in DYNAMIC_SILENCE_SCHEDULE if accumulated <= limit)
            end_silence = max(silence - speech_to_silence, 0) + speech_to_silence  # FunASR clips the threshold at 0
        else:
            end_silence = vad.static_end_silence
        if end <= begin:
            continue
        package = waveform[begin * hop : min(waveform.size, (end - 1) * hop + window)]
        part = detector(
            scores[:, begin:end],
            package[None].astype(np.float32),
            is_final=index == len(bounds) - 1,
            max_end_sil=end_silence,
            online=False,
        )
        if part:
            found.extend(part[0])
            accumulated, in_speech = 0, False
    return np.array(found, dtype=np.int64).reshape(-1, 2)


class FunasrOnnxFsmnVad:
    """funasr-onnx 0.4.3's ``Fsmn_vad`` pipeline, assembled from its parts: WavFrontend
    (kaldi-native-fbank, LFR, CMVN), the folder's model.onnx in an onnxruntime session set up
    as its OrtInferSession does, and E2EVadModel driven by ``Fsmn_vad.__call__``'s loop
    (6000-frame packages, caches carried, the static ``max_end_silence_time``). The class
    itself cannot be imported: funasr_onnx/utils/utils.py imports jieba, which the VAD never
    uses. One fix: the features are cast to float32 (see ``__call__``). The speed anchor of
    the fsmn mode (bench/vad.py)."""

    def __init__(self, folder, intra_op_num_threads: int = 1) -> None:
        from pathlib import Path

        import onnxruntime as ort
        import yaml

        folder = Path(folder)
        config = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
        self.frontend = funasr_onnx_module("utils.frontend").WavFrontend(
            cmvn_file=str(folder / "am.mvn"), **config["frontend_conf"]
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_num_threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 4
        options.enable_cpu_mem_arena = False  # as OrtInferSession
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
        self.model_conf = config["model_conf"]
        self.max_end_sil = self.model_conf["max_end_silence_time"]
        encoder = config["encoder_conf"]
        self.cache_shape = (1, encoder["proj_dim"], encoder["lorder"] - 1, 1)
        self.cache_count = encoder["fsmn_layers"]

    def __call__(self, waveform: np.ndarray) -> list:
        """[[start_ms, end_ms], ...] of ``waveform`` [N] in [-1, 1], as ``Fsmn_vad(waveform)[0]``."""
        detector = e2e_vad_module().E2EVadModel(self.model_conf)
        fbank, _ = self.frontend.fbank(waveform)
        feats, feats_len = self.frontend.lfr_cmvn(fbank)
        # as float32: 0.4.3's apply_cmvn returns float64 (am.mvn read as doubles), which the
        # network refuses; Fsmn_vad then logs "input wav is silence or noise" and returns ""
        feats, feats_len = feats[None].astype(np.float32), int(feats_len)
        waveform = np.asarray(waveform)[None]
        caches = [np.zeros(self.cache_shape, np.float32) for _ in range(self.cache_count)]
        names = [i.name for i in self.session.get_inputs()]
        found: list = []
        if feats_len == 0:  # Fsmn_vad's range() would get a zero step
            return found
        step = int(min(feats_len, 6000))
        for t_offset in range(0, feats_len, step):  # Fsmn_vad's step: min(step, feats_len - 0)
            if t_offset + step >= feats_len - 1:
                step, is_final = feats_len - t_offset, True
            else:
                is_final = False
            package = waveform[:, t_offset * 160 : min(waveform.shape[-1], (t_offset + step - 1) * 160 + 400)]
            scores, *caches = self.session.run(None, dict(zip(names, [feats[:, t_offset : t_offset + step], *caches])))
            part = detector(scores, package, is_final=is_final, max_end_sil=self.max_end_sil, online=False)
            if part:
                found += part[0]
        return found
