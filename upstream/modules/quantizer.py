"""Vector quantizers of frames: Gumbel-softmax product quantization and k-means VQ.

:class:`GumbelQuantizer` serves VQ-APC (Chung et al. 2020, sec. 2.2), wav2vec 2.0
(Baevski et al. 2020, sec. 2 and 3.2) and vq-wav2vec's Gumbel variant (Baevski
et al. 2019, sec. 3.1): ``G`` groups (codebooks) of ``V`` entries; each frame
picks one entry per group (Gumbel-max sampling with a straight-through gradient
when training, the argmax otherwise), and the entries chosen are concatenated.
Where a group's logits come from:

- ``split_input=False`` (wav2vec 2.0, vq-wav2vec): one ``Linear(D, G*V)`` of the
  whole frame (fairseq's ``GumbelVectorQuantizer.weight_proj``);
- ``split_input=True`` (VQ-APC): group ``g`` reads its own ``D/G`` features
  (s3prl's ``upstream/apc/vq.py`` ``VQLayer`` per group).

vq-wav2vec's recipe adds two options: ``depth=2`` puts a hidden layer
``Linear(D, 2D)`` and an activation before the logits (fairseq's
``weight_proj_depth`` with ``weight_proj_factor=2``), and ``combine_groups=True``
gives the groups one shared codebook of ``V`` entries (fairseq's ``combine_groups``).

The temperature anneals per optimizer step, ``max(t_max * decay**step, t_min)``
(fairseq's ``curr_temp``), from the ``step`` the objective is called with; a
constant temperature is ``t_max = t_min``.

:class:`KmeansQuantizer` is vq-wav2vec's k-means variant (sec. 3.2; van den Oord
et al. 2017): the nearest codebook entry per group in Euclidean distance, a
straight-through gradient to the input, and the codebook and commitment losses.

Both return :class:`Quantized`, with code usage measured over the valid frames
only (padding never counts): the perplexity of the hard codes, and for the
Gumbel quantizer the perplexity of the mean softmax, whose shortfall from
``G*V`` is wav2vec 2.0's diversity loss (eq. 4).

Where we differ from fairseq and s3prl: the Gumbel noise is drawn from an
explicit ``torch.Generator``; usage statistics exclude padding frames (fairseq
counts the whole padded batch, HF only the masked frames).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}  # of GumbelQuantizer's hidden layers (depth > 1)


@dataclass
class Quantized:
    """What a quantizer returns for ``(B, T, D)`` frames.

    values: ``(B, T, G * code_dim)`` the chosen entries, concatenated over groups
        (gradients reach the input by the straight-through estimator).
    codes: ``(B, T, G)`` int64 code ids in ``[0, V)``.
    code_perplexity: scalar, ``sum_g exp(H(hard code usage of group g))`` over valid frames.
    prob_perplexity: scalar, ``sum_g exp(H(mean softmax of group g))`` (Gumbel), or
        the code perplexity (k-means, which has no probabilities).
    loss: scalar auxiliary loss: the diversity loss ``(G*V - prob_perplexity) / (G*V)``
        (Gumbel) or the codebook + ``gamma`` x commitment loss (k-means).
    temperature: the Gumbel temperature used (0 for k-means).
    """

    values: torch.Tensor
    codes: torch.Tensor
    code_perplexity: torch.Tensor
    prob_perplexity: torch.Tensor
    loss: torch.Tensor
    temperature: float = 0.0


def _perplexity(probs: torch.Tensor) -> torch.Tensor:
    """``(G, V)`` distributions -> ``sum_g exp(-sum_v p log p)`` (fairseq's perplexity, eps 1e-7)."""
    return torch.exp(-(probs * torch.log(probs + 1e-7)).sum(-1)).sum()


def _masked_mean(x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """``x`` (B, T, G, V), ``valid`` (B, T) bool -> (G, V): mean over the valid frames."""
    if valid is None:
        return x.flatten(0, 1).mean(0)
    weights = valid.to(x.dtype)
    return torch.einsum("btgv,bt->gv", x, weights) / weights.sum().clamp(min=1)


class GumbelQuantizer(nn.Module):
    """``(B, T, D)`` -> :class:`Quantized` with ``G`` groups of ``V`` entries of ``code_dim``.

    Parameters: ``logit_weight`` (G, D_in, V) and ``logit_bias`` (G, V), where
    ``D_in`` is ``D`` (``split_input=False``) or ``D/G``; ``codebook`` (G, V, code_dim).
    ``init="uniform"``: ``nn.Linear``'s default for the logits and ``U(-1/sqrt(V), 1/sqrt(V))``
    for the codebook (s3prl's VQ-APC); ``init="wav2vec2"``: logits weight ``N(0, 1)``,
    bias 0, codebook ``U(0, 1)`` (fairseq's and HF's).

    ``depth > 1`` (``split_input=False`` only): ``depth - 1`` hidden layers ``hidden``
    (``Linear`` then ``activation``, ``"relu"`` or ``"gelu"``) of ``2 D`` features before
    the logits, so ``D_in = 2 D``; these and the logits then take ``nn.Linear``'s default
    initialisation under either ``init`` (fairseq initialises ``N(0, 1)`` only a one-layer
    projection). ``combine_groups=True``: ``codebook`` is (1, V, code_dim), shared by the groups.
    """

    def __init__(
        self,
        dim: int,
        num_codes: int,
        groups: int = 1,
        code_dim: int | None = None,
        *,
        split_input: bool = False,
        temperature: tuple[float, float, float] | float = 0.5,
        init: str = "uniform",
        depth: int = 1,
        activation: str = "relu",
        combine_groups: bool = False,
    ) -> None:
        super().__init__()
        if split_input and dim % groups:
            raise ValueError(f"GumbelQuantizer: {dim} features do not split into {groups} groups")
        if depth < 1 or (depth > 1 and split_input):
            raise ValueError(f"GumbelQuantizer: depth must be >= 1, and 1 with split_input, got {depth}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"GumbelQuantizer: activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        if isinstance(temperature, (int, float)):
            temperature = (float(temperature), float(temperature), 1.0)
        t_max, t_min, decay = (float(t) for t in temperature)
        if not 0 < t_min <= t_max or not 0 < decay <= 1:
            raise ValueError(
                f"GumbelQuantizer: temperature must be (max, min, decay) with 0 < min <= max, 0 < decay <= 1, "
                f"got {tuple(temperature)}"
            )
        if init not in ("uniform", "wav2vec2"):
            raise ValueError(f"GumbelQuantizer: init must be 'uniform' or 'wav2vec2', got {init!r}")
        self.groups, self.num_codes, self.split_input = groups, num_codes, split_input
        self.schedule = (t_max, t_min, decay)
        d_in = dim // groups if split_input else dim
        self.hidden = None
        if depth > 1:  # fairseq's weight_proj blocks: Linear(D, 2D), activation, Linear(2D, 2D), ...
            self.hidden = nn.Sequential(
                *(
                    layer
                    for i in range(depth - 1)
                    for layer in (nn.Linear(dim if i == 0 else 2 * dim, 2 * dim), ACTIVATIONS[activation]())
                )
            )
            d_in = 2 * dim
        self.code_dim = code_dim if code_dim is not None else dim // groups
        self.logit_weight = nn.Parameter(torch.empty(groups, d_in, num_codes))
        self.logit_bias = nn.Parameter(torch.empty(groups, num_codes))
        self.codebook = nn.Parameter(torch.empty(1 if combine_groups else groups, num_codes, self.code_dim))
        if depth > 1:
            bound = 1 / math.sqrt(d_in)  # nn.Linear's default for the logit layer
            nn.init.uniform_(self.logit_weight, -bound, bound)
            nn.init.uniform_(self.logit_bias, -bound, bound)
            if init == "uniform":
                nn.init.uniform_(self.codebook, -1 / math.sqrt(num_codes), 1 / math.sqrt(num_codes))
            else:
                nn.init.uniform_(self.codebook)
        elif init == "uniform":
            bound = 1 / math.sqrt(d_in)  # nn.Linear's default, per group
            nn.init.uniform_(self.logit_weight, -bound, bound)
            nn.init.uniform_(self.logit_bias, -bound, bound)
            bound = 1 / math.sqrt(num_codes)
            nn.init.uniform_(self.codebook, -bound, bound)
        else:
            nn.init.normal_(self.logit_weight, 0.0, 1.0)
            nn.init.zeros_(self.logit_bias)
            nn.init.uniform_(self.codebook)

    @property
    def output_dim(self) -> int:
        return self.groups * self.code_dim

    def temperature(self, step: int) -> float:
        """The Gumbel temperature at optimizer step ``step``: ``max(t_max * decay**step, t_min)``."""
        t_max, t_min, decay = self.schedule
        return max(t_max * decay ** max(int(step), 0), t_min)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, T, D) -> ``(B, T, G, V)`` code logits."""
        if self.hidden is not None:
            x = self.hidden(x)  # (B, T, 2D)
        B, T, D = x.shape
        if self.split_input:
            return torch.einsum("btgd,gdv->btgv", x.view(B, T, self.groups, -1), self.logit_weight) + self.logit_bias
        weight = self.logit_weight.permute(1, 0, 2).reshape(D, -1)  # (D, G*V)
        return (x @ weight).view(B, T, self.groups, self.num_codes) + self.logit_bias

    def forward(
        self,
        x: torch.Tensor,
        valid: torch.Tensor | None = None,
        *,
        step: int = 0,
        generator: torch.Generator | None = None,
    ) -> Quantized:
        """``x`` (B, T, D), ``valid`` (B, T) bool (None: every frame) -> :class:`Quantized`."""
        B, T, _ = x.shape
        logits = self.logits(x)  # (B, T, G, V)
        hard_codes = logits.argmax(dim=-1)  # (B, T, G)
        hard = F.one_hot(hard_codes, self.num_codes).to(logits.dtype)
        code_perplexity = _perplexity(_masked_mean(hard.float(), valid))
        prob_perplexity = _perplexity(_masked_mean(logits.float().softmax(dim=-1), valid))
        temperature = self.temperature(step)
        if self.training:
            uniform = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
            gumbel = -torch.log((-torch.log(uniform.clamp(min=1e-10))).clamp(min=1e-10))  # Gumbel(0, 1)
            soft = F.softmax((logits + gumbel) / temperature, dim=-1)
            codes = soft.argmax(dim=-1)  # (B, T, G)
            onehot = F.one_hot(codes, self.num_codes).to(soft.dtype) - soft.detach() + soft  # straight-through
        else:
            codes, onehot = hard_codes, hard
        codebook = self.codebook.expand(self.groups, -1, -1)  # (G, V, code_dim), shared when combine_groups
        values = torch.einsum("btgv,gvd->btgd", onehot, codebook.to(onehot.dtype)).reshape(B, T, -1)
        total = self.groups * self.num_codes
        diversity = (total - prob_perplexity) / total
        return Quantized(values, codes, code_perplexity, prob_perplexity, diversity, temperature)


class KmeansQuantizer(nn.Module):
    """``(B, T, D)`` -> :class:`Quantized`: the nearest of ``V`` entries per group of ``D/G`` features.

    The codebook ``(V, G, D/G)`` is vq-wav2vec's ``embedding`` (``init_scale * N(0, 1)``
    at initialisation: fairseq's is ``0.01``); with ``combine_groups=True`` it is
    ``(V, 1, D/G)``, one set of entries shared by the groups (fairseq's ``combine_groups``).
    ``values`` is the chosen entries with the input's gradient
    (straight-through: ``z_q + z - sg(z)``); ``loss`` is
    ``||sg(z) - z_q||^2 + gamma ||z - sg(z_q)||^2``, mean-squared over the valid
    frames' features (eq. 2 of vq-wav2vec, fairseq's ``gamma = 0.25``).
    """

    def __init__(
        self,
        dim: int,
        num_codes: int,
        groups: int = 1,
        gamma: float = 0.25,
        *,
        combine_groups: bool = False,
        init_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if dim % groups:
            raise ValueError(f"KmeansQuantizer: {dim} features do not split into {groups} groups")
        self.groups, self.num_codes, self.gamma = groups, num_codes, gamma
        self.code_dim = dim // groups
        self.codebook = nn.Parameter(init_scale * torch.randn(num_codes, 1 if combine_groups else groups, self.code_dim))

    @property
    def output_dim(self) -> int:
        return self.groups * self.code_dim

    def forward(
        self,
        x: torch.Tensor,
        valid: torch.Tensor | None = None,
        *,
        step: int = 0,
        generator: torch.Generator | None = None,
    ) -> Quantized:
        """``x`` (B, T, D), ``valid`` (B, T) bool (None: every frame) -> :class:`Quantized`."""
        B, T, D = x.shape
        z = x.view(B, T, self.groups, self.code_dim)  # (B, T, G, d)
        codebook = self.codebook.to(z.dtype).expand(-1, self.groups, -1).transpose(0, 1)  # (G, V, d)
        # ||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2, the ||z||^2 term is constant per frame
        scores = 2 * torch.einsum("btgd,gvd->btgv", z, codebook) - (codebook**2).sum(-1)  # (B, T, G, V)
        codes = scores.argmax(dim=-1)  # (B, T, G): nearest entry
        zq = codebook[torch.arange(self.groups, device=x.device), codes]  # (B, T, G, d)
        weights = (valid if valid is not None else torch.ones(B, T, dtype=torch.bool, device=x.device)).to(z.dtype)
        count = weights.sum().clamp(min=1) * D

        def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return (((a - b) ** 2).sum(dim=(2, 3)) * weights).sum() / count

        loss = mse(zq, z.detach()) + self.gamma * mse(z, zq.detach())
        values = (zq.detach() + z - z.detach()).reshape(B, T, D)
        usage = _masked_mean(F.one_hot(codes, self.num_codes).float(), valid)
        perplexity = _perplexity(usage)
        return Quantized(values, codes, perplexity, perplexity, loss)
