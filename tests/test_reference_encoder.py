"""The reference encoder exports like FunASR's SenseVoice and matches its torch module."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest
import torch
from conftest import make_feeds

from svsurgery.runtime import run

MAX_ABS_EXPORT = 1e-5  # fp32 export vs eager torch


def _layer_norm_count(module: torch.nn.Module) -> int:
    return sum(isinstance(m, torch.nn.LayerNorm) for m in module.modules())


@pytest.mark.parametrize("kind", ["legacy", "dynamo"])
@pytest.mark.parametrize("lengths", [(37, 23), (5, 50, 12, 50), (1,)])
def test_export_matches_torch_with_mixed_lengths(exported, torch_encoder, encoder_config, kind, lengths):
    feeds = make_feeds(encoder_config, lengths, seed=len(lengths))
    with torch.no_grad():
        expected = torch_encoder(*(torch.from_numpy(feeds[n]) for n in feeds))
    outputs = run(exported[kind], feeds)
    logits, lens = outputs["ctc_logits"], outputs["encoder_out_lens"]
    assert logits.shape == (len(lengths), max(lengths) + 4, encoder_config.vocab_size)
    assert lens.dtype == np.int32
    np.testing.assert_array_equal(lens, np.asarray(lengths) + 4)
    max_abs = np.abs(logits.astype(np.float64) - expected[0].numpy()).max()
    assert max_abs <= MAX_ABS_EXPORT, f"{kind} export differs from torch by {max_abs}"


def test_legacy_export_has_funasr_patterns(legacy_path, torch_encoder):
    proto = onnx.load(str(legacy_path))
    ops = collections.Counter(n.op_type for n in proto.graph.node)
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [14]
    assert ops["LayerNormalization"] == 0
    assert ops["ReduceMean"] == 2 * _layer_norm_count(torch_encoder)  # mean and variance per LayerNorm
    assert ops["Sin"] == ops["Cos"] == 1 and ops["Range"] >= 1  # run-time positional encoding
    assert ops["Softmax"] == torch_encoder.config.num_blocks + torch_encoder.config.tp_blocks
    assert ops["Where"] == 2 * ops["Softmax"]  # masked_fill(-inf) before, masked_fill(0) after
    assert ops["Cast"] > 0
    fills = [
        onnx.numpy_helper.to_array(n.attribute[0].t)
        for n in proto.graph.node
        if n.op_type == "Constant" and n.attribute[0].t.dims == [] and n.attribute[0].t.data_type == 1
    ]
    assert any(np.isneginf(v) for v in fills), "the attention mask fill should be -inf"
    signature = {i.name: i.type.tensor_type.elem_type for i in proto.graph.input}
    assert signature == {"speech": 1, "speech_lengths": 6, "language": 6, "textnorm": 6}


def test_dynamo_export_has_fused_layer_norm_and_external_data(dynamo_path, torch_encoder):
    proto = onnx.load(str(dynamo_path), load_external_data=False)
    ops = collections.Counter(n.op_type for n in proto.graph.node)
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [18]
    assert ops["LayerNormalization"] == _layer_norm_count(torch_encoder)
    external = [t for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert external, "the dynamo export should keep weights in external data"
    assert (dynamo_path.parent / external[0].external_data[0].value).is_file()
