"""Duration batches: every item once an epoch, or weighted draws (class-balanced KS); the trainer uses the weights."""

from collections import Counter

import pytest
import torch

from downstream.task import get_task
from speechssl.data.sampler import bucket_batches, epoch_batches
from speechssl.trainer import Trainer, TrainerConfig


def flat(batches):
    return [i for b in batches for i in b]


def test_unweighted_epoch_visits_every_item_once_within_the_budget():
    lengths = [1000 + 37 * (i % 11) for i in range(200)]
    batches = bucket_batches(lengths, max_samples=8000, seed=3, epoch=1)
    assert sorted(flat(batches)) == list(range(200))
    assert all(len(b) * max(lengths[i] for i in b) <= 8000 for b in batches)
    assert batches == bucket_batches(lengths, max_samples=8000, seed=3, epoch=1)  # (seed, epoch) decides
    assert batches != bucket_batches(lengths, max_samples=8000, seed=3, epoch=2)


def test_weighted_epochs_draw_in_proportion_to_the_weights():
    labels = ["a"] * 80 + ["b"] * 15 + ["c"] * 5
    counts = Counter(labels)
    weights = [1 / counts[label] for label in labels]
    drawn = Counter()
    for epoch in range(60):
        batches = bucket_batches([1600] * 100, max_samples=16000, seed=0, epoch=epoch, weights=weights)
        assert len(flat(batches)) == 100  # an epoch is as many draws as items, with replacement
        drawn.update(labels[i] for i in flat(batches))
    for label in "abc":  # class-balanced: a third each (6000 draws; 4 standard deviations is about 0.024)
        assert drawn[label] / 6000 == pytest.approx(1 / 3, abs=0.025)
    zero = [0.0 if i % 2 else 1.0 for i in range(100)]
    assert all(i % 2 == 0 for i in flat(bucket_batches([1600] * 100, 16000, weights=zero)))
    with pytest.raises(ValueError, match="non-negative values, not all zero"):
        bucket_batches([1600] * 3, 16000, weights=[0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="expected 3 non-negative"):
        bucket_batches([1600] * 3, 16000, weights=[1.0, 1.0])


def test_resuming_mid_epoch_continues_the_same_weighted_draws():
    weights = [1.0 + i % 3 for i in range(50)]
    whole = epoch_batches([1600] * 50, 6400, seed=1, weights=weights)
    first = [next(whole) for _ in range(30)]
    epoch, index, _ = first[20]
    resumed = epoch_batches([1600] * 50, 6400, seed=1, start_epoch=epoch, skip=index, weights=weights)
    assert [next(resumed) for _ in range(10)] == first[20:]


def test_keyword_spotting_weights_balance_its_classes():
    rows = [{"label": "_unknown_"}] * 6 + [{"label": "yes"}] * 2 + [{"label": "_silence_"}]
    weights = get_task("ks").sample_weights(rows)
    per_class = Counter()
    for row, w in zip(rows, weights):
        per_class[row["label"]] += w
    assert per_class == {"_unknown_": pytest.approx(1.0), "yes": pytest.approx(1.0), "_silence_": pytest.approx(1.0)}
    assert get_task("sid").sample_weights(rows) is None  # other tasks: every row once an epoch


class Items(torch.utils.data.Dataset):
    """Item i is the number i; even items weigh 1, odd ones 0."""

    def __len__(self):
        return 40

    def __getitem__(self, i):
        return i

    def num_samples(self):
        return [16000] * 40

    def sample_weights(self):
        return [0.0 if i % 2 else 1.0 for i in range(40)]


def test_the_trainer_draws_by_the_dataset_weights(tmp_path):
    seen = []

    class Objective(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(1, 1)

        def forward(self, batch, *, step, generator):
            seen.extend(batch.tolist())
            return self.linear(batch.float()[:, None]).pow(2).mean(), {}

    cfg = TrainerConfig(max_steps=20, warmup_steps=1, batch_seconds=4, save_every=20, log_every=20)
    Trainer(Objective(), cfg, tmp_path).fit(Items(), torch.tensor)
    assert len(seen) == 80 and all(i % 2 == 0 for i in seen)
