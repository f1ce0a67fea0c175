"""The Kaldi fbank + LFR + CMVN front end as an ONNX graph authored with onnxscript.

from svsurgery import frontend
model = frontend.build(frontend.FbankOptions.sensevoice(), frontend.LfrOptions(7, 6),
                       frontend.Cmvn.from_am_mvn("am.mvn"))
"""

from svsurgery.frontend.build import FEATURE_LENGTHS, FEATURES, WAVEFORM, WAVEFORM_LENGTHS, build
from svsurgery.frontend.cmvn import Cmvn
from svsurgery.frontend.options import FbankOptions, FrameExtractionOptions, LfrOptions, MelBanksOptions

__all__ = [
    "FEATURES",
    "FEATURE_LENGTHS",
    "WAVEFORM",
    "WAVEFORM_LENGTHS",
    "Cmvn",
    "FbankOptions",
    "FrameExtractionOptions",
    "LfrOptions",
    "MelBanksOptions",
    "build",
]
