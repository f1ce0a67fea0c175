"""Monitoring: this audit's summary against an earlier one (the same corpus, or a production
sample), with a drift verdict.

Each check compares one corpus-level figure; a figure that moved the wrong way by more than
its threshold is drift, and the audit exits 1. Thresholds (``--max-drift NAME=VALUE``):

| name | figure | drift when |
|---|---|---|
| ``tokens_differ_share`` | share of utterances whose tokens differ from the reference's | it grows by more than 0.01 |
| ``token_error_rate_corpus`` | all token edits / all reference tokens | it grows by more than 0.005 |
| ``segments_identical_share`` | share of utterances with identical segments | it drops by more than 0.01 |
| ``boundary_ms_mean`` | mean of each utterance's largest boundary difference (ms) | it grows by more than 5 ms |
| ``cosine_p01`` | 1st percentile of each utterance's smallest span cosine | it drops by more than 1e-4 |
| ``cosine_distribution`` | Kolmogorov-Smirnov distance between the histograms of 1 - cosine | it exceeds 0.2 and the distribution moved towards lower cosines |

Figures missing on either side (no CTC output, no segments) are not checked. A different
model hash, reference hash or corpus size is noted, not judged.
"""  # noqa: E501 -- a Markdown table row cannot wrap

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from svsurgery.errors import BadInputError

__all__ = ["DEFAULT_THRESHOLDS", "BaselineCheck", "compare_with_baseline", "load_baseline", "parse_thresholds"]

DEFAULT_THRESHOLDS: dict[str, float] = {
    "tokens_differ_share": 0.01,
    "token_error_rate_corpus": 0.005,
    "segments_identical_share": 0.01,
    "boundary_ms_mean": 5.0,
    "cosine_p01": 1e-4,
    "cosine_distribution": 0.2,
}
_WORSE_WHEN_LOWER = {"segments_identical_share", "cosine_p01"}


@dataclasses.dataclass
class BaselineCheck:
    figure: str
    baseline: float | None
    current: float | None
    change: float | None  # current - baseline (for the distribution: the KS distance)
    threshold: float
    drift: bool


def parse_thresholds(pairs: list[str] | None) -> dict[str, float]:
    thresholds = dict(DEFAULT_THRESHOLDS)
    for pair in pairs or []:
        name, _, value = pair.partition("=")
        if name not in DEFAULT_THRESHOLDS:
            raise BadInputError(f"--max-drift {pair}: unknown figure '{name}' (one of {', '.join(DEFAULT_THRESHOLDS)})")
        try:
            number = float(value)
        except ValueError:
            raise BadInputError(f"--max-drift {pair}: expected NAME=NUMBER") from None
        if not number >= 0:
            raise BadInputError(f"--max-drift {pair}: a threshold is >= 0")
        thresholds[name] = number
    return thresholds


def load_baseline(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInputError(f"--baseline {path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadInputError(f"--baseline {path}: not a readable summary.json ({error})") from None
    if not isinstance(data, dict) or "totals" not in data or data.get("kind") != "svsurgery-audit-summary":
        raise BadInputError(f"--baseline {path}: not the summary.json of an svsurgery audit")
    return data


def _ks(first: dict, second: dict) -> tuple[float, float] | None:
    """(KS distance between two 1 - cosine histograms, mean bin of second - mean bin of first)."""
    a, b = np.asarray(first["counts"], np.float64), np.asarray(second["counts"], np.float64)
    if a.size != b.size or a.sum() == 0 or b.sum() == 0:
        return None
    ca, cb = np.cumsum(a) / a.sum(), np.cumsum(b) / b.sum()
    bins = np.arange(a.size)
    return float(np.max(np.abs(ca - cb))), float((b * bins).sum() / b.sum() - (a * bins).sum() / a.sum())


def compare_with_baseline(current: dict, baseline: dict, thresholds: dict[str, float]) -> dict:
    checks: list[BaselineCheck] = []
    now, before = current["totals"], baseline["totals"]
    for figure, threshold in thresholds.items():
        if figure == "cosine_distribution":
            found = _ks(
                baseline.get("cosine_histogram", {"counts": []}), current.get("cosine_histogram", {"counts": []})
            )
            if found is None:
                continue
            distance, shift = found
            checks.append(BaselineCheck(figure, None, None, distance, threshold, distance > threshold and shift > 0))
            continue
        a, b = before.get(figure), now.get(figure)
        if a is None or b is None:
            continue
        change = b - a
        worse = -change if figure in _WORSE_WHEN_LOWER else change
        checks.append(BaselineCheck(figure, a, b, change, threshold, worse > threshold))
    notes = []
    for key, label in (("model_sha256", "model"), ("reference_sha256", "reference")):
        if baseline.get("audit", {}).get(key) != current.get("audit", {}).get(key):
            notes.append(
                f"the {label} differs from the baseline's ({str(baseline.get('audit', {}).get(key))[:12]} -> "
                f"{str(current.get('audit', {}).get(key))[:12]})"
            )
    if before.get("utterances") != now.get("utterances"):
        notes.append(f"the corpus differs in size ({before.get('utterances')} -> {now.get('utterances')} utterances)")
    return {
        "checks": [dataclasses.asdict(c) for c in checks],
        "drift": any(c.drift for c in checks),
        "notes": notes,
        "thresholds": thresholds,
    }
