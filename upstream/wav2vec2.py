"""wav2vec 2.0: masked contrastive prediction of quantized conv features (Baevski et al. 2020, arXiv 2006.11477).

A conv feature encoder turns the waveform into latent frames ``z`` (20 ms apart);
their LayerNorm is projected to the Transformer's width; spans of frames are
masked (p = 0.65, 10 frames) and replaced by a learned mask embedding; a
Transformer with a convolutional relative positional embedding builds context
``c``. For each masked frame, ``c`` must pick the Gumbel-quantized version of
its own (unmasked) latent out of 100 distractors quantized from other masked
frames of the same utterance (eq. 3, cosine similarity / 0.1), plus a diversity
loss on code use (eq. 4, weight 0.1) and an L2 penalty on the conv features
(weight 10).

Defaults are fairseq's ``wav2vec2_base_librispeech`` recipe; ``large`` is
``wav2vec2_large_librivox`` (layer-norm conv encoder with biases, pre-LN
Transformer 24 x 1024). Blocks come from :mod:`upstream.modules`: the
:class:`~upstream.modules.conv.ConvFeatureEncoder`, the
:class:`~upstream.modules.transformer.ConvPositionTransformer`, the
:class:`~upstream.modules.quantizer.GumbelQuantizer` and
:mod:`~upstream.modules.contrastive`.

Parameters: the upstream (conv encoder, feature projection, Transformer) holds
exactly what torchaudio's ``wav2vec2_base()`` holds, 94,370,944 for ``base``
(4,200,448 in the conv encoder). The objective holds the rest of the pretraining
model, 673,664 for ``base``, as HF's ``Wav2Vec2ForPreTraining`` adds them to its
``Wav2Vec2Model``: the mask embedding (768; HF keeps it in ``Wav2Vec2Model``), the
quantizer (logits ``512 -> 2 x 320`` and 640 codewords of 128: 410,240), the
projection of the quantized vectors ``Linear(256, 256)`` (HF's ``project_q``) and
of the context ``Linear(768, 256)`` (HF's ``project_hid``, fairseq's ``final_proj``).

Where we differ from fairseq and HF, deliberately:

- padding: the first conv layer's group norm takes its statistics over each
  utterance's valid frames (see :mod:`upstream.modules.conv`), so an utterance's
  features do not depend on its batch; the references average over the padding;
- distractors are drawn and scored without copying 100 target vectors per masked
  frame (:mod:`upstream.modules.contrastive`); the code usage behind the
  diversity loss is measured over the masked frames of every utterance
  (fairseq: the same; HF: the same), the feature penalty over valid frames only
  (fairseq: the whole padded batch);
- the losses are means (contrastive loss per masked frame), where fairseq and HF
  sum over the masked frames and let the optimizer divide: the same gradients up
  to that constant;
- masks, distractors, Gumbel noise and LayerDrop draw from the trainer's generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable, List

import torch
from torch import nn

from speechssl.errors import CheckpointError
from speechssl.interface import Features, Upstream, lengths_to_mask, zero_padding
from speechssl.interop import fairseq_literal, fairseq_model_config, fairseq_model_name
from speechssl.masking import masked_positions, negative_indices, span_mask
from speechssl.objective import Objective
from speechssl.registry import register
from upstream.modules.contrastive import cosine_logits, info_nce
from upstream.modules.conv import ConvFeatureEncoder, check_conv_spec
from upstream.modules.quantizer import GumbelQuantizer
from upstream.modules.transformer import ConvPositionTransformer, init_bert_weights

BASE_CONV = [[512, 10, 5]] + [[512, 3, 2]] * 4 + [[512, 2, 2]] * 2  # 320 samples (20 ms) per frame


@dataclass
class EncoderConfig:
    """The conv feature encoder and Transformer of wav2vec 2.0 base, shared with HuBERT base."""

    # conv feature encoder: [channels, kernel, stride] per layer
    extractor_mode: str = "group_norm"  # "group_norm" (base) or "layer_norm" (large)
    conv_layers: List[List[int]] = field(default_factory=lambda: [list(layer) for layer in BASE_CONV])
    conv_bias: bool = False
    # Transformer
    encoder_dim: int = 768
    encoder_layers: int = 12
    encoder_heads: int = 12
    encoder_ffn_dim: int = 3072
    layer_norm_first: bool = False  # pre-LN layers (large) instead of post-LN (base)
    pos_conv_kernel: int = 128
    pos_conv_groups: int = 16
    layer_norm_eps: float = 1e-5
    dropout: float = 0.1  # residual branches and the Transformer input
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0  # inside the feed-forward block
    layerdrop: float = 0.05
    dropout_input: float = 0.1  # on the projected conv features


@dataclass
class Wav2Vec2Config(EncoderConfig):
    """wav2vec 2.0 base (fairseq's ``wav2vec2_base_librispeech``); ``configs/upstream/wav2vec2*.yaml`` override it."""

    # pretraining objective (Wav2Vec2Objective)
    dropout_features: float = 0.1  # on the latents the quantizer reads
    feature_grad_mult: float = 0.1  # the conv encoder learns at a tenth of the rate
    final_dim: int = 256  # space of the contrastive scores
    latent_vars: int = 320  # V entries per codebook
    latent_groups: int = 2  # G codebooks
    latent_dim: int = 0  # size of a quantized vector (all groups); 0: final_dim
    latent_temp: List[float] = field(default_factory=lambda: [2.0, 0.5, 0.999995])  # Gumbel (max, min, decay per step)
    mask_prob: float = 0.65
    mask_length: int = 10
    min_masks: int = 2
    num_negatives: int = 100
    logit_temp: float = 0.1
    diversity_weight: float = 0.1
    feature_penalty_weight: float = 10.0


class FeatureProjection(nn.Module):
    """LayerNorm of the conv features, then ``Linear(C, D)`` and dropout (torchaudio's ``FeatureProjection``)."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float, eps: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_dim, eps=eps)
        self.linear = nn.Linear(in_dim, out_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z`` (B, T, C) -> the normalised latents (B, T, C) and their projection (B, T, D)."""
        normed = self.norm(z)
        return normed, self.dropout(self.linear(normed))


class Wav2Vec2(Upstream):
    """wav2vec 2.0's conv encoder and Transformer.

    Hidden states (``encoder_layers + 1``, each ``(B, T, encoder_dim)``): index 0 is
    the input of the first Transformer layer (the projected conv features plus the
    positional conv, LayerNorm-ed in the post-LN variant), then each layer's output,
    the top one after the final LayerNorm in the pre-LN variant. This is the order
    and content of s3prl's ``wav2vec2`` upstream (hooks on every layer's input, then
    the encoder's output) and of HF's ``Wav2Vec2Model(output_hidden_states=True)``:
    ``hidden_states[:-1]``, then ``last_hidden_state`` (transformers 5 puts the top
    layer's output before the pre-LN variant's final LayerNorm in ``hidden_states[-1]``;
    transformers 4 put it after, as we do). torchaudio's ``extract_features()``
    returns our ``hidden_states[1:]`` (its last without that final LayerNorm). The
    conv features themselves (512-d) are :meth:`front_end`'s output.

    Frames: 320 samples (20 ms) apart, :func:`speechssl.frames.frames_conv_stack`
    over the unpadded convs; one frame sees 400 samples (``min_samples``).
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__(config)
        _check_encoder_config(config, type(self).__name__.lower())
        if isinstance(config, Wav2Vec2Config):
            _check_config(config)
        self.feature_encoder = ConvFeatureEncoder(config.conv_layers, config.extractor_mode, config.conv_bias)
        self.downsample_rate = math.prod(int(stride) for _, _, stride in config.conv_layers)
        self.min_samples = self.feature_encoder.min_samples
        self.feature_projection = FeatureProjection(
            self.feature_encoder.output_dim, config.encoder_dim, config.dropout_input, config.layer_norm_eps
        )
        self.transformer = ConvPositionTransformer(
            config.encoder_dim,
            config.encoder_layers,
            config.encoder_heads,
            config.encoder_ffn_dim,
            pos_conv_kernel=config.pos_conv_kernel,
            pos_conv_groups=config.pos_conv_groups,
            dropout=config.dropout,
            attention_dropout=config.attention_dropout,
            activation_dropout=config.activation_dropout,
            layerdrop=config.layerdrop,
            layer_norm_first=config.layer_norm_first,
            layer_norm_eps=config.layer_norm_eps,
        )
        self.transformer.layers.apply(init_bert_weights)  # fairseq's init_bert_params: N(0, 0.02), zero biases

    @property
    def hidden_sizes(self) -> list[int]:
        return [self.config.encoder_dim] * (self.config.encoder_layers + 1)

    def num_frames(self, wav_lens):
        return self.feature_encoder.num_frames(wav_lens)

    def input_frames(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Checked ``(B, S)`` waveforms with zero padding -> conv features ``z`` (B, T, C), ``(B,)`` frames."""
        return self.feature_encoder(wavs, wav_lens)

    def context(self, x: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator | None = None) -> Features:
        """Projected (possibly masked) frames ``x`` (B, T, D) -> the Transformer's hidden states."""
        return Features(zero_padding(self.transformer(x, lengths, generator), lengths), lengths)

    def encoder(self, z: torch.Tensor, lengths: torch.Tensor) -> Features:
        """Conv features ``z`` (B, T, C) and ``(B,)`` frames -> hidden states with zero padding."""
        C = self.feature_encoder.output_dim
        if z.dim() != 3 or z.shape[-1] != C:
            raise ValueError(f"{self.name}: z must be (batch, frame, {C}), got shape {tuple(z.shape)}")
        return self.context(self.feature_projection(z)[1], lengths)


def scale_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x`` unchanged, its gradient multiplied by ``scale`` (fairseq's ``GradMultiply``)."""
    if scale == 1.0:
        return x
    return x * scale + x.detach() * (1.0 - scale)


@dataclass
class MaskedPass:
    """One pass of a batch through the network with spans masked: what wav2vec 2.0's and HuBERT's
    objectives share. ``lengths`` (B,) frames, ``valid`` (B, T), ``normed`` (B, T, C) the
    LayerNorm-ed conv features (unmasked), ``mask`` (B, T), ``top`` (B, T, D) the top layer's
    output, ``penalty`` the mean squared conv feature over valid frames."""

    lengths: torch.Tensor
    valid: torch.Tensor
    normed: torch.Tensor
    mask: torch.Tensor
    top: torch.Tensor
    penalty: torch.Tensor


def masked_pass(up: Wav2Vec2, mask_embedding: torch.Tensor, batch: dict, generator: torch.Generator | None) -> MaskedPass:
    """Conv features (their gradient scaled by ``feature_grad_mult``), the feature penalty, the projection,
    a span mask (``mask_prob``, ``mask_length``, ``min_masks`` of ``up.config``) filled with
    ``mask_embedding``, then the Transformer."""
    c = up.config
    z, lengths = up.front_end(batch["wavs"], batch["wav_lens"])  # (B, T, C)
    B, T, C = z.shape
    z = scale_gradient(z, c.feature_grad_mult)
    valid = lengths_to_mask(lengths, T)
    penalty = (z.float() ** 2).sum(-1).masked_fill(~valid, 0.0).sum() / (valid.sum().clamp(min=1) * C)
    normed, projected = up.feature_projection(z)
    mask = span_mask(lengths, c.mask_prob, c.mask_length, max_len=T, min_masks=c.min_masks, generator=generator)
    x = torch.where(mask[..., None], mask_embedding.to(projected.dtype), projected)
    top = up.context(x, lengths, generator).last  # (B, T, D)
    return MaskedPass(lengths, valid, normed, mask, top, penalty)


class Wav2Vec2Objective(Objective):
    """Contrastive + diversity + feature penalty losses of wav2vec 2.0 (sec. 3.2; fairseq's recipe).

    ``loss = L_m + diversity_weight * L_d + feature_penalty_weight * mean(z^2)``:
    ``L_m`` the InfoNCE over the masked frames (cosine scores / ``logit_temp``,
    ``num_negatives`` distractors from the other masked frames of the utterance; a
    distractor whose codes equal the positive's scores ``-inf``), ``L_d =
    (G V - perplexity) / (G V)`` of the mean code distribution over the masked
    frames, and the mean squared conv feature over valid frames. The Gumbel
    temperature follows the optimizer ``step``.

    Logs ``loss``, ``contrastive``, ``diversity``, ``feature_penalty``, ``accuracy``
    (masked frames where the positive outscores every distractor; chance
    ``1 / (num_negatives + 1)``), ``code_perplexity`` and ``prob_perplexity`` (of
    ``G V`` possible), ``temperature`` and ``masked`` (share of valid frames masked).
    """

    crop = "random"  # fairseq crops long utterances at a random offset

    def __init__(self, upstream: Wav2Vec2) -> None:
        super().__init__(upstream)
        c = upstream.config
        latent_dim = c.latent_dim or c.final_dim
        self.mask_embedding = nn.Parameter(torch.empty(c.encoder_dim).uniform_())
        self.quantizer = GumbelQuantizer(
            upstream.feature_encoder.output_dim,
            c.latent_vars,
            c.latent_groups,
            latent_dim // c.latent_groups,
            temperature=tuple(c.latent_temp),
            init="wav2vec2",
        )
        self.project_q = nn.Linear(latent_dim, c.final_dim)
        self.final_proj = nn.Linear(c.encoder_dim, c.final_dim)
        self.dropout_features = nn.Dropout(c.dropout_features)

    @property
    def skips_parameters(self) -> bool:
        return self.upstream.config.layerdrop > 0  # a dropped layer's parameters get no gradient

    def forward(self, batch: dict, *, step: int = 0, generator: torch.Generator | None = None):
        """``batch["wavs"]`` (B, S), ``batch["wav_lens"]`` (B,) -> ``(loss, logs)``."""
        c = self.upstream.config
        run = masked_pass(self.upstream, self.mask_embedding, batch, generator)
        lengths, valid, normed, mask, top, penalty = run.lengths, run.valid, run.normed, run.mask, run.top, run.penalty
        B = lengths.shape[0]
        positions, counts = masked_positions(mask)  # (B, P), (B,)
        P = positions.shape[1]
        rows = torch.arange(B, device=top.device)[:, None]
        in_row = torch.arange(P, device=top.device).expand(B, P)
        is_masked = in_row < counts[:, None]  # (B, P): real masked frames, not fill
        predictions = self.final_proj(top[rows, positions])  # (B, P, final_dim)
        latents = self.dropout_features(normed[rows, positions])  # (B, P, C)
        quantized = self.quantizer(latents, is_masked, step=step, generator=generator)
        targets = self.project_q(quantized.values)  # (B, P, final_dim)
        negatives = negative_indices(counts, c.num_negatives, positions=in_row, generator=generator)  # (B, P, N)
        logits = cosine_logits(predictions, targets, negatives, c.logit_temp, target_codes=quantized.codes)
        contrastive, correct = info_nce(logits, is_masked)
        loss = contrastive + c.diversity_weight * quantized.loss + c.feature_penalty_weight * penalty
        count = is_masked.sum().clamp(min=1)
        logs = {
            "loss": loss.detach(),
            "contrastive": contrastive.detach(),
            "diversity": quantized.loss.detach(),
            "feature_penalty": penalty.detach(),
            "accuracy": (correct.sum() / count).detach(),
            "code_perplexity": quantized.code_perplexity.detach(),
            "prob_perplexity": quantized.prob_perplexity.detach(),
            "temperature": torch.tensor(quantized.temperature),
            "masked": (counts.sum() / valid.sum().clamp(min=1)).detach(),
        }
        return loss, logs


def _check_encoder_config(config: EncoderConfig, model: str) -> None:
    check_conv_spec(config.conv_layers, model)
    if config.extractor_mode not in ("group_norm", "layer_norm"):
        raise ValueError(f"{model}: extractor_mode must be group_norm or layer_norm, got {config.extractor_mode!r}")
    if config.encoder_dim % config.encoder_heads:
        raise ValueError(f"{model}: encoder_dim {config.encoder_dim} is not a multiple of {config.encoder_heads} heads")


def _check_config(config: Wav2Vec2Config) -> None:
    latent_dim = config.latent_dim or config.final_dim
    if latent_dim % config.latent_groups:
        raise ValueError(f"wav2vec2: latent_dim {latent_dim} does not split into {config.latent_groups} groups")
    if len(config.latent_temp) != 3:
        raise ValueError(f"wav2vec2: latent_temp must be [max, min, decay], got {list(config.latent_temp)}")
    if not 0.0 < config.mask_prob < 1.0 or config.mask_length < 1:
        raise ValueError(f"wav2vec2: need 0 < mask_prob < 1 and mask_length >= 1, got {config.mask_prob}, {config.mask_length}")


# --------------------------------------------------------------------------- other layouts
# Weights of torchaudio's wav2vec2_model(), HF's Wav2Vec2Model / Wav2Vec2ForPreTraining and
# fairseq's Wav2Vec2Model, renamed into ours (q, k and v projections fused into one), and
# ours back into HF's: the converters and the exporter registered below.


def _layer_keys(prefix: str, ours: str, layers: int) -> dict[str, str]:
    names = {
        "layer_norm": "attention_norm",
        "feed_forward.intermediate_dense": "ffn_in",
        "feed_forward.output_dense": "ffn_out",
        "final_layer_norm": "ffn_norm",
        "attention.out_proj": "attention.out",
    }
    keys = {}
    for i in range(layers):
        for theirs, mine in names.items():
            for p in ("weight", "bias"):
                keys[f"{prefix}.layers.{i}.{theirs}.{p}"] = f"{ours}.layers.{i}.{mine}.{p}"
    return keys


def _convert(state: dict[str, torch.Tensor], renames: dict[str, str], layer_prefix: str, ours: str) -> dict[str, torch.Tensor]:
    out = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key in renames:
            out[renames[key]] = value
            continue
        head, _, rest = key.partition(f"{layer_prefix}.layers.")
        if not head and rest and ".attention." in rest and rest.split(".")[2] in ("q_proj", "k_proj", "v_proj"):
            i, _, proj, p = rest.split(".")
            fused.setdefault(f"{ours}.layers.{i}.attention.qkv.{p}", {})[proj] = value
    for key, parts in fused.items():
        out[key] = torch.cat([parts["q_proj"], parts["k_proj"], parts["v_proj"]], dim=0)
    return out


def _common_keys(conv_layers: int, encoder_prefix: str, projection_prefix: str, conv_prefix: str) -> dict[str, str]:
    renames = {}
    for i in range(conv_layers):
        for p in ("weight", "bias"):
            renames[f"{conv_prefix}.conv_layers.{i}.conv.{p}"] = f"feature_encoder.layers.{i}.conv.{p}"
            renames[f"{conv_prefix}.conv_layers.{i}.layer_norm.{p}"] = f"feature_encoder.layers.{i}.norm.{p}"
    for p in ("weight", "bias"):
        renames[f"{projection_prefix}.layer_norm.{p}"] = f"feature_projection.norm.{p}"
        renames[f"{projection_prefix}.projection.{p}"] = f"feature_projection.linear.{p}"
        renames[f"{encoder_prefix}.layer_norm.{p}"] = f"transformer.norm.{p}"
    pos = f"{encoder_prefix}.pos_conv_embed.conv"
    renames[f"{pos}.bias"] = "transformer.position.conv.bias"
    for old, new in (("weight_g", "original0"), ("weight_v", "original1"), ("parametrizations.weight.original0", "original0"),
                     ("parametrizations.weight.original1", "original1")):  # fmt: skip
        renames[f"{pos}.{old}"] = f"transformer.position.conv.parametrizations.weight.{new}"
    return renames


def from_torchaudio(state: dict[str, torch.Tensor], config: Wav2Vec2Config) -> dict[str, torch.Tensor]:
    """A torchaudio ``wav2vec2_model(...)`` state dict -> our :class:`Wav2Vec2` state dict."""
    renames = _common_keys(len(config.conv_layers), "encoder.transformer", "encoder.feature_projection", "feature_extractor")
    renames.update(_layer_keys("encoder.transformer", "transformer", config.encoder_layers))
    return _convert(state, renames, "encoder.transformer", "transformer")


def from_hf(state: dict[str, torch.Tensor], config: Wav2Vec2Config) -> dict[str, torch.Tensor]:
    """An HF ``Wav2Vec2Model`` or ``Wav2Vec2ForPreTraining`` state dict -> ours.

    For ``Wav2Vec2ForPreTraining`` (keys under ``wav2vec2.``), the result holds the
    :class:`Wav2Vec2Objective`'s keys: the upstream's under ``upstream.``, and the
    mask embedding, quantizer and projections.
    """
    pretraining = any(key.startswith("wav2vec2.") for key in state)
    if pretraining:
        inner = {key[len("wav2vec2."):]: value for key, value in state.items() if key.startswith("wav2vec2.")}
    else:
        inner = state
    renames = _common_keys(len(config.conv_layers), "encoder", "feature_projection", "feature_extractor")
    renames.update(_layer_keys("encoder", "transformer", config.encoder_layers))
    ours = _convert(inner, renames, "encoder", "transformer")
    if not pretraining:
        return ours
    out = {f"upstream.{key}": value for key, value in ours.items()}
    G, V = config.latent_groups, config.latent_vars
    weight = state["quantizer.weight_proj.weight"]  # (G*V, C)
    out["quantizer.logit_weight"] = weight.view(G, V, -1).transpose(1, 2).contiguous()  # (G, C, V)
    out["quantizer.logit_bias"] = state["quantizer.weight_proj.bias"].view(G, V)
    out["quantizer.codebook"] = state["quantizer.codevectors"].view(G, V, -1)
    out["mask_embedding"] = inner["masked_spec_embed"]
    for theirs, mine in (("project_q", "project_q"), ("project_hid", "final_proj")):
        for p in ("weight", "bias"):
            out[f"{mine}.{p}"] = state[f"{theirs}.{p}"]
    return out


def encoder_config_from_hf(hf: Any) -> dict[str, Any]:
    """The :class:`EncoderConfig` fields of an HF ``Wav2Vec2Config`` or ``HubertConfig`` (attributes)."""
    for key, expected in (("hidden_act", "gelu"), ("feat_extract_activation", "gelu")):
        if getattr(hf, key, expected) != expected:
            raise CheckpointError(f"HF config {key}={getattr(hf, key)!r}; only {expected!r} is supported")
    return dict(
        extractor_mode="layer_norm" if hf.feat_extract_norm == "layer" else "group_norm",
        conv_layers=[[d, k, s] for d, k, s in zip(hf.conv_dim, hf.conv_kernel, hf.conv_stride)],
        conv_bias=bool(hf.conv_bias),
        encoder_dim=hf.hidden_size,
        encoder_layers=hf.num_hidden_layers,
        encoder_heads=hf.num_attention_heads,
        encoder_ffn_dim=hf.intermediate_size,
        layer_norm_first=bool(hf.do_stable_layer_norm),
        pos_conv_kernel=hf.num_conv_pos_embeddings,
        pos_conv_groups=hf.num_conv_pos_embedding_groups,
        layer_norm_eps=hf.layer_norm_eps,
    )


def config_from_hf(hf: Any) -> dict[str, Any]:
    """The :class:`Wav2Vec2Config` fields of an HF ``Wav2Vec2Config``."""
    return dict(
        encoder_config_from_hf(hf),
        final_dim=hf.proj_codevector_dim,
        latent_vars=hf.num_codevectors_per_group,
        latent_groups=hf.num_codevector_groups,
        latent_dim=hf.codevector_dim,
        num_negatives=hf.num_negatives,
    )


def hf_config(content: dict, model_type: str) -> Any:
    """The ``config.json`` of an HF folder (``content`` of :func:`speechssl.interop.read_checkpoint`),
    checked to be of ``model_type``, with attribute access."""
    config = content["config"]
    if config.get("model_type") != model_type:
        raise CheckpointError(
            f"an HF '{config.get('model_type')}' folder ({', '.join(config.get('architectures') or ['?'])}), "
            f"not {model_type}"
        )
    return SimpleNamespace(**config)


def _fields_of(read: Callable[[Any], dict[str, Any]], hf: Any) -> dict[str, Any]:
    try:
        return read(hf)
    except AttributeError as e:
        raise CheckpointError(f"HF config.json has no '{e.name}'") from e


def convert_hf(content: dict, overrides: dict) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """An HF ``Wav2Vec2Model`` / ``Wav2Vec2ForPreTraining`` folder -> ``(config, upstream state dict)``."""
    config = _fields_of(config_from_hf, hf_config(content, "wav2vec2"))
    return config, upstream_state(from_hf(content["state"], Wav2Vec2Config(**config)))


def upstream_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The upstream's part of a converted state dict (an objective's holds it under ``upstream.``)."""
    if any(key.startswith("upstream.") for key in state):
        return {key[len("upstream."):]: value for key, value in state.items() if key.startswith("upstream.")}
    return state


# torchaudio's builders: attention heads by model width (the weights do not hold them), and
# the stride of each conv kernel of their feature encoders
TORCHAUDIO_HEADS = {768: 12, 1024: 16, 1280: 16}
TORCHAUDIO_STRIDES = {10: 5, 3: 2, 2: 2}


def encoder_config_from_torchaudio(state: dict[str, torch.Tensor], overrides: dict) -> dict[str, Any]:
    """The :class:`EncoderConfig` fields a torchaudio ``wav2vec2_model`` state dict holds.

    The weights do not hold the attention heads, the conv strides nor whether the
    Transformer is pre-LN: those follow torchaudio's builders (heads by width:
    :data:`TORCHAUDIO_HEADS`; strides by kernel: :data:`TORCHAUDIO_STRIDES`; pre-LN with
    the layer-norm feature encoder), unless ``overrides`` set them.
    """
    convs = []
    while f"feature_extractor.conv_layers.{len(convs)}.conv.weight" in state:
        convs.append(state[f"feature_extractor.conv_layers.{len(convs)}.conv.weight"])
    if not convs or "encoder.feature_projection.projection.weight" not in state:
        raise CheckpointError(f"not a torchaudio wav2vec2_model state dict (keys {', '.join(list(state)[:3])}, ...)")
    conv_layers = overrides.get("conv_layers")
    if conv_layers is None:
        unknown = sorted({w.shape[2] for w in convs} - set(TORCHAUDIO_STRIDES))
        if unknown:
            raise CheckpointError(f"conv kernels {unknown} of no torchaudio builder: give conv_layers=[[channels, kernel, stride], ...]")
        conv_layers = [[w.shape[0], w.shape[2], TORCHAUDIO_STRIDES[w.shape[2]]] for w in convs]
    D = state["encoder.feature_projection.projection.weight"].shape[0]
    heads = overrides.get("encoder_heads", TORCHAUDIO_HEADS.get(D))
    if heads is None:
        raise CheckpointError(f"a torchaudio state dict of width {D}, which no torchaudio builder has: give encoder_heads=N")
    layers = 0
    while f"encoder.transformer.layers.{layers}.attention.q_proj.weight" in state:
        layers += 1
    pos = [v for k, v in state.items() if k.startswith("encoder.transformer.pos_conv_embed.conv.") and v.dim() == 3
           and (k.endswith("weight_v") or k.endswith("original1"))]  # fmt: skip
    extractor_mode = "layer_norm" if "feature_extractor.conv_layers.1.layer_norm.weight" in state else "group_norm"
    return dict(
        extractor_mode=extractor_mode,
        conv_layers=conv_layers,
        conv_bias="feature_extractor.conv_layers.0.conv.bias" in state,
        encoder_dim=D,
        encoder_layers=layers,
        encoder_heads=heads,
        encoder_ffn_dim=state["encoder.transformer.layers.0.feed_forward.intermediate_dense.weight"].shape[0],
        layer_norm_first=overrides.get("layer_norm_first", extractor_mode == "layer_norm"),
        pos_conv_kernel=pos[0].shape[2],
        pos_conv_groups=D // pos[0].shape[1],
    )


def convert_torchaudio(content: dict, overrides: dict) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A torchaudio ``wav2vec2_*`` state dict -> ``(config, state dict)`` (see :func:`encoder_config_from_torchaudio`)."""
    config = encoder_config_from_torchaudio(content, overrides)
    return config, from_torchaudio(content, Wav2Vec2Config(**{**config, **overrides}))


def fairseq_encoder_config(c: dict[str, Any]) -> dict[str, Any]:
    """The :class:`EncoderConfig` fields of a fairseq ``Wav2Vec2Config`` / ``HubertConfig`` (or ``args``),
    fairseq's defaults where a key is absent."""
    conv = c.get("conv_feature_layers", "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2")
    return dict(
        extractor_mode="layer_norm" if c.get("extractor_mode") == "layer_norm" else "group_norm",
        conv_layers=[list(layer) for layer in fairseq_literal(conv)],
        conv_bias=bool(c.get("conv_bias", False)),
        encoder_dim=c.get("encoder_embed_dim", 768),
        encoder_layers=c.get("encoder_layers", 12),
        encoder_heads=c.get("encoder_attention_heads", 12),
        encoder_ffn_dim=c.get("encoder_ffn_embed_dim", 3072),
        layer_norm_first=bool(c.get("layer_norm_first", False)),
        pos_conv_kernel=c.get("conv_pos", 128),
        pos_conv_groups=c.get("conv_pos_groups", 16),
        dropout=c.get("dropout", 0.1),
        attention_dropout=c.get("attention_dropout", 0.1),
        activation_dropout=c.get("activation_dropout", 0.0),
        layerdrop=c.get("encoder_layerdrop", 0.05),
        dropout_input=c.get("dropout_input", 0.1),
    )


def fairseq_to_torchaudio(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fairseq's wav2vec 2.0 / HuBERT weights under torchaudio's names (torchaudio's own key map),
    without the pretraining heads (``mask_emb``, quantizer, projections, label embeddings)."""
    from torchaudio.models.wav2vec2.utils.import_fairseq import _convert_state_dict

    encoder = {k: v for k, v in state.items() if not k.startswith(("label_embs_concat", "final_proj", "w2v_model.proj"))}
    try:
        return _convert_state_dict(encoder)
    except ValueError as e:
        raise CheckpointError(f"fairseq weights with a key torchaudio's map does not know: {e}") from e


def convert_fairseq(content: dict, overrides: dict) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A fairseq wav2vec 2.0 checkpoint (``cfg`` / ``args`` + ``model``) -> ``(config, state dict)``."""
    name = fairseq_model_name(content)
    if name != "wav2vec2":
        raise CheckpointError(f"a fairseq checkpoint of a '{name}' model, not wav2vec2")
    c = fairseq_model_config(content)
    config = dict(
        fairseq_encoder_config(c),
        final_dim=c.get("final_dim", 0) or c.get("encoder_embed_dim", 768),
        latent_vars=c.get("latent_vars", 320),
        latent_groups=c.get("latent_groups", 2),
        latent_dim=c.get("latent_dim", 0),
        latent_temp=[float(t) for t in fairseq_literal(c.get("latent_temp", (2.0, 0.5, 0.999995)))],
        mask_prob=c.get("mask_prob", 0.65),
        mask_length=c.get("mask_length", 10),
        num_negatives=c.get("num_negatives", 100),
        logit_temp=c.get("logit_temp", 0.1),
        feature_grad_mult=c.get("feature_grad_mult", 0.1),
    )
    state = fairseq_to_torchaudio(content["model"])
    return config, from_torchaudio(state, Wav2Vec2Config(**{**config, **overrides}))


def to_hf(model: Wav2Vec2, model_type: str = "wav2vec2") -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Our :class:`Wav2Vec2` (or HuBERT) -> an HF ``Wav2Vec2Model`` (``HubertModel``) ``config.json`` dict
    and state dict: the inverse of :func:`from_hf`. HF's ``masked_spec_embed`` (ours lives in the
    objective, not the upstream) is left out: HF initialises it, as for fine-tuning."""
    c = model.config
    renames = _common_keys(len(c.conv_layers), "encoder", "feature_projection", "feature_extractor")
    renames.update(_layer_keys("encoder", "transformer", c.encoder_layers))
    inverse = {ours: theirs for theirs, ours in renames.items() if "weight_g" not in theirs and "weight_v" not in theirs}
    state, D = {}, c.encoder_dim
    for key, value in model.state_dict().items():
        if key in inverse:
            state[inverse[key]] = value
        elif key.endswith((".attention.qkv.weight", ".attention.qkv.bias")):
            i, p = key.split(".")[2], key.rsplit(".", 1)[1]
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.split(D)):
                state[f"encoder.layers.{i}.attention.{name}.{p}"] = part
        else:
            raise ValueError(f"{model.name}: no HF name for weight '{key}'")
    architecture = {"wav2vec2": "Wav2Vec2Model", "hubert": "HubertModel"}[model_type]
    config = dict(
        model_type=model_type,
        architectures=[architecture],
        hidden_size=D,
        num_hidden_layers=c.encoder_layers,
        num_attention_heads=c.encoder_heads,
        intermediate_size=c.encoder_ffn_dim,
        hidden_act="gelu",
        feat_extract_activation="gelu",
        feat_extract_norm="layer" if c.extractor_mode == "layer_norm" else "group",
        conv_dim=[d for d, _, _ in c.conv_layers],
        conv_kernel=[k for _, k, _ in c.conv_layers],
        conv_stride=[s for _, _, s in c.conv_layers],
        num_feat_extract_layers=len(c.conv_layers),
        conv_bias=c.conv_bias,
        do_stable_layer_norm=c.layer_norm_first,
        num_conv_pos_embeddings=c.pos_conv_kernel,
        num_conv_pos_embedding_groups=c.pos_conv_groups,
        layer_norm_eps=c.layer_norm_eps,
        hidden_dropout=c.dropout,
        attention_dropout=c.attention_dropout,
        activation_dropout=c.activation_dropout,
        feat_proj_dropout=c.dropout_input,
        layerdrop=c.layerdrop,
    )
    if isinstance(c, Wav2Vec2Config):
        config.update(
            proj_codevector_dim=c.final_dim,
            codevector_dim=c.latent_dim or c.final_dim,
            num_codevectors_per_group=c.latent_vars,
            num_codevector_groups=c.latent_groups,
            num_negatives=c.num_negatives,
        )
    return config, state


TINY = dict(
    conv_layers=[[32, 10, 5], [32, 3, 2], [32, 3, 2], [32, 3, 2], [32, 3, 2], [32, 2, 2], [32, 2, 2]],
    encoder_dim=32,
    encoder_layers=2,
    encoder_heads=2,
    encoder_ffn_dim=64,
    pos_conv_kernel=16,
    pos_conv_groups=4,
    final_dim=16,
    latent_vars=16,
    num_negatives=10,
    layerdrop=0.0,
)

register(
    "wav2vec2",
    Wav2Vec2,
    Wav2Vec2Config,
    objective=Wav2Vec2Objective,
    tiny=TINY,
    converters={"fairseq": convert_fairseq, "hf": convert_hf, "torchaudio": convert_torchaudio},
    exporters={"hf": to_hf},
)
