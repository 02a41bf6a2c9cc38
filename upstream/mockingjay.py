"""Mockingjay and TERA: a Transformer encoder pretrained by reconstructing altered frames.

Mockingjay (Liu et al., ICASSP 2020) masks spans of consecutive frames of a
log-mel spectrogram and reconstructs them (L1); TERA (Liu et al., TASLP 2021)
alters time (the same spans), channels (a block of mel bins zeroed) and
magnitude (Gaussian noise), and reconstructs the clean frames. One network,
two configs: :class:`MockingjayConfig` and :class:`TeraConfig`.

Input features, after s3prl's pretraining (its ``OnlinePreprocessor`` ``mel``
features: 80 log-mel bins of a centred 400-point STFT with a Hann window, 10 ms
hop, utterance CMVN): :func:`speechssl.features.log_mel` +
:func:`speechssl.features.cmvn` over valid frames. Our defaults differ from
s3prl's on purpose: the STFT pads with zeros (s3prl reflects), the mel scale is
Slaney's (librosa's default; s3prl's is torchaudio's HTK without norm), the log
offset is 1e-6 (s3prl 1e-10), CMVN divides by ``sqrt(var + 1e-5)`` (s3prl by
the unbiased std + 1e-10), and s3prl's waveform level normalisation (-25 dB) is
left out, CMVN removing the gain up to the log offset. Each has a config
option, and :func:`convert_s3prl` sets s3prl's values, so an s3prl checkpoint
gives s3prl's hidden states from the waveform. Reflect padding mirrors each
utterance at its own end (s3prl mirrors the batch's zero padding), so a padded
utterance keeps the frames it has alone. ``front_end="fbank"`` uses Kaldi fbank.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import torch
from torch import nn

from speechssl import features
from speechssl.errors import CheckpointError
from speechssl.frames import frames_centered, frames_snip_edges
from speechssl.interop import refuse_unreproduced
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
    # s3prl's feature extraction, set by convert_s3prl (the defaults are ours; see the module doc)
    level_db: Optional[float] = None  # scale each waveform's RMS to this level first (s3prl: -25 dB)
    mel_scale: str = "slaney"  # log_mel: "slaney" (librosa) or "htk" (torchaudio's MelScale, s3prl)
    mel_norm: Optional[str] = "slaney"  # log_mel: "slaney" (librosa) or None (s3prl)
    pad_mode: str = "constant"  # log_mel's centring: "constant", or "reflect" at each utterance's ends (s3prl)
    log_offset: float = 1e-6  # log_mel: log(mel + log_offset); s3prl 1e-10
    deltas: int = 0  # fbank: orders of deltas appended (s3prl's Kaldi extracter: 2), each num_mel_bins wide
    cmvn_eps: float = 1e-5
    cmvn_unbiased: bool = False  # variance over T - 1 frames (s3prl)
    cmvn_eps_on_std: bool = False  # (x - mean) / (std + eps) (s3prl), not / sqrt(var + eps)
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
        if config.front_end == "fbank":
            self.min_samples = features.WINDOW
        else:  # reflect padding mirrors an utterance of more than half a window
            self.min_samples = features.WINDOW // 2 + 1 if config.pad_mode == "reflect" else 1
        H = config.hidden_size
        if config.deltas and config.front_end != "fbank":
            raise ValueError(f"mockingjay: deltas={config.deltas} needs front_end='fbank'")
        self.input_projection = nn.Linear(self.feature_size, H)
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

    @property
    def feature_size(self) -> int:
        """``D`` of the input features: the mel bins, and as many again per order of deltas."""
        return self.config.num_mel_bins * (1 + self.config.deltas)

    def num_frames(self, wav_lens):
        if self.config.front_end == "log_mel":
            return frames_centered(wav_lens, features.HOP)
        return frames_snip_edges(wav_lens, features.WINDOW, features.HOP)

    def input_frames(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Checked ``(B, S)`` waveforms -> ``(B, T, feature_size)`` normalised features, ``(B,)`` frames."""
        config = self.config
        with torch.no_grad():
            if config.level_db is not None:
                wavs = features.rms_normalize(wavs, wav_lens, config.level_db)
            if config.front_end == "log_mel":
                x, lengths = features.log_mel(
                    wavs, wav_lens, config.num_mel_bins, log_offset=config.log_offset, mel_scale=config.mel_scale,
                    mel_norm=config.mel_norm, pad_mode=config.pad_mode,
                )  # fmt: skip
            else:
                x, lengths = features.fbank(wavs, wav_lens, config.num_mel_bins)
                orders = [x]
                for _ in range(config.deltas):
                    orders.append(features.compute_deltas(orders[-1], lengths))
                x = torch.cat(orders, dim=-1)  # (B, T, feature_size)
            if config.cmvn:
                x = features.cmvn(x, lengths, eps=config.cmvn_eps, unbiased=config.cmvn_unbiased,
                                  eps_on_std=config.cmvn_eps_on_std)  # fmt: skip
        return x, lengths

    def encoder(self, x: torch.Tensor, lengths: torch.Tensor) -> Features:
        """Features ``(B, T, feature_size)`` and ``(B,)`` frames -> hidden states (see class doc), zero padding."""
        if x.dim() != 3 or x.shape[-1] != self.feature_size:
            raise ValueError(
                f"mockingjay: features must be (batch, frame, {self.feature_size}), got shape {tuple(x.shape)}"
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
        H, D = config.hidden_size, upstream.feature_size
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
    (``audio`` section) set the front-end options that compute them as s3prl does
    (:func:`_s3prl_front_end`).
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
        **_s3prl_front_end(config.get("audio"), state["input_projection.weight"].shape[1]),
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


def _s3prl_front_end(audio, input_size: int) -> dict:
    """Our front-end options for s3prl's ``audio`` section, of ``input_size`` features.

    Its ``OnlinePreprocessor`` (``input.feat_type: mel``): waveform to ``target_level`` dB, a
    reflect-centred Hann STFT, torchaudio's ``MelScale`` (HTK, no norm), ``log(mel + eps)``,
    then CMVN by the unbiased std + eps. Its Kaldi extracter (a ``kaldi`` key): Kaldi fbank,
    deltas (order 2 unless said), the same CMVN. Options we cannot reproduce are refused.
    """
    if not isinstance(audio, dict):
        raise CheckpointError("s3prl Mockingjay/TERA config without an 'audio' section (s3prl's expert needs one too)")
    if "kaldi" in audio:
        kaldi, delta, cmvn = audio["kaldi"], audio.get("delta", {}), audio.get("cmvn", {})
        fbank = dict(kaldi.get(kaldi.get("feat_type", "fbank"), {}))
        fixed = {"frame_length": 25.0, "frame_shift": 10.0, "use_log_fbank": True, "dither": 0.0, "window_type": "povey"}
        found = {"feat_type": kaldi.get("feat_type", "fbank"), "delta.win_length": delta.get("win_length", 5),
                 **{k: fbank.pop(k, v) for k, v in fixed.items()}}  # fmt: skip
        bins = fbank.pop("num_mel_bins", 23)  # torchaudio's default
        expected = {"feat_type": "fbank", "delta.win_length": 5, **fixed}
        refuse_unreproduced(found, expected, fbank, "s3prl audio options")
        options = dict(front_end="fbank", num_mel_bins=bins, deltas=delta.get("order", 2), cmvn=bool(cmvn.get("use_cmvn")))
        eps = cmvn.get("eps", 1e-10)
    else:
        feat = audio.get("input", {})
        found = {k: audio.get(k, v) for k, v in (("sample_rate", 16000), ("win_ms", 25), ("hop_ms", 10), ("n_freq", 201))}
        found.update({f"input.{k}": feat.get(k, v) for k, v in (("feat_type", None), ("log", False), ("delta", 0))})
        expected = {"sample_rate": 16000, "win_ms": 25, "hop_ms": 10, "n_freq": 201,
                    "input.feat_type": "mel", "input.log": True, "input.delta": 0}  # fmt: skip
        refuse_unreproduced(found, expected, what="s3prl audio options")
        eps = audio.get("eps", 1e-10)
        options = dict(front_end="log_mel", num_mel_bins=audio.get("n_mels", 40), cmvn=bool(feat.get("cmvn", False)),
                       level_db=float(audio["target_level"]), mel_scale="htk", mel_norm=None, pad_mode="reflect",
                       log_offset=eps)  # fmt: skip
    options.update(cmvn_eps=eps, cmvn_unbiased=True, cmvn_eps_on_std=True)
    if options["num_mel_bins"] * (1 + options.get("deltas", 0)) != input_size:
        raise CheckpointError(f"s3prl audio config gives {options['num_mel_bins']} bins (deltas: "
                              f"{options.get('deltas', 0)}), but the Transformer reads {input_size} features")  # fmt: skip
    return options


TINY = dict(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, dropout=0.0, attention_dropout=0.0)

CONVERTERS = {"s3prl": convert_s3prl}
register("mockingjay", Mockingjay, MockingjayConfig, objective=MockingjayObjective, tiny=TINY, converters=CONVERTERS)
register("tera", Mockingjay, TeraConfig, objective=MockingjayObjective, tiny=TINY, converters=CONVERTERS)
