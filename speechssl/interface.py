"""The shared feature interface: every upstream answers ``model(wavs, wav_lens) -> Features``.

>>> feats = model(wavs, wav_lens)       # wavs (B, S) float32 at 16 kHz, wav_lens (B,) samples
>>> feats.hidden_states                 # list of (B, T, D): index 0 the encoder input, last the top
>>> feats.lengths                       # (B,) valid frames of each utterance

An utterance's features never depend on the rest of its batch: :class:`Upstream`
zeroes the padding of the waveforms before any model sees them, and every model
masks padding from there on. A :class:`Featurizer` turns the hidden states into
the one ``(B, T, D)`` tensor a downstream head sees.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from speechssl.data.audio import SAMPLE_RATE
from speechssl.errors import AudioError, ConfigError

log = logging.getLogger(__name__)


def lengths_to_mask(lengths: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """``(B,)`` lengths -> ``(B, max_len)`` bool mask, True on valid positions."""
    if max_len is None:
        max_len = int(lengths.max()) if lengths.numel() else 0
    positions = torch.arange(max_len, device=lengths.device)
    return positions[None, :] < lengths[:, None]


@dataclass
class Features:
    """What an upstream returns.

    hidden_states: list of ``(B, T, D_l)`` tensors; index 0 is the encoder's input
        (e.g. projected conv features), the last is the top layer.
    lengths: ``(B,)`` int64, valid frames of each utterance; frames past it are padding.
    extra: model-specific outputs (a pooled embedding, quantizer codes), each
        documented by the model class that fills it. Those of shape ``(B, D)`` that the
        upstream lists in ``Upstream.extra_sizes`` are per-utterance outputs: the feature
        cache stores them and utterance-level tasks can train on one
        (``speechssl benchmark featurizer.source=embedding``) instead of the hidden states.
    """

    hidden_states: list[torch.Tensor]
    lengths: torch.Tensor
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def last(self) -> torch.Tensor:
        return self.hidden_states[-1]


class Upstream(nn.Module):
    """Base class of every upstream model: a front-end, then an encoder.

    The seam, as torchaudio separates ``feature_extractor`` and ``encoder``::

        x, lengths = model.front_end(wavs, wav_lens)   # checked, padding zeroed, input frames (once)
        feats = model.encoder(x, lengths)              # Features: hidden states, lengths, extra
        feats = model(wavs, wav_lens)                  # encode(): the two composed

    A pretraining objective composes them itself, with masking or targets in
    between. A subclass sets ``downsample_rate`` (samples per frame) and
    ``min_samples`` (the shortest input that yields one frame: its receptive
    field), implements ``hidden_sizes``, :meth:`num_frames` with a rule from
    :mod:`speechssl.frames`, :meth:`input_frames` (the model's own front-end on
    checked waveforms: a filterbank, a learned conv stack) and :meth:`encoder`
    (which zeroes the padding frames of every hidden state it returns).
    """

    name: str = ""  # set by speechssl.registry.register
    downsample_rate: int
    min_samples: int
    # Samples of input each side of a frame beyond which its output no longer changes: with
    # it, ``speechssl extract`` cuts a long input into chunks overlapping by that much and
    # gets the frames of the whole input. None (the default): outputs depend on the whole
    # input (attention over all frames, recurrence, utterance normalisation), so a long input
    # is taken whole, up to extract's ``max_seconds``.
    chunk_context: int | None = None

    def __init__(self, config) -> None:
        super().__init__()
        self.config = config

    @property
    def hidden_sizes(self) -> list[int]:
        raise NotImplementedError

    @property
    def frame_rate(self) -> float:
        """Frames per second of the hidden states (16 kHz input)."""
        return SAMPLE_RATE / self.downsample_rate

    @property
    def extra_sizes(self) -> dict[str, int]:
        """Per-utterance outputs in ``Features.extra`` (each ``(B, D)``, e.g. DeLoRes's pooled
        ``embedding``) and their sizes. The feature cache stores them beside the hidden states,
        and ``speechssl benchmark featurizer.source=NAME`` trains utterance-level heads on one."""
        return {}

    @property
    def num_layers(self) -> int:
        """Number of hidden states (the encoder input counts as one)."""
        return len(self.hidden_sizes)

    def num_frames(self, wav_lens: torch.Tensor) -> torch.Tensor:
        """``(B,)`` samples -> ``(B,)`` frames."""
        raise NotImplementedError

    def input_frames(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Checked ``(B, S)`` waveforms with zero padding -> the encoder's input ``(B, T, D)``, ``(B,)`` frames."""
        raise NotImplementedError

    def encoder(self, x: torch.Tensor, lengths: torch.Tensor) -> Features:
        """The encoder's input ``(B, T, D)`` and ``(B,)`` frames -> :class:`Features` with zero padding."""
        raise NotImplementedError

    def front_end(self, wavs: torch.Tensor, wav_lens: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``wavs`` (B, S) or (S,) float at 16 kHz, ``wav_lens`` (B,) samples (None: full length)
        -> the encoder's input ``(B, T, D)`` and ``(B,)`` frames. Checks the inputs and zeroes
        the padding of the waveforms first, so no model sees what lies past an utterance's end."""
        wavs, wav_lens = self.check_inputs(wavs, wav_lens)
        wavs = wavs.masked_fill(~lengths_to_mask(wav_lens, wavs.shape[1]), 0.0)
        return self.input_frames(wavs, wav_lens)

    def encode(self, wavs: torch.Tensor, wav_lens: torch.Tensor | None = None) -> Features:
        """:meth:`front_end`, then :meth:`encoder`."""
        return self.encoder(*self.front_end(wavs, wav_lens))

    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor | None = None) -> Features:
        """``wavs`` (B, S) or (S,) float at 16 kHz; ``wav_lens`` (B,) samples, or None for full length."""
        return self.encode(wavs, wav_lens)

    def too_short(self, num_samples: int) -> str | None:
        """Why an input of ``num_samples`` samples yields no frame, or None if it yields one.

        The one receptive-field rule: :meth:`check_inputs`, extraction, the feature
        cache and the pretraining data all ask it before any work.
        """
        if num_samples >= self.min_samples:
            return None
        return f"shorter than {self.name}'s receptive field of {self.min_samples} samples"

    def check_inputs(
        self, wavs: torch.Tensor, wav_lens: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if wavs.dim() == 1:
            wavs = wavs[None]
        if wavs.dim() != 2:
            raise ValueError(f"{self.name}: wavs must be (batch, samples), got shape {tuple(wavs.shape)}")
        if not wavs.is_floating_point():
            raise ValueError(f"{self.name}: wavs must be float at 16 kHz in [-1, 1], got {wavs.dtype}")
        if wav_lens is None:
            wav_lens = torch.full((wavs.shape[0],), wavs.shape[1], dtype=torch.long)
        wav_lens = torch.as_tensor(wav_lens, device=wavs.device).long()
        if wav_lens.shape != (wavs.shape[0],):
            raise ValueError(
                f"{self.name}: wav_lens must be ({wavs.shape[0]},), got shape {tuple(wav_lens.shape)}"
            )
        # One host read per batch, at the API boundary: a clip too short for the
        # model's receptive field would otherwise give 0 frames and NaN downstream.
        shortest, longest = torch.aminmax(wav_lens)
        if int(longest) > wavs.shape[1]:
            raise ValueError(f"{self.name}: wav_lens max {int(longest)} > {wavs.shape[1]} samples in wavs")
        problem = self.too_short(int(shortest))
        if problem:
            raise AudioError(f"{self.name}: an utterance has {int(shortest)} samples, {problem}")
        return wavs, wav_lens


def zero_padding(states: Sequence[torch.Tensor], lengths: torch.Tensor) -> list[torch.Tensor]:
    """Each ``(B, T, ...)`` tensor with the frames past ``lengths`` set to zero."""
    if not states:
        return []
    valid = lengths_to_mask(lengths, states[0].shape[1])
    return [h.masked_fill(~valid.view(*valid.shape, *([1] * (h.dim() - 2))), 0) for h in states]


class Featurizer(nn.Module):
    """Hidden states -> one ``(B, T, D)`` tensor for a downstream head.

    layer="weighted": SUPERB's learnable sum, ``sum_l softmax(w)_l * h_l`` with
        ``w`` initialised to zeros (all layers equal); with ``layer_norm=True``
        each state is first normalised over D (no affine), as s3prl's option does.
        Only states of the top layer's size take part (APC's input features do not).
    layer=int: that hidden state (negative counts from the top); "last": the top.

    ``normalize=True``: each hidden state that takes part is first standardised per
    dimension with fixed statistics of the training set (:meth:`set_statistics`,
    buffers saved with the head), so that upstreams whose features differ in scale
    (APC's hidden states have a std of 0.35-0.47, fbank's 1) train with one learning rate.

    ``upstream`` is an :class:`Upstream` or the list of its hidden sizes (enough
    when features come from a cache).
    """

    def __init__(
        self,
        upstream: Upstream | Sequence[int],
        layer: str | int = "weighted",
        layer_norm: bool = False,
        normalize: bool = False,
    ) -> None:
        super().__init__()
        sizes = list(upstream.hidden_sizes if isinstance(upstream, Upstream) else upstream)
        if not sizes:
            raise ConfigError("Featurizer: the upstream has no hidden states")
        self.num_layers = len(sizes)
        self.layer_norm = layer_norm
        if layer == "last":
            layer = self.num_layers - 1
        if layer == "weighted":
            # States of another size than the top (APC's 80-d input features under
            # 512-d RNN layers) cannot be summed with it: they get no weight.
            self.used = [i for i, d in enumerate(sizes) if d == sizes[-1]]
            if len(self.used) < self.num_layers:
                log.info(
                    "Featurizer: weighted sum over hidden states %s; %s have another size than the top (%d)",
                    self.used, sorted(set(range(self.num_layers)) - set(self.used)), sizes[-1],
                )
            self.layer = None
            self.weights = nn.Parameter(torch.zeros(len(self.used)))
            self.output_size = sizes[-1]
        elif isinstance(layer, int) and not isinstance(layer, bool):
            if not -self.num_layers <= layer < self.num_layers:
                raise ConfigError(
                    f"Featurizer: layer {layer} out of range for {self.num_layers} hidden states"
                )
            self.layer = layer % self.num_layers
            self.output_size = sizes[self.layer]
        else:
            raise ConfigError(f"Featurizer: layer must be 'weighted', 'last' or an int, got {layer!r}")
        self.normalize = normalize
        if normalize:  # (states taking part, D): identity until set_statistics
            self.register_buffer("means", torch.zeros(len(self.states()), self.output_size))
            self.register_buffer("stds", torch.ones(len(self.states()), self.output_size))

    def states(self) -> list[int]:
        """Indices of the hidden states that take part."""
        return self.used if self.layer is None else [self.layer]

    def set_statistics(self, means: torch.Tensor, stds: torch.Tensor) -> None:
        """Per-dimension ``(L_used, D)`` means and standard deviations of the states that take part."""
        if not self.normalize:
            raise ConfigError("Featurizer: statistics set without normalize=True")
        self.means.copy_(means)
        self.stds.copy_(stds.clamp(min=1e-5))

    def layer_weights(self) -> torch.Tensor:
        """``(L,)`` softmax-normalised weights over all hidden states (one-hot for a fixed layer)."""
        if self.layer is not None:
            return F.one_hot(torch.tensor(self.layer), self.num_layers).float()
        full = torch.zeros(self.num_layers)
        full[self.used] = torch.softmax(self.weights.detach().cpu(), dim=0)
        return full

    def forward(
        self, feats: Features | Sequence[torch.Tensor], lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (or hidden states and lengths) -> ``(B, T, D)`` with zero padding, ``(B,)`` lengths."""
        if isinstance(feats, Features):
            hidden_states, lengths = feats.hidden_states, feats.lengths
        else:
            hidden_states = list(feats)
        if lengths is None:
            raise ValueError("Featurizer: lengths are required with a list of hidden states")
        if len(hidden_states) != self.num_layers:
            raise ValueError(
                f"Featurizer: expected {self.num_layers} hidden states, got {len(hidden_states)}"
            )
        if self.layer is not None:
            x = self._normalise(hidden_states[self.layer], 0)
        else:
            stacked = torch.stack([self._normalise(hidden_states[i], k) for k, i in enumerate(self.used)])  # (L, B, T, D)
            weights = torch.softmax(self.weights, dim=0).to(stacked.dtype)
            x = torch.einsum("l,lbtd->btd", weights, stacked)
        return zero_padding([x], lengths)[0], lengths

    def _normalise(self, h: torch.Tensor, k: int) -> torch.Tensor:
        """State ``h`` (B, T, D), the ``k``-th taking part, standardised and layer-normed as configured."""
        if self.normalize:
            h = (h - self.means[k].to(h.dtype)) / self.stds[k].to(h.dtype)
        return F.layer_norm(h, h.shape[-1:]) if self.layer_norm else h
