"""Find the front-end settings a model was shipped with, and say where each came from.

Sources, weakest first: a preset; sherpa-onnx metadata in the model (``lfr_window_size``,
``lfr_window_shift``, ``neg_mean``, ``inv_stddev``, ``normalize_samples``); a FunASR model
folder (``config.yaml`` with ``frontend_conf``, ``am.mvn`` beside the model or named by
``cmvn_file``); explicit options. Every setting records its source for the report.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import onnx_ir as ir

from svsurgery.errors import BadInputError
from svsurgery.frontend.cmvn import Cmvn
from svsurgery.frontend.options import FbankOptions, LfrOptions

__all__ = ["FrontendConfig", "discover", "options_from_funasr_conf"]

PRESETS = {
    "sensevoice": (FbankOptions.sensevoice, LfrOptions.sensevoice),
    "fsmn-vad": (FbankOptions.fsmn_vad, LfrOptions.fsmn_vad),
}

# frontend_conf keys FunASR's WavFrontend accepts that do not change the features
_IGNORED_FUNASR_KEYS = {"cmvn_file", "filter_length_min", "filter_length_max", "frontend", "fs_orig"}


@dataclasses.dataclass
class FrontendConfig:
    fbank: FbankOptions
    lfr: LfrOptions
    cmvn: Cmvn | None
    sources: dict[str, str]  # setting -> where it came from
    notices: list[str] = dataclasses.field(default_factory=list)


def options_from_funasr_conf(
    conf: dict, base: FbankOptions, base_lfr: LfrOptions, where: str
) -> tuple[FbankOptions, LfrOptions, list[str]]:
    """FunASR WavFrontend's frontend_conf -> (FbankOptions, LfrOptions, notices)."""
    notices = []
    frame, mel = base.frame_opts, base.mel_opts
    frame_changes: dict[str, Any] = {}
    mel_changes: dict[str, Any] = {}
    top: dict[str, Any] = {}
    lfr = base_lfr
    for key, value in conf.items():
        try:
            if key == "fs":
                frame_changes["samp_freq"] = float(value)
            elif key == "window":
                frame_changes["window_type"] = str(value)
            elif key == "n_mels":
                mel_changes["num_bins"] = int(value)
            elif key == "frame_length":
                frame_changes["frame_length_ms"] = float(value)
            elif key == "frame_shift":
                frame_changes["frame_shift_ms"] = float(value)
            elif key == "snip_edges":
                frame_changes["snip_edges"] = bool(value)
            elif key in ("upsacle_samples", "upscale_samples"):  # FunASR spells it "upsacle"
                top["input_scale"] = 32768.0 if value else 1.0
            elif key == "dither":
                if float(value) != 0.0:
                    notices.append(
                        f"{where}: dither {value} ignored; the graph is deterministic (dither 0, as at inference)"
                    )
            elif key == "lfr_m":
                lfr = dataclasses.replace(lfr, m=int(value))
            elif key == "lfr_n":
                lfr = dataclasses.replace(lfr, n=int(value))
            elif key not in _IGNORED_FUNASR_KEYS:
                notices.append(f"{where}: frontend_conf key '{key}' is not used by the fbank front end")
        except (TypeError, ValueError):
            raise BadInputError(f"{where}: frontend_conf {key}: {value!r} is not a valid value") from None
    fbank = dataclasses.replace(
        base,
        frame_opts=dataclasses.replace(frame, **frame_changes),
        mel_opts=dataclasses.replace(mel, **mel_changes),
        **top,
    )
    return fbank.validate(), lfr.validate(), notices


def _read_yaml(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInputError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise BadInputError(f"{path}: not readable YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise BadInputError(f"{path}: expected a YAML mapping at the top level")
    return data


def discover(
    model: ir.Model,
    model_path: str | os.PathLike | None,
    *,
    config: str | os.PathLike | None = None,
    cmvn: str | os.PathLike | None = None,
    lfr: LfrOptions | None = None,
    preset: str = "sensevoice",
    use_cmvn: bool = True,
) -> FrontendConfig:
    """The front end for ``model``, from the strongest source that has each setting."""
    if preset not in PRESETS:
        raise BadInputError(f"preset {preset!r}: expected one of {', '.join(PRESETS)}")
    fbank_preset, lfr_preset = PRESETS[preset]
    fbank, stacking = fbank_preset(), lfr_preset()
    sources = {"fbank": f"preset {preset}", "lfr": f"preset {preset}", "input_scale": f"preset {preset}"}
    notices: list[str] = []
    found_cmvn: Cmvn | None = None
    folder = Path(model_path).resolve().parent if model_path else None
    label = Path(model_path).name if model_path else "model"

    metadata = model.metadata_props
    if "lfr_window_size" in metadata or "lfr_window_shift" in metadata:
        try:
            stacking = LfrOptions(
                int(metadata.get("lfr_window_size", stacking.m)), int(metadata.get("lfr_window_shift", stacking.n))
            ).validate()
        except ValueError:
            raise BadInputError(f"{label}: metadata lfr_window_size/lfr_window_shift are not integers") from None
        sources["lfr"] = f"{label} metadata lfr_window_size/lfr_window_shift"
    if "normalize_samples" in metadata:
        scale = 1.0 if metadata["normalize_samples"].strip() in ("1", "true", "True") else 32768.0
        fbank = dataclasses.replace(fbank, input_scale=scale)
        sources["input_scale"] = f"{label} metadata normalize_samples={metadata['normalize_samples']}"
    if "neg_mean" in metadata and "inv_stddev" in metadata:
        found_cmvn = Cmvn.from_metadata(metadata, source=label)

    config_path = Path(config) if config else (folder / "config.yaml" if folder else None)
    if config_path is not None and (config or config_path.is_file()):
        data = _read_yaml(config_path)
        conf = data.get("frontend_conf")
        if conf is None:
            notices.append(f"{config_path}: no frontend_conf; keeping {sources['fbank']}")
        elif not isinstance(conf, dict):
            raise BadInputError(f"{config_path}: frontend_conf should be a mapping")
        else:
            fbank, stacking, more = options_from_funasr_conf(conf, fbank, stacking, str(config_path))
            notices += more
            sources["fbank"] = sources["lfr"] = f"{config_path} frontend_conf"
            if any(k in conf for k in ("upsacle_samples", "upscale_samples")):
                sources["input_scale"] = f"{config_path} frontend_conf"
            cmvn_file = conf.get("cmvn_file") or data.get("cmvn_file")
            if cmvn_file and cmvn is None:
                candidate = Path(cmvn_file)
                candidate = candidate if candidate.is_absolute() else config_path.parent / candidate
                if candidate.is_file():
                    found_cmvn = Cmvn.from_am_mvn(candidate)

    if cmvn is not None:
        found_cmvn = Cmvn.from_am_mvn(cmvn)
    elif found_cmvn is None and folder is not None and (folder / "am.mvn").is_file():
        found_cmvn = Cmvn.from_am_mvn(folder / "am.mvn")
    if lfr is not None:
        stacking = lfr.validate()
        sources["lfr"] = "--lfr"
    if not use_cmvn:
        found_cmvn = None
        sources["cmvn"] = "none (--no-cmvn)"
    elif found_cmvn is None:
        looked = [f"{folder / 'am.mvn'}" if folder else None, f"{label} metadata neg_mean/inv_stddev"]
        raise BadInputError(
            f"no CMVN found (looked for {', '.join(p for p in looked if p)}); give --cmvn am.mvn, "
            "or --no-cmvn if the encoder really takes unnormalised features"
        )
    else:
        sources["cmvn"] = found_cmvn.source
    return FrontendConfig(fbank, stacking, found_cmvn, sources, notices)
