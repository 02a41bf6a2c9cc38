"""Small test signals and models shared by the upstream tests (imported by the test files)."""

import math

import torch

from speechssl.registry import build_upstream, get_entry


def tiny(name, **overrides):
    """Upstream ``name`` at its registered test size, seeded."""
    torch.manual_seed(0)
    return build_upstream(name, **{**get_entry(name).tiny, **overrides})


def tones(B=4, seconds=1.0, seed=0):
    """Harmonic tones with random f0 and a slow amplitude envelope: (B, S)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(16000 * seconds)) / 16000
    f0 = 100 + 200 * torch.rand(B, 1, generator=g)
    wav = sum(torch.sin(2 * math.pi * k * f0 * t) / k for k in range(1, 6))
    envelope = 0.5 + 0.5 * torch.sin(2 * math.pi * 3 * t + 6 * torch.rand(B, 1, generator=g))
    return 0.1 * wav * envelope
