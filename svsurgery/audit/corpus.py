"""The corpus an audit reads: its entries (a folder of WAV files, a JSONL manifest, or a
folder of golden files), each utterance's audio, and the figures it is bucketed by.

Listing never fails on one bad entry: a manifest line that is not JSON or names no audio
becomes an entry with its problem, and so does a file that is missing, unreadable, empty,
at the wrong rate or holds non-finite samples once a worker reads it. Such entries are
reported with the reason; they never stop the audit.

Entries keep the corpus's order (a folder: paths sorted; a manifest: its lines), so an
entry's index, and with it its shard, is the same on every run and every engine.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import struct
from pathlib import Path

import numpy as np

from svsurgery.errors import BadInputError

__all__ = [
    "AudioProblem",
    "Corpus",
    "Entry",
    "duration_bucket",
    "estimate_snr_db",
    "list_corpus",
    "read_audio",
    "read_wav",
    "snr_bucket",
]

AUDIO_KEYS = ("audio", "audio_filepath", "wav", "path", "source", "file")  # ours, NeMo, Kaldi-ish, FunASR jsonl
ID_KEYS = ("id", "key", "utt", "utt_id", "utterance_id")
LANGUAGE_KEYS = ("language", "lang", "locale")
AUDIO_SUFFIXES = (".wav",)

# bucket edges; a bucket is [low, high)
DURATION_EDGES_S = (0.0, 2.0, 5.0, 10.0, 20.0, 60.0)
SNR_EDGES_DB = (5.0, 10.0, 20.0, 40.0)
SNR_CEILING_DB = 60.0  # digital silence between words: the estimate says "at least this"


@dataclasses.dataclass(frozen=True)
class Entry:
    """One utterance of the corpus, as listed (its audio is read by a worker)."""

    index: int  # position in the corpus: decides the shard
    id: str
    path: str | None  # absolute path of the audio (or of the golden file)
    language: str | None = None
    problem: str | None = None  # found while listing (a bad manifest line)
    golden: bool = False  # the path is a golden file holding the inputs and the reference outputs


@dataclasses.dataclass
class Corpus:
    source: str  # what was listed
    kind: str  # "folder", "manifest" or "golden-dir"
    entries: list[Entry]


class AudioProblem(Exception):
    """Why an entry cannot be audited (missing, unreadable, empty, wrong rate, non-finite)."""


# ----------------------------------------------------------------------------- listing


def list_corpus(audio: str | os.PathLike | None, golden_dir: str | os.PathLike | None = None) -> Corpus:
    """The entries of ``audio`` (a folder of .wav files, searched recursively, or a JSONL
    manifest), or of ``golden_dir`` (one golden .npz per utterance) when no audio is given."""
    if audio is None:
        if golden_dir is None:
            raise BadInputError("give the corpus: --audio DIR|manifest.jsonl (or --golden-dir DIR)")
        return _golden_dir(Path(golden_dir))
    path = Path(audio)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
        if not files:
            raise BadInputError(f"--audio {audio}: no .wav files in this folder")
        entries = [
            Entry(i, p.relative_to(path).with_suffix("").as_posix(), str(p.absolute())) for i, p in enumerate(files)
        ]
        return Corpus(str(path), "folder", entries)
    if not path.is_file():
        raise BadInputError(f"--audio {audio}: no such file or folder")
    return _manifest(path)


def _manifest(path: Path) -> Corpus:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise BadInputError(f"--audio {path}: not a readable JSONL manifest ({error})") from None
    entries: list[Entry] = []
    seen: set[str] = set()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        index = len(entries)
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            entries.append(
                Entry(index, f"line-{number}", None, problem=f"manifest line {number}: not JSON ({error.msg})")
            )
            continue
        if not isinstance(record, dict):
            entries.append(Entry(index, f"line-{number}", None, problem=f"manifest line {number}: not a JSON object"))
            continue
        audio = next((record[k] for k in AUDIO_KEYS if isinstance(record.get(k), str)), None)
        key = next((str(record[k]) for k in ID_KEYS if record.get(k) is not None), None)
        language = next((str(record[k]) for k in LANGUAGE_KEYS if record.get(k) is not None), None)
        if audio is None:
            entries.append(
                Entry(
                    index,
                    key or f"line-{number}",
                    None,
                    language,
                    problem=f"manifest line {number}: no audio path (keys {', '.join(AUDIO_KEYS)})",
                )
            )
            continue
        audio_path = Path(audio)
        if not audio_path.is_absolute():
            audio_path = path.parent / audio_path  # relative to the manifest, as datasets ship them
        key = key or audio_path.with_suffix("").name
        if key in seen:
            entries.append(
                Entry(
                    index,
                    f"{key}@line-{number}",
                    str(audio_path.absolute()),
                    language,
                    problem=f"manifest line {number}: id '{key}' is used by an earlier line",
                )
            )
            continue
        seen.add(key)
        entries.append(Entry(index, key, str(audio_path.absolute()), language))
    if not entries:
        raise BadInputError(f"--audio {path}: the manifest lists no utterances")
    return Corpus(str(path), "manifest", entries)


def _golden_dir(folder: Path) -> Corpus:
    if not folder.is_dir():
        raise BadInputError(f"--golden-dir {folder}: no such folder")
    files = sorted(folder.glob("*.npz"))
    if not files:
        raise BadInputError(f"--golden-dir {folder}: no golden .npz files in this folder")
    entries = [Entry(i, p.stem, str(p.absolute()), golden=True) for i, p in enumerate(files)]
    return Corpus(str(folder), "golden-dir", entries)


def stamp(entry: Entry) -> list:
    """What identifies an entry's file for resuming: path, size and modification time."""
    if entry.path is None:
        return [entry.index, entry.id, None, entry.problem]
    try:
        info = os.stat(entry.path)
        return [entry.index, entry.id, entry.path, info.st_size, info.st_mtime_ns, entry.language]
    except OSError:
        return [entry.index, entry.id, entry.path, None, None, entry.language]


# ----------------------------------------------------------------------------- audio


def read_audio(entry: Entry, expected_rate: int) -> np.ndarray:
    """The entry's samples, float32 mono in [-1, 1] at ``expected_rate``; AudioProblem otherwise."""
    if entry.problem:
        raise AudioProblem(entry.problem)
    if entry.path is None or not os.path.exists(entry.path):
        raise AudioProblem("missing: no such file")
    if os.path.isdir(entry.path):
        raise AudioProblem("unreadable: is a folder")
    samples, rate = read_wav(entry.path)
    if rate != expected_rate:
        raise AudioProblem(f"wrong sample rate: {rate} Hz (the model takes {expected_rate} Hz)")
    return checked_samples(samples)


def checked_samples(samples: np.ndarray) -> np.ndarray:
    if samples.size == 0:
        raise AudioProblem("empty: 0 samples")
    bad = int(np.count_nonzero(~np.isfinite(samples)))
    if bad:
        raise AudioProblem(f"non-finite samples: {bad} NaN/Inf of {samples.size}")
    return samples


_PCM, _FLOAT, _EXTENSIBLE = 1, 3, 0xFFFE


def read_wav(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """(samples float32 in [-1, 1], first channel; sample rate) of a RIFF/WAVE file: PCM 8/16/24/32
    bit or IEEE float 32/64 (plain or WAVE_FORMAT_EXTENSIBLE). AudioProblem when it is not one."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise AudioProblem(f"unreadable: {error.strerror or error}") from None
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise AudioProblem("unreadable: not a RIFF/WAVE file")
    position, fmt, payload = 12, None, None
    while position + 8 <= len(data):
        chunk, size = data[position : position + 4], struct.unpack("<I", data[position + 4 : position + 8])[0]
        body = data[position + 8 : position + 8 + size]
        if chunk == b"fmt ":
            fmt = body
        elif chunk == b"data":
            payload = body  # a truncated file keeps the samples it has (whole frames only)
            break
        position += 8 + size + (size & 1)
    if fmt is None or len(fmt) < 16:
        raise AudioProblem("unreadable: no 'fmt ' chunk")
    if payload is None:
        raise AudioProblem("unreadable: no 'data' chunk")
    tag, channels, rate, _, block, bits = struct.unpack("<HHIIHH", fmt[:16])
    if tag == _EXTENSIBLE and len(fmt) >= 26:
        tag = struct.unpack("<H", fmt[24:26])[0]
    if channels < 1 or block < 1:
        raise AudioProblem(f"unreadable: {channels} channels, block size {block}")
    frames = len(payload) // block
    raw = payload[: frames * block]
    width = bits // 8
    if tag == _PCM and bits in (8, 16, 24, 32) and block == channels * width:
        if bits == 8:
            samples = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
        elif bits == 24:
            bytes3 = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
            value = bytes3[:, 0] | (bytes3[:, 1] << 8) | (bytes3[:, 2] << 16)
            samples = (np.where(value >= 1 << 23, value - (1 << 24), value) / float(1 << 23)).astype(np.float32)
        else:
            dtype = {16: "<i2", 32: "<i4"}[bits]
            samples = (np.frombuffer(raw, dtype).astype(np.float64) / float(2 ** (bits - 1))).astype(np.float32)
    elif tag == _FLOAT and bits in (32, 64) and block == channels * width:
        samples = np.frombuffer(raw, "<f4" if bits == 32 else "<f8").astype(np.float32)
    else:
        raise AudioProblem(
            f"unreadable: WAVE format {tag} with {bits} bits is not supported (PCM 8/16/24/32, float 32/64)"
        )
    return np.ascontiguousarray(samples.reshape(-1, channels)[:, 0]), int(rate)


# ----------------------------------------------------------------------------- figures to bucket by


def estimate_snr_db(samples: np.ndarray, rate: int) -> float:
    """A blind SNR estimate from frame powers (25 ms frames every 10 ms): the noise power is the
    10th percentile, the signal the mean power of the frames above the median, less the noise.
    Clean recordings (digital silence between words) come out at the 60 dB ceiling. It needs
    pauses: a recording that is speech throughout reads low."""
    hop, length = int(rate * 0.010), int(rate * 0.025)
    if samples.size < length:
        return float("nan")
    count = 1 + (samples.size - length) // hop
    index = np.arange(length)[None, :] + hop * np.arange(count)[:, None]
    frames = samples.astype(np.float64)[index]
    power = np.mean(frames * frames, axis=1)
    noise = float(np.percentile(power, 10))
    loud = power[power > np.median(power)]
    signal = float(np.mean(loud)) - noise if loud.size else 0.0
    if signal <= 0:
        return 0.0
    if noise <= signal * 10 ** (-SNR_CEILING_DB / 10):
        return SNR_CEILING_DB
    return round(min(10.0 * math.log10(signal / noise), SNR_CEILING_DB), 6)


def duration_bucket(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    edges = DURATION_EDGES_S
    for low, high in itertools.pairwise(edges):
        if seconds < high:
            return f"{low:g}-{high:g} s"
    return f">={edges[-1]:g} s"


def snr_bucket(db: float | None) -> str | None:
    if db is None or not math.isfinite(db):
        return None
    edges = SNR_EDGES_DB
    if db < edges[0]:
        return f"<{edges[0]:g} dB"
    for low, high in itertools.pairwise(edges):
        if db < high:
            return f"{low:g}-{high:g} dB"
    return f">={edges[-1]:g} dB"
