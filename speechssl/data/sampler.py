"""Dynamic batches by total padded duration, with utterances of similar length together.

A batch is a list of dataset indices whose padded size ``len(batch) * longest``
stays within a sample budget. The order is a pure function of ``(seed, epoch)``,
so a resumed run sees exactly the batches an unbroken one would, and every DDP
process computes the same global batches and takes its own share of each.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch


def bucket_batches(
    num_samples: Sequence[int],
    max_samples: int,
    *,
    seed: int = 0,
    epoch: int = 0,
    pool: int = 1000,
    weights: Sequence[float] | None = None,
) -> list[list[int]]:
    """Batches of indices for one epoch, shuffled, each within ``max_samples`` padded samples.

    Utterances are shuffled, cut into pools of ``pool``, sorted by length inside a
    pool (so padding stays small) and packed greedily; the batches are then shuffled.
    An utterance longer than the budget gets a batch of its own. With ``weights`` an
    epoch is instead ``len(num_samples)`` draws with replacement, item ``i`` with
    probability proportional to ``weights[i]`` (s3prl's ``WeightedRandomSampler``,
    which SUPERB's KS uses to balance its classes).
    """
    g = torch.Generator().manual_seed(seed * 100003 + epoch)
    if weights is None:
        order = torch.randperm(len(num_samples), generator=g).tolist()
    else:
        w = torch.as_tensor(weights, dtype=torch.float64)
        if w.shape != (len(num_samples),) or not bool((w >= 0).all()) or not float(w.sum()) > 0:
            raise ValueError(f"weights: expected {len(num_samples)} non-negative values, not all zero")
        order = torch.multinomial(w, len(num_samples), replacement=True, generator=g).tolist()
    batches: list[list[int]] = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda i: num_samples[i], reverse=True)
        current: list[int] = []
        for i in chunk:
            if current and (len(current) + 1) * num_samples[current[0]] > max_samples:
                batches.append(current)
                current = []
            current.append(i)
        if current:
            batches.append(current)
    shuffle = torch.randperm(len(batches), generator=g).tolist()
    return [batches[i] for i in shuffle]


def shard(batch: list[int], rank: int, world_size: int) -> list[int]:
    """This process's share of a global batch (every ``world_size``-th item from ``rank``)."""
    return batch[rank::world_size]


def epoch_batches(
    num_samples: Sequence[int],
    max_samples: int,
    *,
    seed: int,
    start_epoch: int = 0,
    skip: int = 0,
    weights: Sequence[float] | None = None,
) -> Iterator[tuple[int, int, list[int]]]:
    """``(epoch, batch index within the epoch, batch)`` forever, from ``start_epoch`` skipping ``skip`` batches."""
    epoch = start_epoch
    while True:
        batches = bucket_batches(num_samples, max_samples, seed=seed, epoch=epoch, weights=weights)
        if not batches:
            raise ValueError("no data: the dataset is empty")
        for b in range(skip, len(batches)):
            yield epoch, b, batches[b]
        epoch, skip = epoch + 1, 0


def plan_batches(num_samples: list[int], max_samples: int) -> list[list[int]]:
    """Indices grouped so that ``len(batch) * longest <= max_samples`` (one item at least), longest first."""
    order = sorted(range(len(num_samples)), key=lambda i: -num_samples[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and (len(batches[-1]) + 1) * num_samples[batches[-1][0]] <= max_samples:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches
