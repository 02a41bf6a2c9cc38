"""Mockingjay and TERA: a Transformer encoder pretrained by reconstructing altered frames.

Mockingjay (Liu et al., ICASSP 2020) masks spans of consecutive frames of a
log-mel spectrogram and reconstructs them (L1); TERA (Liu et al., TASLP 2021)
alters time (the same spans), channels (a block of mel bins zeroed) and
magnitude (Gaussian noise), and reconstructs the clean frames. One network,
two configs: :class:`MockingjayConfig` and :class:`TeraConfig`.

Input features, chosen to match s3prl's pretraining (its ``OnlinePreprocessor``
``mel`` features: 80 log-mel bins of a centred 400-point STFT with a Hann
window, 10 ms hop, utterance CMVN): :func:`speechssl.features.log_mel` +
:func:`speechssl.features.cmvn` over valid frames. Deliberate differences:
the STFT pads with zeros (s3prl reflects), so a padded utterance has the same
frames as alone; the mel scale is Slaney's (librosa's default); s3prl's
waveform level normalisation (-25 dB) is left out, CMVN removes the gain up
to the log offset. ``front_end="fbank"`` uses Kaldi fbank instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import torch
from torch import nn

from speechssl import features
from speechssl.errors import CheckpointError
from speechssl.frames import frames_centered, frames_snip_edges
from speechssl.interface import Features, Upstream, lengths_to_mask, zero_padding
from speechssl.masking import frame_mask
from speechssl.objective import Objective
from speechssl.registry import register
from upstream.modules.transformer import (
    ACTIVATIONS,
    TransformerEncoder,
    init_bert_weights,
    sinusoid_positions,
)

FRONT_ENDS = ("log_mel", "fbank")


@dataclass
class MockingjayConfig:
    """Mockingjay "base" (3 x 768, s3prl's ``logMelBase-T``), and the masking of its objective."""

    # front-end
    front_end: str = "log_mel"  # "log_mel" (s3prl's mel features) or "fbank" (Kaldi)
    num_mel_bins: int = 80
    cmvn: bool = True
    # encoder (s3prl's `transformer:` section)
    hidden_size: int = 768
    num_layers: int = 3
    num_heads: int = 12
    intermediate_size: int = 3072
    activation: str = "gelu"
    dropout: float = 0.1
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    pre_layer_norm: bool = False
    initializer_range: float = 0.02
    # objective (s3prl's `task:` section; see speechssl.masking.frame_mask)
    mask_prob: float = 0.15  # share of frames in masked spans (Mockingjay sec. 2.2)
    mask_span: int = 7  # consecutive frames a span covers
    mask_policy: List[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])  # zero, replace, keep
    channel_width: int = 0  # TERA: widest block of mel bins zeroed; 0 disables
    noise_std: float = 0.0  # TERA: std of Gaussian noise added to the input; 0 disables
    noise_prob: float = 0.0  # TERA: share of utterances that get the noise


@dataclass
class TeraConfig(MockingjayConfig):
    """TERA base (3 x 768) with time, channel and magnitude alteration (TERA sec. III).

    Values of s3prl's ``pretrain/tera/exp_model_config/logMelBase-T-F-M.yaml``:
    channel blocks of up to 20% of the 80 bins, and Gaussian noise of std 0.2 on
    15% of the inputs (s3prl draws it per batch, we draw it per utterance).
    """

    channel_width: int = 16
    noise_std: float = 0.2
    noise_prob: float = 0.15


class Mockingjay(Upstream):
    """Transformer encoder over log-mel frames (Mockingjay and TERA).

    Hidden states (``num_layers + 1``, each ``(B, T, hidden_size)``): index 0 is
    the encoder input (projected features + sinusoidal positions, LayerNorm), as
    s3prl's ``mockingjay`` upstream returns it, then each layer's output.
    Frames are 10 ms apart; padding frames are zero.
    """

    downsample_rate = features.HOP

    def __init__(self, config: MockingjayConfig) -> None:
        super().__init__(config)
        if config.front_end not in FRONT_ENDS:
            raise ValueError(f"mockingjay: front_end must be one of {', '.join(FRONT_ENDS)}, got {config.front_end!r}")
        if config.activation not in ACTIVATIONS:
            raise ValueError(f"mockingjay: activation must be one of {', '.join(ACTIVATIONS)}, got {config.activation!r}")
        self.min_samples = 1 if config.front_end == "log_mel" else features.WINDOW
        H = config.hidden_size
        self.input_projection = nn.Linear(config.num_mel_bins, H)
        self.input_norm = nn.LayerNorm(H, eps=config.layer_norm_eps)
        self.input_dropout = nn.Dropout(config.dropout)
        self.transformer = TransformerEncoder(
            H,
            config.num_layers,
            config.num_heads,
            config.intermediate_size,
            dropout=config.dropout,
            attention_dropout=config.attention_dropout,
            activation=config.activation,
            layer_norm_eps=config.layer_norm_eps,
            pre_layer_norm=config.pre_layer_norm,
        )
        self.apply(lambda m: init_bert_weights(m, config.initializer_range))

    @property
    def hidden_sizes(self) -> list[int]:
        return [self.config.hidden_size] * (self.config.num_layers + 1)

    def num_frames(self, wav_lens):
        if self.config.front_end == "log_mel":
            return frames_centered(wav_lens, features.HOP)
        return frames_snip_edges(wav_lens, features.WINDOW, features.HOP)

    def input_frames(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Checked ``(B, S)`` waveforms -> ``(B, T, num_mel_bins)`` normalised features, ``(B,)`` frames."""
        with torch.no_grad():
            if self.config.front_end == "log_mel":
                x, lengths = features.log_mel(wavs, wav_lens, self.config.num_mel_bins)
            else:
                x, lengths = features.fbank(wavs, wav_lens, self.config.num_mel_bins)
            if self.config.cmvn:
                x = features.cmvn(x, lengths)
        return x, lengths

    def encoder(self, x: torch.Tensor, lengths: torch.Tensor) -> Features:
        """Features ``(B, T, num_mel_bins)`` and ``(B,)`` frames -> hidden states (see class doc), zero padding."""
        if x.dim() != 3 or x.shape[-1] != self.config.num_mel_bins:
            raise ValueError(
                f"mockingjay: features must be (batch, frame, {self.config.num_mel_bins}), got shape {tuple(x.shape)}"
            )
        h = self.input_projection(x)  # (B, T, H)
        h = h + sinusoid_positions(x.shape[1], h.shape[-1], device=h.device, dtype=h.dtype)
        h = self.input_dropout(self.input_norm(h))
        return Features(zero_padding(self.transformer(h, lengths), lengths), lengths)


class MockingjayObjective(Objective):
    """Masked acoustic modelling: L1 reconstruction of the altered frames (Mockingjay eq. 1).

    The input features are altered by :func:`speechssl.masking.frame_mask` (and,
    for TERA, noise on a ``noise_prob`` share of utterances); a prediction head
    (s3prl's ``TransformerSpecPredictionHead``: dense, activation, LayerNorm,
    linear to the feature size) reads the top layer, and the loss is the mean
    absolute error over exactly the elements ``loss_mask`` marks: s3prl's
    ``L1Loss`` on ``masked_select``, without its host reads.
    """

    def __init__(self, upstream: Mockingjay) -> None:
        super().__init__(upstream)
        config = upstream.config
        H, D = config.hidden_size, config.num_mel_bins
        self.head = nn.Sequential(
            nn.Linear(H, H), _Activation(config.activation), nn.LayerNorm(H, eps=config.layer_norm_eps), nn.Linear(H, D)
        )
        self.head.apply(lambda m: init_bert_weights(m, config.initializer_range))

    def forward(self, batch: dict, *, step: int = 0, generator: torch.Generator | None = None):
        """``batch["wavs"]`` (B, S), ``batch["wav_lens"]`` (B,) -> ``(loss, logs)``."""
        x, lengths = self.upstream.front_end(batch["wavs"], batch["wav_lens"])
        return self.loss_on_features(x, lengths, generator)

    def loss_on_features(
        self, x: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Objective on normalised features ``x`` (B, T, D) with ``lengths`` (B,) frames."""
        config = self.upstream.config
        with torch.no_grad():
            x_masked, loss_mask = frame_mask(
                x,
                lengths,
                mask_prob=config.mask_prob,
                span=config.mask_span,
                policy=tuple(config.mask_policy),
                channel_width=config.channel_width,
                generator=generator,
            )  # (B, T, D) each
            if config.noise_std > 0 and config.noise_prob > 0:
                x_masked = x_masked + self._noise(x, lengths, generator)
        loss_mask = loss_mask.expand_as(x)
        return self.loss_on_masked(x_masked, loss_mask, x, lengths)

    def loss_on_masked(self, x_masked, loss_mask, target, lengths):
        """L1 over the ``loss_mask`` elements of ``target``, predicted from ``x_masked``."""
        top = self.upstream.encoder(x_masked, lengths).last  # (B, T, H)
        prediction = self.head(top).float()  # (B, T, D)
        weights = loss_mask.to(prediction.dtype)
        count = weights.sum()
        loss = ((prediction - target).abs() * weights).sum() / count.clamp(min=1.0)
        return loss, {"l1": loss.detach(), "masked_share": (count / (lengths.sum() * target.shape[-1])).detach()}

    def _noise(self, x: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """``(B, T, D)`` Gaussian noise of std ``noise_std`` on valid frames of a ``noise_prob`` share of utterances."""
        config = self.upstream.config
        B = x.shape[0]
        chosen = torch.rand(B, 1, 1, generator=generator, device=x.device) < config.noise_prob  # (B, 1, 1)
        valid = lengths_to_mask(lengths, x.shape[1])[..., None]  # (B, T, 1)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return noise * config.noise_std * (chosen & valid)


class _Activation(nn.Module):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ACTIVATIONS[self.name](x)


def convert_s3prl(content: dict, overrides: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    """An s3prl Mockingjay / TERA checkpoint -> ``(config, state dict)``.

    s3prl's layout: the upstream config under ``Config`` (or ``Upstream_Config`` in newer
    runners) with a ``transformer`` section, the weights of its ``TransformerModel`` under
    ``Transformer``. Its q, k and v projections are fused into one; its input features
    (``audio`` section) map to our nearest front-end (see the module doc for where they differ).
    """
    config = next((c for c in (content.get("Upstream_Config"), content.get("Config"))
                   if isinstance(c, dict) and "transformer" in c), None)  # fmt: skip
    if config is None or "Transformer" not in content:
        raise CheckpointError(
            "not an s3prl Mockingjay/TERA checkpoint (expected 'Config' with a 'transformer' section and "
            f"'Transformer' weights); found keys {', '.join(map(str, content))}"
        )
    t = config["transformer"]
    for key in ("pre_layer_norm", "share_layer"):
        if t.get(key):
            raise CheckpointError(f"s3prl transformer option {key}=True is not supported")
    theirs = {k.replace("gamma", "weight").replace("beta", "bias"): v for k, v in content["Transformer"].items()}  # as s3prl
    try:
        state = {
            "input_projection.weight": theirs["input_representations.spec_transform.weight"],
            "input_projection.bias": theirs["input_representations.spec_transform.bias"],
            "input_norm.weight": theirs["input_representations.LayerNorm.weight"],
            "input_norm.bias": theirs["input_representations.LayerNorm.bias"],
        }
        for i in range(t["num_hidden_layers"]):
            layer, mine = f"encoder.layer.{i}.", f"transformer.layers.{i}."
            for p in ("weight", "bias"):
                qkv = [theirs[f"{layer}attention.self.{n}.{p}"] for n in ("query", "key", "value")]
                state[f"{mine}attention.qkv.{p}"] = torch.cat(qkv)
                for ours, their in (("attention.out", "attention.output.dense"), ("attention_norm", "attention.output.LayerNorm"),
                                    ("ffn_in", "intermediate.dense"), ("ffn_out", "output.dense"),
                                    ("ffn_norm", "output.LayerNorm")):  # fmt: skip
                    state[f"{mine}{ours}.{p}"] = theirs[f"{layer}{their}.{p}"]
    except KeyError as e:
        raise CheckpointError(f"s3prl Transformer weights lack {e.args[0]}") from e
    ours_config = dict(
        front_end="fbank" if "kaldi" in config.get("audio", {}) else "log_mel",
        num_mel_bins=state["input_projection.weight"].shape[1],
        hidden_size=t["hidden_size"],
        num_layers=t["num_hidden_layers"],
        num_heads=t["num_attention_heads"],
        intermediate_size=t["intermediate_size"],
        activation=t.get("hidden_act", "gelu"),
        dropout=t.get("hidden_dropout_prob", 0.1),
        attention_dropout=t.get("attention_probs_dropout_prob", 0.1),
        layer_norm_eps=t.get("layer_norm_eps", 1e-12),
        initializer_range=t.get("initializer_range", 0.02),
    )
    return ours_config, state


TINY = dict(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, dropout=0.0, attention_dropout=0.0)

CONVERTERS = {"s3prl": convert_s3prl}
register("mockingjay", Mockingjay, MockingjayConfig, objective=MockingjayObjective, tiny=TINY, converters=CONVERTERS)
register("tera", Mockingjay, TeraConfig, objective=MockingjayObjective, tiny=TINY, converters=CONVERTERS)
