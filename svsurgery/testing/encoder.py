"""A SenseVoice-architecture encoder in PyTorch with seeded random weights.

Real SenseVoice checkpoints cannot be downloaded here, so tests, benchmarks and the
demo build this stand-in. It follows FunASR's ``SenseVoiceEncoderSmall`` layer by
layer (SANM attention with an FSMN memory block, pre-norm residual blocks, a
run-time sinusoidal positional encoding, ``masked_fill(-inf)`` attention masks,
four prepended query embeddings and a CTC projection), because those are the
constructs whose ONNX exports diverge. Width, depth and vocabulary are
configurable: :meth:`EncoderConfig.tiny` for tests, :meth:`EncoderConfig.small_depth`
for benchmarks at SenseVoice-Small depth.

Requires torch (``pip install 'svsurgery[torch]'``).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["EncoderConfig", "SenseVoiceEncoder", "build_encoder", "example_inputs"]


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """Sizes of the reference encoder (SenseVoiceSmall's values as defaults)."""

    input_size: int = 560  # 80 mel bins x LFR m=7
    output_size: int = 512
    attention_heads: int = 4
    linear_units: int = 2048
    num_blocks: int = 50  # encoders0 (1) + encoders (num_blocks - 1)
    tp_blocks: int = 20
    kernel_size: int = 11  # FSMN memory block
    sanm_shift: int = 0
    vocab_size: int = 25055
    num_query_embeddings: int = 16  # 7 + language ids + text-normalisation ids
    seed: int = 0

    @classmethod
    def tiny(cls, **overrides: int) -> EncoderConfig:
        """A few blocks and a small vocabulary: exports in about a second."""
        values = dict(output_size=64, attention_heads=4, linear_units=128, num_blocks=2, tp_blocks=1, vocab_size=64)
        values.update(overrides)
        return cls(**values)

    @classmethod
    def small_depth(cls, depth_multiplier: int = 1, **overrides: int) -> EncoderConfig:
        """SenseVoice-Small depth (50 + 20 blocks) with reduced width, for benchmarks."""
        values = dict(
            output_size=128,
            linear_units=256,
            num_blocks=50 * depth_multiplier,
            tp_blocks=20 * depth_multiplier,
            vocab_size=512,
        )
        values.update(overrides)
        return cls(**values)


# Query-embedding ids as SenseVoice assigns them: language ids, then event/emotion, then textnorm.
LANGUAGE_IDS = {"auto": 0, "zh": 3, "en": 4, "yue": 7, "ja": 11, "ko": 12, "nospeech": 13}
TEXTNORM_IDS = {"withitn": 14, "woitn": 15}
EVENT_EMOTION_IDS = (1, 2)


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the input dtype, as FunASR's SenseVoice does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, self.weight, self.bias, self.eps).type_as(x)


class SinusoidalPositionEncoder(nn.Module):
    """Adds a sinusoidal encoding of positions 1..T, computed at run time from T."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, timesteps, depth = x.size()
        positions = torch.arange(1, timesteps + 1, device=x.device, dtype=x.dtype)[None, :]
        log_timescale_increment = math.log(10000.0) / (depth / 2 - 1)
        inv_timescales = torch.exp(torch.arange(depth / 2, device=x.device, dtype=x.dtype) * (-log_timescale_increment))
        scaled_time = positions[:, :, None] * inv_timescales[None, None, :]
        encoding = torch.cat([torch.sin(scaled_time), torch.cos(scaled_time)], dim=2)
        return x + encoding


class MultiHeadedAttentionSANM(nn.Module):
    """Self-attention plus an FSMN memory block (depthwise Conv1d over time) on the values."""

    def __init__(self, n_head: int, in_feat: int, n_feat: int, kernel_size: int, sanm_shift: int) -> None:
        super().__init__()
        assert n_feat % n_head == 0
        self.d_k = n_feat // n_head
        self.h = n_head
        self.linear_out = nn.Linear(n_feat, n_feat)
        self.linear_q_k_v = nn.Linear(in_feat, n_feat * 3)
        self.fsmn_block = nn.Conv1d(n_feat, n_feat, kernel_size, stride=1, padding=0, groups=n_feat, bias=False)
        left_padding = (kernel_size - 1) // 2 + sanm_shift
        right_padding = kernel_size - 1 - left_padding
        self.pad_fn = nn.ConstantPad1d((left_padding, right_padding), 0.0)

    def forward_fsmn(self, inputs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, _, _ = inputs.size()
        mask = torch.reshape(mask, (b, -1, 1))
        inputs = inputs * mask
        x = inputs.transpose(1, 2)
        x = self.pad_fn(x)
        x = self.fsmn_block(x)
        x = x.transpose(1, 2)
        x = x + inputs
        return x * mask

    def forward_qkv(self, x: torch.Tensor):
        b, t, _ = x.size()
        q, k, v = torch.split(self.linear_q_k_v(x), int(self.h * self.d_k), dim=-1)
        q_h = torch.reshape(q, (b, t, self.h, self.d_k)).transpose(1, 2)
        k_h = torch.reshape(k, (b, t, self.h, self.d_k)).transpose(1, 2)
        v_h = torch.reshape(v, (b, t, self.h, self.d_k)).transpose(1, 2)
        return q_h, k_h, v_h, v

    def forward_attention(self, value: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        n_batch = value.size(0)
        mask = mask.unsqueeze(1).eq(0)  # (batch, 1, 1, time2): True where padded
        scores = scores.masked_fill(mask, float("-inf"))
        attn = torch.softmax(scores, dim=-1).masked_fill(mask, 0.0)
        x = torch.matmul(attn, value)
        x = x.transpose(1, 2).contiguous().view(n_batch, -1, self.h * self.d_k)
        return self.linear_out(x)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q_h, k_h, v_h, v = self.forward_qkv(x)
        fsmn_memory = self.forward_fsmn(v, mask)
        q_h = q_h * self.d_k ** (-0.5)
        scores = torch.matmul(q_h, k_h.transpose(-2, -1))
        att_outs = self.forward_attention(v_h, scores, mask)
        return att_outs + fsmn_memory


class PositionwiseFeedForward(nn.Module):
    def __init__(self, idim: int, hidden_units: int) -> None:
        super().__init__()
        self.w_1 = nn.Linear(idim, hidden_units)
        self.w_2 = nn.Linear(hidden_units, idim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(torch.relu(self.w_1(x)))


class EncoderLayerSANM(nn.Module):
    """Pre-norm block; the first block changes width, so it has no attention residual."""

    def __init__(self, in_size: int, size: int, config: EncoderConfig) -> None:
        super().__init__()
        self.in_size = in_size
        self.size = size
        self.self_attn = MultiHeadedAttentionSANM(
            config.attention_heads, in_size, size, config.kernel_size, config.sanm_shift
        )
        self.feed_forward = PositionwiseFeedForward(size, config.linear_units)
        self.norm1 = LayerNorm(in_size)
        self.norm2 = LayerNorm(size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        residual = x
        x = self.norm1(x)
        if self.in_size == self.size:
            x = residual + self.self_attn(x, mask)
        else:
            x = self.self_attn(x, mask)
        residual = x
        x = self.norm2(x)
        return residual + self.feed_forward(x)


class SANMEncoder(nn.Module):
    """FunASR's SenseVoiceEncoderSmall: encoders0, encoders, after_norm, tp_encoders, tp_norm."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.output_size = config.output_size
        self.embed = SinusoidalPositionEncoder()
        self.encoders0 = nn.ModuleList([EncoderLayerSANM(config.input_size, config.output_size, config)])
        self.encoders = nn.ModuleList(
            [EncoderLayerSANM(config.output_size, config.output_size, config) for _ in range(config.num_blocks - 1)]
        )
        self.after_norm = LayerNorm(config.output_size)
        self.tp_encoders = nn.ModuleList(
            [EncoderLayerSANM(config.output_size, config.output_size, config) for _ in range(config.tp_blocks)]
        )
        self.tp_norm = LayerNorm(config.output_size)

    def forward(self, xs_pad: torch.Tensor, ilens: torch.Tensor):
        max_len = xs_pad.size(1)
        masks = (torch.arange(max_len, device=ilens.device)[None, :] < ilens[:, None]).to(xs_pad.dtype)
        masks = masks[:, None, :]
        xs_pad = xs_pad * self.output_size**0.5
        xs_pad = self.embed(xs_pad)
        for layer in self.encoders0:
            xs_pad = layer(xs_pad, masks)
        for layer in self.encoders:
            xs_pad = layer(xs_pad, masks)
        xs_pad = self.after_norm(xs_pad)
        for layer in self.tp_encoders:
            xs_pad = layer(xs_pad, masks)
        xs_pad = self.tp_norm(xs_pad)
        return xs_pad, ilens


class SenseVoiceEncoder(nn.Module):
    """The exported SenseVoiceSmall graph: query embeddings + SANM encoder + CTC projection.

    Inputs are those of FunASR's export: ``speech`` f32 [B, T, input_size],
    ``speech_lengths``, ``language`` and ``textnorm`` int32 [B]. Outputs ``ctc_logits``
    f32 [B, T + 4, vocab_size] and ``encoder_out_lens`` int32 [B].
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.num_query_embeddings, config.input_size)
        self.encoder = SANMEncoder(config)
        self.ctc_lo = nn.Linear(config.output_size, config.vocab_size)
        self.register_buffer(
            "event_emotion_ids", torch.tensor([EVENT_EMOTION_IDS], dtype=torch.int32), persistent=False
        )

    def forward(
        self,
        speech: torch.Tensor,
        speech_lengths: torch.Tensor,
        language: torch.Tensor,
        textnorm: torch.Tensor,
    ):
        language_query = self.embed(language).unsqueeze(1)
        textnorm_query = self.embed(textnorm).unsqueeze(1)
        speech = torch.cat((textnorm_query, speech), dim=1)
        event_emotion_query = self.embed(self.event_emotion_ids).repeat(speech.size(0), 1, 1)
        input_query = torch.cat((language_query, event_emotion_query), dim=1)
        speech = torch.cat((input_query, speech), dim=1)
        encoder_out, encoder_out_lens = self.encoder(speech, speech_lengths + 4)
        return self.ctc_lo(encoder_out), encoder_out_lens


def build_encoder(config: EncoderConfig | None = None) -> SenseVoiceEncoder:
    """The reference encoder in eval mode, weights drawn from ``config.seed``.

    Linear weights get a gain that keeps activations in the range real encoders show
    (LayerNorm inputs of tens to hundreds) rather than PyTorch's near-zero init.
    """
    config = config or EncoderConfig.tiny()
    generator = torch.Generator().manual_seed(config.seed)
    model = SenseVoiceEncoder(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
            elif ".norm" in name or "after_norm" in name or "tp_norm" in name:
                parameter.copy_(1.0 + torch.randn(parameter.shape, generator=generator) * 0.1)
            elif name == "embed.weight":  # query embeddings sit among CMVN-normalised features
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
            else:
                fan_in = parameter.shape[1] * (parameter.shape[2] if parameter.dim() > 2 else 1)
                std = 1.0 / math.sqrt(fan_in) if parameter.dim() > 1 else 1.0
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
    return model.eval()


def example_inputs(
    config: EncoderConfig, lengths: tuple[int, ...] = (37, 23), seed: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A padded batch of CMVN-like features with mixed lengths, plus language/textnorm ids."""
    generator = torch.Generator().manual_seed(seed)
    batch, frames = len(lengths), max(lengths)
    speech = torch.randn((batch, frames, config.input_size), generator=generator)
    speech_lengths = torch.tensor(lengths, dtype=torch.int32)
    for row, length in enumerate(lengths):
        speech[row, length:] = 0.0
    language = torch.tensor([LANGUAGE_IDS["auto"], LANGUAGE_IDS["en"]] * batch, dtype=torch.int32)[:batch]
    textnorm = torch.tensor([TEXTNORM_IDS["woitn"]] * batch, dtype=torch.int32)
    return speech, speech_lengths, language, textnorm
