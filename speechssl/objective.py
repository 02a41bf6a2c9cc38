"""The one training protocol: ``objective(batch, *, step, generator) -> (loss, logs)``.

Pretraining objectives and downstream models both answer it, and the trainer
knows nothing else about what it trains. ``batch`` is the dict the objective's
own :meth:`Objective.collate` made; ``step`` is the optimizer step about to be
taken (0-based; under gradient accumulation every micro-batch of one update
sees the same step), for schedules inside an objective such as wav2vec 2.0's
Gumbel temperature; ``generator`` is the trainer's, for every random draw
(masks, negatives, noise), so that a resumed run repeats them.

A pretraining objective also says how its batch is made, as class attributes:

- ``columns``: manifest columns each item carries, as strings (a speaker, a text);
- ``frame_labels``: those of ``columns`` that hold one integer label per frame of
  the upstream (space separated, HuBERT's cluster ids). They are cropped with
  the audio by :func:`speechssl.frames.crop_frame_labels`;
- ``crop``: ``"first"`` or ``"random"``, how a long utterance is cut to
  ``data.max_seconds`` when the data config does not say;
- ``skips_parameters``: True when a forward may leave some parameters without a
  gradient (LayerDrop), so that distributed training looks for them.

The default :meth:`Objective.collate` pads the waveforms (``wavs`` (B, S),
``wav_lens`` (B,)), pads each frame-label column to ``(B, T)`` with
:data:`LABEL_PAD` (``label_lens`` (B,) gives the valid frames), and keeps the
other columns as lists.
"""

from __future__ import annotations

import torch
from torch import nn

from speechssl.data.audio import collate as collate_waveforms

LABEL_PAD = -100  # frame labels past an utterance's end (torch's cross_entropy ignore_index)


class Objective(nn.Module):
    """Base class of a pretraining objective: an upstream and whatever heads its loss needs."""

    columns: tuple[str, ...] = ()
    frame_labels: tuple[str, ...] = ()
    crop: str = "first"
    skips_parameters: bool = False

    def __init__(self, upstream: nn.Module) -> None:
        super().__init__()
        self.upstream = upstream

    def forward(
        self, batch: dict, *, step: int = 0, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(scalar loss, {name: detached scalar})`` of one batch."""
        raise NotImplementedError

    def collate(self, items: list[dict]) -> dict:
        """Items of :class:`speechssl.data.dataset.AudioDataset` -> the batch :meth:`forward` takes."""
        return collate_items(items, self.frame_labels)


def collate_items(items: list[dict], frame_labels: tuple[str, ...] = ()) -> dict:
    """The default batch: padded waveforms, padded frame labels, other columns as lists."""
    wavs, wav_lens = collate_waveforms([item["wav"] for item in items])
    batch: dict = {"wavs": wavs, "wav_lens": wav_lens, "ids": [item["id"] for item in items]}
    for column in frame_labels:
        labels = [item[column] for item in items]
        batch[column] = nn.utils.rnn.pad_sequence(labels, batch_first=True, padding_value=LABEL_PAD)  # (B, T)
        batch["label_lens"] = torch.tensor([len(y) for y in labels])
    for key in items[0]:
        if key not in batch and key not in ("wav", "id") and key not in frame_labels:
            batch[key] = [item[key] for item in items]
    return batch
