"""SUPERB SD: speaker diarization as frame-level speaker activity, scored by DER with pyannote.metrics.

Each conversation's RTTM (the manifest column ``rttm``: a file of ``SPEAKER <file> <chan>
<start s> <duration s> ...`` lines; those of other files are ignored, so one RTTM may
hold a whole split, as a Kaldi data folder has it) becomes a ``(frames, speakers)`` 0/1
matrix at the upstream's frame rate: frame ``t`` is active for a speaker when its centre
``(t + 0.5) / frame_rate`` lies in one of the speaker's turns. Speakers are numbered by
first turn; a conversation may hold up to ``max_speakers``.

The head (as s3prl's ``diarization`` recipe): a recurrent layer over the frames (here
our padded :class:`~downstream.heads.BiLSTM`), then one sigmoid output per speaker slot.
The loss is permutation-invariant binary cross entropy (Yu et al., 2017; Fujita et al.,
2019): per conversation the least BCE over every assignment of the reference speakers to
the output slots, padding never scored. A prediction is a slot active where its
probability exceeds 0.5, after an optional median filter over time, turned into segments
at frame boundaries; DER is pyannote.metrics' ``DiarizationErrorRate`` with a collar of 0
and overlapped speech scored (SUPERB's setting), over each conversation's whole duration.
A conversation's outcome is its error time (confusion + missed + false alarm) and its
reference speech time, so the corpus DER is their ratio exactly.
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from downstream.heads import BiLSTM
from downstream.task import Metric, Task, TaskConfig, register_task
from speechssl.bootstrap import Ratio
from speechssl.errors import ConfigError
from speechssl.interface import lengths_to_mask

SAMPLE_RATE = 16000


@dataclass
class SDConfig(TaskConfig):
    max_speakers: int = 3  # output slots; SUPERB-lite conversations have 2-3 speakers (Libri2Mix: 2)
    hidden: int = 256  # BiLSTM size per direction
    lstm_layers: int = 1
    median_filter: int = 1  # frames; 1: none
    threshold: float = 0.5


def read_rttm(path: str | Path, file_id: str) -> list[tuple[str, float, float]]:
    """``(speaker, start s, end s)`` of ``file_id``'s ``SPEAKER`` lines of an RTTM, in file order."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such RTTM (the reference turns of {file_id})")
    turns = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0] != "SPEAKER":
            continue
        if len(fields) < 8:
            raise ConfigError(f"{path}:{number}: an RTTM SPEAKER line has 10 fields, found {len(fields)}")
        if fields[1] != file_id:
            continue
        try:
            start, duration = float(fields[3]), float(fields[4])
        except ValueError:
            raise ConfigError(f"{path}:{number}: start and duration should be seconds, found {fields[3:5]}") from None
        turns.append((fields[7], start, start + duration))
    return turns


def activity(turns: list[tuple[str, float, float]], speakers: list[str], frames: int,
             frame_rate: float) -> torch.Tensor:
    """``(frames, len(speakers))`` 0/1: a frame is active when its centre lies in a turn of the speaker."""
    centres = (torch.arange(frames, dtype=torch.float64) + 0.5) / frame_rate
    labels = torch.zeros(frames, len(speakers))
    for speaker, start, end in turns:
        k = speakers.index(speaker)
        labels[(centres >= start) & (centres < end), k] = 1.0
    return labels


def permutation_invariant_bce(logits: torch.Tensor, labels: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean over conversations of the least BCE over slot permutations; ``(B, T, S)`` logits and labels."""
    B, T, S = logits.shape
    perms = torch.tensor(list(itertools.permutations(range(S))), device=logits.device)  # (P, S)
    permuted = labels[:, :, perms].permute(0, 2, 1, 3)  # (B, P, T, S): reference speaker perm[s] in slot s
    bce = F.binary_cross_entropy_with_logits(logits[:, None].expand_as(permuted), permuted, reduction="none")
    valid = lengths_to_mask(lengths, T)[:, None, :, None].to(bce.dtype)  # (B, 1, T, 1)
    per_perm = (bce * valid).sum(dim=(2, 3)) / (lengths.clamp(min=1)[:, None] * S).to(bce.dtype)  # (B, P)
    return per_perm.min(dim=1).values.mean()


def median_filter(active: np.ndarray, width: int) -> np.ndarray:
    """Median over ``width`` frames (odd) of each column of a 0/1 ``(T, S)`` matrix, edges padded by repetition."""
    if width <= 1:
        return active
    half = width // 2
    padded = np.pad(active, ((half, half), (0, 0)), mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, width, axis=0)  # (T, S, width)
    return (windows.sum(axis=-1) > half).astype(active.dtype)


def annotation_of_activity(active: np.ndarray, frame_rate: float):
    """A pyannote ``Annotation``: each run of active frames of slot ``k`` a segment of label ``k``."""
    from pyannote.core import Annotation, Segment

    hypothesis = Annotation()
    for k in range(active.shape[1]):
        column = np.concatenate([[0], active[:, k].astype(np.int8), [0]])
        edges = np.flatnonzero(np.diff(column))
        for start, end in zip(edges[::2], edges[1::2]):
            hypothesis[Segment(start / frame_rate, end / frame_rate), f"slot{k}"] = f"slot{k}"
    return hypothesis


def annotation_of_turns(turns: list[tuple[str, float, float]]):
    from pyannote.core import Annotation, Segment

    reference = Annotation()
    for i, (speaker, start, end) in enumerate(turns):
        reference[Segment(start, end), i] = speaker
    return reference


def der_components(reference, hypothesis, duration: float) -> dict[str, float]:
    """pyannote's DER components of one conversation over ``[0, duration]``: collar 0, overlap scored."""
    from pyannote.core import Segment, Timeline
    from pyannote.metrics.diarization import DiarizationErrorRate

    metric = DiarizationErrorRate(collar=0.0, skip_overlap=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        details = metric(reference, hypothesis, uem=Timeline([Segment(0.0, duration)]), detailed=True)
    errors = details["confusion"] + details["missed detection"] + details["false alarm"]
    return {"errors": float(errors), "speech": float(details["total"])}


class DiarizationHead(nn.Module):
    def __init__(self, input_dim: int, config: SDConfig) -> None:
        super().__init__()
        self.lstm = BiLSTM(input_dim, config.hidden, config.lstm_layers)
        self.output = nn.Linear(2 * config.hidden, config.max_speakers)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``(B, T, D)`` -> ``(B, T, max_speakers)`` activity logits."""
        return self.output(self.lstm(x, lengths))


@register_task
class SpeakerDiarization(Task):
    """SUPERB SD: frame-level speaker activity, permutation-invariant BCE, DER (pyannote.metrics)."""

    name = "sd"
    order = 9
    Config = SDConfig
    columns = ("rttm",)
    metric = "der"
    metrics = {"der": Metric("DER", higher_is_better=False)}
    ratios = {"der": Ratio("errors", "speech")}

    def fit(self, rows: list[dict]) -> None:
        self.check_rows(rows, "the training set")

    def state(self) -> dict:
        return {"max_speakers": self.config.max_speakers, "frame_rate": self.frame_rate}

    def turns(self, row: dict) -> list[tuple[str, float, float]]:
        return read_rttm(row["rttm"], row["id"])

    def encode(self, row: dict) -> torch.Tensor:
        turns = self.turns(row)
        speakers = list(dict.fromkeys(s for s, _, _ in turns))
        if len(speakers) > self.config.max_speakers:
            raise ConfigError(f"{row['rttm']}: {row['id']} has {len(speakers)} speakers; task 'sd' has "
                              f"task.max_speakers={self.config.max_speakers} output slots")
        frames = int(np.ceil(row["num_samples"] / SAMPLE_RATE * self.frame_rate))
        labels = activity(turns, speakers, frames, self.frame_rate)
        return F.pad(labels, (0, self.config.max_speakers - len(speakers)))

    def collate(self, labels: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"activity": nn.utils.rnn.pad_sequence(labels, batch_first=True)}  # (B, T, S)

    def head(self, input_dim: int) -> nn.Module:
        return DiarizationHead(input_dim, self.config)

    def loss(self, head, x, lengths, labels):
        logits = head(x, lengths).float()
        reference = _fit_frames(labels["activity"], logits.shape[1])
        return permutation_invariant_bce(logits, reference, lengths), {}

    def predict(self, head, x, lengths) -> list:
        probabilities = torch.sigmoid(head(x, lengths).float()).cpu().numpy()
        active = probabilities > self.config.threshold
        return [median_filter(a[:n].astype(np.int8), self.config.median_filter)
                for a, n in zip(active, lengths.tolist())]

    def references(self, rows: list[dict]) -> list:
        return [(self.turns(r), r["num_samples"] / SAMPLE_RATE) for r in rows]

    def outcomes(self, predictions: list, references: list) -> list[dict]:
        return [der_components(annotation_of_turns(turns), annotation_of_activity(active, self.frame_rate), duration)
                for active, (turns, duration) in zip(predictions, references)]

    def chance(self, train_rows: list[dict], test_rows: list[dict]) -> float:
        """DER of answering "one speaker talks throughout" for every test conversation."""
        outcomes = []
        for row in test_rows:
            duration = row["num_samples"] / SAMPLE_RATE
            frames = max(1, int(np.ceil(duration * (self.frame_rate or 100.0))))
            everyone = np.ones((frames, 1), dtype=np.int8)
            outcomes.append(der_components(annotation_of_turns(self.turns(row)),
                                           annotation_of_activity(everyone, frames / duration), duration))
        return self.ratios["der"](outcomes)


def _fit_frames(labels: torch.Tensor, frames: int) -> torch.Tensor:
    """Labels ``(B, T', S)`` cut or zero-padded to the features' ``frames`` (rounding of the frame count)."""
    if labels.shape[1] >= frames:
        return labels[:, :frames]
    return F.pad(labels, (0, 0, 0, frames - labels.shape[1]))
