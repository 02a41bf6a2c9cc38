"""vq-wav2vec: wav2vec's contrastive future prediction on vector-quantized conv features.

vq-wav2vec (Baevski, Schneider and Auli, ICLR 2020, arXiv 1910.05453) encodes the
raw waveform with wav2vec's strided convolutions into frames ``z_t`` (sec. 2),
replaces each frame by a product of ``G`` discrete codes (sec. 3: Gumbel-softmax,
3.1, or k-means with a straight-through gradient, 3.2), runs a causal conv
aggregator over the quantized frames ``q_t`` into a context ``c_t``, and trains
the whole to tell the future ``q`` apart from negatives drawn from the same
utterance with a binary cross-entropy (wav2vec, Schneider et al. 2019, eq. 1).
The codes are the "discrete units" of vq-wav2vec + BERT (sec. 4).

Every default comes from fairseq's code and the vq-wav2vec recipe of its
``examples/wav2vec/README.md`` (``fairseq/models/wav2vec/wav2vec.py``,
``fairseq/modules/gumbel_vector_quantizer.py``, ``kmeans_vector_quantizer.py``,
``fairseq/criterions/wav2vec_criterion.py``):

- feature encoder: 8 conv layers of 512, kernels 10, 8, 4, 4, 4, 1, 1, 1, strides
  5, 4, 2, 2, 2, 1, 1, 1 (wav2vec 1.0's five strided convs, then three pointwise
  ones, 10 ms frames), no bias and no padding, each followed by ``GroupNorm(1, 512)``
  and the activation (GELU in the recipe, ``--activation gelu``; fairseq's default
  and wav2vec 1.0's is ReLU), no log compression;
- quantizer: 2 groups of 320 entries. Gumbel: logits from ``Linear(512, 1024)``,
  the activation, ``Linear(1024, 640)`` (``--vq-depth 2``), one codebook of 320
  entries of 256 shared by both groups (``--combine-groups``), temperature
  ``max(2 * 0.999995**step, 0.5)``; k-means: a grouped pointwise conv and
  ``GroupNorm(2, 512)`` (fairseq's ``KmeansVectorQuantizer.projection``), then the
  nearest entry per group, codebook and commitment losses with ``gamma = 0.25``,
  added with weight 1 (``--loss-weights [1]``);
- aggregator: 12 causal conv layers of 512 with kernels 2, 3, .., 13, stride 1,
  each left-padded by ``kernel - 1`` copies of the first frame (fairseq's
  ``ReplicationPad1d``), with bias, ``GroupNorm(1, 512)``, the activation, and a
  skip connection ``(layer(x) + x) * sqrt(0.5)``;
- objective: 12 steps, each a linear map of ``c_t`` (one ``ConvTranspose2d``,
  fairseq's ``project_to_steps``: a weight per step, a bias shared by the steps);
  step ``k`` predicts ``q_{t + offset + k - 1}`` where ``offset = ceil(465 / 160)
  = 3`` frames (fairseq's ``offset="auto"``: the feature encoder's receptive
  field over its stride, so the first target shares no sample with the frame
  ``c_t`` ends on); 10 negatives drawn from the other frames of the target's
  utterance; score = dot product; loss = binary cross-entropy of the positive
  (label 1) and each negative (label 0), summed and divided by the number of
  positives (fairseq's ``wav2vec`` criterion without ``--infonce``).

The upstream holds 30,917,248 parameters with the Gumbel quantizer (29,868,032
with k-means), fairseq's ``Wav2VecModel`` of the recipe less its predictions,
which hold 3,146,240 more (in :class:`VQWav2VecObjective`).

Where we differ from fairseq, deliberately:

- a padded batch normalises each utterance over its own valid frames (a masked
  group norm: :class:`MaskedGroupNorm`), the aggregator and the losses never see
  padding, and padding frames are zeroed after every layer, so an utterance's
  features, codes and loss do not depend on its batch. fairseq's group norms,
  perplexities and k-means loss take their statistics over the padded batch
  (it trains on crops of equal length, where the two agree);
- negatives come from :func:`speechssl.masking.sample_negatives`: uniform over
  the target's utterance's valid frames other than the target frame, drawn from
  the trainer's generator (fairseq draws among all ``T`` frames of the padded
  batch row);
- code and softmax perplexities are measured over valid frames only;
- ``accuracy`` (share of predictions whose positive scores strictly above all its
  negatives) is logged; fairseq logs an accuracy only with ``--infonce``. A
  negative that quantizes to the positive's codes has the same score and counts
  as a miss, as it counts in the loss.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from speechssl.errors import CheckpointError, ConfigError
from speechssl.frames import frames_conv_stack, receptive_field
from speechssl.interface import Features, Upstream, lengths_to_mask, zero_padding
from speechssl.interop import fairseq_literal, fairseq_model_config, fairseq_model_name
from speechssl.masking import sample_negatives
from speechssl.objective import Objective
from speechssl.registry import register
from upstream.modules.conv import MaskedGroupNorm
from upstream.modules.quantizer import ACTIVATIONS, GumbelQuantizer, KmeansQuantizer, Quantized

# [channels, kernel, stride] of the vq-wav2vec recipe (fairseq's conv_feature_layers): 160 samples per frame.
FEATURE_LAYERS = [[512, 10, 5], [512, 8, 4], [512, 4, 2], [512, 4, 2], [512, 4, 2], [512, 1, 1], [512, 1, 1], [512, 1, 1]]
# [channels, kernel, stride] of its aggregator (conv_aggregator_layers): kernels 2 .. 13, stride 1.
AGGREGATOR_LAYERS = [[512, kernel, 1] for kernel in range(2, 14)]
QUANTIZERS = ("gumbel", "kmeans")


@dataclass
class VQWav2VecConfig:
    """vq-wav2vec as fairseq's recipe trains it (Gumbel variant; ``vector_quantizer="kmeans"`` for k-means)."""

    # feature encoder: unpadded, bias-free convs on the waveform, GroupNorm(1, C) and the activation after each
    conv_layers: List[List[int]] = field(default_factory=lambda: [list(layer) for layer in FEATURE_LAYERS])
    log_compression: bool = False  # log(1 + |z|) on the encoder's output (fairseq's option, off in the recipe)
    activation: str = "gelu"  # relu | gelu, everywhere (the recipe's --activation gelu)
    norm_eps: float = 1e-5  # of every group norm
    # quantizer between the encoder and the aggregator
    vector_quantizer: str = "gumbel"  # gumbel | kmeans
    vq_groups: int = 2
    vq_vars: int = 320  # entries per group (per shared codebook with combine_groups)
    combine_groups: bool = True  # one codebook shared by the groups (the recipe's --combine-groups)
    vq_depth: int = 2  # Gumbel: layers of the logit projection (2: one hidden layer of 2 x conv channels)
    gumbel_temperature: List[float] = field(default_factory=lambda: [2.0, 0.5, 0.999995])  # max, min, decay per step
    kmeans_gamma: float = 0.25  # weight of the commitment loss
    # aggregator: causal convs of stride 1 over the quantized frames, with skip connections
    aggregator_layers: List[List[int]] = field(default_factory=lambda: [list(layer) for layer in AGGREGATOR_LAYERS])
    aggregator_bias: bool = True  # fairseq's not --no-conv-bias
    residual_scale: float = 0.5  # skip connections: (layer(x) + x) * sqrt(residual_scale)
    # objective (VQWav2VecObjective)
    prediction_steps: int = 12  # K
    prediction_offset: Optional[int] = None  # frames from c_t to the first target; None: ceil(receptive field / stride)
    num_negatives: int = 10
    quantizer_loss_weight: Optional[float] = None  # weight of Quantized.loss; None: the recipe's, 0 gumbel / 1 kmeans


class ConvBlock(nn.Module):
    """``Conv1d`` -> :class:`MaskedGroupNorm` (one group) -> activation, on ``(B, C, T)`` frames.

    ``causal``: left-padded with ``kernel - 1`` copies of the first frame (stride 1),
    so frame ``t`` sees frames ``t - kernel + 1 .. t``; otherwise unpadded.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, *, bias: bool, causal: bool,
                 activation: str, eps: float) -> None:
        super().__init__()
        self.kernel, self.stride, self.causal = kernel, stride, causal
        self.conv = nn.Conv1d(c_in, c_out, kernel, stride=stride, bias=bias)
        self.norm = MaskedGroupNorm(1, c_out, eps)
        self.activation = ACTIVATIONS[activation]()

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (B, C_in, T_in) with zero padding, ``(B,)`` frames -> (B, C_out, T_out) with zero padding, frames."""
        if self.causal:
            x = F.pad(x, (self.kernel - 1, 0), mode="replicate")
        else:
            lengths = frames_conv_stack(lengths, [(self.kernel, self.stride)])
        y = self.conv(x)  # (B, C_out, T_out)
        valid = lengths_to_mask(lengths, y.shape[-1])
        y = self.activation(self.norm(y, valid))
        return y.masked_fill(~valid[:, None, :], 0.0), lengths


class ConvFeatureEncoder(nn.Module):
    """wav2vec's feature encoder: unpadded strided convs, each with a group norm and the activation.

    A valid output frame of an unpadded conv sees valid input frames only, and the
    group norms take statistics over valid frames, so the padded tail of a batch
    reaches no valid frame.
    """

    def __init__(self, layers: List[List[int]], activation: str, eps: float, log_compression: bool) -> None:
        super().__init__()
        channels = [1] + [dim for dim, _, _ in layers]
        self.blocks = nn.ModuleList(
            ConvBlock(channels[i], dim, kernel, stride, bias=False, causal=False, activation=activation, eps=eps)
            for i, (dim, kernel, stride) in enumerate(layers)
        )
        self.log_compression = log_compression

    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``wavs`` (B, S) with zero padding, ``wav_lens`` (B,) -> ``z`` (B, T, C), ``(B,)`` frames."""
        x, lengths = wavs[:, None, :], wav_lens  # (B, 1, S)
        for block in self.blocks:
            x, lengths = block(x, lengths)  # (B, C, T_l)
        if self.log_compression:
            x = torch.log1p(x.abs())  # zero stays zero
        return x.transpose(1, 2), lengths  # (B, T, C)


class ConvAggregator(nn.Module):
    """wav2vec's context network: causal convs of stride 1 with scaled skip connections.

    Layer ``l``: ``h_l = (block_l(h_{l-1}) + P_l h_{l-1}) * sqrt(residual_scale)``, ``P_l``
    a bias-free pointwise conv where the channels change (fairseq's ``residual_proj``),
    else the identity. Returns every ``h_l``.
    """

    def __init__(self, dim_in: int, layers: List[List[int]], *, bias: bool, residual_scale: float,
                 activation: str, eps: float) -> None:
        super().__init__()
        channels = [dim_in] + [dim for dim, _, _ in layers]
        self.blocks = nn.ModuleList(
            ConvBlock(channels[i], dim, kernel, 1, bias=bias, causal=True, activation=activation, eps=eps)
            for i, (dim, kernel, _) in enumerate(layers)
        )
        self.residual_proj = nn.ModuleList(
            nn.Conv1d(channels[i], dim, 1, bias=False) if channels[i] != dim else nn.Identity()
            for i, (dim, _, _) in enumerate(layers)
        )
        self.scale = math.sqrt(residual_scale)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> list[torch.Tensor]:
        """``x`` (B, T, C) with zero padding, ``(B,)`` frames -> each layer's output (B, T, C_l), zero padding."""
        h, states = x.transpose(1, 2), []  # (B, C, T)
        for block, proj in zip(self.blocks, self.residual_proj):
            h = (block(h, lengths)[0] + proj(h)) * self.scale  # padding stays zero: both terms are zero there
            states.append(h.transpose(1, 2))  # (B, T, C_l)
        return states


class KmeansProjection(nn.Module):
    """The input of vq-wav2vec's k-means quantizer: a grouped pointwise conv, then a group norm per VQ group.

    fairseq's ``KmeansVectorQuantizer.projection``: ``Conv1d(D, D, 1, groups=G, bias=False)``
    and ``GroupNorm(G, D)``, here with statistics over valid frames (:class:`MaskedGroupNorm`).
    """

    def __init__(self, dim: int, groups: int, eps: float) -> None:
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, 1, groups=groups, bias=False)
        self.norm = MaskedGroupNorm(groups, dim, eps)

    def forward(self, z: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``z`` (B, T, D), ``valid`` (B, T) -> (B, T, D)."""
        return self.norm(self.conv(z.transpose(1, 2)), valid).transpose(1, 2)


class VQWav2Vec(Upstream):
    """vq-wav2vec: wav2vec conv encoder, Gumbel or k-means VQ, causal conv aggregator.

    Hidden states (``len(aggregator_layers) + 1``, s3prl's ``vq_wav2vec`` order):
    index 0 is the conv features ``z`` ``(B, T, C)`` before quantization (the
    encoder's input), then each aggregator layer's output ``c_1 .. c_L``
    ``(B, T, C_l)``, the last the context ``c``. s3prl hooks the same tensors in the
    same order (``feature_extractor``'s output, the inputs of aggregator layers
    2 .. L, the aggregator's output): with fairseq weights our ``hidden_states``
    are its ``hidden_states``. The quantized frames are not a hidden state:
    ``extra["quantized"]`` ``(B, T, C)`` holds them (s3prl's ``codewords``) and
    ``extra["codes"]`` ``(B, T, vq_groups)`` int64 their code ids in
    ``[0, vq_vars)`` (s3prl's ``codeids``; fairseq's ``forward_idx``), the units
    ``speechssl extract ... codes=true`` writes. Padding frames are zero, codes too.

    :meth:`encoder` quantizes deterministically in eval mode (the argmax code, as
    fairseq); a training objective calls :meth:`quantize` and :meth:`aggregate`
    itself, with the step (Gumbel temperature) and the generator (Gumbel noise).

    Frames: :func:`speechssl.frames.frames_conv_stack` over ``conv_layers`` (no
    padding), ``prod(strides)`` = 160 samples apart; a frame sees
    ``min_samples`` = 465 samples (29 ms), the shortest input that gives a frame.
    """

    downsample_rate = math.prod(stride for _, _, stride in FEATURE_LAYERS)  # 160
    min_samples = receptive_field([(kernel, stride) for _, kernel, stride in FEATURE_LAYERS])  # 465

    def __init__(self, config: VQWav2VecConfig) -> None:
        super().__init__(config)
        _check_config(config)
        self.downsample_rate = math.prod(stride for _, _, stride in config.conv_layers)
        self.min_samples = receptive_field(self.feature_layers)
        self.feature_extractor = ConvFeatureEncoder(
            config.conv_layers, config.activation, config.norm_eps, config.log_compression
        )
        dim = config.conv_layers[-1][0]
        self.kmeans_projection = None
        if config.vector_quantizer == "gumbel":
            self.quantizer = GumbelQuantizer(
                dim,
                config.vq_vars,
                config.vq_groups,
                temperature=tuple(config.gumbel_temperature),
                init="wav2vec2",
                depth=config.vq_depth,
                activation=config.activation,
                combine_groups=config.combine_groups,
            )
        else:
            self.kmeans_projection = KmeansProjection(dim, config.vq_groups, config.norm_eps)
            self.quantizer = KmeansQuantizer(
                dim, config.vq_vars, config.vq_groups, config.kmeans_gamma,
                combine_groups=config.combine_groups, init_scale=0.01,  # fairseq's embedding: 0.01 * N(0, 1)
            )
        self.feature_aggregator = ConvAggregator(
            dim,
            config.aggregator_layers,
            bias=config.aggregator_bias,
            residual_scale=config.residual_scale,
            activation=config.activation,
            eps=config.norm_eps,
        )

    @property
    def feature_layers(self) -> list[tuple[int, int]]:
        """``(kernel, stride)`` of each conv of the feature encoder."""
        return [(kernel, stride) for _, kernel, stride in self.config.conv_layers]

    @property
    def hidden_sizes(self) -> list[int]:
        return [self.config.conv_layers[-1][0]] + [dim for dim, _, _ in self.config.aggregator_layers]

    @property
    def prediction_offset(self) -> int:
        """Frames from ``c_t`` to the first target: the config's, or ``ceil(receptive field / stride)``."""
        if self.config.prediction_offset is not None:
            return self.config.prediction_offset
        return math.ceil(self.min_samples / self.downsample_rate)

    def num_frames(self, wav_lens):
        return frames_conv_stack(wav_lens, self.feature_layers)

    def input_frames(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Checked ``(B, S)`` waveforms with zero padding -> conv features ``z`` (B, T, C), ``(B,)`` frames."""
        return self.feature_extractor(wavs, wav_lens)

    def quantize(
        self, z: torch.Tensor, lengths: torch.Tensor, *, step: int = 0, generator: torch.Generator | None = None
    ) -> Quantized:
        """Conv features ``z`` (B, T, C) -> :class:`Quantized` (values (B, T, C) and codes (B, T, G), zero padding).

        Training mode samples Gumbel codes at the temperature of optimizer ``step``
        with noise from ``generator``; eval mode takes the argmax (k-means: always the nearest).
        """
        valid = lengths_to_mask(lengths, z.shape[1])
        x = self.kmeans_projection(z, valid) if self.kmeans_projection is not None else z
        quantized = self.quantizer(x, valid, step=step, generator=generator)
        quantized.values, quantized.codes = zero_padding([quantized.values, quantized.codes], lengths)
        return quantized

    def aggregate(self, q: torch.Tensor, lengths: torch.Tensor) -> list[torch.Tensor]:
        """Quantized frames ``q`` (B, T, C) with zero padding -> each aggregator layer's output (B, T, C_l)."""
        return self.feature_aggregator(q, lengths)

    def encoder(self, z: torch.Tensor, lengths: torch.Tensor) -> Features:
        """Conv features ``z`` (B, T, C) and ``(B,)`` frames -> ``[z, c_1, .., c_L]``, codes and quantized frames."""
        dim = self.config.conv_layers[-1][0]
        if z.dim() != 3 or z.shape[-1] != dim:
            raise ValueError(f"vq_wav2vec: z must be (batch, frame, {dim}), got shape {tuple(z.shape)}")
        quantized = self.quantize(z, lengths)
        states = [z] + self.aggregate(quantized.values, lengths)
        extra = {"codes": quantized.codes, "quantized": quantized.values}
        return Features(zero_padding(states, lengths), lengths, extra)


class VQWav2VecObjective(Objective):
    """wav2vec's binary contrastive loss over K future quantized frames (Schneider et al. 2019, eq. 1).

    For each frame ``t`` and step ``k = 1..K``, the prediction ``h_k(c_t)`` scores
    the positive ``q_{t + offset + k - 1}`` and ``num_negatives`` quantized frames
    of the same utterance (drawn for that target frame, never the target frame
    itself, never padding). Loss per prediction:
    ``-log sigmoid(s_pos) - sum_n log sigmoid(-s_neg_n)``, averaged over the
    predictions whose target lies inside the utterance (fairseq's summed BCE over
    the number of positives), plus ``quantizer_loss_weight`` times the quantizer's
    loss. Logs ``bce``, ``accuracy`` (positive strictly above all its negatives;
    chance ``1 / (num_negatives + 1)``), ``accuracy_k1`` and ``accuracy_kK``,
    ``code_perplexity`` and ``prob_perplexity`` (summed over groups, at most
    ``vq_groups * vq_vars``; ``vq_groups`` when collapsed), ``temperature`` and, for
    k-means, ``kmeans_loss``.
    """

    crop = "random"  # fairseq's audio_pretraining crops random windows (--max-sample-size)

    def __init__(self, upstream: VQWav2Vec) -> None:
        super().__init__(upstream)
        config = upstream.config
        # fairseq's project_to_steps: (B, C_agg, T, 1) -> (B, C, T, K), a weight per step, one bias
        self.project_to_steps = nn.ConvTranspose2d(
            upstream.hidden_sizes[-1], config.conv_layers[-1][0], (1, config.prediction_steps)
        )
        weight = config.quantizer_loss_weight
        self.quantizer_loss_weight = weight if weight is not None else float(config.vector_quantizer == "kmeans")

    def forward(self, batch: dict, *, step: int = 0, generator: torch.Generator | None = None):
        """``batch["wavs"]`` (B, S), ``batch["wav_lens"]`` (B,) -> ``(loss, logs)``."""
        upstream = self.upstream
        z, lengths = upstream.front_end(batch["wavs"], batch["wav_lens"])
        quantized = upstream.quantize(z, lengths, step=step, generator=generator)
        c = upstream.aggregate(quantized.values, lengths)[-1]
        logits, valid, _ = self.scores(quantized.values, c, lengths, generator)
        bce, logs = binary_contrastive_loss(logits, valid)
        loss = bce + self.quantizer_loss_weight * quantized.loss if self.quantizer_loss_weight else bce
        logs.update(
            code_perplexity=quantized.code_perplexity.detach(),
            prob_perplexity=quantized.prob_perplexity.detach(),
            temperature=torch.tensor(float(quantized.temperature)),
        )
        if upstream.config.vector_quantizer == "kmeans":
            logs["kmeans_loss"] = quantized.loss.detach()
        return loss, logs

    def predictions(self, c: torch.Tensor) -> torch.Tensor:
        """Context ``c`` (B, T, C_agg) -> ``(B, T, K, C)``: step ``k``'s prediction made at each frame."""
        x = self.project_to_steps(c.transpose(1, 2)[..., None])  # (B, C, T, K)
        return x.permute(0, 2, 3, 1)

    def scores(
        self, q: torch.Tensor, c: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Scores of the positive and the negatives of every prediction.

        ``q`` (B, T, C) quantized frames (the targets), ``c`` (B, T, C_agg) context,
        ``lengths`` (B,) -> ``logits`` (B, T, K, 1 + N) float32 for the prediction made
        at frame ``t`` for step ``k`` (index 0 the positive ``q_{t + o + k - 1}``, then the
        negatives), ``valid`` (B, T, K) bool (the target inside the utterance), and
        the negatives' frame indices (B, T, K, N).

        The negatives are drawn once per target frame (fairseq's), so the K
        predictions of one target share them; the scores are computed at the target
        frame ``j`` with the prediction made at ``j - o - k + 1`` and then moved back to it.
        """
        B, T, _ = q.shape
        K = self.upstream.config.prediction_steps
        negatives, indices = sample_negatives(q, lengths, self.upstream.config.num_negatives, generator=generator)
        predictions = self.predictions(c)  # (B, T, K, C)
        steps = torch.arange(K, device=q.device)
        distance = self.upstream.prediction_offset + steps  # (K,): frames from prediction to target
        frames = torch.arange(T, device=q.device)[:, None]
        made_at = predictions[:, (frames - distance).clamp(min=0), steps]  # (B, T, K, C): made for target frame j
        # the positive and its negatives scored by one product, so that a negative with the positive's code
        # scores exactly what the positive does (a tie, not "correct" by a rounding difference)
        candidates = torch.cat([q[:, :, None], negatives], dim=2)  # (B, T, 1 + N, C)
        scores = torch.einsum("bjkc,bjnc->bjkn", made_at, candidates)  # (B, T, K, 1 + N)
        target = (frames + distance).clamp(max=T - 1)  # (T, K): the target frame of the prediction made at t
        logits = scores.float()[:, target, steps]  # (B, T, K, 1 + N)
        valid = (frames + distance)[None] < lengths[:, None, None]  # (B, T, K)
        return logits, valid, indices[:, target]


def binary_contrastive_loss(logits: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """BCE of ``logits`` (B, T, K, 1 + N), class 0 positive, the rest negatives, over the ``valid`` (B, T, K) rows.

    Returns the mean over valid predictions of ``softplus(-s_pos) + sum_n softplus(s_neg_n)``
    (``-log sigmoid(s_pos) - sum_n log sigmoid(-s_neg_n)``) and the logs.
    """
    per_prediction = F.softplus(-logits[..., 0]) + F.softplus(logits[..., 1:]).sum(-1)  # (B, T, K)
    count = valid.sum().clamp(min=1)
    loss = torch.where(valid, per_prediction, 0.0).sum() / count
    correct = valid & (logits[..., 0] > logits[..., 1:].amax(dim=-1))  # (B, T, K)
    per_step = correct.sum(dim=(0, 1)) / valid.sum(dim=(0, 1)).clamp(min=1)  # (K,)
    logs = {
        "bce": loss.detach(),
        "accuracy": (correct.sum() / count).detach(),
        "accuracy_k1": per_step[0].detach(),
        f"accuracy_k{logits.shape[2]}": per_step[-1].detach(),
    }
    return loss, logs


def _check_config(config: VQWav2VecConfig) -> None:
    for key in ("conv_layers", "aggregator_layers"):
        layers = getattr(config, key)
        if not layers:
            raise ConfigError(f"vq_wav2vec: {key} is empty; expected [[channels, kernel, stride], ...]")
        for layer in layers:
            if len(layer) != 3 or min(layer) < 1:
                raise ConfigError(
                    f"vq_wav2vec: {key} entries must be [channels >= 1, kernel >= 1, stride >= 1], got {list(layer)}"
                )
    for layer in config.aggregator_layers:
        if layer[2] != 1:
            raise ConfigError(
                f"vq_wav2vec: aggregator_layers must have stride 1 (a causal conv keeps one frame per frame), "
                f"got {list(layer)}"
            )
    if config.activation not in ACTIVATIONS:
        raise ConfigError(f"vq_wav2vec: activation={config.activation!r}; expected one of {', '.join(ACTIVATIONS)}")
    if config.vector_quantizer not in QUANTIZERS:
        raise ConfigError(
            f"vq_wav2vec: vector_quantizer={config.vector_quantizer!r}; expected one of {', '.join(QUANTIZERS)}"
        )
    dim = config.conv_layers[-1][0]
    if config.vq_groups < 1 or config.vq_vars < 1 or dim % config.vq_groups:
        raise ConfigError(
            f"vq_wav2vec: the {dim} conv channels must split into vq_groups={config.vq_groups} groups "
            f"of vq_vars={config.vq_vars} >= 1 entries"
        )
    if len(config.gumbel_temperature) != 3:
        raise ConfigError(f"vq_wav2vec: gumbel_temperature must be [max, min, decay], got {list(config.gumbel_temperature)}")
    if config.prediction_steps < 1 or config.num_negatives < 1:
        raise ConfigError(
            f"vq_wav2vec: prediction_steps and num_negatives must be >= 1, "
            f"got {config.prediction_steps}, {config.num_negatives}"
        )
    if config.prediction_offset is not None and config.prediction_offset < 1:
        raise ConfigError(f"vq_wav2vec: prediction_offset must be >= 1 or null (auto), got {config.prediction_offset}")


def from_fairseq(state: dict[str, torch.Tensor], groups: int, num_codes: int) -> dict[str, torch.Tensor]:
    """fairseq's ``Wav2VecModel`` weights under our names: the upstream's keys, and
    ``project_to_steps.*`` (the :class:`VQWav2VecObjective`'s predictions)."""
    ours = {}
    for key, value in state.items():
        key = re.sub(r"^feature_extractor\.conv_layers\.(\d+)\.0\.", r"feature_extractor.blocks.\1.conv.", key)
        key = re.sub(r"^feature_extractor\.conv_layers\.(\d+)\.2\.", r"feature_extractor.blocks.\1.norm.", key)
        key = re.sub(r"^feature_aggregator\.conv_layers\.(\d+)\.1\.", r"feature_aggregator.blocks.\1.conv.", key)
        key = re.sub(r"^feature_aggregator\.conv_layers\.(\d+)\.3\.", r"feature_aggregator.blocks.\1.norm.", key)
        key = key.replace("wav2vec_predictions.", "")
        key = key.replace("vector_quantizer.projection.0.", "kmeans_projection.conv.")
        key = key.replace("vector_quantizer.projection.1.", "kmeans_projection.norm.")
        key = key.replace("vector_quantizer.weight_proj.0.0.", "quantizer.hidden.0.")
        if key in ("vector_quantizer.vars", "vector_quantizer.embedding"):
            key = "quantizer.codebook"
        if key == "vector_quantizer.weight_proj.1.weight" or (key == "vector_quantizer.weight_proj.weight"):
            key, value = "quantizer.logit_weight", value.view(groups, num_codes, -1).permute(0, 2, 1)  # (G*V, D) -> (G, D, V)
        if key in ("vector_quantizer.weight_proj.1.bias", "vector_quantizer.weight_proj.bias"):
            key, value = "quantizer.logit_bias", value.view(groups, num_codes)
        ours[key] = value
    return ours


def convert_fairseq(content: dict, overrides: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    """A fairseq vq-wav2vec checkpoint (``args`` or ``cfg`` + ``model``) -> ``(config, upstream state dict)``."""
    name = fairseq_model_name(content)
    c = fairseq_model_config(content)
    if name != "wav2vec" or c.get("vq_type", "none") not in QUANTIZERS:
        raise CheckpointError(f"a fairseq checkpoint of a '{name}' model (vq_type {c.get('vq_type')!r}), not vq-wav2vec")
    for key, expected in (("aggregator", "cnn"), ("skip_connections_agg", True), ("agg_zero_pad", False),
                          ("skip_connections_feat", False), ("non_affine_group_norm", False), ("vq_dim", 0)):  # fmt: skip
        if c.get(key, expected) != expected:
            raise CheckpointError(f"fairseq option {key}={c[key]!r} has no equivalent here (expected {expected!r})")
    offset = c.get("offset", "auto")
    config = dict(
        conv_layers=[list(layer) for layer in fairseq_literal(c["conv_feature_layers"])],
        aggregator_layers=[list(layer) for layer in fairseq_literal(c["conv_aggregator_layers"])],
        log_compression=bool(c.get("log_compression", True)),
        activation=c.get("activation", "relu"),
        vector_quantizer=c["vq_type"],
        vq_groups=c.get("vq_groups", 2),
        vq_vars=c.get("vq_vars", 320),
        combine_groups=bool(c.get("combine_groups", False)),
        vq_depth=c.get("vq_depth", 1),
        gumbel_temperature=[float(t) for t in fairseq_literal(c.get("vq_temp", (2.0, 0.5, 0.999995)))],
        kmeans_gamma=c.get("vq_gamma", 0.25),
        aggregator_bias=not c.get("no_conv_bias", False),
        residual_scale=c.get("residual_scale", 0.5),
        prediction_steps=c.get("prediction_steps", 12),
        prediction_offset=None if offset == "auto" else int(offset),
        num_negatives=c.get("num_negatives", 10),
    )
    state = from_fairseq(content["model"], config["vq_groups"], config["vq_vars"])
    return config, {k: v for k, v in state.items() if not k.startswith("project_to_steps.")}


TINY = dict(  # a test size with the paper's 160-sample frames; vq_depth and steps as vq_wav2vec_tiny.yaml (see there)
    conv_layers=[[32, 10, 5], [32, 8, 4], [32, 4, 2], [32, 4, 2], [32, 4, 2]],
    aggregator_layers=[[32, 2, 1], [32, 3, 1], [32, 4, 1]],
    vq_vars=16,
    vq_depth=1,
    prediction_steps=4,
)

register(
    "vq_wav2vec", VQWav2Vec, VQWav2VecConfig, objective=VQWav2VecObjective, tiny=TINY, converters={"fairseq": convert_fairseq}
)
