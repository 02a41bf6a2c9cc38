"""Datasets of audio utterances for training: a list of files with their lengths."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from speechssl.data.audio import collate, find_audio, load_audio, resampled_length
from speechssl.data.manifest import read_manifest
from speechssl.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class Utterance:
    id: str
    path: Path
    num_samples: int  # at 16 kHz


class AudioDataset(torch.utils.data.Dataset):
    """Waveforms of ``utterances``, cut to at most ``max_samples`` (the first samples).

    ``dataset[i]`` is a 1-D float32 tensor; :func:`collate_batch` makes the
    ``{"wavs", "wav_lens"}`` batch every pretraining objective takes.
    """

    def __init__(self, utterances: list[Utterance], max_samples: int | None = None) -> None:
        if not utterances:
            raise ConfigError("the training set is empty")
        self.utterances = utterances
        self.max_samples = max_samples

    def __len__(self) -> int:
        return len(self.utterances)

    def num_samples(self) -> list[int]:
        """Length of each item as served (after the cut), for the batch sampler."""
        cap = self.max_samples or max(u.num_samples for u in self.utterances)
        return [min(u.num_samples, cap) for u in self.utterances]

    def __getitem__(self, i: int) -> torch.Tensor:
        wav = load_audio(self.utterances[i].path)
        return wav[: self.max_samples] if self.max_samples else wav

    def without_shorter_than(self, min_samples: int) -> "AudioDataset":
        """The same dataset less the utterances under ``min_samples`` (too short for a model's receptive field)."""
        kept = [u for u in self.utterances if u.num_samples >= min_samples]
        if len(kept) == len(self.utterances):
            return self
        dropped = [u for u in self.utterances if u.num_samples < min_samples]
        log.warning(
            "%d utterance(s) shorter than %d samples left out (the model's receptive field), e.g. %s",
            len(dropped), min_samples, ", ".join(str(u.path) for u in dropped[:3]),
        )
        if not kept:
            raise ConfigError(f"every utterance of the training set is shorter than {min_samples} samples")
        return AudioDataset(kept, self.max_samples)

    @classmethod
    def from_folder(cls, root: str | Path, max_samples: int | None = None) -> "AudioDataset":
        """Every audio file under ``root`` (recursive); lengths read from the headers."""
        utterances = []
        for utt_id, path in find_audio(root):
            utterances.append(Utterance(utt_id, path, resampled_length(path)))
        return cls(utterances, max_samples)

    @classmethod
    def from_manifest(cls, path: str | Path, max_samples: int | None = None) -> "AudioDataset":
        """The utterances of a TSV manifest (:mod:`speechssl.data.manifest`)."""
        rows = read_manifest(path)
        return cls([Utterance(r["id"], Path(r["path"]), r["num_samples"]) for r in rows], max_samples)


def collate_batch(wavs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    batch, lens = collate(wavs)
    return {"wavs": batch, "wav_lens": lens}
