"""report.html: one self-contained page (plots as inline SVG, no script, no external file)
that a person opens in a browser: the headline figures, the cosine histogram, token error rate
against duration and against estimated SNR, the buckets, the worst utterances, where the worst
diverges, the runtime matrix, the baseline comparison and the bad entries.

The plots need matplotlib (``pip install 'svsurgery[plot]'``); without it the page says so.
"""

from __future__ import annotations

import html
import io
import math

import numpy as np

__all__ = ["PLOT_COLOURS", "render_html"]

# one colour per plot, so that a screenshot can tell that each one was drawn
PLOT_COLOURS = {"cosine": "#1f77b4", "duration": "#d62728", "snr": "#2ca02c"}

_STYLE = """
body { font-family: sans-serif; margin: 24px; color: #222; max-width: 1200px; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 28px; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
td.l, th.l { text-align: left; }
.plots { display: flex; flex-wrap: wrap; gap: 12px; }
.plot { border: 1px solid #ddd; }
.bad { color: #b00; font-weight: bold; } .good { color: #070; font-weight: bold; }
.note { color: #555; font-size: 13px; }
"""


def _e(value) -> str:
    return html.escape(str(value))


def _f(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}g}" if abs(value) >= 1 else f"{value:.{digits}f}".rstrip("0").rstrip(".") or "0"
    return _e(value)


def _table(headers: list[str], rows: list[list], left: int = 1) -> str:
    head = "".join(f"<th class='{'l' if i < left else ''}'>{_e(h)}</th>" for i, h in enumerate(headers))
    body = "".join(
        "<tr>"
        + "".join(
            f"<td class='{'l' if i < left else ''}'>{cell if isinstance(cell, _Raw) else _f(cell)}</td>"
            for i, cell in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


class _Raw(str):
    """Already HTML."""


def _svg(figure) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg")
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def _plots(rows: list[dict], summary: dict) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "<p class='note'>plots need matplotlib (pip install 'svsurgery[plot]')</p>"

    plt.rcParams["svg.fonttype"] = "path"
    plt.rcParams["svg.hashsalt"] = "svsurgery"  # stable ids: the same rows give the same page
    ok = [r for r in rows if r["status"] == "ok"]
    figures = []

    histogram = summary["cosine_histogram"]
    figure, axis = plt.subplots(figsize=(5.2, 3.4), dpi=96)
    edges = histogram["one_minus_cosine_edges"]
    labels = ["0"] + [f"{edges[i]:.0e}" for i in range(1, len(edges) - 1)]
    axis.bar(np.arange(len(histogram["counts"])), histogram["counts"], color=PLOT_COLOURS["cosine"], width=0.8)
    axis.set_xticks(np.arange(len(labels)), labels, rotation=45, fontsize=7)
    axis.set_xlabel("1 - cosine of the utterance's worst span (bin from)")
    axis.set_ylabel("utterances")
    axis.set_title("cosine against the reference")
    figure.tight_layout()
    figures.append(_svg(figure))
    plt.close(figure)

    for column, label, colour in (
        ("duration_s", "duration (s)", PLOT_COLOURS["duration"]),
        ("snr_db", "estimated SNR (dB)", PLOT_COLOURS["snr"]),
    ):
        points = [
            (r[column], r["token_error_rate"])
            for r in ok
            if r[column] is not None and r["token_error_rate"] is not None
        ]
        figure, axis = plt.subplots(figsize=(5.2, 3.4), dpi=96)
        if points:
            x, y = zip(*points)
            axis.scatter(x, y, s=70, color=colour, edgecolors="none")
        else:
            axis.text(0.5, 0.5, "no token figures (no CTC output)", ha="center", va="center", transform=axis.transAxes)
        axis.set_xlabel(label)
        axis.set_ylabel("token error rate vs reference")
        axis.set_ylim(bottom=-0.05, top=max(0.2, max((p[1] for p in points), default=0) * 1.1))
        axis.set_title(f"token error rate against {label.split(' (')[0]}")
        axis.grid(alpha=0.3)
        figure.tight_layout()
        figures.append(_svg(figure))
        plt.close(figure)
    return "<div class='plots'>" + "".join(f"<div class='plot'>{svg}</div>" for svg in figures) + "</div>"


_GROUP_COLUMNS = [
    ("utterances", "utterances"),
    ("ok", "ok"),
    ("audio_s", "audio s"),
    ("segments_identical_share", "identical segments"),
    ("tokens_differ_share", "tokens differ"),
    ("token_error_rate_mean", "TER mean"),
    ("token_error_rate_max", "TER max"),
    ("token_error_rate_corpus", "TER corpus"),
    ("cosine_mean", "cosine mean"),
    ("cosine_min", "cosine worst"),
    ("max_abs_max", "max abs"),
    ("boundary_ms_max", "boundary ms max"),
]


def _groups(title: str, groups: list[dict]) -> str:
    if not groups:
        return ""
    return f"<h3>{_e(title)}</h3>" + _table(
        ["bucket", *(h for _, h in _GROUP_COLUMNS)], [[g["bucket"], *(g[k] for k, _ in _GROUP_COLUMNS)] for g in groups]
    )


def render_html(summary: dict, rows: list[dict]) -> str:
    audit, totals = summary["audit"], summary["totals"]
    head = f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>svsurgery audit: {_e(audit['model'])}</title>"
    parts = [head + f"<style>{_STYLE}</style></head><body>"]
    parts.append(f"<h1>svsurgery audit of {_e(audit['model'])}</h1>")
    parts.append(
        f"<p>against {_e(audit['reference'])}<br>model sha256 {_e(audit['model_sha256'])}<br>"
        f"corpus: {_e(audit['corpus'])} ({totals['utterances']} utterances, {totals['bad']} bad,"
        f" {_f(totals['audio_s'])} s of audio)<br>"
        f"VAD of the reference: {_e(audit['vad'] or 'none')}; front end of the reference: {_e(audit['frontend'])}</p>"
    )
    drift = summary.get("baseline")
    verdict = ""
    if drift is not None:
        verdict = (
            "<span class='bad'>DRIFT against the baseline</span>"
            if drift["drift"]
            else "<span class='good'>no drift against the baseline</span>"
        )
    parts.append(
        _table(
            [
                "identical segments",
                "tokens differ",
                "TER corpus",
                "cosine worst",
                "cosine p01",
                "max abs",
                "model ms/audio-s",
                "reference ms/audio-s",
            ],
            [
                [
                    totals["segments_identical_share"],
                    totals["tokens_differ_share"],
                    totals["token_error_rate_corpus"],
                    totals["cosine_min"],
                    totals["cosine_p01"],
                    totals["max_abs_max"],
                    summary["timing"]["model_ms_per_audio_s"],
                    summary["timing"]["reference_ms_per_audio_s"],
                ]
            ],
            left=0,
        )
        + verdict
    )
    parts.append("<h2>plots</h2>" + _plots(rows, summary))
    parts.append("<h2>by bucket</h2>")
    for key, title in (("duration", "duration"), ("snr", "estimated SNR"), ("language", "language")):
        parts.append(_groups(title, summary["buckets"][key]))
    parts.append("<h2>worst utterances</h2>")
    worst = summary.get("worst") or []
    if worst:
        parts.append(
            _table(
                ["rank", "id", "TER", "cosine worst", "segments identical", "golden file"],
                [
                    [w["rank"], w["id"], w["token_error_rate"], w["cosine_min"], w["segments_identical"], w["path"]]
                    for w in worst
                ],
                left=2,
            )
        )
    else:
        parts.append(
            "<p class='note'>none harvested (--worst 0, or no utterance differs from the reference at all)</p>"
        )
    localization = summary.get("diff")
    if localization:
        parts.append("<h2>where the worst utterance diverges</h2>")
        culprit = localization.get("culprit")
        if culprit:
            where = culprit.get("module") or culprit.get("value")
            constants = "".join(
                f"<br>reads constant {_e(c['name'])} {c['shape']} that differs from the reference's"
                f" (max abs {_f(c['max_abs_difference'])})"
                for c in culprit.get("constants_differing", [])
            )
            parts.append(
                f"<p>first value that introduces the divergence ({_e(culprit['step'])}): <b>{_e(where)}</b> — node "
                f"{_e(culprit['node'])} ({_e(culprit['op_type'])}), value {_e(culprit['value'])}: "
                f"{_e('; '.join(culprit['failures']))}{constants}</p>"
            )
        for note in localization.get("notes", []):
            parts.append(f"<p class='note'>{_e(note)}</p>")
    matrix = summary.get("runtime_matrix")
    if matrix:
        parts.append(
            f"<h2>runtime matrix</h2><p class='note'>{len(matrix['utterances'])} utterances, "
            f"{_f(matrix['audio_s'])} s of audio, each setting against the reference setting"
            f" ({_e(matrix['reference_setting'])})</p>"
        )
        parts.append(
            _table(
                [
                    "setting",
                    "bit-identical",
                    "max abs",
                    "cosine worst",
                    "identical segments",
                    "tokens differ",
                    "TER corpus",
                    "ms/audio-s",
                ],
                [
                    [
                        s["label"],
                        _Raw(_e(s["error"])) if "error" in s else s["bit_identical"],
                        s.get("max_abs"),
                        s.get("cosine_min"),
                        s.get("segments_identical_share"),
                        s.get("tokens_differ"),
                        s.get("token_error_rate_corpus"),
                        s.get("ms_per_audio_s"),
                    ]
                    for s in matrix["settings"]
                ],
            )
        )
    if drift is not None:
        parts.append("<h2>baseline</h2>")
        parts.append(
            _table(
                ["figure", "baseline", "now", "change", "threshold", "drift"],
                [
                    [
                        c["figure"],
                        c["baseline"],
                        c["current"],
                        c["change"],
                        c["threshold"],
                        _Raw("<span class='bad'>yes</span>" if c["drift"] else "no"),
                    ]
                    for c in drift["checks"]
                ],
            )
        )
        for note in drift["notes"]:
            parts.append(f"<p class='note'>{_e(note)}</p>")
    bad = summary["bad_entries"]
    parts.append(f"<h2>bad entries ({len(bad)})</h2>")
    if bad:
        parts.append(_table(["id", "path", "reason"], [[b["id"], b["path"], b["reason"]] for b in bad], left=3))
    for note in summary.get("notes", []):
        parts.append(f"<p class='note'>{_e(note)}</p>")
    versions = ", ".join(f"{k} {v}" for k, v in summary["versions"].items())
    parts.append(f"<p class='note'>{_e(versions)}</p></body></html>")
    return "\n".join(parts)
