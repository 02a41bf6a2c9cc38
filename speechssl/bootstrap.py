"""Per-utterance outcomes and percentile-bootstrap intervals of the corpus metrics made from them.

An **outcome** is one test utterance's record of counts (``{"correct": 1}``,
``{"word_errors": 2, "words": 9}``) from which the corpus metric is recomputed
exactly. Every metric here is a :class:`Ratio` of summed columns: accuracy is
``sum(correct) / utterances``, an error rate ``sum(errors) / sum(reference length)``,
which is how jiwer pools a corpus. Resampling the test utterances with
replacement (Efron & Tibshirani, 1993, ch. 13: the percentile interval) gives an
interval of the metric that reflects the size of the test set; two systems
scored on the same utterances are compared on the *same* resamples (a paired
bootstrap, Koehn, 2004), which separates differences the two intervals alone
cannot.

A run folder keeps its outcomes as ``test_outcomes.tsv``: an ``id`` column, then
one column per count (:func:`write_outcomes`, :func:`read_outcomes`): integers, or numbers
where a task's outcome is one (seconds of speech for DER; a verification trial's score).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from speechssl.checkpoint import atomic_write
from speechssl.errors import ConfigError

Outcome = dict[str, int]
RESAMPLES = 1000
LEVEL = 0.95


@dataclass(frozen=True)
class Ratio:
    """A corpus metric ``sum(numerator) / sum(denominator)`` over utterances' outcomes.

    ``denominator=None`` divides by the number of utterances (accuracy: the mean of
    0/1 flags). Calling it on a list of outcomes gives the corpus metric; the
    division is the same one jiwer makes on the same integer totals, so the value
    is equal to the last bit.
    """

    numerator: str
    denominator: str | None = None

    def __call__(self, outcomes: Sequence[Outcome]) -> float:
        total = sum(o[self.numerator] for o in outcomes)
        count = len(outcomes) if self.denominator is None else sum(o[self.denominator] for o in outcomes)
        return total / count if count else float("nan")

    def resampled(self, outcomes: Sequence[Outcome], index: np.ndarray) -> np.ndarray:
        """The metric of every resample: ``index`` (R, N) of utterance numbers -> (R,)."""
        numerator = _column(outcomes, self.numerator)[index].sum(axis=1)  # (R,)
        if self.denominator is None:
            return numerator / index.shape[1]
        denominator = _column(outcomes, self.denominator)[index].sum(axis=1)  # (R,)
        with np.errstate(divide="ignore", invalid="ignore"):
            return numerator / denominator

    def as_json(self) -> list[str | None]:
        return [self.numerator, self.denominator]


MetricFn = Callable[[Sequence[Outcome]], float]


def resample_indices(n: int, *, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """``(resamples, n)`` utterance numbers drawn with replacement, the same for the same ``(n, resamples, seed)``."""
    if n < 1:
        raise ValueError(f"bootstrap over {n} utterances; need at least one")
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def resampled(outcomes: Sequence[Outcome], metric_fn: MetricFn, index: np.ndarray) -> np.ndarray:
    """``metric_fn`` of every resample ``outcomes[index[r]]``: (R,). Vectorized for a :class:`Ratio`."""
    if len(outcomes) != index.shape[1]:
        raise ValueError(f"{len(outcomes)} outcomes, but resamples of {index.shape[1]} utterances")
    if isinstance(metric_fn, Ratio):
        return metric_fn.resampled(outcomes, index)
    return np.array([metric_fn([outcomes[i] for i in row]) for row in index])  # any other metric: one call each


def percentile_interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The central ``level`` range of bootstrap ``values`` (R,) (linear interpolation between order statistics)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level={level}; expected a probability in (0, 1)")
    tail = (1.0 - level) / 2
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return float(low), float(high)


def bootstrap_interval(
    outcomes: Sequence[Outcome], metric_fn: MetricFn, *, resamples: int = RESAMPLES, level: float = LEVEL,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap ``level`` interval of ``metric_fn`` over the utterances of ``outcomes``."""
    index = resample_indices(len(outcomes), resamples=resamples, seed=seed)
    return percentile_interval(resampled(outcomes, metric_fn, index), level)


def paired_difference_interval(
    outcomes_a: Sequence[Outcome], outcomes_b: Sequence[Outcome], metric_fn: MetricFn, *,
    resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0,
) -> tuple[float, float]:
    """Interval of ``metric(a) - metric(b)``, both on the same resamples.

    ``outcomes_b[i]`` is the same utterance as ``outcomes_a[i]``. Zero outside the
    interval: the test set separates the two systems.
    """
    if len(outcomes_a) != len(outcomes_b):
        raise ValueError(
            f"paired bootstrap of {len(outcomes_a)} and {len(outcomes_b)} outcomes; expected the same utterances"
        )
    index = resample_indices(len(outcomes_a), resamples=resamples, seed=seed)
    return percentile_interval(resampled(outcomes_a, metric_fn, index) - resampled(outcomes_b, metric_fn, index), level)


def separated(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Two intervals that do not overlap (a conservative test: overlapping ones may still differ, paired)."""
    return a[1] < b[0] or b[1] < a[0]


def excludes_zero(interval: tuple[float, float]) -> bool:
    """A difference interval that lies wholly on one side of zero."""
    return interval[0] > 0.0 or interval[1] < 0.0


def write_outcomes(path: str | os.PathLike, ids: Sequence[str], outcomes: Sequence[Outcome]) -> None:
    """``path`` as a TSV: ``id`` then the outcome columns, one utterance a line (atomically)."""
    if len(ids) != len(outcomes):
        raise ValueError(f"{len(ids)} ids for {len(outcomes)} outcomes")
    columns = list(outcomes[0]) if outcomes else []

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f, delimiter="\t", lineterminator="\n")
            writer.writerow(["id", *columns])
            writer.writerows([utt, *(o[c] for c in columns)] for utt, o in zip(ids, outcomes))

    atomic_write(path, write)


def read_outcomes(path: str | os.PathLike) -> tuple[list[str], list[Outcome]]:
    """``(ids, outcomes)`` of a file from :func:`write_outcomes`; a malformed line raises ConfigError naming it."""
    path = Path(path)
    with open(path, newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if not header or header[0] != "id":
            raise ConfigError(f"{path}: not an outcomes table (its first column should be 'id', found {header!r})")
        ids, outcomes = [], []
        for number, row in enumerate(reader, 2):
            try:
                if len(row) != len(header):
                    raise ValueError(f"{len(row)} fields, expected {len(header)}")
                outcomes.append({c: _number(v) for c, v in zip(header[1:], row[1:])})
            except ValueError as e:
                raise ConfigError(f"{path}:{number}: not a line of numeric outcomes ({e})") from None
            ids.append(row[0])
    return ids, outcomes


def _number(text: str) -> int | float:
    """An outcome field: an integer count, or a number (a trial's score, seconds of speech) written by ``repr``."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def _column(outcomes: Sequence[Outcome], name: str) -> np.ndarray:
    values = [o[name] for o in outcomes]
    dtype = np.int64 if all(isinstance(v, int) for v in values) else np.float64
    return np.fromiter(values, dtype=dtype, count=len(values))
