"""Vectorized masking and sampling for self-supervised speech objectives.

Everything here is tensor code on the device of its inputs: no Python loop over
the batch, no NumPy, no host read (``.item()``, ``.tolist()``, ``.cpu()``) once
the frame count ``T`` is known. Every random draw takes an explicit
``torch.Generator`` (``None`` means the default generator of the device).

- :func:`span_mask`: wav2vec 2.0 / HuBERT masked spans (fairseq's
  ``compute_mask_indices``, static span length, overlap allowed).
- :func:`frame_mask`: Mockingjay / TERA masked acoustic model input
  (consecutive frames with the 80/10/10 policy, channel blocks, noise).
- :func:`sample_negatives`: distractors for contrastive losses (wav2vec 2.0,
  CPC, vq-wav2vec), drawn from the same utterance; :func:`negative_indices` the
  draw alone.
- :func:`masked_positions`: the frames of a mask, packed to the front of each row.
- :func:`shift_targets`: n-step-ahead targets for APC and CPC.
- :func:`lengths_to_mask` (from :mod:`speechssl.interface`): ``(B,)`` lengths to a ``(B, T)`` validity mask.

Shapes: ``B`` batch, ``T`` frames, ``D`` features, ``K`` spans, ``N`` negatives.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from speechssl.interface import lengths_to_mask

# Probability, per utterance, that the fast start sampler sees fewer distinct
# starts than it needs. The planner picks the number of draws so that a
# Chernoff bound on it stays below this; above the cap it uses the exact
# random-keys path instead.
_MAX_SHORTFALL = 1e-12
_MAX_DRAWS_FACTOR = 4


def span_mask(
    lengths: Tensor,
    mask_prob: float,
    span: int,
    *,
    max_len: int | None = None,
    min_masks: int = 0,
    same_count: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """wav2vec 2.0 / HuBERT span mask (fairseq ``compute_mask_indices``, static spans).

    Each utterance of length ``L`` masks ``num_spans = int(mask_prob * L / span + U[0, 1))``
    spans (at least ``min_masks``) of ``span`` frames. Their starts are drawn uniformly
    without replacement among the ``L - span + 1`` starts whose span fits in the
    utterance, so spans may overlap but never reach padding. An utterance shorter than
    ``span`` gets no span, and ``num_spans`` is capped at the number of valid starts.

    How: each row draws a few more starts than it can need, with replacement, and keeps
    its first ``num_spans`` distinct ones (sequential draws rejecting repeats are exactly
    sampling without replacement). The number of draws is planned on the host from
    ``(mask_prob, span, T, min_masks)`` so that a row runs short with probability below
    1e-12; where that would take too many draws (most starts chosen), random keys and
    ``topk`` over all starts are used instead.

    Where we differ from fairseq, deliberately: fairseq draws starts from
    ``0 .. L - span - 1`` (one start fewer, so the last frame is never masked) and,
    when more spans are asked for than fit, shortens them. The expected masked
    fractions differ by at most 0.005 for lengths 50..1500, ``mask_prob`` up to 0.8
    and ``span`` up to 10 (largest at length 50).

    ``same_count=True`` gives every utterance of the batch the same number of masked
    frames: ``c = min_b`` of the frames masked by the ordinary draw (the count fairseq's
    ``require_same_masks`` keeps). fairseq reaches it by unmasking random frames of
    the other utterances, which cuts spans into pieces; here each utterance instead
    lays ``c // span`` non-overlapping whole spans at uniformly random places, one of
    them extended by ``c % span`` frames (two overlapping spans), so every masked run
    is still made of whole spans. Spans then never overlap, unlike the ordinary draw.

    Args:
        lengths: ``(B,)`` integer tensor of valid frames.
        mask_prob: expected share of frames chosen as span starts times ``span``.
        span: frames per span, ``>= 1``.
        max_len: ``T``; ``None`` reads ``lengths.max()`` (one host sync: pass it in a hot loop).
        min_masks: least number of spans per utterance (if it fits).
        same_count: equal masked-frame count across the batch (see above).
        generator: source of randomness.

    Returns:
        ``(B, T)`` bool on ``lengths.device``, True where a frame is masked.
    """
    _check_lengths(lengths)
    if span < 1:
        raise ValueError(f"span must be >= 1, got {span}")
    if not 0.0 <= mask_prob <= 1.0:
        raise ValueError(f"mask_prob must be in [0, 1], got {mask_prob}")
    if min_masks < 0:
        raise ValueError(f"min_masks must be >= 0, got {min_masks}")
    T = _max_len(lengths, max_len)
    starts, keep = _span_starts(lengths, mask_prob, span, T, min_masks, generator)
    mask = _spans_to_mask(starts, keep, span, T)
    if same_count:
        mask = _same_count_mask(mask, lengths, span, T, generator)
    return mask


def frame_mask(
    x: Tensor,
    lengths: Tensor,
    *,
    mask_prob: float = 0.15,
    span: int = 7,
    policy: Sequence[float] = (0.8, 0.1, 0.1),
    channel_width: int = 0,
    noise_std: float = 0.0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Mockingjay / TERA masked acoustic model input (Liu et al. 2020, 2021, sec. 3).

    Time: ``int(mask_prob * L / span + U[0, 1))`` spans of ``span`` consecutive frames
    per utterance, starts drawn as in :func:`span_mask`. Each span independently is
    zeroed, replaced by the ``span`` frames at a random valid start of the same
    utterance, or kept, with probabilities ``policy``. Where spans overlap, the later
    drawn span decides a frame. Channel (TERA): each utterance zeroes one block of
    ``U{0..channel_width}`` consecutive feature dimensions at a uniform position, on
    all its frames. Noise (TERA): ``noise_std > 0`` adds ``N(0, noise_std^2)`` to
    every valid frame.

    Where we differ from s3prl's ``generate_masked_acoustic_model_data``: s3prl rolls
    the 80/10/10 dice once per utterance (a whole utterance is zeroed, or replaced,
    or kept), we roll it per span, as BERT does per token; s3prl uses
    ``round(mask_prob * L / span)`` spans and starts ``0 .. L - span - 1``, we
    round stochastically (unbiased) and allow ``0 .. L - span``; s3prl draws the
    replacement starts without replacement, we draw each independently; s3prl adds
    noise to the whole batch with a probability, we add it to valid frames when
    ``noise_std > 0``; s3prl drops utterances with nothing masked, we keep the batch.

    Args:
        x: ``(B, T, D)`` features (padding after ``lengths``).
        lengths: ``(B,)`` valid frames.
        mask_prob, span: time masking, as in :func:`span_mask`.
        policy: probabilities ``(zero, replace, keep)`` of a chosen span, summing to 1.
        channel_width: largest channel block; 0 disables channel masking.
        noise_std: standard deviation of additive Gaussian noise; 0 disables it.
        generator: source of randomness.

    Returns:
        ``x_masked`` ``(B, T, D)``, a new tensor (``x`` is untouched), and
        ``loss_mask`` ``(B, T, D)`` bool: the frames of chosen spans and, on valid
        frames, the masked channels; never padding. Without channel masking
        ``loss_mask`` is a broadcast view of a ``(B, T, 1)`` mask (read-only).
    """
    if x.dim() != 3:
        raise ValueError(f"x must be (B, T, D), got shape {tuple(x.shape)}")
    _check_lengths(lengths)
    B, T, D = x.shape
    if lengths.shape[0] != B:
        raise ValueError(f"lengths has {lengths.shape[0]} entries for a batch of {B}")
    if len(policy) != 3 or min(policy) < 0 or abs(sum(policy) - 1.0) > 1e-6:
        raise ValueError(f"policy must be 3 probabilities (zero, replace, keep) summing to 1, got {policy}")
    if not 0 <= channel_width <= D:
        raise ValueError(f"channel_width must be in [0, {D}], got {channel_width}")
    if noise_std < 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std}")
    device = x.device
    lengths = lengths.clamp(max=T)

    time_mask, dst, src, zeroed = _time_spans(lengths, mask_prob, span, policy, T, generator)
    chan_mask = _channel_blocks(B, D, channel_width, device, generator) if channel_width > 0 else None
    out = torch.empty(B * T + 1, D, dtype=x.dtype, device=device)  # last row: sink for unwanted writes
    body = out[: B * T].view(B, T, D)
    if chan_mask is not None:
        torch.mul(x, (~chan_mask).to(x.dtype)[:, None, :], out=body)
    else:
        body.copy_(x)
    values = body.view(B * T, D).index_select(0, src)  # already channel-masked
    values.mul_(~zeroed[:, None])
    out.index_copy_(0, dst, values)

    valid = lengths_to_mask(lengths, T)
    if noise_std > 0:
        noise = torch.randn(B, T, D, generator=generator, device=device, dtype=x.dtype)
        body.addcmul_(noise, valid[:, :, None].to(x.dtype), value=noise_std)
    if chan_mask is None:
        return body, time_mask[:, :, None].expand(B, T, D)
    # A frame's loss row is one of three per utterance: padding (none), valid (its masked
    # channels), chosen span (all). Copying rows is much cheaper than a broadcast
    # (B, T, 1) x (B, 1, D) comparison.
    code = valid.to(torch.long) + time_mask.to(torch.long) + 3 * torch.arange(B, device=device)[:, None]
    patterns = torch.stack([torch.zeros_like(chan_mask), chan_mask, torch.ones_like(chan_mask)], 1)
    patterns = patterns.to(torch.uint8).view(3 * B, D)  # bool rows, as bytes for index_select
    return body, patterns.index_select(0, code.view(-1)).view(torch.bool).view(B, T, D)


def _time_spans(
    lengths: Tensor, mask_prob: float, span: int, policy: Sequence[float], T: int, generator: torch.Generator | None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Frame-mask spans and the row writes that apply their policy.

    Returns ``time_mask`` ``(B, T)`` bool (frames of chosen spans), and for a fixed-size
    list of frame writes into the ``(B * T + 1, D)`` output: destination rows ``dst``
    (row ``B * T`` is a sink), source rows ``src`` of ``x`` and ``zeroed`` (write zeros).
    """
    B, device = lengths.shape[0], lengths.device
    starts, keep = _span_starts(lengths, mask_prob, span, T, 0, generator)  # (B, K)
    K = starts.shape[1]
    # Per span: what to do with it, and where its replacement comes from.
    dice = torch.rand(B, K, generator=generator, device=device)
    zero = dice < policy[0]
    replace = (dice >= policy[0]) & (dice < policy[0] + policy[1])
    n_starts = (lengths - span + 1).clamp(min=0)
    source = _uniform_below(n_starts[:, None].expand(B, K), generator)  # (B, K)

    # Owner of each frame: the last drawn span covering it (-1: none). Writing every
    # frame from its owner makes overlapping writes agree, hence deterministic.
    offsets = torch.arange(span, device=device)
    frames = (torch.where(keep, starts, T)[:, :, None] + offsets).view(B, K * span)  # (B, K*span)
    span_id = torch.arange(K, device=device)[:, None].expand(K, span).reshape(1, K * span).expand(B, K * span)
    owner = torch.full((B, T + span), -1, device=device, dtype=torch.long)
    owner.scatter_reduce_(1, frames, span_id, "amax")
    time_mask = owner[:, :T] >= 0  # (B, T)

    owner_of = owner.gather(1, frames).clamp(min=0)  # (B, K*span)
    own_zero = zero.gather(1, owner_of)
    own_replace = replace.gather(1, owner_of)
    src = frames - starts.gather(1, owner_of) + source.gather(1, owner_of)
    src = torch.where(own_replace, src, frames)
    written = keep[:, :, None].expand(B, K, span).reshape(B, K * span) & (own_zero | own_replace)

    rows = torch.arange(B, device=device)[:, None] * T
    dst = torch.where(written, rows + frames, B * T).view(-1)
    src = torch.where(written, rows + src, 0).view(-1)
    return time_mask, dst, src, own_zero.view(-1)


def _channel_blocks(B: int, D: int, width: int, device: torch.device, generator: torch.Generator | None) -> Tensor:
    """``(B, D)`` bool: one block of ``U{0..width}`` channels at a uniform position per row."""
    widths = _uniform_below(torch.full((B,), width + 1, device=device), generator)
    low = _uniform_below(D - widths + 1, generator)
    chans = torch.arange(D, device=device)
    return (chans >= low[:, None]) & (chans < (low + widths)[:, None])


def negative_indices(
    lengths: Tensor,
    num_negatives: int,
    *,
    positions: Tensor,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Frame indices of distractors from the same utterance: the draw of :func:`sample_negatives`.

    For each position ``p`` of row ``b``, ``num_negatives`` indices drawn uniformly with
    replacement among ``0 .. lengths[b] - 1`` other than ``p`` (all of them for a
    position in the padding). ``positions`` (B, P) long; returns (B, P, N) long.
    Objectives that score the negatives through one similarity matrix (wav2vec 2.0)
    gather scores with these indices instead of copying ``N`` feature vectors per position.
    """
    _check_lengths(lengths)
    if num_negatives < 1:
        raise ValueError(f"num_negatives must be >= 1, got {num_negatives}")
    B = lengths.shape[0]
    if positions.dim() != 2 or positions.shape[0] != B:
        raise ValueError(f"positions must be (B={B}, P), got shape {tuple(positions.shape)}")
    P = positions.shape[1]
    # Draw among the len - 1 other frames and step over the positive (all len frames
    # for a position in the padding): uniform over the others.
    is_valid = (positions < lengths[:, None]).long()  # (B, P)
    others = (lengths[:, None] - is_valid).clamp(min=1)[:, :, None].expand(B, P, num_negatives)
    indices = _uniform_below(others, generator, torch.float32)  # (B, P, N)
    indices = indices + (indices >= positions[:, :, None]).long()
    return torch.minimum(indices, (lengths - 1).clamp(min=0)[:, None, None])


def sample_negatives(
    x: Tensor,
    lengths: Tensor,
    num_negatives: int,
    *,
    positions: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Distractors for contrastive losses, from the same utterance (wav2vec 2.0 sec. 3.2).

    For each positive frame ``t`` of utterance ``b``, ``num_negatives`` frames are drawn
    uniformly with replacement among the valid frames of ``b`` other than ``t``
    (fairseq's ``sample_negatives`` with ``cross_sample_negatives=0``). Rows of positions
    in the padding are drawn among all valid frames: mask them in the loss. An
    utterance needs at least 2 valid frames; with 1, its only frame is returned.

    Args:
        x: ``(B, T, D)`` targets (e.g. quantized features or future encodings).
        lengths: ``(B,)`` valid frames.
        num_negatives: ``N`` distractors per positive.
        positions: ``(B, P)`` frame indices of the positives; ``None`` means every frame
            (``P = T``).
        generator: source of randomness.

    Returns:
        ``negatives`` ``(B, P, N, D)`` and their frame indices ``(B, P, N)`` (long), so
        that ``negatives[b, p, n] == x[b, indices[b, p, n]]``.
    """
    if x.dim() != 3:
        raise ValueError(f"x must be (B, T, D), got shape {tuple(x.shape)}")
    B, T, D = x.shape
    if positions is None:
        positions = torch.arange(T, device=x.device).expand(B, T)
    indices = negative_indices(lengths, num_negatives, positions=positions, generator=generator)
    rows = torch.arange(B, device=x.device)[:, None, None] * T
    negatives = x.reshape(B * T, D).index_select(0, (rows + indices).view(-1))
    return negatives.view(B, positions.shape[1], num_negatives, D), indices


def masked_positions(mask: Tensor) -> tuple[Tensor, Tensor]:
    """``(B, T)`` bool mask -> the masked frames of each row in order, packed to the front.

    Returns ``positions`` ``(B, P)`` long (``P`` the most masked frames of a row; rows
    with fewer are filled with 0) and ``counts`` ``(B,)``: ``positions[b, :counts[b]]``
    are the masked frames of row ``b``, ascending. One host read (``P``).
    """
    if mask.dim() != 2 or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a (B, T) bool tensor, got {mask.dtype} of shape {tuple(mask.shape)}")
    counts = mask.sum(dim=1)
    P = int(counts.max()) if mask.numel() else 0
    # A stable sort of ~mask puts each row's masked frames first, in order.
    order = torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices[:, :P]
    valid = torch.arange(P, device=mask.device) < counts[:, None]
    return torch.where(valid, order, 0), counts


def shift_targets(x: Tensor, lengths: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """n-step-ahead targets (APC, Chung et al. 2019, eq. 1; CPC's k-th step).

    Args:
        x: ``(B, T, D)`` features.
        lengths: ``(B,)`` valid frames.
        n: steps ahead, ``>= 0``.

    Returns:
        ``targets`` ``(B, T, D)`` with ``targets[:, t] = x[:, t + n]`` (zeros past the
        end), and ``valid`` ``(B, T)`` bool, True where ``t + n < lengths[b]``: score a
        prediction made at frame ``t`` only there.
    """
    if x.dim() != 3:
        raise ValueError(f"x must be (B, T, D), got shape {tuple(x.shape)}")
    _check_lengths(lengths)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    B, T, D = x.shape
    targets = x.new_zeros(B, T, D)
    if n < T:
        targets[:, : T - n] = x[:, n:]
    valid = torch.arange(T, device=x.device) < (lengths - n)[:, None]
    return targets, valid


# --------------------------------------------------------------------------- helpers


def _check_lengths(lengths: Tensor) -> None:
    if lengths.dim() != 1 or lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
        raise ValueError(f"lengths must be a 1-D integer tensor, got {lengths.dtype} of shape {tuple(lengths.shape)}")


def _max_len(lengths: Tensor, max_len: int | None) -> int:
    if max_len is not None:
        return int(max_len)
    return int(lengths.max()) if lengths.numel() else 0  # host sync, documented


def _uniform_below(
    high: Tensor, generator: torch.Generator | None, dtype: torch.dtype = torch.float64
) -> Tensor:
    """Integers uniform in ``[0, high)`` elementwise (``high >= 1``; 0 where ``high == 0``).

    float64 keeps the rounding bias below 1e-12, and ``u * high`` (``u <= 1 - 2**-53``,
    ``high < 2**52``) rounds to below ``high``. float32 (bias ~ ``high / 2**24``) is for
    large draws; there ``u * high`` can round up to ``high``, which the clamp catches.
    """
    u = torch.rand(high.shape, generator=generator, device=high.device, dtype=dtype)
    if dtype == torch.float64:
        return (u * high).long()
    return torch.minimum((u * high).long(), (high - 1).clamp(min=0))


def _span_starts(
    lengths: Tensor, mask_prob: float, span: int, T: int, min_masks: int, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """Span starts, uniform without replacement among the valid starts of each row.

    Returns ``starts`` ``(B, K)`` long and ``keep`` ``(B, K)`` bool: row ``b`` uses the
    ``num_spans[b]`` starts where ``keep`` is True. ``K`` is a bound known on the host.
    """
    B, device = lengths.shape[0], lengths.device
    lengths = lengths.clamp(max=T)
    n_starts = (lengths - span + 1).clamp(min=0)  # (B,) valid starts 0 .. L - span
    u = torch.rand(B, generator=generator, device=device)
    num = u.add_(lengths, alpha=mask_prob / span).long().clamp(min=min_masks)  # int(p L / span + U)
    num = torch.minimum(num, n_starts)  # (B,)
    K = _max_spans(mask_prob, span, T, min_masks)
    if K == 0:
        empty = torch.zeros(B, 0, dtype=torch.long, device=device)
        return empty, empty.bool()
    draws = _plan_draws(mask_prob, span, T, min_masks)
    if draws:
        return _starts_by_rejection(n_starts, num, draws, T, generator)
    return _starts_by_keys(n_starts, num, K, T - span + 1, generator)


def _max_spans(mask_prob: float, span: int, T: int, min_masks: int) -> int:
    """Most spans any row of ``T`` frames can get."""
    return min(max(min_masks, int(mask_prob * T / span) + 1), max(T - span + 1, 0))


def _starts_by_rejection(
    n_starts: Tensor, num: Tensor, draws: int, T: int, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """Draw starts with replacement and keep each row's first ``num`` distinct ones.

    Drawing in sequence and rejecting repeats is exactly sampling without replacement;
    the planner sized ``draws`` so that a row runs short with probability < 1e-12.
    """
    B = n_starts.shape[0]
    cand = _uniform_below(n_starts[:, None].expand(B, draws), generator)  # (B, draws)
    order = torch.arange(draws, device=cand.device, dtype=torch.int32).expand(B, draws)
    # Earliest draw of each value; cells no draw hits stay uninitialised and are never read.
    first = torch.empty((B, T), device=cand.device, dtype=torch.int32)
    first.scatter_reduce_(1, cand, order, "amin", include_self=False)
    fresh = first.gather(1, cand) == order
    keep = fresh & (fresh.cumsum(1) <= num[:, None])
    return cand, keep


def _starts_by_keys(
    n_starts: Tensor, num: Tensor, K: int, width: int, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """Exact path for dense draws: the ``K`` largest of uniform keys on the valid starts."""
    B, device = n_starts.shape[0], n_starts.device
    keys = torch.rand(B, width, generator=generator, device=device)
    keys.masked_fill_(torch.arange(width, device=device) >= n_starts[:, None], -1.0)
    starts = keys.topk(K, dim=1).indices  # (B, K), in random order
    keep = torch.arange(K, device=device) < num[:, None]
    return starts, keep


@functools.lru_cache(maxsize=4096)
def _plan_draws(mask_prob: float, span: int, T: int, min_masks: int) -> int:
    """Draws the rejection sampler needs for rows of up to ``T`` frames, or 0 for the keys path.

    For a row with ``N`` valid starts needing ``n`` distinct ones, each draw is new with
    probability at least ``q = (N - n + 1) / N``, so it runs short after ``d`` draws with
    probability at most ``P(Bin(d, q) < n) <= exp(-d KL(n/d || q))`` (Chernoff). We
    take the smallest ``d`` keeping this below ``_MAX_SHORTFALL`` for every length
    ``L <= T``; for each ``n`` the shortest length is the worst, so only those are checked.
    """
    K = _max_spans(mask_prob, span, T, min_masks)
    worst = {}  # n -> smallest N with that n
    for length in range(span, T + 1):
        N = length - span + 1
        n = min(N, max(min_masks, int(mask_prob * length / span) + 1))
        if n >= 2 and n not in worst:
            worst[n] = N
    if not worst:
        return K  # at most one span per row: one draw each is exact
    log_eps = math.log(_MAX_SHORTFALL)

    def enough(d: int) -> bool:
        for n, N in worst.items():
            q = (N - n + 1) / N
            a = n / d
            if a >= q:
                return False
            kl = a * math.log(a / q) + (1 - a) * math.log((1 - a) / (1 - q)) if a < 1 else math.inf
            if -d * kl > log_eps:
                return False
        return True

    cap = _MAX_DRAWS_FACTOR * K + 64
    if not enough(cap):
        return 0
    lo, hi = K, cap
    while lo < hi:
        mid = (lo + hi) // 2
        if enough(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _spans_to_mask(starts: Tensor, keep: Tensor, span: int, T: int) -> Tensor:
    """``(B, T)`` bool mask of the kept spans; dropped spans write past column ``T``."""
    B, K = starts.shape
    frames = torch.where(keep, starts, T)[:, :, None] + torch.arange(span, device=starts.device)
    mask = torch.zeros(B, T + span, dtype=torch.bool, device=starts.device)
    mask.scatter_(1, frames.view(B, K * span), _true(starts.device).expand(B, K * span))
    return mask[:, :T].contiguous()  # a copy of (B, T) bools costs little; views surprise callers


def _true(device: torch.device) -> Tensor:
    # scatter_ from an expanded tensor is about twice as fast on the CPU as from a scalar
    return torch.ones(1, 1, dtype=torch.bool, device=device)


def _same_count_mask(mask: Tensor, lengths: Tensor, span: int, T: int, generator: torch.Generator | None) -> Tensor:
    """Relay ``c = min_b mask[b].sum()`` frames in every row as whole, non-overlapping spans."""
    B, device = mask.shape[0], mask.device
    count = mask.sum(1).min()  # 0-dim, stays on the device
    blocks = count // span  # spans per row (0-dim)
    extra = count - blocks * span  # frames added to one of them
    Kb = T // span
    if Kb == 0:
        return torch.zeros(B, T, dtype=torch.bool, device=device)
    # Stars and bars: block i starts after the free frames drawn before it. Choosing
    # `blocks` slots among `free + blocks` uniformly places the blocks uniformly.
    free = lengths - count  # (B,) >= 0 since count <= every row's masked frames
    slots = free + blocks
    slot, _ = _starts_by_keys(slots, blocks.expand(B), Kb, T + 1, generator)  # (B, Kb)
    ks = torch.arange(Kb, device=device)
    used = (ks < blocks).expand(B, Kb)
    slot = torch.where(used, slot, T + 1).sort(dim=1).values
    long_block = _uniform_below(blocks.clamp(min=1).expand(B), generator)[:, None]  # (B, 1)
    start = slot - ks + ks * span + extra * (ks > long_block)  # (B, Kb)
    size = span + extra * (ks == long_block)  # (B, Kb)
    offsets = torch.arange(2 * span - 1, device=device)
    inside = used[:, :, None] & (offsets < size[:, :, None])
    frames = torch.where(inside, start[:, :, None] + offsets, T)
    out = torch.zeros(B, T + 1, dtype=torch.bool, device=device)
    out.scatter_(1, frames.view(B, -1), _true(device).expand(B, frames.shape[1] * frames.shape[2]))
    return out[:, :T].contiguous()
