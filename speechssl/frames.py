"""Frame counts: one rule per stride family, used by every front-end and upstream.

Each function maps a number of samples (an ``int`` or an int64 tensor of any
shape) to the number of output frames, with the same type. Nothing else in the
code base recomputes a frame count by hand.

- :func:`frames_snip_edges`: windows that lie wholly inside the signal (Kaldi's
  ``snip_edges=True``, a ``Conv1d`` without padding). 0 frames below one window.
- :func:`frames_centered`: windows centred on every ``hop``-th sample with the
  signal zero-padded by half a window on both sides (``torch.stft(center=True)``,
  librosa's default).
- :func:`frames_conv_stack`: a stack of strided convolutions (the wav2vec 2.0 /
  CPC feature encoders), each unpadded or zero-padded on both sides:
  :func:`frames_snip_edges` applied layer by layer to the padded length.

:func:`crop_frame_labels` is the one rule that cuts frame labels in step with a
cut of the audio; :func:`resample_frame_labels` the one that moves frame labels
from one frame rate to another (k-means targets from 10 ms MFCC frames onto a
20 ms model).
"""

from __future__ import annotations

from typing import Callable, Sequence, TypeVar

import torch

N = TypeVar("N", int, torch.Tensor)


def frames_snip_edges(num_samples: N, window: int, hop: int) -> N:
    """``max(0, (S - window) // hop + 1)`` frames of whole windows."""
    if isinstance(num_samples, torch.Tensor):
        return torch.clamp(torch.div(num_samples - window, hop, rounding_mode="floor") + 1, min=0)
    return max(0, (num_samples - window) // hop + 1)


def frames_centered(num_samples: N, hop: int) -> N:
    """``S // hop + 1`` frames centred on samples 0, hop, 2*hop, ..."""
    if isinstance(num_samples, torch.Tensor):
        return torch.div(num_samples, hop, rounding_mode="floor") + 1
    return num_samples // hop + 1


def frames_conv_stack(num_samples: N, layers: Sequence[Sequence[int]]) -> N:
    """Frames after convolutions given as ``(kernel, stride)`` or ``(kernel, stride, padding)``;
    ``padding`` zeros on each side of a layer's input (0 when not given)."""
    for kernel, stride, *padding in layers:
        num_samples = frames_snip_edges(num_samples + 2 * (padding[0] if padding else 0), kernel, stride)
    return num_samples


def receptive_field(layers: Sequence[Sequence[int]]) -> int:
    """The shortest input that gives one output frame of a convolution stack (its minimum input).

    For unpadded layers this is the samples one output frame sees; padding lowers it.
    """
    need = 1
    for kernel, stride, *padding in reversed(layers):
        need = max(1, (need - 1) * stride + kernel - 2 * (padding[0] if padding else 0))
    return need


def crop_frame_labels(
    labels: torch.Tensor, offset: int, num_samples: int, hop: int, num_frames: Callable[[int], int]
) -> torch.Tensor:
    """The frame labels of samples ``[offset, offset + num_samples)`` of an utterance.

    ``labels`` (T,) has one label per frame of the whole utterance under the
    model's frame rule ``num_frames`` (samples -> frames) with ``hop`` samples per
    frame. ``offset`` must be a multiple of ``hop``: frame ``t`` of the cut then
    covers the samples of frame ``offset // hop + t`` of the whole, for every rule
    above (snipped, centred, conv stacks whose total stride is ``hop``), so the
    cut's labels are ``labels[offset // hop :][: num_frames(num_samples)]``.
    Raises ``ValueError`` if ``labels`` is too short for the cut.
    """
    if offset % hop:
        raise ValueError(f"crop offset {offset} is not a multiple of the frame hop {hop}")
    start, count = offset // hop, int(num_frames(num_samples))
    if start + count > len(labels):
        raise ValueError(
            f"{len(labels)} frame labels, but samples [{offset}, {offset + num_samples}) need frames "
            f"[{start}, {start + count})"
        )
    return labels[start : start + count]


def resample_frame_labels(labels: torch.Tensor, num_frames: int, hop: int, label_hop: int) -> torch.Tensor:
    """``num_frames`` labels at ``hop`` samples per frame from ``labels`` (T,) at ``label_hop``.

    Frame ``t`` takes label ``round(t * hop / label_hop)`` (halves round up), the
    last label where that index runs past the end: fairseq HuBERT's subsampling of
    ``label_rate`` targets to the feature rate (``hubert.py``, ``forward_targets``,
    which truncates instead of rounding; the two agree for integer ratios such as
    MFCC's 160 onto 320 samples). Both frame rules are taken to start at sample 0
    with the same window, as the snipped MFCC and the conv stacks do (both see
    400 samples a frame); frames of other windows are off by the windows'
    difference in centres. Raises ``ValueError`` for no labels and ``num_frames > 0``.
    """
    if num_frames > 0 and len(labels) == 0:
        raise ValueError(f"no frame labels to resample to {num_frames} frames")
    t = torch.arange(num_frames, device=labels.device)
    index = torch.div(2 * t * hop + label_hop, 2 * label_hop, rounding_mode="floor")  # round(t * hop / label_hop)
    return labels[index.clamp(max=max(len(labels) - 1, 0))]
