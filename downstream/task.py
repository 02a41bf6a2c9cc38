"""What a downstream task is: the labels it needs, its head, its loss, its metric.

A task never knows the corpus: it gets manifest rows (dicts with its label
columns) and fits its label vocabulary on the training rows. Every task
registers itself; ``get_task(name)`` finds it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from speechssl.bootstrap import Ratio
from speechssl.errors import ConfigError


class Task:
    """Base class. A subclass sets the class attributes and implements the methods.

    ``fit(train_rows)`` learns the label vocabulary; ``encode(row)`` turns a row into
    the label tensor(s) ``collate`` batches; ``head(dim)`` builds the head;
    ``loss(head, x, lengths, labels)`` and ``predict``/``score`` do the rest.
    ``outcomes(predictions, references)`` gives one record of integer counts per
    utterance, from which ``ratios`` recompute every metric of ``score`` exactly
    (the confidence intervals of :mod:`speechssl.bootstrap` resample them).
    """

    name: str = ""
    columns: tuple[str, ...] = ()  # manifest columns this task needs
    metric: str = ""  # the main metric, reported on test and used for model selection on dev
    higher_is_better: bool = True
    ratios: dict[str, Ratio] = {}  # metric -> the ratio of summed outcome columns it is

    def fit(self, rows: list[dict]) -> None:
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        """The fitted vocabulary, JSON-serialisable (saved in the run folder)."""
        raise NotImplementedError

    def encode(self, row: dict) -> torch.Tensor:
        raise NotImplementedError

    def collate(self, labels: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def head(self, input_dim: int) -> nn.Module:
        raise NotImplementedError

    def loss(self, head: nn.Module, x, lengths, labels: dict[str, torch.Tensor]):
        """``(scalar loss, logs)``."""
        raise NotImplementedError

    def predict(self, head: nn.Module, x, lengths) -> list:
        raise NotImplementedError

    def references(self, rows: list[dict]) -> list:
        raise NotImplementedError

    def score(self, predictions: list, references: list) -> dict[str, float]:
        raise NotImplementedError

    def outcomes(self, predictions: list, references: list) -> list[dict[str, int]]:
        """One record of integer counts per utterance (``ratios`` name its columns)."""
        raise NotImplementedError

    def metric_from_outcomes(self, outcomes: list[dict[str, int]], metric: str | None = None) -> float:
        """``metric`` (default: the main one) of the utterances of ``outcomes``: equal to ``score``'s."""
        return self.ratios[metric or self.metric](outcomes)

    def chance(self, train_rows: list[dict], test_rows: list[dict]) -> float:
        """The main metric of a system that ignores the audio."""
        raise NotImplementedError

    def sample_weights(self, rows: list[dict]) -> list[float] | None:
        """Training draw weights of ``rows``; None (the default) visits every row once an epoch."""
        return None

    def check_rows(self, rows: list[dict], where: str) -> None:
        if not rows:
            raise ConfigError(f"task '{self.name}': no utterances in {where}")
        missing = [c for c in self.columns if c not in rows[0]]
        if missing:
            raise ConfigError(
                f"task '{self.name}' needs label column(s) {', '.join(missing)}, which {where} does not have "
                f"(its columns: {', '.join(rows[0])})"
            )


TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    TASKS[cls.name] = cls
    return cls


def list_tasks() -> list[str]:
    import downstream.classification  # noqa: F401  (registers ks, sid, er, ic)
    import downstream.ctc  # noqa: F401  (registers pr, asr)

    return sorted(TASKS)


def get_task(name: str) -> Task:
    """A fresh instance of task ``name``."""
    known = list_tasks()
    if name not in TASKS:
        raise ConfigError(f"unknown task '{name}'; known: {', '.join(known)}")
    return TASKS[name]()
