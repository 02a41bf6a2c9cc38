"""HuBERT: masked prediction of k-means cluster ids (Hsu et al. 2021, arXiv 2106.07447).

The network is wav2vec 2.0's (:mod:`upstream.wav2vec2`: conv feature encoder,
projection, positional-conv Transformer, the same blocks and parameter names);
the objective differs. Spans of the projected conv features are masked (p = 0.8,
10 frames) and replaced by a learned embedding; for each frame the top layer,
projected to ``final_dim``, scores every cluster by its cosine similarity to the
cluster's learned embedding divided by 0.1 (eq. 1 and sec. III-B; fairseq's
``compute_nce`` over all clusters), and the cross entropy against the frame's
cluster id is taken over the masked frames (weight 1) and the unmasked ones
(``unmasked_weight``, 0 in the paper's base recipe), plus the conv feature
penalty (weight 10). The targets are frame labels of the manifest (column
``label_column``, made by ``speechssl cluster``: MFCC clusters for iteration 1,
clusters of a layer of the iteration-1 model for iteration 2), cut with the audio
by the frames rule; frames past an utterance's end are never scored.

Defaults are fairseq's ``hubert_base_librispeech`` recipe; ``num_clusters`` is
100 for iteration 1 and 500 for iteration 2 (``iteration`` picks the default).
The upstream holds exactly torchaudio's ``hubert_base()`` parameters
(94,370,944, as wav2vec 2.0 base); the objective holds the mask embedding, the
projection ``Linear(768, 256)`` and the cluster embeddings ``(K, 256)``, as
torchaudio's ``HuBERTPretrainModel`` (``mask_generator``, ``logit_generator``).

Where we differ from fairseq: the losses are means over the scored frames (fairseq
sums and lets the optimizer divide); the feature penalty is over valid frames;
the first conv layer's group norm ignores padding (:mod:`upstream.modules.conv`);
masks draw from the trainer's generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from speechssl.errors import CheckpointError
from speechssl.interop import fairseq_model_config, fairseq_model_name
from speechssl.objective import LABEL_PAD, Objective
from speechssl.registry import register
from upstream.wav2vec2 import TINY as W2V_TINY
from upstream.wav2vec2 import (
    EncoderConfig,
    Wav2Vec2,
    encoder_config_from_hf,
    encoder_config_from_torchaudio,
    fairseq_encoder_config,
    fairseq_to_torchaudio,
    from_hf,
    from_torchaudio,
    hf_config,
    masked_pass,
    to_hf,
    upstream_state,
)

CLUSTERS_BY_ITERATION = {1: 100, 2: 500}


@dataclass
class HubertConfig(EncoderConfig):
    """HuBERT base (fairseq's ``hubert_base_librispeech``): wav2vec 2.0's encoder and its own objective."""

    iteration: int = 1  # 1: MFCC clusters (K = 100), 2: clusters of an iteration-1 layer (K = 500)
    num_clusters: int = 0  # K; 0: the iteration's (100 or 500)
    label_column: str = "km"  # the manifest column of per-frame cluster ids (speechssl cluster)
    final_dim: int = 256
    logit_temp: float = 0.1
    mask_prob: float = 0.8
    mask_length: int = 10
    min_masks: int = 2
    masked_weight: float = 1.0  # fairseq's pred_masked_weight
    unmasked_weight: float = 0.0  # fairseq's pred_nomask_weight
    feature_penalty_weight: float = 10.0
    feature_grad_mult: float = 0.1

    @property
    def clusters(self) -> int:
        return self.num_clusters or CLUSTERS_BY_ITERATION.get(self.iteration, 0)


class Hubert(Wav2Vec2):
    """HuBERT's network: wav2vec 2.0's, with the same hidden states (see :class:`upstream.wav2vec2.Wav2Vec2`).

    ``hidden_states[0]`` is the first Transformer layer's input, then every layer's
    output: HF's ``HubertModel(output_hidden_states=True)`` and s3prl's ``hubert``
    upstream order (the top after the final LayerNorm of the pre-LN large model).
    """

    def __init__(self, config: HubertConfig) -> None:
        super().__init__(config)
        if config.iteration not in CLUSTERS_BY_ITERATION and not config.num_clusters:
            raise ValueError(f"hubert: iteration must be 1 or 2 (or set num_clusters), got {config.iteration}")
        if config.clusters < 2:
            raise ValueError(f"hubert: num_clusters must be >= 2, got {config.num_clusters}")
        if not 0.0 < config.mask_prob < 1.0 or config.mask_length < 1:
            raise ValueError(f"hubert: need 0 < mask_prob < 1 and mask_length >= 1, got {config.mask_prob}, {config.mask_length}")


class HubertObjective(Objective):
    """Cross entropy of cosine cluster scores at masked (and, weighted, unmasked) frames.

    The batch carries ``config.label_column`` as ``(B, T)`` frame labels, padded with
    :data:`speechssl.objective.LABEL_PAD`. Logs ``loss``, ``masked_loss``,
    ``unmasked_loss``, ``masked_accuracy`` and ``unmasked_accuracy`` (argmax equals
    the label), ``feature_penalty`` and ``masked`` (share of valid frames masked).
    """

    crop = "random"

    def __init__(self, upstream: Hubert) -> None:
        super().__init__(upstream)
        c = upstream.config
        self.frame_labels = (c.label_column,)
        self.mask_embedding = nn.Parameter(torch.empty(c.encoder_dim).uniform_())
        self.final_proj = nn.Linear(c.encoder_dim, c.final_dim)
        self.label_embeddings = nn.Parameter(torch.empty(c.clusters, c.final_dim).uniform_())

    @property
    def skips_parameters(self) -> bool:
        return self.upstream.config.layerdrop > 0

    def logits(self, top: torch.Tensor) -> torch.Tensor:
        """Top-layer states ``(B, T, D)`` -> ``(B, T, K)`` cosine scores / ``logit_temp``, float32."""
        with torch.autocast(top.device.type, enabled=False):
            x = F.normalize(self.final_proj(top.float()), dim=-1, eps=1e-8)
            e = F.normalize(self.label_embeddings.float(), dim=-1, eps=1e-8)
            return x @ e.T / self.upstream.config.logit_temp

    def forward(self, batch: dict, *, step: int = 0, generator: torch.Generator | None = None):
        """``batch["wavs"]``, ``batch["wav_lens"]`` and the frame labels -> ``(loss, logs)``."""
        c = self.upstream.config
        run = masked_pass(self.upstream, self.mask_embedding, batch, generator)
        lengths, valid, mask, top, penalty = run.lengths, run.valid, run.mask, run.top, run.penalty
        T = valid.shape[1]
        labels = batch[c.label_column]  # (B, T_labels)
        if labels.shape[1] < T and bool((labels.shape[1] < lengths).any()):
            raise ValueError(f"hubert: {labels.shape[1]} frame labels for utterances of up to {int(lengths.max())} frames")
        labels = labels[:, :T]
        if labels.shape[1] < T:
            labels = F.pad(labels, (0, T - labels.shape[1]), value=LABEL_PAD)
        scored = valid & (labels != LABEL_PAD)
        if bool(((labels >= c.clusters) & scored).any()):
            raise ValueError(f"hubert: frame labels reach {int(labels.max())}, but num_clusters is {c.clusters}")
        logs, loss = {}, c.feature_penalty_weight * penalty
        for name, where, weight in (("masked", scored & mask, c.masked_weight), ("unmasked", scored & ~mask, c.unmasked_weight)):
            if weight == 0 and name == "unmasked":
                with torch.no_grad():
                    part, correct = self._cross_entropy(top, labels, where)
            else:
                part, correct = self._cross_entropy(top, labels, where)
                loss = loss + weight * part
            logs[f"{name}_loss"] = part.detach()
            logs[f"{name}_accuracy"] = correct.detach()
        logs.update(loss=loss.detach(), feature_penalty=penalty.detach(), masked=(mask.sum() / valid.sum().clamp(min=1)).detach())
        return loss, logs

    def _cross_entropy(self, top, labels, where) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean cross entropy and accuracy over the frames ``where`` (B, T) is True."""
        logits = self.logits(top[where])  # (M, K): only the scored frames
        target = labels[where]
        if target.numel() == 0:
            zero = logits.sum() * 0.0
            return zero, zero.detach()
        return F.cross_entropy(logits, target), (logits.argmax(-1) == target).float().mean()


def from_torchaudio_pretrain(state: dict[str, torch.Tensor], config: HubertConfig) -> dict[str, torch.Tensor]:
    """A torchaudio ``hubert_pretrain_model(...)`` state dict -> our :class:`HubertObjective` state dict."""
    inner = {key[len("wav2vec2."):]: value for key, value in state.items() if key.startswith("wav2vec2.")}
    out = {f"upstream.{key}": value for key, value in from_torchaudio(inner, config).items()}
    out["mask_embedding"] = state["mask_generator.mask_embedding"]
    out["label_embeddings"] = state["logit_generator.label_embeddings"]
    out["final_proj.weight"] = state["logit_generator.final_proj.weight"]
    out["final_proj.bias"] = state["logit_generator.final_proj.bias"]
    return out


def from_hf_hubert(state: dict[str, torch.Tensor], config: HubertConfig) -> dict[str, torch.Tensor]:
    """An HF ``HubertModel`` state dict -> our :class:`Hubert` state dict (the layout of ``Wav2Vec2Model``)."""
    return from_hf(state, config)


def convert_hf(content: dict, overrides: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    """An HF ``HubertModel`` folder -> ``(config, state dict)`` (the clusters are not in it: the config's default)."""
    hf = hf_config(content, "hubert")
    try:
        config = encoder_config_from_hf(hf)
    except AttributeError as e:
        raise CheckpointError(f"HF config.json has no '{e.name}'") from e
    return config, upstream_state(from_hf_hubert(content["state"], HubertConfig(**{**config, **overrides})))


def convert_torchaudio(content: dict, overrides: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    """A torchaudio ``hubert_*`` state dict (the model, or ``hubert_pretrain_model``) -> ``(config, state dict)``."""
    pretraining = "logit_generator.label_embeddings" in content
    encoder = {k[len("wav2vec2."):]: v for k, v in content.items() if k.startswith("wav2vec2.")} if pretraining else content
    config = encoder_config_from_torchaudio(encoder, overrides)
    if pretraining:
        config.update(num_clusters=content["logit_generator.label_embeddings"].shape[0],
                      final_dim=content["logit_generator.final_proj.weight"].shape[0])  # fmt: skip
        state = upstream_state(from_torchaudio_pretrain(content, HubertConfig(**{**config, **overrides})))
    else:
        state = from_torchaudio(encoder, HubertConfig(**{**config, **overrides}))
    return config, state


def convert_fairseq(content: dict, overrides: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    """A fairseq HuBERT checkpoint (``cfg`` / ``args`` + ``model``) -> ``(config, state dict)``."""
    name = fairseq_model_name(content)
    if name != "hubert":
        raise CheckpointError(f"a fairseq checkpoint of a '{name}' model, not hubert")
    c = fairseq_model_config(content)
    config = dict(
        fairseq_encoder_config(c),
        final_dim=c.get("final_dim", 0) or c.get("encoder_embed_dim", 768),
        logit_temp=c.get("logit_temp", 0.1),
        mask_prob=c.get("mask_prob", 0.65),
        mask_length=c.get("mask_length", 10),
        feature_grad_mult=c.get("feature_grad_mult", 1.0),
    )
    if "label_embs_concat" in content["model"]:
        config["num_clusters"] = content["model"]["label_embs_concat"].shape[0]
    state = fairseq_to_torchaudio(content["model"])
    return config, from_torchaudio(state, HubertConfig(**{**config, **overrides}))


def to_hf_hubert(model: Hubert) -> tuple[dict, dict[str, torch.Tensor]]:
    """Our :class:`Hubert` -> an HF ``HubertModel`` config dict and state dict."""
    return to_hf(model, "hubert")


TINY = dict(W2V_TINY, num_clusters=8)
TINY = {k: v for k, v in TINY.items() if k not in ("final_dim", "latent_vars", "num_negatives")} | {"final_dim": 16}

register(
    "hubert",
    Hubert,
    HubertConfig,
    objective=HubertObjective,
    tiny=TINY,
    converters={"fairseq": convert_fairseq, "hf": convert_hf, "torchaudio": convert_torchaudio},
    exporters={"hf": to_hf_hubert},
)
