"""Gumbel-softmax vector quantization of frames (VQ-APC, Chung et al. 2020, sec. 2.2).

Each frame's ``D`` features are split into ``G`` groups of ``D / G``; a linear
layer maps a group to logits over ``C`` codes, one code is chosen (Gumbel-max
sampling with a straight-through gradient when training, the argmax otherwise),
and the group is replaced by that code's ``D / G``-dimensional embedding. The
parameters are those of s3prl's ``upstream/apc/vq.py`` ``VQLayer`` per group
(logits ``Linear(D/G, C)``, codebook ``Linear(C, D/G, bias=False)``).

Where we differ from s3prl: the Gumbel noise is drawn from an explicit
``torch.Generator``, and code usage is returned (as codes) instead of being
accumulated in a NumPy counter inside the module.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class GumbelVQ(nn.Module):
    """``(B, T, D)`` -> quantized ``(B, T, D)`` and codes ``(B, T, G)`` int64 in ``[0, C)``."""

    def __init__(self, dim: int, codebook_size: int, groups: int = 1, temperature: float = 0.5) -> None:
        super().__init__()
        if dim % groups:
            raise ValueError(f"GumbelVQ: {dim} features do not split into {groups} groups")
        if temperature <= 0:
            raise ValueError(f"GumbelVQ: temperature must be > 0, got {temperature}")
        d = dim // groups
        self.groups, self.codebook_size, self.temperature = groups, codebook_size, temperature
        bound = 1 / math.sqrt(d)  # nn.Linear's default initialisation, per group
        self.logit_weight = nn.Parameter(torch.empty(groups, d, codebook_size).uniform_(-bound, bound))
        self.logit_bias = nn.Parameter(torch.empty(groups, codebook_size).uniform_(-bound, bound))
        bound = 1 / math.sqrt(codebook_size)
        self.codebook = nn.Parameter(torch.empty(groups, codebook_size, d).uniform_(-bound, bound))

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (B, T, D) -> quantized (B, T, D), codes (B, T, G)."""
        B, T, D = x.shape
        x = x.view(B, T, self.groups, D // self.groups)  # (B, T, G, d)
        logits = torch.einsum("btgd,gdc->btgc", x, self.logit_weight) + self.logit_bias  # (B, T, G, C)
        if self.training:
            uniform = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
            gumbel = -torch.log((-torch.log(uniform.clamp(min=1e-10))).clamp(min=1e-10))  # Gumbel(0, 1)
            soft = F.softmax((logits + gumbel) / self.temperature, dim=-1)
            codes = soft.argmax(dim=-1)  # (B, T, G)
            hard = F.one_hot(codes, self.codebook_size).to(soft.dtype)
            onehot = hard - soft.detach() + soft  # straight-through estimator
        else:
            codes = logits.argmax(dim=-1)
            onehot = F.one_hot(codes, self.codebook_size).to(logits.dtype)
        quantized = torch.einsum("btgc,gcd->btgd", onehot, self.codebook)  # (B, T, G, d)
        return quantized.reshape(B, T, D), codes
