"""Options of the Kaldi fbank front end, named, defaulted and unit-annotated as Kaldi names them.

The three structs mirror kaldi-native-fbank's ``FrameExtractionOptions``,
``MelBanksOptions`` and ``FbankOptions`` field for field (Kaldi's defaults, with one
exception: ``dither`` defaults to 0 because a graph is deterministic and dither is random
noise by definition). ``input_scale`` is svsurgery's own: the factor applied to the
waveform before framing (32768 when a model was trained on int16-range samples but the
graph takes samples in [-1, 1]).
"""

from __future__ import annotations

import dataclasses
import math

from svsurgery.errors import BadInputError

__all__ = [
    "WINDOW_TYPES",
    "FbankOptions",
    "FrameExtractionOptions",
    "LfrOptions",
    "MelBanksOptions",
]

WINDOW_TYPES = ("povey", "hamming", "hanning", "rectangular", "blackman", "sine")


@dataclasses.dataclass(frozen=True)
class FrameExtractionOptions:
    samp_freq: float = 16000.0  # Hz
    frame_shift_ms: float = 10.0  # ms
    frame_length_ms: float = 25.0  # ms
    dither: float = 0.0  # Kaldi: 1.0, kaldi-native-fbank: 3e-5; must be 0 in a graph
    preemph_coeff: float = 0.97  # 0 disables pre-emphasis
    remove_dc_offset: bool = True  # subtract each frame's mean
    window_type: str = "povey"  # povey | hamming | hanning | rectangular | blackman | sine
    round_to_power_of_two: bool = True  # zero-pad each frame to a power of two for the FFT
    blackman_coeff: float = 0.42
    snip_edges: bool = True  # True: only whole frames; False: reflect at the edges, frames centred on shifts

    @property
    def window_size(self) -> int:
        """Frame length in samples."""
        return int(self.samp_freq * 0.001 * self.frame_length_ms)

    @property
    def window_shift(self) -> int:
        """Frame shift in samples."""
        return int(self.samp_freq * 0.001 * self.frame_shift_ms)

    @property
    def padded_window_size(self) -> int:
        size = self.window_size
        return 1 << (size - 1).bit_length() if self.round_to_power_of_two else size

    def num_frames(self, num_samples: int) -> int:
        """Kaldi's NumFrames: how many frames a signal of ``num_samples`` yields."""
        size, shift = self.window_size, self.window_shift
        if self.snip_edges:
            return 0 if num_samples < size else 1 + (num_samples - size) // shift
        return (num_samples + shift // 2) // shift


@dataclasses.dataclass(frozen=True)
class MelBanksOptions:
    num_bins: int = 25  # number of triangular mel bins
    low_freq: float = 20.0  # Hz, low cutoff
    high_freq: float = 0.0  # Hz, high cutoff; <= 0 means offset from Nyquist
    vtln_low: float = 100.0  # Hz (VTLN warping is not supported: warp factor is always 1)
    vtln_high: float = -500.0  # Hz
    htk_mode: bool = False  # floor mel energies at 1.0 before the log, as HTK does


@dataclasses.dataclass(frozen=True)
class FbankOptions:
    frame_opts: FrameExtractionOptions = dataclasses.field(default_factory=FrameExtractionOptions)
    mel_opts: MelBanksOptions = dataclasses.field(default_factory=MelBanksOptions)
    use_energy: bool = False  # add log energy as an extra coefficient
    energy_floor: float = 0.0  # floor on the energy (absolute, not log); 0 = none
    raw_energy: bool = True  # energy before pre-emphasis and windowing (after DC removal)
    htk_compat: bool = False  # energy last instead of first
    use_log_fbank: bool = True  # log of the mel energies (floored at FLT_EPSILON)
    use_power: bool = True  # power spectrum; False: magnitude
    input_scale: float = 1.0  # svsurgery: waveform multiplier applied before framing

    @property
    def feature_dim(self) -> int:
        return self.mel_opts.num_bins + (1 if self.use_energy else 0)

    @classmethod
    def sensevoice(cls) -> FbankOptions:
        """SenseVoice/Paraformer's WavFrontend: 16 kHz, 25/10 ms, hamming, 80 bins, samples x32768."""
        return cls(
            frame_opts=FrameExtractionOptions(window_type="hamming", dither=0.0, snip_edges=True),
            mel_opts=MelBanksOptions(num_bins=80, low_freq=20.0, high_freq=0.0),
            energy_floor=0.0,
            input_scale=32768.0,
        )

    @classmethod
    def fsmn_vad(cls) -> FbankOptions:
        """FunASR's fsmn-vad WavFrontend: the same fbank as SenseVoice (its LFR is 5/1)."""
        return cls.sensevoice()

    def validate(self) -> FbankOptions:
        """Refuse option values the graph cannot honour, each with the reason."""
        frame, mel = self.frame_opts, self.mel_opts
        if frame.dither != 0.0:
            raise BadInputError(
                f"dither={frame.dither}: dither adds random noise, and an ONNX graph is deterministic; "
                "set dither=0 (FunASR and sherpa-onnx use 0 at inference)"
            )
        if frame.window_type not in WINDOW_TYPES:
            raise BadInputError(f"window_type={frame.window_type!r}: expected one of {', '.join(WINDOW_TYPES)}")
        if frame.window_size < 2 or frame.window_shift < 1:
            raise BadInputError(
                f"frame_length_ms={frame.frame_length_ms}, frame_shift_ms={frame.frame_shift_ms} at "
                f"{frame.samp_freq} Hz give {frame.window_size}/{frame.window_shift} samples; need at least 2/1"
            )
        if frame.padded_window_size % 2:
            raise BadInputError(
                f"padded frame length {frame.padded_window_size} is odd; Kaldi's mel banks need an even FFT size "
                "(use round_to_power_of_two=True)"
            )
        nyquist = frame.samp_freq / 2
        high = mel.high_freq if mel.high_freq > 0 else nyquist + mel.high_freq
        if not (0 <= mel.low_freq < high <= nyquist):
            raise BadInputError(
                f"mel range low_freq={mel.low_freq} Hz, high_freq={mel.high_freq} Hz (= {high} Hz) must satisfy "
                f"0 <= low < high <= Nyquist ({nyquist} Hz)"
            )
        if mel.num_bins < 3:
            raise BadInputError(f"num_bins={mel.num_bins}: Kaldi needs at least 3 mel bins")
        if not math.isfinite(self.input_scale) or self.input_scale == 0:
            raise BadInputError(f"input_scale={self.input_scale}: expected a finite non-zero factor")
        if self.energy_floor < 0:
            raise BadInputError(f"energy_floor={self.energy_floor}: expected >= 0")
        return self


@dataclasses.dataclass(frozen=True)
class LfrOptions:
    """FunASR's low frame rate stacking: ``m`` consecutive frames every ``n`` frames."""

    m: int = 7  # frames stacked per output frame (lfr_m)
    n: int = 6  # output frame rate divisor (lfr_n)

    @classmethod
    def sensevoice(cls) -> LfrOptions:
        return cls(7, 6)

    @classmethod
    def fsmn_vad(cls) -> LfrOptions:
        return cls(5, 1)

    @classmethod
    def parse(cls, text: str) -> LfrOptions:
        """``"7,6"`` -> LfrOptions(7, 6)."""
        try:
            m, n = (int(part) for part in text.split(","))
        except ValueError:
            raise BadInputError(f"--lfr {text!r}: expected M,N (two integers, e.g. 7,6)") from None
        return cls(m, n).validate()

    def validate(self) -> LfrOptions:
        if self.m < 1 or self.n < 1:
            raise BadInputError(f"LFR m={self.m}, n={self.n}: both must be >= 1")
        return self

    def num_frames(self, num_input_frames: int) -> int:
        """FunASR's T_lfr = ceil(T / n)."""
        return -(-num_input_frames // self.n)
