"""Tests for speechssl.masking: statistics with fixed seeds, padding, determinism, devices, host syncs.

References: torchaudio's copy of fairseq's ``compute_mask_indices`` and the exact
expected masked fraction of fairseq's algorithm, written out below.
"""

import math

import pytest
import torch
from torchaudio.models.wav2vec2.components import (
    _compute_mask_indices as torchaudio_mask_indices,
)

from speechssl import masking
from speechssl.masking import (
    frame_mask,
    lengths_to_mask,
    sample_negatives,
    shift_targets,
    span_mask,
)


def gen(seed=0, device="cpu"):
    return torch.Generator(device=device).manual_seed(seed)


def runs(row):
    """Lengths of the maximal runs of True in a 1-D bool tensor."""
    padded = torch.cat([torch.zeros(1, dtype=torch.int8), row.to(torch.int8), torch.zeros(1, dtype=torch.int8)])
    edges = padded.diff()
    return (edges == -1).nonzero().flatten() - (edges == 1).nonzero().flatten()


def expected_fraction(length, mask_prob, span, n_starts):
    """Exact expected masked fraction when ``n`` spans start uniformly without replacement
    among ``0 .. n_starts - 1``, ``n = int(mask_prob * length / span + U[0, 1))``.

    Frame t stays unmasked iff none of the ``w_t`` starts covering it is drawn:
    probability C(n_starts - w_t, n) / C(n_starts, n).
    """
    x = mask_prob * length / span
    t = torch.arange(length, dtype=torch.float64)
    w = (torch.minimum(t, torch.tensor(n_starts - 1.0)) - (t - span + 1).clamp(min=0) + 1).clamp(min=0)
    total = 0.0
    for n, p_n in ((math.floor(x), 1 - (x - math.floor(x))), (math.floor(x) + 1, x - math.floor(x))):
        assert n <= n_starts
        if p_n == 0 or n == 0:
            continue
        N = torch.tensor(float(n_starts), dtype=torch.float64)
        free = N - w
        log_ratio = (
            torch.lgamma(free + 1) - torch.lgamma(free - n + 1) - torch.lgamma(N + 1) + torch.lgamma(N - n + 1)
        )
        p_unmasked = torch.where(free >= n, log_ratio.exp(), torch.zeros_like(free))
        total += p_n * float((1 - p_unmasked).mean())
    return total


# --------------------------------------------------------------------------- span_mask


@pytest.mark.parametrize("span", [1, 5, 10])
@pytest.mark.parametrize("mask_prob", [0.05, 0.3, 0.65, 0.8])
def test_span_mask_fraction_matches_fairseq(mask_prob, span):
    for length in (50, 137, 400, 1000, 1500):
        B = max(100, 300_000 // length)
        lengths = torch.full((B,), length)
        mask = span_mask(lengths, mask_prob, span, max_len=length, generator=gen(length))
        ours = mask.float().mean().item()
        # fairseq draws starts from 0 .. L - span - 1, we from 0 .. L - span.
        fairseq = expected_fraction(length, mask_prob, span, length - span)
        assert abs(ours - fairseq) < 0.02, (length, ours, fairseq)
        # and our own exact expectation, much tighter
        exact = expected_fraction(length, mask_prob, span, length - span + 1)
        assert abs(ours - exact) < 0.004, (length, ours, exact)


@pytest.mark.parametrize("length,mask_prob,span", [(50, 0.65, 10), (400, 0.65, 10), (400, 0.05, 5), (230, 0.8, 1)])
def test_span_mask_fraction_matches_torchaudio(length, mask_prob, span):
    torch.manual_seed(0)
    # one utterance a call: torchaudio always applies require_same_masks trimming
    theirs = torch.stack([torchaudio_mask_indices((1, length), None, mask_prob, span)[0] for _ in range(300)])
    ours = span_mask(torch.full((3000,), length), mask_prob, span, max_len=length, generator=gen())
    assert abs(ours.float().mean() - theirs.float().mean()) < 0.02


def test_span_mask_never_masks_padding_and_keeps_whole_spans():
    lengths = torch.randint(1, 300, (400,), generator=gen(1))
    lengths[:5] = torch.tensor([0, 1, 9, 10, 11])
    valid = lengths_to_mask(lengths, 320)
    for mask_prob, span, min_masks in [(0.65, 10, 2), (0.8, 1, 0), (0.3, 5, 0), (0.0, 10, 50)]:
        mask = span_mask(lengths, mask_prob, span, max_len=320, min_masks=min_masks, generator=gen(2))
        assert mask.shape == (400, 320) and mask.dtype == torch.bool
        assert not (mask & ~valid).any()
        assert not mask[lengths < span].any()  # no span fits
        for row in mask[:100]:
            assert (runs(row) >= span).all()


def test_span_mask_min_masks_without_replacement():
    lengths = torch.randint(20, 60, (500,), generator=gen(3))
    mask = span_mask(lengths, 0.0, 1, max_len=60, min_masks=7, generator=gen(4))
    assert (mask.sum(1) == 7).all()  # 7 distinct starts in every row
    single = span_mask(lengths, 0.0, 6, max_len=60, min_masks=1, generator=gen(5))
    assert (single.sum(1) == 6).all()
    assert all(runs(row).tolist() == [6] for row in single[:50])


def test_span_mask_starts_are_uniform():
    length, span = 40, 5
    mask = span_mask(torch.full((36_000,), length), 0.0, span, max_len=length, min_masks=1, generator=gen(6))
    starts = mask.int().argmax(1)
    counts = torch.bincount(starts, minlength=length).double()
    assert (counts[length - span + 1 :] == 0).all()
    counts = counts[: length - span + 1]  # 36 valid starts, 1000 expected each
    chi2 = ((counts - 1000) ** 2 / 1000).sum()
    assert chi2 < 66.6  # 35 dof, p = 0.001


@pytest.mark.parametrize("sampler", ["rejection", "keys"])
def test_start_samplers_draw_uniform_subsets(sampler):
    """Both start samplers give every 3-subset of 6 starts the same probability."""
    B, N, n = 40_000, 6, 3
    n_starts, num = torch.full((B,), N), torch.full((B,), n)
    if sampler == "rejection":
        starts, keep = masking._starts_by_rejection(n_starts, num, 40, N, gen(7))
    else:
        starts, keep = masking._starts_by_keys(n_starts, num, 4, N, gen(7))
    chosen = torch.zeros(B, N + 1, dtype=torch.bool).scatter_(1, torch.where(keep, starts, N), True)[:, :N]
    assert (chosen.sum(1) == n).all()
    code = (chosen.long() << torch.arange(N)).sum(1)
    counts = torch.bincount(code, minlength=64).double()
    counts = counts[counts > 0]
    assert len(counts) == math.comb(N, n)
    expected = B / len(counts)
    assert ((counts - expected) ** 2 / expected).sum() < 43.8  # 19 dof, p = 0.001


def test_span_mask_dense_settings_take_the_exact_path():
    assert masking._plan_draws(0.65, 10, 750, 2) > 0  # wav2vec 2.0 settings: rejection sampler
    assert masking._plan_draws(0.8, 1, 1500, 0) == 0  # most starts chosen: keys path
    mask = span_mask(torch.tensor([1500, 700]), 0.8, 1, max_len=1500, generator=gen(8))
    assert abs(mask[0].float().mean() - 0.8) < 0.01


def test_span_mask_same_count():
    lengths = torch.randint(100, 400, (64,), generator=gen(9))
    for mask_prob, span in [(0.65, 10), (0.3, 7), (0.05, 1)]:
        plain = span_mask(lengths, mask_prob, span, max_len=400, generator=gen(10))
        same = span_mask(lengths, mask_prob, span, max_len=400, same_count=True, generator=gen(10))
        counts = same.sum(1)
        assert (counts == plain.sum(1).min()).all()  # fairseq's require_same_masks count
        assert not (same & ~lengths_to_mask(lengths, 400)).any()
        for row in same[:20]:
            assert (runs(row) >= span).all()  # no span cut


# --------------------------------------------------------------------------- frame_mask


def test_frame_mask_policy_proportions():
    B, T, D = 200, 600, 4
    x = torch.randn(B, T, D, generator=gen(11)) + 10  # no frame of x is zero
    lengths = torch.randint(300, T + 1, (B,), generator=gen(12))
    out, loss = frame_mask(x, lengths, mask_prob=0.15, span=7, generator=gen(13))
    chosen = loss[:, :, 0]
    valid = lengths_to_mask(lengths, T)
    assert not (chosen & ~valid).any()
    assert abs(chosen.sum() / valid.sum() - expected_fraction(450, 0.15, 7, 444)) < 0.01
    zeroed = (out == 0).all(-1) & chosen
    kept = (out == x).all(-1) & chosen
    replaced = chosen & ~zeroed & ~kept
    total = chosen.sum()
    assert abs(zeroed.sum() / total - 0.8) < 0.02
    assert abs(kept.sum() / total - 0.1) < 0.02
    assert abs(replaced.sum() / total - 0.1) < 0.02
    assert torch.equal(out[~chosen], x[~chosen])  # nothing else touched
    # replacements are frames of the same utterance
    b, t = replaced.nonzero(as_tuple=True)
    for i in range(0, len(b), 97):
        row = x[b[i], : lengths[b[i]]]
        assert (row == out[b[i], t[i]]).all(-1).any()


def test_frame_mask_policy_is_drawn_per_span():
    x = torch.randn(1, 2000, 3, generator=gen(14)) + 10
    out, loss = frame_mask(x, torch.tensor([2000]), mask_prob=0.3, generator=gen(15))
    chosen = loss[0, :, 0]
    zeroed = (out[0] == 0).all(-1) & chosen
    assert zeroed.any() and (chosen & ~zeroed).any()  # one utterance, several outcomes


def test_frame_mask_channel_widths():
    B, T, D, W = 4000, 20, 40, 8
    x = torch.randn(B, T, D, generator=gen(16)) + 10
    lengths = torch.randint(1, T + 1, (B,), generator=gen(17))
    out, loss = frame_mask(x, lengths, mask_prob=0.0, channel_width=W, generator=gen(18))
    band = (out == 0).all(1)  # (B, D) zeroed channels
    widths = band.sum(1)
    counts = torch.bincount(widths, minlength=W + 1).double()
    assert len(counts) == W + 1  # never wider than W
    expected = B / (W + 1)
    assert ((counts - expected) ** 2 / expected).sum() < 27.9  # 8 dof, p = 0.001
    assert all(len(runs(row)) <= 1 for row in band[:200])  # one block
    valid = lengths_to_mask(lengths, T)
    assert torch.equal(loss, band[:, None, :] & valid[:, :, None])
    assert torch.equal(out[~(out == 0)], x[~(out == 0)])
    # the block may touch either edge
    assert band[:, 0].any() and band[:, -1].any()


def test_frame_mask_noise_only_on_valid_frames():
    x = torch.zeros(8, 300, 16)
    lengths = torch.tensor([300, 250, 10, 0, 77, 300, 1, 150])
    out, _ = frame_mask(x, lengths, mask_prob=0.0, noise_std=0.5, generator=gen(19))
    valid = lengths_to_mask(lengths, 300)
    assert (out[~valid] == 0).all()
    assert abs(out[valid].std() - 0.5) < 0.01
    assert x.abs().sum() == 0  # input untouched


def test_frame_mask_leaves_padding_alone():
    x = torch.randn(16, 200, 5, generator=gen(20))
    lengths = torch.randint(0, 200, (16,), generator=gen(21))
    out, loss = frame_mask(x, lengths, mask_prob=0.5, span=10, channel_width=2, generator=gen(22))
    valid = lengths_to_mask(lengths, 200)
    assert not (loss & ~valid[:, :, None]).any()
    pad_out, pad_x = out[~valid], x[~valid]
    assert torch.equal(pad_out[pad_out != 0], pad_x[pad_out != 0])  # only channel zeros there


# --------------------------------------------------------------------------- sample_negatives


def test_sample_negatives_never_the_positive_nor_padding():
    B, T, D, N = 32, 120, 3, 20
    x = torch.randn(B, T, D, generator=gen(23))
    lengths = torch.randint(2, T + 1, (B,), generator=gen(24))
    negs, idx = sample_negatives(x, lengths, N, generator=gen(25))
    assert negs.shape == (B, T, N, D) and idx.shape == (B, T, N)
    valid = lengths_to_mask(lengths, T)
    assert (idx < lengths[:, None, None]).all() and (idx >= 0).all()
    positive = torch.arange(T)[None, :, None]
    assert not (idx == positive)[valid].any()
    assert torch.equal(negs, x[torch.arange(B)[:, None, None], idx])


def test_sample_negatives_at_positions_uniform_over_others():
    x = torch.randn(2, 10, 1)
    lengths = torch.tensor([6, 10])
    positions = torch.tensor([[2, 5, 8], [0, 9, 3]])  # 8 is padding in row 0
    negs, idx = sample_negatives(x, lengths, 6000, positions=positions, generator=gen(26))
    assert idx.shape == (2, 3, 6000)
    for b in range(2):
        for p in range(3):
            pos = positions[b, p].item()
            others = [t for t in range(lengths[b].item()) if t != pos]
            counts = torch.bincount(idx[b, p], minlength=10).double()
            assert counts.sum() == counts[others].sum()
            expected = 6000 / len(others)
            chi2 = ((counts[others] - expected) ** 2 / expected).sum()
            assert chi2 < 30  # <= 9 dof, p < 0.001


# --------------------------------------------------------------------------- shift_targets, lengths_to_mask


def test_shift_targets_by_hand():
    x = torch.arange(10.0).view(1, 5, 2).repeat(2, 1, 1)
    targets, valid = shift_targets(x, torch.tensor([5, 3]), 2)
    assert torch.equal(targets[0], torch.tensor([[4.0, 5], [6, 7], [8, 9], [0, 0], [0, 0]]))
    assert valid.tolist() == [[True, True, True, False, False], [True, False, False, False, False]]
    same, valid0 = shift_targets(x, torch.tensor([5, 3]), 0)
    assert torch.equal(same, x) and valid0.sum().item() == 8
    _, none = shift_targets(x, torch.tensor([5, 3]), 7)
    assert not none.any()


def test_lengths_to_mask():
    assert lengths_to_mask(torch.tensor([2, 0, 3])).tolist() == [
        [True, True, False],
        [False, False, False],
        [True, True, True],
    ]
    assert lengths_to_mask(torch.tensor([1]), 3).tolist() == [[True, False, False]]


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="span"):
        span_mask(torch.tensor([10]), 0.5, 0, max_len=10)
    with pytest.raises(ValueError, match="lengths"):
        span_mask(torch.tensor([10.0]), 0.5, 2, max_len=10)
    with pytest.raises(ValueError, match=r"\(B, T, D\)"):
        frame_mask(torch.zeros(3, 4), torch.tensor([4, 4, 4]))
    with pytest.raises(ValueError, match="policy"):
        frame_mask(torch.zeros(1, 4, 2), torch.tensor([4]), policy=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="positions"):
        sample_negatives(torch.zeros(2, 4, 1), torch.tensor([4, 4]), 2, positions=torch.zeros(3, 1, dtype=torch.long))


# --------------------------------------------------------------------------- reproducibility, devices, host syncs


def run_all(device, generator):
    lengths = torch.tensor([700, 431, 9, 650], device=device)
    x = torch.randn(4, 700, 6, device=device) if device != "meta" else torch.empty(4, 700, 6, device="meta")
    return [
        span_mask(lengths, 0.65, 10, max_len=700, min_masks=2, generator=generator),
        span_mask(lengths, 0.8, 1, max_len=700, generator=generator),  # keys path
        span_mask(lengths, 0.65, 10, max_len=700, same_count=True, generator=generator),
        *frame_mask(x, lengths, channel_width=2, noise_std=0.1, generator=generator),
        *sample_negatives(x, lengths, 10, generator=generator),
        *shift_targets(x, lengths, 3),
        lengths_to_mask(lengths, 700),
    ]


def test_same_generator_same_output():
    torch.manual_seed(0)
    first = run_all("cpu", gen(27))
    torch.manual_seed(0)
    again = run_all("cpu", gen(27))
    torch.manual_seed(0)
    other = run_all("cpu", gen(28))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0]) and not torch.equal(first[3], other[3])


def test_meta_device_catches_host_reads():
    """The CPU stand-in for CUDA's sync debug mode: a meta tensor has no data, so any
    host read of a value (.item(), .tolist(), .cpu(), int(t), bool(t), nonzero, boolean
    indexing) raises. Everything must run on meta tensors with the output on meta."""
    lengths = torch.tensor([5, 7], device="meta")
    for read in (
        lambda: lengths.max().item(),
        lambda: lengths.tolist(),
        lambda: lengths.cpu(),
        lambda: int(lengths.max()),
        lambda: bool((lengths > 3).any()),
        lambda: lengths[lengths > 3],
    ):
        with pytest.raises((RuntimeError, NotImplementedError)):
            read()
    outputs = run_all("meta", gen(29))
    assert all(out.device.type == "meta" for out in outputs)
    assert outputs[0].shape == (4, 700) and outputs[3].shape == (4, 700, 6) and outputs[5].shape == (4, 700, 10, 6)


def test_max_len_none_reads_lengths():
    assert span_mask(torch.tensor([30, 12]), 0.5, 3, generator=gen(30)).shape == (2, 30)


@pytest.mark.gpu
def test_cuda_output_on_device_without_host_sync():
    generator = gen(31, "cuda")
    run_all("cuda", generator)  # warm up: first calls may sync for lazy initialization
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        outputs = run_all("cuda", generator)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(out.device.type == "cuda" for out in outputs)
    lengths = torch.tensor([700, 431, 9, 650], device="cuda")
    assert not (outputs[0] & ~lengths_to_mask(lengths, 700)).any()


@pytest.mark.gpu
def test_cuda_matches_cpu_statistics():
    lengths = torch.full((2000,), 400, device="cuda")
    mask = span_mask(lengths, 0.65, 10, max_len=400, generator=gen(32, "cuda"))
    assert abs(mask.float().mean().item() - expected_fraction(400, 0.65, 10, 391)) < 0.005
