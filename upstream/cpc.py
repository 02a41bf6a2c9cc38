"""Modified CPC: contrastive prediction of future conv features from a causal context.

CPC (van den Oord et al., 2018, arXiv 1807.03748) encodes the raw waveform
with strided convolutions into frames ``z_t``, summarises ``z_1..z_t`` with a
causal recurrent network into ``c_t``, and trains both to tell ``z_{t+k}``
apart from negatives, for ``k = 1..K`` (InfoNCE, eq. 4). The *modified* CPC
of Rivière et al. (ICASSP 2020, "Unsupervised pretraining transfers well
across languages", arXiv 2002.02848), the one SUPERB benchmarks as
``modified_cpc``, normalises each frame over its channels instead of batch
normalisation, uses 256 channels and an LSTM context, and predicts each step
``k`` with its own causal Transformer layer instead of a linear map.

Every default comes from the authors' code (facebookresearch/CPC_audio:
``cpc/cpc_default_config.py``, ``cpc/model.py``, ``cpc/criterion/criterion.py``,
``cpc/transformers.py``; s3prl's ``upstream/cpc`` wraps the same networks for
its ``modified_cpc`` checkpoint): conv kernels 10, 8, 4, 4, 4, strides
5, 4, 2, 2, 2, paddings 3, 2, 1, 1, 1 (10 ms frames), 256 channels, channel
norm and ReLU after each conv; a 1-layer LSTM of 256; K = 12 predictions, 128
negatives; each predictor a post-LN Transformer layer (8 heads, feed-forward
2048, ReLU, dropout 0.1, no bias in the attention projections, causal attention
with learned relative-position keys); a score is the dot product divided by the
dimension (CPC_audio's ``mean``). The upstream holds 1,843,456 parameters
(SUPERB's table: 1.84M), the predictors 15.8M more (in :class:`CPCObjective`).

Where we differ from CPC_audio, deliberately:

- negatives come from the same utterance (its ``samesequence`` sampling), 128
  per frame ``t`` shared by the K predictions made at ``t`` as in CPC_audio,
  never frame ``t`` itself; where a negative is the positive ``z_{t+k}`` its
  score is dropped (CPC_audio keeps the duplicate). CPC_audio's default
  (``samespeaker``) draws them from a batch of one speaker's windows;
- every prediction whose target lies inside the utterance counts, averaged over
  those ``(t, k)`` pairs; CPC_audio scores only the ``t`` with all K targets in
  its fixed 128-frame window and sums the K per-step means (K times our loss);
- CPC_audio runs its predictors on 116-frame windows, with a relative-position
  table of that size; ours run on whole crops, each frame attending to the
  ``predictor_window`` (116) frames up to itself, the most a frame of a
  CPC_audio window sees, so that the cost grows linearly with the crop;
- padding is zeroed after every conv layer, so an utterance in a padded batch
  gets exactly the features it gets alone (CPC_audio trains on unpadded windows);
- accuracy counts a prediction right only if the positive scores strictly
  above every negative (CPC_audio's ``argmax`` lets the positive win ties);
- ``normalize_waveform`` (off by default, as CPC_audio) gives each utterance
  zero mean and unit variance first. Small models on quiet audio need it: at
  PyTorch's initialisation the first conv's biases dwarf a waveform with an RMS
  of a few hundredths, every ``z_t`` is nearly the same vector, and at a
  learning rate of 1e-3 the features collapse to a constant (the loss stays at
  ``log(N + 1)``); ``configs/upstream/cpc_tiny.yaml`` turns it on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List

import torch
import torch.nn.functional as F
from torch import nn

from speechssl import features
from speechssl.errors import CheckpointError
from speechssl.frames import frames_conv_stack, receptive_field
from speechssl.interface import Features, Upstream, lengths_to_mask, zero_padding
from speechssl.masking import sample_negatives, shift_targets
from speechssl.objective import Objective
from speechssl.registry import register
from upstream.modules.contrastive import info_nce

# (kernel, stride, padding) of CPC_audio's CPCEncoder: 160 samples (10 ms) per frame.
CONV_LAYERS = [[10, 5, 3], [8, 4, 2], [4, 2, 1], [4, 2, 1], [4, 2, 1]]


@dataclass
class CPCConfig:
    """Modified CPC as CPC_audio trains it (Rivière et al. 2020; the defaults of its code)."""

    # encoder: strided convolutions on the waveform, each followed by channel norm and ReLU
    normalize_waveform: bool = False  # zero mean, unit variance per utterance first (CPC_audio: raw waveform)
    conv_layers: List[List[int]] = field(default_factory=lambda: [list(layer) for layer in CONV_LAYERS])
    conv_dim: int = 256  # channels of every conv layer = size of z (CPC_audio's hiddenEncoder)
    norm_eps: float = 1e-5  # ChannelNorm epsilon
    # context network: unidirectional LSTM layers over z
    context_size: int = 256  # CPC_audio's hiddenGar; must equal conv_dim (the predictors map c into z's space)
    context_layers: int = 1  # CPC_audio's nLevelsGRU
    # objective (CPCObjective)
    num_predictions: int = 12  # K: predict z_{t+1} .. z_{t+K} (nPredicts)
    num_negatives: int = 128  # negatives per frame t (negativeSamplingExt)
    predictor_heads: int = 8
    predictor_ffn_dim: int = 2048
    predictor_dropout: float = 0.1  # on attention probabilities and the feed-forward hidden layer
    predictor_window: int = 116  # frames t-115..t a prediction attends to: CPC_audio's 128-frame window less 12


class ChannelNorm(nn.Module):
    """Normalise every frame over its channels, then a learned per-channel scale and shift.

    CPC_audio's ``ChannelNorm`` (its ``normMode="layerNorm"``):
    ``(x - mean) / sqrt(var + eps) * weight + bias`` over the ``C`` channels of
    each time step, with the unbiased variance ``var``.
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, C, T) -> (B, C, T)."""
        C = x.shape[1]
        # F.layer_norm divides by the biased variance, var * (C - 1) / C: the same
        # normalisation, with eps and the scale rescaled, in one fused kernel.
        shrink = (C - 1) / C
        y = F.layer_norm(x.transpose(1, 2), (C,), self.weight * math.sqrt(shrink), self.bias, self.eps * shrink)
        return y.transpose(1, 2)


class ConvFeatureEncoder(nn.Module):
    """Strided ``Conv1d`` -> :class:`ChannelNorm` -> ReLU layers on the waveform.

    The frames past each utterance's end are zeroed after every layer, so the
    next layer sees exactly the zeros (conv padding) it would see alone.
    """

    def __init__(self, layers: List[List[int]], dim: int, eps: float) -> None:
        super().__init__()
        self.layers = [tuple(layer) for layer in layers]
        channels = [1] + [dim] * len(layers)
        self.convs = nn.ModuleList(
            nn.Conv1d(channels[i], dim, kernel, stride=stride, padding=padding)
            for i, (kernel, stride, padding) in enumerate(self.layers)
        )
        self.norms = nn.ModuleList(ChannelNorm(dim, eps) for _ in layers)

    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``wavs`` (B, S) with zero padding, ``wav_lens`` (B,) -> ``z`` (B, T, dim), ``(B,)`` frames."""
        x, lengths = wavs[:, None, :], wav_lens  # (B, 1, S)
        for conv, norm, layer in zip(self.convs, self.norms, self.layers):
            x = F.relu(norm(conv(x)))  # (B, dim, T_l)
            lengths = frames_conv_stack(lengths, [layer])
            x = x.masked_fill(~lengths_to_mask(lengths, x.shape[-1])[:, None, :], 0.0)
        return x.transpose(1, 2), lengths  # (B, T, dim)


class CPC(Upstream):
    """Modified CPC (Rivière et al. 2020): conv encoder on the waveform, LSTM context.

    Hidden states (``context_layers + 1``): index 0 is the conv features ``z``
    ``(B, T, conv_dim)`` (the encoder's input), then each LSTM layer's output
    ``c`` ``(B, T, context_size)``; padding frames are zero. s3prl's
    ``modified_cpc`` upstream hooks the same two tensors in the same order (its
    ``gEncoder`` output, transposed, then its ``gAR`` output): with the paper
    config our ``hidden_states`` are its ``hidden_states``.

    Frames: :func:`speechssl.frames.frames_conv_stack` over ``conv_layers``
    (padding included), 160 samples (10 ms) apart; ``S`` samples give exactly
    ``S / 160`` frames when ``S`` is a multiple of 160. One frame of ``z`` sees
    465 samples (29 ms) of waveform; thanks to the conv padding the shortest
    input that yields a frame is ``min_samples = 159`` samples. ``c_t`` sees
    every sample up to frame ``t``'s window (the LSTM is causal), so trailing
    padding never reaches a valid frame and the LSTM runs on the padded batch.
    """

    downsample_rate = math.prod(stride for _, stride, _ in CONV_LAYERS)  # 160
    min_samples = receptive_field(CONV_LAYERS)  # 159

    def __init__(self, config: CPCConfig) -> None:
        super().__init__(config)
        _check_config(config)
        self.downsample_rate = math.prod(stride for _, stride, _ in config.conv_layers)
        self.min_samples = receptive_field(config.conv_layers)
        self.feature_encoder = ConvFeatureEncoder(config.conv_layers, config.conv_dim, config.norm_eps)
        sizes = [config.conv_dim] + [config.context_size] * config.context_layers
        # One nn.LSTM per layer, so that every layer's output is a hidden state
        # (the same parameters as nn.LSTM(num_layers=L), which hides the lower outputs).
        self.context = nn.ModuleList(
            nn.LSTM(sizes[i], config.context_size, batch_first=True) for i in range(config.context_layers)
        )

    @property
    def hidden_sizes(self) -> list[int]:
        return [self.config.conv_dim] + [self.config.context_size] * self.config.context_layers

    def num_frames(self, wav_lens):
        return frames_conv_stack(wav_lens, self.config.conv_layers)

    def input_frames(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Checked ``(B, S)`` waveforms with zero padding -> conv features ``z`` (B, T, conv_dim), ``(B,)`` frames."""
        if self.config.normalize_waveform:
            wavs = features.cmvn(wavs[..., None], wav_lens)[..., 0]  # (B, S), statistics of the valid samples
        return self.feature_encoder(wavs, wav_lens)

    def encoder(self, z: torch.Tensor, lengths: torch.Tensor) -> Features:
        """Conv features ``z`` (B, T, conv_dim) and ``(B,)`` frames -> ``[z, c_1, ..]`` with zero padding."""
        if z.dim() != 3 or z.shape[-1] != self.config.conv_dim:
            raise ValueError(f"cpc: z must be (batch, frame, {self.config.conv_dim}), got shape {tuple(z.shape)}")
        states, h = [z], z
        for lstm in self.context:
            h, _ = lstm(h)  # (B, T, context_size)
            states.append(h)
        return Features(zero_padding(states, lengths), lengths)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which frame ``t`` attends to frames ``t - W + 1 .. t``.

    Scores ``q_t . (k_s + r_{t-s}) / sqrt(d)`` with learned relative-position keys
    ``r_0 .. r_{W-1}`` shared by the heads (CPC_audio's ``Krelpos``; Shaw et al.
    2018). No biases in the projections, as CPC_audio. ``W = window``: CPC_audio's
    predictor runs on windows of 116 frames, so its frames never see further back.
    """

    def __init__(self, dim: int, num_heads: int, window: int, dropout: float) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"cpc: predictor size {dim} is not a multiple of {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        head_dim = dim // num_heads
        self.relative = nn.Parameter(torch.empty(window, head_dim))  # (W, d): r_0 .. r_{W-1}
        nn.init.uniform_(self.relative, -1 / math.sqrt(head_dim), 1 / math.sqrt(head_dim))  # as CPC_audio
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, T, D) -> (B, T, D)."""
        B, T, D = x.shape
        H = self.num_heads
        q, k, v = self.qkv(x).view(B, T, 3, H, D // H).permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, T, d)
        y = local_causal_attention(q, k, v, self.relative, self.dropout)  # (B, H, T, d)
        return self.out(y.transpose(1, 2).reshape(B, T, D))


def local_causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, relative: torch.Tensor, dropout: nn.Module
) -> torch.Tensor:
    """Attention of each frame to itself and the ``W - 1`` frames before it, ``W = len(relative)``.

    ``q``, ``k``, ``v`` (B, H, T, d); ``relative`` (W, d) keys of distances 0 .. W-1.
    Cost and memory grow as ``T * W``, not ``T**2``: the frames are cut into
    chunks of ``W``, and a chunk's queries see the keys of that chunk and the one
    before (distances 0 .. 2W-1, of which those >= W and those in the future are masked).
    """
    B, H, T, d = q.shape
    W = relative.shape[0]
    n = -(-T // W)  # chunks
    q, k, v = (F.pad(x, (0, 0, 0, n * W - T)) for x in (q, k, v))  # (B, H, n*W, d)
    q = q.view(B, H, n, W, d)
    # Chunk m sees frames [(m - 1) W, (m + 1) W): pad one chunk of zeros in front, take windows of 2W.
    k, v = (F.pad(x, (0, 0, W, 0)).unfold(2, 2 * W, W).transpose(-1, -2) for x in (k, v))  # (B, H, n, 2W, d)
    i = torch.arange(W, device=q.device)[:, None]
    j = torch.arange(2 * W, device=q.device)
    distance = i + W - j  # (W, 2W): query i of a chunk to key j of its window
    allowed = ((distance >= 0) & (distance < W)).expand(n, W, 2 * W).clone()
    allowed[0, :, :W] = False  # the first chunk has nothing before it
    relative_scores = (q @ relative.T).gather(-1, distance.clamp(0, W - 1).expand(B, H, n, W, 2 * W))
    scores = (q @ k.transpose(-1, -2) + relative_scores) / math.sqrt(d)  # (B, H, n, W, 2W)
    scores = scores.masked_fill(~allowed, float("-inf"))
    y = dropout(scores.softmax(dim=-1)) @ v  # (B, H, n, W, d)
    return y.reshape(B, H, n * W, d)[:, :, :T]


class PredictorLayer(nn.Module):
    """One post-LN Transformer layer (CPC_audio's ``TransformerLayer``): the predictor of one step ``k``."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, window: int, dropout: float) -> None:
        super().__init__()
        self.attention = CausalSelfAttention(dim, num_heads, window, dropout)
        self.attention_norm = nn.LayerNorm(dim)
        self.feed_forward = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn_dim, dim))
        self.ffn_norm = nn.LayerNorm(dim)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        """Context ``c`` (B, T, D) -> predictions (B, T, D) of ``z_{t+k}``."""
        h = self.attention_norm(c + self.attention(c))
        return self.ffn_norm(h + self.feed_forward(h))


class CPCObjective(Objective):
    """InfoNCE over K future steps (van den Oord et al. 2018, eq. 4; Rivière et al. 2020).

    For each frame ``t`` and step ``k``, predictor ``k`` reads the context
    ``c_{<=t}`` and scores the positive ``z_{t+k}`` against ``num_negatives``
    frames of the same utterance (:func:`speechssl.masking.sample_negatives`),
    score = dot product / D. The loss is the cross entropy with the positive as
    the class, averaged over the ``(t, k)`` pairs with ``t + k`` inside the
    utterance; padding never counts. Logs ``infonce`` (the loss), ``accuracy``
    (share of those pairs where the positive scores strictly highest; chance is
    ``1 / (num_negatives + 1)``) and the accuracy of the first and last step,
    ``accuracy_k1`` and ``accuracy_kK``.
    """

    crop = "random"  # CPC trains on random windows of the utterances

    def __init__(self, upstream: CPC) -> None:
        super().__init__(upstream)
        config = upstream.config
        self.predictors = nn.ModuleList(
            PredictorLayer(
                config.conv_dim,
                config.predictor_heads,
                config.predictor_ffn_dim,
                config.predictor_window,
                config.predictor_dropout,
            )
            for _ in range(config.num_predictions)
        )

    def forward(self, batch: dict, *, step: int = 0, generator: torch.Generator | None = None):
        """``batch["wavs"]`` (B, S), ``batch["wav_lens"]`` (B,) -> ``(loss, logs)``."""
        z, lengths = self.upstream.front_end(batch["wavs"], batch["wav_lens"])
        c = self.upstream.encoder(z, lengths).last
        logits, valid, _ = self.scores(z, c, lengths, generator)
        return cpc_losses(logits, valid)

    def scores(
        self, z: torch.Tensor, c: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Scores of the positive and the negatives of every prediction.

        ``z`` (B, T, D) conv features, ``c`` (B, T, D) context, ``lengths`` (B,) ->
        ``logits`` (B, T, K, 1 + N) float32 (index 0 the positive ``z_{t+k}``, then
        the negatives; ``-inf`` where a negative is the positive itself), ``valid``
        (B, T, K) bool (``t + k`` inside the utterance) and the negatives' frame
        indices (B, T, N).
        """
        config = self.upstream.config
        D = z.shape[-1]
        negatives, indices = sample_negatives(z, lengths, config.num_negatives, generator=generator)  # (B, T, N, D)
        predictions = torch.stack([predictor(c) for predictor in self.predictors], dim=2)  # (B, T, K, D)
        shifted = [shift_targets(z, lengths, k) for k in range(1, config.num_predictions + 1)]
        positives = torch.stack([target for target, _ in shifted], dim=2)  # (B, T, K, D)
        valid = torch.stack([ok for _, ok in shifted], dim=2)  # (B, T, K)
        positive = (predictions * positives).sum(-1, keepdim=True) / D  # (B, T, K, 1)
        negative = torch.einsum("btkd,btnd->btkn", predictions, negatives) / D  # (B, T, K, N)
        future = torch.arange(z.shape[1], device=z.device)[:, None] + torch.arange(
            1, config.num_predictions + 1, device=z.device
        )  # (T, K): frame t + k
        is_positive = indices[:, :, None, :] == future[None, :, :, None]  # (B, T, K, N)
        negative = negative.masked_fill(is_positive, float("-inf"))
        return torch.cat([positive, negative], dim=-1).float(), valid, indices


def cpc_losses(logits: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """InfoNCE over the ``valid`` rows of ``logits`` (B, T, K, C) -> ``(loss, logs)`` with per-step accuracy."""
    loss, correct = info_nce(logits, valid)  # correct (B, T, K)
    count = valid.sum().clamp(min=1)
    per_step = correct.sum(dim=(0, 1)) / valid.sum(dim=(0, 1)).clamp(min=1)  # (K,)
    logs = {
        "infonce": loss.detach(),
        "accuracy": (correct.sum() / count).detach(),
        "accuracy_k1": per_step[0].detach(),
        f"accuracy_k{logits.shape[2]}": per_step[-1].detach(),
    }
    return loss, logs


def _check_config(config: CPCConfig) -> None:
    for layer in config.conv_layers:
        if len(layer) != 3 or layer[0] < 1 or layer[1] < 1 or layer[2] < 0:
            raise ValueError(
                f"cpc: conv_layers entries must be [kernel >= 1, stride >= 1, padding >= 0], got {list(layer)}"
            )
    if config.context_layers < 1:
        raise ValueError(f"cpc: context_layers must be >= 1, got {config.context_layers}")
    if config.context_size != config.conv_dim:
        raise ValueError(
            f"cpc: context_size ({config.context_size}) must equal conv_dim ({config.conv_dim}): "
            "the Transformer predictors map the context into the space of z"
        )
    if config.num_predictions < 1 or config.num_negatives < 1:
        raise ValueError(
            f"cpc: num_predictions and num_negatives must be >= 1, got {config.num_predictions}, {config.num_negatives}"
        )
    if config.predictor_window < 1:
        raise ValueError(f"cpc: predictor_window must be >= 1, got {config.predictor_window}")


def convert_s3prl(content: dict, overrides: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    """An s3prl / CPC_audio modified-CPC checkpoint (``config``: its arguments, ``weights``: its
    ``CPCModel``) -> ``(config, state dict)``. Only the modified CPC (channel norm, LSTM context,
    forward direction, conv encoder) has an equivalent here; the criterion's weights are left out."""
    args, theirs = content.get("config"), content.get("weights")
    if not isinstance(args, dict) or not isinstance(theirs, dict) or "gEncoder.conv0.weight" not in theirs:
        raise CheckpointError(
            "not an s3prl CPC checkpoint (expected its arguments under 'config' and the CPCModel's 'weights'); "
            f"found keys {', '.join(map(str, content))}"
        )
    for key, expected in (("arMode", "LSTM"), ("normMode", "layerNorm"), ("encoder_type", "cpc")):  # s3prl's defaults
        if args.get(key, expected) != expected:
            raise CheckpointError(f"CPC option {key}={args[key]!r} is not the modified CPC's ({expected!r})")
    if args.get("cpc_mode") == "reverse":
        raise CheckpointError("CPC option cpc_mode='reverse' (a backward context) is not supported")
    C, H, L = args.get("hiddenEncoder", 256), args.get("hiddenGar", 256), args.get("nLevelsGRU", 1)
    state = {}
    for i in range(len(CONV_LAYERS)):
        state[f"feature_encoder.convs.{i}.weight"] = theirs[f"gEncoder.conv{i}.weight"]
        state[f"feature_encoder.convs.{i}.bias"] = theirs[f"gEncoder.conv{i}.bias"]
        state[f"feature_encoder.norms.{i}.weight"] = theirs[f"gEncoder.batchNorm{i}.weight"].reshape(C)
        state[f"feature_encoder.norms.{i}.bias"] = theirs[f"gEncoder.batchNorm{i}.bias"].reshape(C)
    for key, value in theirs.items():  # one nn.LSTM of L layers -> L one-layer LSTMs
        if key.startswith("gAR.baseNet."):
            name, layer = key[len("gAR.baseNet."):].rsplit("_l", 1)
            state[f"context.{layer}.{name}_l0"] = value
    return dict(conv_dim=C, context_size=H, context_layers=L), state


TINY = dict(  # normalised waveforms: as cpc_tiny.yaml, so that quiet synthetic speech trains (see there)
    normalize_waveform=True,
    conv_dim=32,
    context_size=32,
    num_predictions=4,
    num_negatives=16,
    predictor_heads=2,
    predictor_ffn_dim=64,
    predictor_dropout=0.0,
    predictor_window=32,
)

register("cpc", CPC, CPCConfig, objective=CPCObjective, tiny=TINY, converters={"s3prl": convert_s3prl})
