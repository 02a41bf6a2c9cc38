"""APC and VQ-APC: a causal RNN stack that predicts the frame ``n`` steps ahead.

APC (Chung et al., Interspeech 2019): a unidirectional GRU (or LSTM) stack with
residual connections between layers reads log-mel frames ``x_1..x_t`` and a
linear postnet predicts ``x_{t+n}``; the loss is L1 (eq. 1). VQ-APC (Chung et
al., Interspeech 2020): Gumbel-softmax VQ layers after chosen RNN layers, so the
prediction must pass through discrete codes.

Input features as s3prl's APC pretraining (``pretrain/apc/config_model.yaml``):
80-d Kaldi fbank (25 ms / 10 ms) with utterance CMVN, here over valid frames
(:func:`speechssl.features.fbank`, :func:`speechssl.features.cmvn`). Our defaults
are Kaldi's Povey window and CMVN by ``sqrt(var + 1e-5)``; s3prl's are a Hamming
window and the unbiased std + 1e-10, which :func:`convert_s3prl` sets (``window``,
``cmvn_*``), so an s3prl checkpoint gives s3prl's hidden states from the waveform.

Where we differ from s3prl, deliberately: the loss counts valid frames only
(s3prl averages over the padded batch, so its loss depends on the batch);
the RNNs run on the padded batch without sequence packing: a causal RNN never
carries trailing padding back into a valid frame, so packing buys nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import torch
from torch import nn

from speechssl import features
from speechssl.errors import CheckpointError
from speechssl.frames import frames_snip_edges
from speechssl.interface import Features, Upstream, zero_padding
from speechssl.interop import refuse_unreproduced
from speechssl.masking import shift_targets
from speechssl.objective import Objective
from speechssl.registry import register
from upstream.modules.quantizer import GumbelQuantizer

RNNS = {"gru": nn.GRU, "lstm": nn.LSTM}


@dataclass
class APCConfig:
    """APC as s3prl pretrains it: 3 x 512 GRU, residual, dropout 0.1, n = 5."""

    num_mel_bins: int = 80
    cmvn: bool = True
    # s3prl's fbank, set by convert_s3prl (the defaults are ours; see the module doc)
    window: str = "povey"  # a Kaldi window (speechssl.features.KALDI_WINDOWS); s3prl: hamming
    cmvn_eps: float = 1e-5
    cmvn_unbiased: bool = False  # variance over T - 1 frames (s3prl)
    cmvn_eps_on_std: bool = False  # (x - mean) / (std + eps) (s3prl), not / sqrt(var + eps)
    rnn: str = "gru"  # "gru" or "lstm"
    hidden_size: int = 512
    num_layers: int = 3
    dropout: float = 0.1  # on every layer's output, as s3prl
    residual: bool = True  # add a layer's input to its output (layers 2..L)
    n_future: int = 5  # predict frame t + n (s3prl's `task.n_future`)
    # VQ-APC: RNN layers (1-based; negative counts from the top) followed by a VQ layer
    vq_layers: List[int] = field(default_factory=list)
    codebook_size: int = 512
    vq_groups: int = 1
    gumbel_temperature: float = 0.5


@dataclass
class VQAPCConfig(APCConfig):
    """VQ-APC as s3prl pretrains it (``pretrain/vq_apc/config_model.yaml``): one
    512-code group after the last layer, Gumbel temperature 0.5."""

    vq_layers: List[int] = field(default_factory=lambda: [-1])


class APC(Upstream):
    """Unidirectional RNN stack over Kaldi fbank frames (APC, VQ-APC).

    Hidden states (``num_layers + 1``): index 0 is the input features
    ``(B, T, num_mel_bins)``, then each RNN layer's output ``(B, T, hidden_size)``
    after dropout and the residual connection, before any VQ layer. s3prl's
    ``apc`` / ``vq_apc`` upstreams return the same layer outputs in the same
    order without the input features: our ``hidden_states[1:]`` are theirs.
    Extra outputs (VQ-APC): for each VQ layer after RNN layer ``l`` (1-based),
    ``extra["codes_l"]`` ``(B, T, vq_groups)`` int64 code indices in
    ``[0, codebook_size)`` and ``extra["quantized_l"]`` ``(B, T, hidden_size)``,
    the quantized output the next layer (or the postnet) reads.
    Padding frames are zero.
    """

    downsample_rate = features.HOP
    min_samples = features.WINDOW

    def __init__(self, config: APCConfig) -> None:
        super().__init__(config)
        if config.rnn not in RNNS:
            raise ValueError(f"apc: rnn must be one of {', '.join(RNNS)}, got {config.rnn!r}")
        if config.n_future < 1:
            raise ValueError(f"apc: n_future must be >= 1, got {config.n_future}")
        L, H = config.num_layers, config.hidden_size
        self.vq_after = sorted({self._layer_index(l) for l in config.vq_layers})  # 0-based
        sizes = [config.num_mel_bins] + [H] * L
        self.rnns = nn.ModuleList(RNNS[config.rnn](sizes[i], H, batch_first=True) for i in range(L))
        self.dropout = nn.Dropout(config.dropout)
        self.quantizers = nn.ModuleDict(
            {
                str(i + 1): GumbelQuantizer(
                    H, config.codebook_size, config.vq_groups, split_input=True, temperature=config.gumbel_temperature
                )
                for i in self.vq_after
            }
        )

    def _layer_index(self, layer: int) -> int:
        L = self.config.num_layers
        if not (1 <= layer <= L or -L <= layer <= -1):
            raise ValueError(f"apc: vq_layers entry {layer} is not a layer of 1..{L} (or -{L}..-1)")
        return layer - 1 if layer > 0 else L + layer

    @property
    def hidden_sizes(self) -> list[int]:
        return [self.config.num_mel_bins] + [self.config.hidden_size] * self.config.num_layers

    def num_frames(self, wav_lens):
        return frames_snip_edges(wav_lens, features.WINDOW, features.HOP)

    def input_frames(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Checked ``(B, S)`` waveforms -> ``(B, T, num_mel_bins)`` normalised fbank, ``(B,)`` frames."""
        config = self.config
        with torch.no_grad():
            x, lengths = features.fbank(wavs, wav_lens, config.num_mel_bins, window=config.window)
            if config.cmvn:
                x = features.cmvn(x, lengths, eps=config.cmvn_eps, unbiased=config.cmvn_unbiased,
                                  eps_on_std=config.cmvn_eps_on_std)  # fmt: skip
        return x, lengths

    def encoder(self, x: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator | None = None) -> Features:
        """Features ``(B, T, num_mel_bins)``, ``(B,)`` frames -> hidden states and VQ outputs (see class doc).

        Every operation is causal or per-frame, so padding never reaches a valid
        frame; padding frames of the outputs are zeroed. ``generator`` draws the
        Gumbel noise of VQ layers in training.
        """
        if x.dim() != 3 or x.shape[-1] != self.config.num_mel_bins:
            raise ValueError(f"apc: features must be (batch, frame, {self.config.num_mel_bins}), got shape {tuple(x.shape)}")
        states, extra = [x], {}
        h = x
        for i, rnn in enumerate(self.rnns):
            out, _ = rnn(h)  # (B, T, H)
            out = self.dropout(out)
            if self.config.residual and i > 0:
                out = out + h
            states.append(out)
            if str(i + 1) in self.quantizers:
                quantized = self.quantizers[str(i + 1)](out, generator=generator)
                out = quantized.values
                extra[f"codes_{i + 1}"], extra[f"quantized_{i + 1}"] = quantized.codes, out
            h = out
        extra = dict(zip(extra, zero_padding(list(extra.values()), lengths)))
        return Features(zero_padding(states, lengths), lengths, extra)

    def top(self, feats: Features) -> torch.Tensor:
        """``(B, T, H)``: what the postnet reads, the last layer's output or its quantized version."""
        return feats.extra.get(f"quantized_{self.config.num_layers}", feats.hidden_states[-1])


class APCObjective(Objective):
    """L1 between the postnet's prediction at frame ``t`` and frame ``t + n`` (APC eq. 1).

    Averaged over the ``(t, feature)`` pairs with ``t + n`` inside the utterance;
    padding never counts. The postnet (``Linear(hidden_size, num_mel_bins)``,
    s3prl's ``postnet``) lives here. Logs ``l1`` and, for VQ-APC, each VQ layer's
    code perplexity ``ppx_l`` over valid frames (averaged over groups).
    """

    def __init__(self, upstream: APC) -> None:
        super().__init__(upstream)
        self.postnet = nn.Linear(upstream.config.hidden_size, upstream.config.num_mel_bins)

    def forward(self, batch: dict, *, step: int = 0, generator: torch.Generator | None = None):
        """``batch["wavs"]`` (B, S), ``batch["wav_lens"]`` (B,) -> ``(loss, logs)``."""
        x, lengths = self.upstream.front_end(batch["wavs"], batch["wav_lens"])
        return self.loss_on_features(x, lengths, generator)

    def loss_on_features(
        self, x: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Objective on normalised features ``x`` (B, T, D) with ``lengths`` (B,) frames."""
        feats = self.upstream.encoder(x, lengths, generator)
        prediction = self.postnet(self.upstream.top(feats)).float()  # (B, T, D)
        targets, valid = shift_targets(x, lengths, self.upstream.config.n_future)  # (B, T, D), (B, T)
        weights = valid[..., None].to(prediction.dtype)
        count = weights.sum() * x.shape[-1]
        loss = ((prediction - targets).abs() * weights).sum() / count.clamp(min=1.0)
        logs = {"l1": loss.detach()}
        for key, codes in feats.extra.items():
            if key.startswith("codes_"):
                logs[f"ppx_{key[len('codes_'):]}"] = _perplexity(codes, valid, self.upstream.config.codebook_size)
        return loss, logs


def _perplexity(codes: torch.Tensor, valid: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """``exp`` of the entropy of code usage over valid frames, averaged over groups."""
    onehot = torch.nn.functional.one_hot(codes.detach(), codebook_size).float()  # (B, T, G, C)
    weights = valid[..., None, None].float()
    usage = (onehot * weights).sum(dim=(0, 1)) / weights.sum().clamp(min=1.0)  # (G, C)
    entropy = -(usage * torch.log(usage.clamp(min=1e-10))).sum(dim=-1)
    return entropy.exp().mean()


def convert_s3prl(content: dict, overrides: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    """An s3prl APC / VQ-APC checkpoint -> ``(config, state dict)``.

    s3prl's layout: ``config["model"]["paras"]`` (``num_layers``, ``hidden_size``,
    ``dropout``, ``residual``, ``vq``), ``config["data"]["audio"]`` (its fbank: Kaldi's with a
    Hamming window, then CMVN by the unbiased std + 1e-10, which our options reproduce) and the
    weights of its ``APC`` under ``model``. s3prl's VQ layers quantize the last layer's
    output, one per slice of it: our VQ groups. The postnet (the objective's) is left out.
    """
    config, theirs = content.get("config"), content.get("model")
    paras = config.get("model", {}).get("paras") if isinstance(config, dict) else None
    if not isinstance(paras, dict) or not isinstance(theirs, dict) or "rnn_layers.0.weight_ih_l0" not in theirs:
        raise CheckpointError(
            "not an s3prl APC checkpoint (expected config.model.paras and the 'model' weights of its APC); "
            f"found keys {', '.join(map(str, content))}"
        )
    audio = dict(config.get("data", {}).get("audio", {}))
    found = {k: audio.pop(k, v) for k, v in (("feat_type", None), ("frame_length", 25), ("frame_shift", 10), ("dither", 0.0))}
    for key in ("feat_dim", "cmvn", "decode_wav"):  # s3prl's create_transform takes these; the rest go to kaldi.fbank
        found[key] = audio.pop(key, None)
    expected = {"feat_type": "fbank", "frame_length": 25, "frame_shift": 10, "dither": 0.0}
    refuse_unreproduced(found, expected, audio, "s3prl APC audio options")
    L, H = paras["num_layers"], paras["hidden_size"]
    ours = dict(num_mel_bins=theirs["rnn_layers.0.weight_ih_l0"].shape[1], rnn="gru",
                cmvn=found["cmvn"] is None or bool(found["cmvn"]),  # s3prl's default: True
                window="hamming", cmvn_eps=1e-10, cmvn_unbiased=True, cmvn_eps_on_std=True,
                hidden_size=H, num_layers=L, dropout=paras.get("dropout", 0.1), residual=bool(paras.get("residual", True)))  # fmt: skip
    state = {f"rnns.{k[len('rnn_layers.'):]}": v for k, v in theirs.items() if k.startswith("rnn_layers.")}
    vq = paras.get("vq")
    if vq:
        sizes, dims = list(vq["codebook_size"]), list(vq["code_dim"])
        if len(set(sizes)) != 1 or len(set(dims)) != 1:
            raise CheckpointError(f"s3prl VQ layers of unequal sizes {sizes} / code dims {dims} are not supported")
        ours.update(vq_layers=[L], codebook_size=sizes[0], vq_groups=len(sizes), gumbel_temperature=vq.get("gumbel_temperature", 0.5))
        layers = range(len(sizes))
        state[f"quantizers.{L}.logit_weight"] = torch.stack([theirs[f"vq_layers.{g}.vq_logits.weight"].T for g in layers])
        state[f"quantizers.{L}.logit_bias"] = torch.stack([theirs[f"vq_layers.{g}.vq_logits.bias"] for g in layers])
        state[f"quantizers.{L}.codebook"] = torch.stack([theirs[f"vq_layers.{g}.codebook_CxE.weight"].T for g in layers])
    return ours, state


TINY = dict(hidden_size=64, num_layers=2, dropout=0.0)

register("apc", APC, APCConfig, objective=APCObjective, tiny=TINY, converters={"s3prl": convert_s3prl})
register("vq_apc", APC, VQAPCConfig, objective=APCObjective, tiny={**TINY, "codebook_size": 32}, converters={"s3prl": convert_s3prl})
