"""The engine's judge as a user reads it (issue 13 §6): argmax only on class axes, near-ties
are ties, CTC outputs report their token error rate, a rollback names the reason that
decided it, and every figure stays readable at 80 columns."""

from __future__ import annotations

import io

import numpy as np
from rich.console import Console

from svsurgery.parity.judge import judge_improvement
from svsurgery.parity.metrics import (
    ParityResult,
    Tolerance,
    compare,
    compare_outputs,
    greedy_ctc_tokens,
    has_class_axis,
    token_error_rate,
    tolerance,
)
from svsurgery.parity.tables import parity_table


def test_argmax_is_not_applied_to_hidden_states():
    """Guards: a Whisper encoder's last_hidden_state with one row's argmax flipped failed
    `fix`/`check` at cosine 0.9999998; hidden channels carry no ranking."""
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((1, 100, 384)).astype(np.float32)
    actual = reference.copy()
    row = actual[0, 7]
    first, second = np.argsort(row)[-2:][::-1]
    row[first], row[second] = row[second], row[first]  # one row's top two swapped
    bounds = Tolerance("cosine and argmax", min_cosine=0.99, min_argmax_agreement=1.0)
    hidden = compare_outputs({"last_hidden_state": actual}, {"last_hidden_state": reference}, bounds)
    (output,) = hidden.outputs
    assert output.argmax_agreement is None and output.passed, output.failures
    logits = compare_outputs({"logits": actual}, {"logits": reference}, bounds)
    assert logits.outputs[0].argmax_agreement == 0.99 and not logits.passed  # the same data named as logits is ranked


def test_class_axis_is_decided_by_name():
    assert has_class_axis("ctc_logits", (1, 50, 25055)) and has_class_axis("scores", (2, 7))
    assert has_class_axis("probs", (2, 3)) and has_class_axis("logits", (1, 9, 248))
    for hidden in ("last_hidden_state", "encoder_out", "pooler_output", "features", "hidden_states.3"):
        assert not has_class_axis(hidden, (1, 50, 512)), hidden
    assert not has_class_axis("logits", (1, 50, 1))  # a single class has no ranking


def test_near_ties_within_the_tolerance_are_ties_not_disagreements():
    """Guards: FunASR's random-weight SenseVoice in fp16 reached cosine 0.9999995 yet failed on
    98.1 % argmax agreement, all near-ties. A position whose reference top-2 margin is within
    the error the tolerance admits is counted apart; real disagreements still fail."""
    rng = np.random.default_rng(1)
    reference = rng.standard_normal((1, 200, 32))
    reference[0, :10, 0] = reference[0, :10].max(axis=-1) + 1e-4  # ten near-ties: class 0 ahead by 1e-4
    actual = reference.copy()
    actual[0, :10, 0] -= 2e-4  # ...which flip under an error the fp16 profile admits
    profile = tolerance("fp16")
    parity = compare("logits", actual, reference, rel_floor=profile.rel_floor, tolerance=profile).check(profile)
    assert parity.argmax_ties >= 10 and parity.argmax_agreement == 1.0 and parity.passed
    assert parity.argmax_positions + parity.argmax_ties == 200
    flipped = reference.copy()
    top_two = np.sort(reference[0], axis=-1)[:, -2:]
    position = int(np.argmax(top_two[:, 1] - top_two[:, 0]))  # the clearest margin: swap its top two
    clear = np.argsort(reference[0, position])[-2:]
    flipped[0, position, clear] = flipped[0, position, clear[::-1]]
    real = compare("logits", flipped, reference, rel_floor=profile.rel_floor, tolerance=profile).check(profile)
    assert real.argmax_agreement < 1.0 and any("argmax agreement" in f for f in real.failures)


def test_ctc_outputs_report_the_token_error_rate_of_greedy_decoding():
    logits = np.full((1, 8, 5), -5.0)
    for t, token in enumerate([1, 1, 0, 2, 0, 2, 3, 0]):  # greedy: 1 2 2 3
        logits[0, t, token] = 5.0
    assert greedy_ctc_tokens(logits) == [[1, 2, 2, 3]]
    changed = logits.copy()
    changed[0, 3] = -5.0
    changed[0, 3, 4] = 5.0  # one substitution: 1 4 2 3
    parity = compare("ctc_logits", changed, logits)
    assert parity.token_error_rate == 0.25
    assert token_error_rate([[1, 2, 3]], [[1, 3]]) == 1 / 3 and token_error_rate([[]], [[]]) == 0.0
    assert compare("logits", changed, logits).token_error_rate is None  # only outputs named as CTC


def _result(max_abs: float, cosine: float) -> ParityResult:
    reference = np.linspace(-1, 1, 64)
    actual = reference + max_abs * np.sign(np.sin(np.arange(64)))
    result = compare_outputs({"y": actual}, {"y": reference}, tolerance("fp16"))
    result.outputs[0].cosine = cosine
    return result


def test_a_rollback_names_the_figures_that_decided_it():
    """Guards: positional-fp32 was rolled back with "parity did not improve" while max abs,
    max rel and cosine all improved (each by less than the margin). The reason now says
    which figures moved by how much and what would have counted; a cosine that rises
    beyond its margin counts as an improvement."""
    before, slightly = _result(0.0100, 0.99990), _result(0.0099, 0.99990)
    better, why = judge_improvement(before, slightly)
    assert better is None and "nothing moved beyond the margin" in why and "max abs 0.01 -> 0.0099" in why
    cosine_up = _result(0.0100, 0.99995)
    better, why = judge_improvement(before, cosine_up)
    assert better is not None and "cosine" in why
    worse = _result(0.02, 0.99995)
    better, why = judge_improvement(before, worse)
    assert better is None and "got worse" in why and "max abs" in why


def test_an_improvement_is_not_refused_for_noise_on_another_output():
    """Guards: spectral-fp32 on silero brought stateN from max rel 0.117 to 0.040 and was rolled
    back because the other output's cosine went 1.00000000 -> 0.99999999 (its last bit). Noise
    below the cosine margin or one rounding step of max abs is not a trade; a real loss still is."""
    rng = np.random.default_rng(3)
    reference = {"output": rng.standard_normal(64), "state": rng.standard_normal(64)}

    def result(output_extra: float, state_error: float) -> ParityResult:
        output_error = np.zeros(64)
        output_error[0], output_error[5] = 1e-3, output_extra  # the max abs error stays at element 0
        actual = {
            "output": reference["output"] + output_error,
            "state": reference["state"] + state_error * np.sign(reference["state"]),
        }
        return compare_outputs(actual, reference, tolerance("fp16"))

    before, after = result(0.0, 0.2), result(1e-4, 0.01)
    moved = before.outputs[0].cosine - after.outputs[0].cosine
    assert 0 < moved < 1e-7  # the output's cosine moved in its last digits
    better, why = judge_improvement(before, after)
    assert better is not None and better.startswith("state: max abs error"), why
    traded = result(3e-2, 0.01)  # a real loss on the output for the state's gain
    better, why = judge_improvement(before, traded)
    assert better is None and "got worse: output" in why


def test_parity_tables_keep_every_figure_whole_at_80_columns():
    """Guards: tables cut cells to `9.33e-…` at 80 columns (CI logs, pipes)."""
    rng = np.random.default_rng(2)
    reference = {"a_rather_long_output_name_for_ctc_logits": rng.standard_normal((1, 30, 40)), "lens": np.array([30])}
    actual = {k: v + 1e-3 if v.dtype.kind == "f" else v for k, v in reference.items()}
    result = compare_outputs(actual, reference, tolerance("fp32"))
    out = io.StringIO()
    Console(file=out, width=80, force_terminal=False).print(parity_table(result))
    text = out.getvalue()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    ctc = result.outputs[0]
    for figure in (f"{ctc.max_abs:.2e}", f"{ctc.max_rel:.2e}", f"{ctc.cosine:.7f}"):
        assert figure in text
