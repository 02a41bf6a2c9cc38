"""The convolutional feature encoder of wav2vec 2.0 and HuBERT (Baevski et al. 2020, sec. 2).

A stack of strided ``Conv1d`` layers on the raw waveform, each followed by a
normalisation and GELU. The spec is a list of ``[channels, kernel, stride]``
(fairseq's ``conv_feature_layers``, torchaudio's ``extractor_conv_layer_config``),
with no conv padding; two variants:

- ``mode="group_norm"`` (wav2vec 2.0 base, HuBERT base): a ``GroupNorm`` with one
  group per channel after the first conv only, which normalises each channel
  over time;
- ``mode="layer_norm"`` (wav2vec 2.0 large, HuBERT large): a ``LayerNorm`` over the
  channels of every frame after every conv.

Parameter for parameter the shapes of fairseq's ``ConvFeatureExtractionModel``,
torchaudio's ``FeatureExtractor`` and HF's ``Wav2Vec2FeatureEncoder``.

Where we differ, deliberately: the first layer's group norm (:class:`MaskedGroupNorm`,
shared with vq-wav2vec) takes its per-channel statistics over each utterance's valid frames only, so that an utterance in a
padded batch gets exactly the features it gets alone. The reference
implementations average over the padding too (HF warns not to pass an attention
mask to such models and to zero-pad instead, which still shifts the statistics);
on unpadded input the two agree. Without conv padding, a valid output frame
only ever sees valid samples, so no other layer needs a mask.
"""

from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from speechssl.frames import frames_conv_stack, receptive_field
from speechssl.interface import lengths_to_mask

MODES = ("group_norm", "layer_norm")


def conv_geometry(spec: Sequence[Sequence[int]]) -> list[tuple[int, int, int]]:
    """``[channels, kernel, stride]`` entries -> the ``(kernel, stride, padding=0)`` of :mod:`speechssl.frames`."""
    return [(int(kernel), int(stride), 0) for _, kernel, stride in spec]


def check_conv_spec(spec: Sequence[Sequence[int]], model: str) -> None:
    """A clear error for a malformed ``[[channels, kernel, stride], ...]`` spec."""
    if not spec:
        raise ValueError(f"{model}: conv_layers is empty")
    for layer in spec:
        if len(layer) != 3 or min(layer) < 1:
            raise ValueError(f"{model}: conv_layers entries must be [channels, kernel, stride], each >= 1, got {list(layer)}")


class MaskedGroupNorm(nn.Module):
    """``nn.GroupNorm(groups, C)`` whose statistics are taken over each utterance's valid frames only.

    For ``x`` (B, C, T) and ``valid`` (B, T) bool: each of the ``groups`` groups of
    ``C / groups`` channels of an utterance is normalised by the mean and (biased)
    variance of its values at the valid frames, then scaled and shifted per channel
    (``weight``, ``bias``: the names and values of ``nn.GroupNorm``'s). Statistics in
    float32, as fairseq's ``Fp32GroupNorm``. With every frame valid it is
    ``F.group_norm`` itself (the fused kernel); padding frames get finite values, to
    be zeroed by the caller. wav2vec 2.0's first conv layer uses ``groups = C`` (each
    channel over time), wav2vec's and vq-wav2vec's layers ``groups = 1``.
    """

    def __init__(self, groups: int, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        if channels % groups:
            raise ValueError(f"group norm: {channels} channels do not split into {groups} groups")
        self.groups, self.eps = groups, eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``x`` (B, C, T), ``valid`` (B, T) bool -> (B, C, T)."""
        B, C, T = x.shape
        G = self.groups
        if bool(valid.all()):  # no padding: the fused kernel, the same numbers
            return F.group_norm(x.float(), G, self.weight, self.bias, self.eps).to(x.dtype)
        h = x.float()
        masked = h * valid[:, None, :]  # (B, C, T), zero at padding
        count = valid.sum(dim=-1, keepdim=True).clamp(min=1) * (C // G)  # (B, 1)
        mean = masked.view(B, G, -1).sum(-1) / count  # (B, G)
        # E[x^2] - E[x]^2: two full passes fewer than the centred form, and as exact
        # in float32 for activations whose mean is not far above their spread
        var = ((masked * h).view(B, G, -1).sum(-1) / count - mean**2).clamp(min=0)
        scale = torch.rsqrt(var + self.eps).repeat_interleave(C // G, dim=1) * self.weight  # (B, C)
        shift = self.bias - mean.repeat_interleave(C // G, dim=1) * scale
        return torch.addcmul(shift[..., None], h, scale[..., None]).to(x.dtype)


class ConvLayer(nn.Module):
    """``Conv1d`` (no padding) -> optional norm -> GELU, on ``(B, C, T)``."""

    def __init__(self, in_channels: int, channels: int, kernel: int, stride: int, *, bias: bool, norm: str | None) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.conv = nn.Conv1d(in_channels, channels, kernel, stride=stride, bias=bias)
        # fairseq's and HF's initialisation: it keeps the variance through the stack, where
        # PyTorch's default shrinks it by about 3x a layer (seven layers: features near zero)
        nn.init.kaiming_normal_(self.conv.weight)
        self.norm_kind = norm
        if norm == "group_norm":
            self.norm = MaskedGroupNorm(channels, channels)
        elif norm == "layer_norm":
            self.norm = nn.LayerNorm(channels)
        else:
            self.norm = None

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (B, C_in, S), ``lengths`` (B,) -> (B, C, T), (B,) valid frames."""
        x = self.conv(x)
        lengths = frames_conv_stack(lengths, [(self.kernel, self.stride)])
        if self.norm_kind == "group_norm":
            x = self.norm(x, lengths_to_mask(lengths, x.shape[-1]))
        elif self.norm_kind == "layer_norm":
            x = self.norm(x.transpose(1, 2)).transpose(1, 2)
        return F.gelu(x), lengths


class ConvFeatureEncoder(nn.Module):
    """Waveform ``(B, S)`` with zero padding -> conv features ``(B, T, C_last)`` with zero padding.

    ``spec``: ``[[channels, kernel, stride], ...]``; ``mode``: ``"group_norm"`` or
    ``"layer_norm"`` (see the module doc); ``bias``: conv biases (wav2vec 2.0 large
    has them, base not).
    """

    def __init__(self, spec: List[List[int]], mode: str = "group_norm", bias: bool = False) -> None:
        super().__init__()
        check_conv_spec(spec, "conv feature encoder")
        if mode not in MODES:
            raise ValueError(f"conv feature encoder: mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.geometry = conv_geometry(spec)
        self.min_samples = receptive_field(self.geometry)
        channels = [1] + [int(layer[0]) for layer in spec]
        self.layers = nn.ModuleList(
            ConvLayer(
                channels[i],
                channels[i + 1],
                kernel,
                stride,
                bias=bias,
                norm=mode if (mode == "layer_norm" or i == 0) else None,
            )
            for i, (kernel, stride, _) in enumerate(self.geometry)
        )
        self.output_dim = channels[-1]

    def num_frames(self, wav_lens):
        return frames_conv_stack(wav_lens, self.geometry)

    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``wavs`` (B, S), ``wav_lens`` (B,) -> ``(B, T, C)`` features, ``(B,)`` frames."""
        x, lengths = wavs[:, None, :], wav_lens
        for layer in self.layers:
            x, lengths = layer(x, lengths)
        x = x.transpose(1, 2)  # (B, T, C)
        return x.masked_fill(~lengths_to_mask(lengths, x.shape[1])[..., None], 0.0), lengths
