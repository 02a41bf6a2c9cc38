"""Pretraining data: utterances of a manifest (or a folder), cut to ``data.max_seconds``.

The data config owns the crop (:class:`CropConfig`): an utterance longer than
``max_seconds`` is cut to it, from its start (``crop=first``) or from a random
frame (``crop=random``, as fairseq crops wav2vec 2.0 and HuBERT batches). A
random offset is a pure function of ``(seed, epoch, index)``, like the batch
order, so a killed run resumes with the same crops, with or without workers.
Manifest rows keep their columns; frame-label columns are cut in step with the
audio by :func:`speechssl.frames.crop_frame_labels`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from tqdm import tqdm

from speechssl.data.audio import find_audio, load_audio, resampled_length
from speechssl.data.manifest import read_manifest
from speechssl.errors import AudioError, ConfigError
from speechssl.frames import crop_frame_labels

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
CROPS = ("first", "random")
ON_ERROR = ("raise", "skip")


@dataclass
class CropConfig:
    """How pretraining cuts long utterances (``data.max_seconds``, ``data.crop``) and what it
    does with unusable ones (``data.on_error``, see :func:`check_utterances`)."""

    max_seconds: Optional[float] = 15.0  # null: never cut
    crop: Optional[str] = None  # first | random; null: the objective's own choice (Objective.crop)
    on_error: str = "raise"  # raise | skip: an utterance whose audio is missing, unreadable or too short

    def check(self) -> None:
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise ConfigError(f"data.max_seconds={self.max_seconds}; expected seconds > 0 or null")
        if self.crop is not None and self.crop not in CROPS:
            raise ConfigError(f"data.crop={self.crop!r}; expected one of {', '.join(CROPS)}")
        if self.on_error not in ON_ERROR:
            raise ConfigError(f"data.on_error={self.on_error!r}; expected one of {', '.join(ON_ERROR)}")


@dataclass
class Utterance:
    id: str
    path: Path
    num_samples: int  # at 16 kHz
    offset: int = 0  # first sample of the utterance in its file (a manifest's ``offset`` column)
    columns: dict[str, str] = field(default_factory=dict)  # the manifest's other columns


@dataclass(frozen=True)
class FrameRule:
    """An upstream's frames: ``hop`` samples apart, ``num_frames(samples) -> frames`` (an int for an int)."""

    hop: int
    num_frames: Callable[[int], int]


class AudioDataset(torch.utils.data.Dataset):
    """Waveforms of ``utterances``, each cut to at most ``max_samples``.

    ``dataset.item(i, epoch)`` is a dict: ``id``, ``wav`` (1-D float32), ``crop_offset``
    (the cut's first sample within the utterance), every column in ``columns`` as a
    string, and each of ``frame_labels`` as an int64 tensor of the cut's frames.
    Random offsets are multiples of the frame hop, so frame labels stay aligned.
    ``dataset[i]`` is ``item(i, epoch=0)``. An objective's ``collate`` makes batches.
    """

    def __init__(
        self,
        utterances: list[Utterance],
        max_samples: int | None = None,
        *,
        crop: str = "first",
        seed: int = 0,
        columns: tuple[str, ...] = (),
        frame_labels: tuple[str, ...] = (),
        frames: FrameRule | None = None,
    ) -> None:
        if not utterances:
            raise ConfigError("the training set is empty")
        if crop not in CROPS:
            raise ConfigError(f"crop={crop!r}; expected one of {', '.join(CROPS)}")
        if frame_labels and frames is None:
            raise ValueError("frame labels need the upstream's frame rule")
        self.utterances, self.max_samples, self.crop, self.seed = utterances, max_samples, crop, seed
        self.columns, self.frame_labels, self.frames = tuple(columns), tuple(frame_labels), frames
        self.skipped: list[tuple[str, str]] = []  # (path, reason) of utterances check_utterances left out

    def __len__(self) -> int:
        return len(self.utterances)

    def num_samples(self) -> list[int]:
        """Length of each item as served (after the cut), for the batch sampler."""
        cap = self.max_samples or max(u.num_samples for u in self.utterances)
        return [min(u.num_samples, cap) for u in self.utterances]

    def window(self, index: int, epoch: int) -> tuple[int, int]:
        """``(offset, samples)`` of utterance ``index``'s cut in ``epoch``: a pure function of (seed, epoch, index)."""
        n = self.utterances[index].num_samples
        if self.max_samples is None or n <= self.max_samples:
            return 0, n
        if self.crop == "first":
            return 0, self.max_samples
        hop = self.frames.hop if self.frames is not None else 1
        choices = (n - self.max_samples) // hop + 1
        draw = np.random.default_rng([self.seed, epoch, index]).integers(choices)
        return int(draw) * hop, self.max_samples

    def item(self, index: int, epoch: int) -> dict:
        u = self.utterances[index]
        offset, samples = self.window(index, epoch)
        wav = load_audio(u.path)[u.offset + offset : u.offset + offset + samples]
        item = {"id": u.id, "wav": wav, "crop_offset": offset}
        for column in self.columns:
            item[column] = u.columns[column]
        for column in self.frame_labels:
            labels = torch.tensor([int(v) for v in u.columns[column].split()], dtype=torch.long)
            try:
                item[column] = crop_frame_labels(labels, offset, len(wav), self.frames.hop, self.frames.num_frames)
            except ValueError as e:
                raise ConfigError(f"{u.path} ({u.id}): column '{column}': {e}") from None
        return item

    def __getitem__(self, index: int) -> dict:
        return self.item(index, epoch=0)

    def for_model(self, upstream, objective, crop: CropConfig, seed: int) -> "AudioDataset":
        """This dataset as ``objective`` (on ``upstream``) trains on it: cut by ``crop``, with
        the columns the objective asks for, less the utterances too short for the upstream."""
        crop.check()
        wanted = tuple(dict.fromkeys((*objective.columns, *objective.frame_labels)))
        missing = [c for c in wanted if c not in self.utterances[0].columns]
        if missing:
            raise ConfigError(
                f"{type(objective).__name__} needs manifest column(s) {', '.join(missing)}; the training set "
                f"has {', '.join(self.utterances[0].columns) or 'none besides id, path, num_samples'}"
            )
        kept, skipped = check_utterances(self.utterances, upstream, crop.on_error)
        if not kept and all(upstream.too_short(u.num_samples) for u in self.utterances):
            raise ConfigError(f"every utterance of the training set is {upstream.too_short(0)}")
        if not kept:
            raise ConfigError(f"data.on_error=skip left out every utterance of the training set, e.g. {skipped[0][1]}")
        dataset = replace_dataset(
            self,
            utterances=kept,
            max_samples=int(crop.max_seconds * SAMPLE_RATE) if crop.max_seconds else None,
            crop=crop.crop or objective.crop,
            seed=seed,
            columns=tuple(c for c in objective.columns if c not in objective.frame_labels),
            frame_labels=tuple(objective.frame_labels),
            frames=FrameRule(upstream.downsample_rate, upstream.num_frames),
        )
        dataset.skipped = skipped
        return dataset

    @classmethod
    def from_folder(cls, root: str | Path, max_samples: int | None = None) -> "AudioDataset":
        """Every audio file under ``root`` (recursive); lengths read from the headers.

        A file whose header cannot be read gets length 0 here; :meth:`for_model` then
        reports it (or leaves it out) by :func:`check_utterances`."""
        return cls([Utterance(utt_id, path, _header_length(path)) for utt_id, path in find_audio(root)], max_samples)

    @classmethod
    def from_manifest(cls, path: str | Path, max_samples: int | None = None) -> "AudioDataset":
        """The utterances of a TSV manifest (:mod:`speechssl.data.manifest`), with all their columns."""
        utterances = []
        for row in read_manifest(path):
            columns = {k: v for k, v in row.items() if k not in ("id", "path", "num_samples", "offset")}
            offset = int(row.get("offset") or 0)
            utterances.append(Utterance(row["id"], Path(row["path"]), row["num_samples"], offset, columns))
        return cls(utterances, max_samples)


def _header_length(path: Path) -> int:
    try:
        return resampled_length(path)
    except AudioError:
        return 0


def check_utterances(
    utterances: list[Utterance], upstream, on_error: str = "raise"
) -> tuple[list[Utterance], list[tuple[str, str]]]:
    """``(usable utterances, [(path, reason)] of the others)``, from each file's header alone.

    Unusable: a file missing, empty or undecodable, a WAV shorter than its header says,
    or fewer samples than the manifest lists. ``on_error="raise"``: the first is an
    :class:`AudioError` naming the file; ``"skip"``: each is logged and left out (never
    replaced by silence). An utterance too short for ``upstream``'s receptive field is
    left out either way, with a warning: a crop cannot make it usable.
    """
    kept, skipped, short = [], [], []
    for u in tqdm(utterances, desc="check audio", unit="file", disable=len(utterances) < 2000):
        problem = _audio_problem(u)
        if problem is None:
            (short if upstream.too_short(u.num_samples) else kept).append(u)
        elif on_error == "raise":
            raise AudioError(
                f"{problem} (utterance {u.id}); fix or remove it, or set data.on_error=skip to leave such files out"
            )
        else:
            log.warning("left out: %s (utterance %s)", problem, u.id)
            skipped.append((str(u.path), problem))
    if skipped:
        log.warning("data.on_error=skip: %d of %d utterance(s) left out", len(skipped), len(utterances))
    if short:
        log.warning(
            "%d utterance(s) left out, %s: e.g. %s", len(short), upstream.too_short(short[0].num_samples),
            ", ".join(str(u.path) for u in short[:3]),
        )
        skipped += [(str(u.path), f"{u.path}: {u.num_samples} samples, {upstream.too_short(u.num_samples)}")
                    for u in short]
    return kept, skipped


def _audio_problem(u: Utterance) -> str | None:
    """Why utterance ``u``'s audio cannot be read as listed (from its header), or None."""
    try:
        frames = resampled_length(u.path)
    except AudioError as e:
        return str(e)
    if u.offset + u.num_samples > frames + 1:  # + 1: resampled lengths round
        return f"{u.path}: {frames} samples, but the manifest lists {u.num_samples} from sample {u.offset}"
    return None


def replace_dataset(dataset: AudioDataset, **changes) -> AudioDataset:
    """A copy of ``dataset`` with some of its constructor arguments changed."""
    args = dict(
        utterances=dataset.utterances, max_samples=dataset.max_samples, crop=dataset.crop, seed=dataset.seed,
        columns=dataset.columns, frame_labels=dataset.frame_labels, frames=dataset.frames,
    )
    args.update(changes)
    utterances = args.pop("utterances")
    return AudioDataset(utterances, **args)
