"""Frame counts: one rule per stride family, used by every front-end and upstream.

Each function maps a number of samples (an ``int`` or an int64 tensor of any
shape) to the number of output frames, with the same type. Nothing else in the
code base recomputes a frame count by hand.

- :func:`frames_snip_edges`: windows that lie wholly inside the signal (Kaldi's
  ``snip_edges=True``, a ``Conv1d`` without padding). 0 frames below one window.
- :func:`frames_centered`: windows centred on every ``hop``-th sample with the
  signal zero-padded by half a window on both sides (``torch.stft(center=True)``,
  librosa's default).
- :func:`frames_conv_stack`: a stack of unpadded strided convolutions (the
  wav2vec 2.0 / CPC feature encoders): :func:`frames_snip_edges` applied layer by layer.
"""

from __future__ import annotations

from typing import Sequence, TypeVar

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


def frames_conv_stack(num_samples: N, layers: Sequence[tuple[int, int]]) -> N:
    """Frames after unpadded convolutions given as ``(kernel, stride)`` pairs."""
    for kernel, stride in layers:
        num_samples = frames_snip_edges(num_samples, kernel, stride)
    return num_samples


def receptive_field(layers: Sequence[tuple[int, int]]) -> int:
    """Samples one output frame of a convolution stack sees (the minimum input for one frame)."""
    field, jump = 1, 1
    for kernel, stride in layers:
        field += (kernel - 1) * jump
        jump *= stride
    return field
