"""References: the float64 shadow states the intended math; golden files round-trip; metrics and judging."""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from svsurgery import golden
from svsurgery.errors import BadInputError
from svsurgery.parity.float64 import float64_shadow
from svsurgery.parity.judge import Margin, improvement, regression
from svsurgery.parity.metrics import PROFILES, compare, compare_outputs
from svsurgery.runtime import run


def _model(nodes, inputs, outputs, initializers=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8))


def test_shadow_computes_in_double_including_casts_to_float16_and_constants():
    """y = Cast(Cast(x * c, f16), f32) * 3.1: the shadow drops the f16 rounding (intended math)."""
    nodes = [
        helper.make_node("Constant", [], ["c"], value_float=1.1),
        helper.make_node("Mul", ["x", "c"], ["m"]),
        helper.make_node("Cast", ["m"], ["h"], to=TensorProto.FLOAT16),
        helper.make_node("Cast", ["h"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["f", "k"], ["y"]),
    ]
    model = _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        [numpy_helper.from_array(np.array(3.1, np.float32), "k")],
    )
    x = np.array([0.1, 1.0, 333.3, -7.7], np.float32)
    shadow = float64_shadow(model)
    y = shadow.run({"x": x})["y"]
    assert y.dtype == np.float64 and shadow.float32_ops == []
    exact = x.astype(np.float64) * np.float64(np.float32(1.1)) * np.float64(np.float32(3.1))
    np.testing.assert_allclose(y, exact, rtol=1e-15)
    assert np.abs(run(model, {"x": x})["y"] - exact).max() > 1e-3  # the float32 model rounds through f16
    assert run(model, {"x": x})["y"].dtype == np.float32  # the model itself is untouched


def test_shadow_runs_ops_without_double_kernels_in_float32_and_says_so():
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], group=2),
        helper.make_node("Resize", ["c", "", "scales"], ["r"], mode="nearest"),
        helper.make_node("Erf", ["r"], ["e"]),
        helper.make_node("Sin", ["e"], ["y"]),
    ]
    model = _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [
            numpy_helper.from_array(np.full((2, 1, 3), 0.5, np.float32), "w"),
            numpy_helper.from_array(np.array([1, 1, 2], np.float32), "scales"),
        ],
    )
    shadow = float64_shadow(model)
    assert set(shadow.float32_ops) == {"Conv", "Resize", "Erf"}
    assert "Conv" in shadow.describe() and "float32" in shadow.describe()
    x = np.linspace(-1, 1, 10, dtype=np.float32).reshape(1, 2, 5)
    y = shadow.run({"x": x})["y"]
    np.testing.assert_allclose(y, run(model, {"x": x})["y"], rtol=1e-6, atol=1e-6)


def test_shadow_reaches_into_subgraphs():
    branch = helper.make_graph(
        [
            helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16),
            helper.make_node("Cast", ["h"], ["out"], to=TensorProto.FLOAT),
        ],
        "branch",
        [],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2])],
    )
    model = _model(
        [helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)],
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    x = np.array([1.0001, 3.14159], np.float32)
    y = float64_shadow(model).run({"x": x, "cond": np.array(True)})["y"]
    np.testing.assert_array_equal(y, x.astype(np.float64))


def test_golden_files_round_trip_and_refuse_bad_input(tmp_path):
    inputs = {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}
    outputs = {"y": np.ones((2, 3), np.float32), "n": np.array([3, 3], np.int32)}
    path = golden.save(tmp_path / "g.npz", inputs, outputs, source="unit test")
    loaded = golden.load(path)
    assert loaded.meta["source"] == "unit test" and loaded.meta["versions"]["onnx"]
    np.testing.assert_array_equal(loaded.inputs["x"], inputs["x"])
    np.testing.assert_array_equal(loaded.outputs["n"], outputs["n"])
    assert not list(tmp_path.glob(".g.npz.*"))  # no temporary left behind
    with pytest.raises(BadInputError, match="either outputs or a torch module"):
        golden.save(tmp_path / "h.npz", inputs)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(BadInputError, match="not a readable golden npz"):
        golden.load(tmp_path / "bad.npz")


def test_metrics_and_judging():
    expected = {"logits": np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]]), "lens": np.array([3, 3])}
    actual = {"logits": expected["logits"].astype(np.float32), "lens": expected["lens"]}  # a float32 model's outputs
    same = compare_outputs(actual, expected, PROFILES["fp32"])
    assert same.passed and same.by_name()["lens"].exact and same.by_name()["logits"].argmax_agreement == 1.0
    nudged = {"logits": np.nextafter(actual["logits"], np.float32(9)), "lens": expected["lens"]}  # one float32 step
    assert regression(same, compare_outputs(nudged, expected, PROFILES["fp32"])) is None
    flipped = {"logits": expected["logits"][:, ::-1].copy(), "lens": np.array([3, 2])}
    worse = compare_outputs(flipped, expected, PROFILES["fp32"])
    assert not worse.passed and "left tolerance" in regression(same, worse)
    assert "integer values differ" in " ".join(worse.failures())
    assert improvement(worse, same) is not None and improvement(same, same) is None
    nan = compare("x", np.array([np.nan, 1.0]), np.array([0.0, 1.0]))
    assert nan.nan_count == 1 and not nan.check(PROFILES["fp32"]).passed
    shape = compare("x", np.zeros(3), np.zeros(4)).check(PROFILES["fp32"])
    assert not shape.passed and "shape" in shape.failures[0] and math.isinf(shape.max_abs)
    # growth within a few rounding steps of the output type is not a regression
    base = compare("x", np.float32([1.0, 2.0]) + np.float32(1e-7), np.array([1.0, 2.0]))
    after = compare("x", np.float32([1.0, 2.0]) + np.float32(2.4e-7), np.array([1.0, 2.0]))
    assert Margin().allowed_growth(base) >= after.max_abs - base.max_abs


# ----------------------------------------------------------------------------- generated inputs


def _tensor(name, dtype, shape):
    return helper.make_tensor_value_info(name, dtype, shape)


def test_generated_inputs_read_roles_from_graph_use_when_names_say_nothing():
    """Names that hint at nothing: 'a' is a waveform because a Conv reads it, 'q' a sample rate
    because it is compared with 8000 (so the waveform is made at 8 kHz), 's' recurrent state
    because an LSTM takes it as initial_h, 'k' a mask because it reaches a Softmax's scores;
    the ids sharing k's sequence axis are padded after each row's length; the model runs."""
    from svsurgery.parity.inputs import generate_inputs

    rng = np.random.default_rng(0)
    hidden, channels = 4, 3
    nodes = [
        helper.make_node("Unsqueeze", ["a", "axis1"], ["a3"]),
        helper.make_node("Conv", ["a3", "w"], ["frames"], strides=[80], kernel_shape=[160]),  # [B, C, T]
        helper.make_node("Transpose", ["frames"], ["seq"], perm=[2, 0, 1]),  # [T, B, C]
        helper.make_node("LSTM", ["seq", "lw", "lr", "", "", "s"], ["", "h_last"], hidden_size=hidden),
        helper.make_node("Equal", ["q", "eight_k"], ["is_8k"]),
        helper.make_node("Cast", ["is_8k"], ["rate_gain"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["h_last", "rate_gain"], ["state_out"]),
        helper.make_node("Gather", ["table", "ids"], ["emb"]),  # [B, t, 4]
        helper.make_node("Transpose", ["emb"], ["emb_t"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["emb", "emb_t"], ["scores"]),
        helper.make_node("Cast", ["k"], ["kf"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["one", "kf"], ["hidden_part"]),
        helper.make_node("Mul", ["hidden_part", "fill"], ["bias"]),
        helper.make_node("Unsqueeze", ["bias", "axis1"], ["bias3"]),
        helper.make_node("Add", ["scores", "bias3"], ["masked"]),
        helper.make_node("Softmax", ["masked"], ["attention"], axis=-1),
    ]
    initializers = [
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(rng.standard_normal((channels, 1, 160)).astype(np.float32) * 0.1, "w"),
        numpy_helper.from_array(rng.standard_normal((1, 4 * hidden, channels)).astype(np.float32), "lw"),
        numpy_helper.from_array(rng.standard_normal((1, 4 * hidden, hidden)).astype(np.float32), "lr"),
        numpy_helper.from_array(np.array(8000, np.int64), "eight_k"),
        numpy_helper.from_array(rng.standard_normal((50, 4)).astype(np.float32), "table"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array(-1e4, np.float32), "fill"),
    ]
    model = _model(
        nodes,
        [
            _tensor("a", TensorProto.FLOAT, ["B", "N"]),
            _tensor("q", TensorProto.INT64, []),
            _tensor("s", TensorProto.FLOAT, [1, "B", hidden]),
            _tensor("k", TensorProto.INT64, ["B", "T"]),
            _tensor("ids", TensorProto.INT64, ["B", "T"]),
        ],
        [_tensor("state_out", TensorProto.FLOAT, None), _tensor("attention", TensorProto.FLOAT, None)],
        initializers,
    )
    made = generate_inputs(model)
    feeds, how = made.feeds, made.how
    assert "a Conv reads it as a signal" in how["a"] and "at 8000 Hz ('q' is compared with 8000)" in how["a"]
    # 1 s at 8 kHz; a streaming model (it has state) first gets a 36 ms chunk: 288 samples, silero's 256 + 32
    assert feeds["a"].shape == (2, 288) and np.abs(feeds["a"]).max() > 0.05
    assert int(feeds["q"]) == 8000 and "compared with 8000" in how["q"]
    assert (
        feeds["s"].shape == (1, 2, hidden)
        and not feeds["s"].any()
        and "an LSTM reads it as its initial state" in how["s"]
    )
    assert feeds["k"].tolist() == [[1] * 8, [1] * 5 + [0] * 3] and "reaches the attention scores" in how["k"]
    assert feeds["ids"].max() < 50 and np.all(feeds["ids"][1, 5:] == 0) and feeds["ids"][0].any()
    run(model, feeds)


def test_generated_inputs_tie_lengths_batch_and_fixed_dimensions():
    """svsurgery's own fused signature (waveform [B, N], waveform_lengths [B]): rows of 1 s and
    0.6 s, zeros after, lengths equal to them; a model fixing batch 1 gets one row everywhere."""
    from svsurgery.parity.inputs import generate_inputs

    def model(batch):
        nodes = [
            helper.make_node("Unsqueeze", ["waveform", "axis1"], ["w3"]),
            helper.make_node("Conv", ["w3", "w"], ["y"], kernel_shape=[4]),
            helper.make_node("Cast", ["waveform_lengths"], ["y_lengths"], to=TensorProto.FLOAT),
        ]
        return _model(
            nodes,
            [
                _tensor("waveform", TensorProto.FLOAT, [batch, "N"]),
                _tensor("waveform_lengths", TensorProto.INT64, [batch]),
            ],
            [_tensor("y", TensorProto.FLOAT, None), _tensor("y_lengths", TensorProto.FLOAT, None)],
            [
                numpy_helper.from_array(np.array([1], np.int64), "axis1"),
                numpy_helper.from_array(np.ones((1, 1, 4), np.float32), "w"),
            ],
        )

    made = generate_inputs(model("B"))
    wave, lengths = made.feeds["waveform"], made.feeds["waveform_lengths"]
    assert wave.shape == (2, 16000) and lengths.tolist() == [16000, 9600]
    assert np.all(wave[1, 9600:] == 0) and np.abs(wave[1, 9000:9600]).max() > 0
    assert "valid length of each row of 'waveform'" in made.how["waveform_lengths"]
    assert "2 rows: 1 s and 0.6 s" in made.how["waveform"]
    single = generate_inputs(model(1)).feeds
    assert single["waveform"].shape == (1, 16000) and single["waveform_lengths"].tolist() == [16000]


def test_generated_speech_features_honour_a_fixed_frame_count():
    """A features input with every dimension fixed ([1, 100, 560], as a static-shape export has):
    the frame count is taken as it is (it crashed with AttributeError on the int dimension)."""
    from svsurgery.parity.inputs import generate_inputs

    nodes = [helper.make_node("ReduceMean", ["speech"], ["pooled"], keepdims=0)]
    fixed = _model(
        nodes,
        [_tensor("speech", TensorProto.FLOAT, [1, 100, 560])],
        [_tensor("pooled", TensorProto.FLOAT, None)],
        [],
    )
    made = generate_inputs(fixed)
    assert made.feeds["speech"].shape == (1, 100, 560) and np.isfinite(made.feeds["speech"]).all()
    assert np.abs(made.feeds["speech"]).max() > 0


def test_guessed_lengths_grow_until_the_model_runs_then_fail_in_one_line():
    """A reflect Pad of 20000 samples needs more than 1 s: 4 s is tried; tokens padded by 20
    need more than 8: 64 are tried; a Pad no generated length satisfies is one line naming
    what was tried and --inputs."""
    from svsurgery.parity.inputs import generate_inputs

    def padded(name, dtype, pads, table=None):
        nodes, inits = [], [numpy_helper.from_array(np.array(pads, np.int64), "pads")]
        source = name
        if table is not None:
            nodes.append(helper.make_node("Gather", ["table", name], ["emb"]))
            inits.append(numpy_helper.from_array(np.ones((table, 2), np.float32), "table"))
            source = "emb"
        nodes.append(helper.make_node("Pad", [source, "pads"], ["y"], mode="reflect"))
        return _model(nodes, [_tensor(name, dtype, ["B", "N"])], [_tensor("y", TensorProto.FLOAT, None)], inits)

    wave = generate_inputs(padded("x", TensorProto.FLOAT, [0, 20000, 0, 20000]))
    assert wave.feeds["x"].shape == (2, 64000) and "2 rows of 4 s" in wave.how["x"]
    tokens = generate_inputs(padded("tokens", TensorProto.INT64, [0, 20, 0, 0, 20, 0], table=30))
    assert tokens.feeds["tokens"].shape == (2, 64) and tokens.feeds["tokens"].max() < 30
    with pytest.raises(BadInputError) as error:
        generate_inputs(padded("x", TensorProto.FLOAT, [0, 10**6, 0, 10**6]), "pad.onnx")
    message = str(error.value)
    assert "\n" not in message and message.startswith(
        "pad.onnx (also tried: 1 s of waveform) cannot run on these inputs"
    )
    assert "x [2, 64000] float32" in message and "--inputs" in message


def test_generated_inputs_take_the_rate_from_metadata_and_make_whisper_log_mel():
    """A ``sample_rate`` in metadata_props sets the waveform's rate; a [B, 128, T] input read by
    a Conv with 128 input channels gets Whisper's 128-bin log-mel over 3000 frames."""
    from svsurgery.parity.inputs import generate_inputs
    from svsurgery.parity.waveforms import speech_like, whisper_log_mel

    wave = _model(
        [
            helper.make_node("Unsqueeze", ["audio", "axis1"], ["a3"]),
            helper.make_node("Conv", ["a3", "w"], ["y"], kernel_shape=[4]),
        ],
        [_tensor("audio", TensorProto.FLOAT, ["B", "N"])],
        [_tensor("y", TensorProto.FLOAT, None)],
        [
            numpy_helper.from_array(np.array([1], np.int64), "axis1"),
            numpy_helper.from_array(np.ones((1, 1, 4), np.float32), "w"),
        ],
    )
    wave.metadata_props["sample_rate"] = "22050"
    made = generate_inputs(wave)
    assert made.feeds["audio"].shape == (2, 22050) and "at 22050 Hz (metadata 'sample_rate')" in made.how["audio"]
    np.testing.assert_array_equal(made.feeds["audio"][1], speech_like(1.0, seed=1, rate=22050))

    mel = _model(
        [helper.make_node("Conv", ["mel_in", "w"], ["y"], kernel_shape=[3], pads=[1, 1])],
        [_tensor("mel_in", TensorProto.FLOAT, ["B", "F", "T"])],
        [_tensor("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.ones((4, 128, 3), np.float32), "w")],
    )
    made = generate_inputs(mel)
    assert made.feeds["mel_in"].shape == (2, 128, 3000) and "log-mel" in made.how["mel_in"]
    assert "a Conv reads its 128 channels over time" in made.how["mel_in"]
    np.testing.assert_allclose(made.feeds["mel_in"][0], whisper_log_mel(speech_like(4.0, seed=0), 128), atol=1e-6)


def test_torch_reference_does_not_let_a_module_change_the_feeds():
    """Guards: FunASR's encoder scales its input in place (xs_pad *= sqrt(d)); the reference used
    to hand the module the feeds' own memory, so every later comparison ran on scaled inputs."""
    torch = pytest.importorskip("torch")

    class ScalesInPlace(torch.nn.Module):
        def forward(self, x):
            x *= 2.0
            return x + 1.0

    feeds = {"x": np.ones((2, 3), np.float32)}
    from svsurgery.parity.references import TorchReference

    reference = TorchReference(ScalesInPlace(), ["y"], ["x"])
    first = reference.outputs(feeds)["y"]
    second = reference.outputs(feeds)["y"]
    assert np.array_equal(feeds["x"], np.ones((2, 3), np.float32))
    assert np.array_equal(first, second) and float(first[0, 0]) == 3.0
