"""Baseline upstreams: acoustic front-ends with no learned weights (SUPERB's FBANK row).

Each returns one hidden state, the features themselves, at 100 frames a second
(``downsample_rate`` 160). With ``cmvn`` (default) each utterance is normalised
over its own valid frames. Without it the features are local to their frames, so
``speechssl extract`` cuts long inputs into chunks (``chunk_context``); with it a frame
depends on the whole utterance's statistics, and long inputs are taken whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from speechssl import features
from speechssl.frames import frames_centered, frames_snip_edges
from speechssl.interface import Features, Upstream
from speechssl.registry import register


@dataclass
class FbankConfig:
    """SUPERB's FBANK (s3prl ``upstream/baseline``'s ``fbank.yaml``): 80 Kaldi bins with Δ and ΔΔ, 240-d."""

    num_mel_bins: int = 80
    deltas: bool = True  # False: the 80-d log-mel bins alone
    cmvn: bool = True


@dataclass
class MFCCConfig:
    num_ceps: int = 13
    deltas: bool = True  # Δ and ΔΔ: 39-d, the features HuBERT's first iteration clusters
    cmvn: bool = True


@dataclass
class MelConfig:
    n_mels: int = 80
    cmvn: bool = True


class _FrontEnd(Upstream):
    downsample_rate = features.HOP

    @property
    def chunk_context(self) -> int | None:
        """A frame's window and the Δ/ΔΔ windows (±2 frames each) fit well within 0.1 s each side;
        CMVN's statistics span the whole utterance."""
        return None if self.config.cmvn else 1600

    def acoustic_features(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The front-end's ``(B, T, D)`` features before CMVN, ``(B,)`` frames."""
        raise NotImplementedError

    def input_frames(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats, lengths = self.acoustic_features(wavs, wav_lens)  # (B, T, D)
        if self.config.cmvn:
            feats = features.cmvn(feats, lengths)
        return feats, lengths

    def encoder(self, x: torch.Tensor, lengths: torch.Tensor) -> Features:
        """No encoder: the one hidden state is the front-end's output."""
        return Features([x], lengths)


class Fbank(_FrontEnd):
    """Kaldi log-mel filterbank (:func:`speechssl.features.fbank`), Kaldi framing, with Δ and ΔΔ
    (:func:`speechssl.features.compute_deltas`, torchaudio's) unless ``deltas=False``."""

    min_samples = features.WINDOW

    @property
    def hidden_sizes(self) -> list[int]:
        return [self.config.num_mel_bins * (3 if self.config.deltas else 1)]

    def num_frames(self, wav_lens):
        return frames_snip_edges(wav_lens, features.WINDOW, features.HOP)

    def acoustic_features(self, wavs, wav_lens):
        x, lengths = features.fbank(wavs, wav_lens, self.config.num_mel_bins)
        if self.config.deltas:
            d1 = features.compute_deltas(x, lengths)
            x = torch.cat([x, d1, features.compute_deltas(d1, lengths)], dim=-1)  # (B, T, 3 * bins)
        return x, lengths


class MFCC(_FrontEnd):
    """Kaldi MFCC with Δ and ΔΔ (:func:`speechssl.features.mfcc`), Kaldi framing."""

    min_samples = features.WINDOW

    @property
    def hidden_sizes(self) -> list[int]:
        return [self.config.num_ceps * (3 if self.config.deltas else 1)]

    def num_frames(self, wav_lens):
        return frames_snip_edges(wav_lens, features.WINDOW, features.HOP)

    def acoustic_features(self, wavs, wav_lens):
        return features.mfcc(wavs, wav_lens, self.config.num_ceps, deltas=self.config.deltas)


class Mel(_FrontEnd):
    """librosa-compatible log-mel (:func:`speechssl.features.log_mel`), centred frames."""

    min_samples = 1

    @property
    def hidden_sizes(self) -> list[int]:
        return [self.config.n_mels]

    def num_frames(self, wav_lens):
        return frames_centered(wav_lens, features.HOP)

    def acoustic_features(self, wavs, wav_lens):
        return features.log_mel(wavs, wav_lens, self.config.n_mels)


register("fbank", Fbank, FbankConfig)
register("mfcc", MFCC, MFCCConfig)
register("mel", Mel, MelConfig)
