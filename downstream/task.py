"""The task protocol: what a downstream task declares, needs from a corpus, trains and scores.

A task never knows the corpus. It gets manifest rows (dicts with its label columns)
for each split it declares, and the corpus resources it declares (a trial list, query
occurrences), and fits its label vocabulary on the training rows. It declares:

- ``splits``: the manifest splits it reads (``train``/``dev``/``test``; ASV has no dev);
- ``resources``: what else it needs from a corpus, by name (``asv_trials``: see
  :func:`speechssl.data.corpora.corpus_resource`);
- ``trains_head``: False for a task scored without training (QbE's search);
- ``metrics``: every metric it reports, each with its direction, unit and label, the main
  one first; they go into ``results.json``, from which the report reads them;
- ``Config``: its options, a dataclass (``configs/task/NAME.yaml`` sets them; a misspelt
  key is an error). :class:`TaskConfig` holds those every task has.

Before it fits, :meth:`Task.prepare` hands it the upstream's frame rate and the
corpus resources. Every module of the ``downstream`` package that defines a task
registers it with :func:`register_task`; they are found with :mod:`pkgutil`, as
upstreams are.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from speechssl.bootstrap import Ratio, bootstrap_interval
from speechssl.errors import ConfigError


@dataclass
class TaskConfig:
    """The options of every task (a task's ``Config`` subclasses it)."""

    name: str = ""
    metric: Optional[str] = None  # select on dev and report this metric instead of the task's main one


@dataclass(frozen=True)
class Metric:
    """How one of a task's metrics reads: ``label`` (``PER``), direction, and ``unit``.

    ``unit="%"``: stored as a fraction, shown as a percentage; ``""``: shown as it is.
    """

    label: str
    higher_is_better: bool
    unit: str = "%"

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Task:
    """Base class. A subclass sets the class attributes and implements the methods.

    ``fit(train_rows)`` learns the label vocabulary; ``encode(row)`` turns a row into
    the label tensor(s) ``collate`` batches; ``head(dim)`` builds the head;
    ``loss(head, x, lengths, labels)`` and ``predict``/``score`` do the rest.
    ``outcomes(predictions, references)`` gives one record of counts per scored item
    (an utterance, or a trial), from which ``ratios`` recompute every metric of
    ``score`` exactly (the confidence intervals of :mod:`speechssl.bootstrap`
    resample them); a metric that is no ratio of sums (EER) overrides ``intervals``.
    """

    name: str = ""
    Config: type[TaskConfig] = TaskConfig
    splits: tuple[str, ...] = ("train", "dev", "test")
    resources: tuple[str, ...] = ()  # corpus resources beyond the manifests (speechssl.data.corpora.corpus_resource)
    trains_head: bool = True
    order: int = 1000  # the task's column in a report: SUPERB's table order (PR 0, KS 1, IC 2, ... SD 9)
    columns: tuple[str, ...] = ()  # manifest columns this task needs
    metric: str = ""  # the main metric, reported on test and used for model selection on dev
    metrics: dict[str, Metric] = {}  # every metric ``score`` returns
    ratios: dict[str, Ratio] = {}  # metric -> the ratio of summed outcome columns it is

    def __init__(self, config: TaskConfig | None = None) -> None:
        self.config = config if config is not None else self.Config(name=self.name)
        self.frame_rate: float | None = None  # upstream frames per second, from prepare()
        self.corpus_resources: dict[str, Any] = {}
        if self.config.metric is not None and self.config.metric != self.metric:
            if self.config.metric not in self.metrics:
                raise ConfigError(
                    f"task '{self.name}' has no metric '{self.config.metric}'; it has {', '.join(self.metrics)}"
                )
            self.metric = self.config.metric

    @property
    def higher_is_better(self) -> bool:
        return self.metrics[self.metric].higher_is_better

    def prepare(self, *, frame_rate: float, resources: dict[str, Any] | None = None) -> None:
        """The upstream's frames per second and the corpus resources ``resources`` names, before :meth:`fit`."""
        resources = resources or {}
        missing = [r for r in self.resources if r not in resources]
        if missing:
            raise ConfigError(f"task '{self.name}' needs the corpus resource(s) {', '.join(missing)}")
        self.frame_rate, self.corpus_resources = float(frame_rate), resources

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
        """Every metric: by default each ratio over :meth:`outcomes` (a task with its own scorer overrides it)."""
        outcomes = self.outcomes(predictions, references)
        return {m: ratio(outcomes) for m, ratio in self.ratios.items()}

    def outcomes(self, predictions: list, references: list) -> list[dict[str, float]]:
        """One record of counts per scored item (``ratios`` name its columns)."""
        raise NotImplementedError

    def outcome_ids(self, rows: list[dict]) -> list[str]:
        """The id of each record :meth:`outcomes` gives: the test utterances' (a trial task: its trials')."""
        return [r["id"] for r in rows]

    def intervals(self, outcomes: list[dict[str, float]]) -> dict[str, tuple[float, float]]:
        """95% bootstrap interval of each metric over the scored items of ``outcomes``."""
        return {m: bootstrap_interval(outcomes, ratio) for m, ratio in self.ratios.items()}

    def metric_from_outcomes(self, outcomes: list[dict[str, float]], metric: str | None = None) -> float:
        """``metric`` (default: the main one) of the items of ``outcomes``: equal to ``score``'s."""
        return self.ratios[metric or self.metric](outcomes)

    def score_untrained(self, data: dict[str, Any], *, layer: str | int = "weighted") -> dict[str, Any]:
        """A task that trains no head (``trains_head = False``): its ``dev`` and ``test`` metrics, the test
        ``outcomes`` (and their ``outcome_ids``) from the cached hidden states of each split (``data``:
        split -> :class:`downstream.benchmark.CachedFeatures`); other keys go into ``results.json``."""
        raise NotImplementedError

    def chance(self, train_rows: list[dict], test_rows: list[dict]) -> float:
        """The main metric of a system that ignores the audio."""
        raise NotImplementedError

    def sample_weights(self, rows: list[dict]) -> list[float] | None:
        """Training draw weights of ``rows``; None (the default) visits every row once an epoch."""
        return None

    def describe(self) -> dict[str, Any]:
        """What ``results.json`` says of the task's metrics: the main one, and each one's direction and unit."""
        return {"metric": self.metric, "higher_is_better": self.higher_is_better, "order": self.order,
                "metrics": {m: info.as_json() for m, info in self.metrics.items()}}

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
_discovered = False


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: make ``cls`` a task under ``cls.name``."""
    if not (dataclasses.is_dataclass(cls.Config) and issubclass(cls.Config, TaskConfig)):
        raise TypeError(f"task '{cls.name}': Config {cls.Config} is not a TaskConfig dataclass")
    if cls.metric not in cls.metrics:
        raise TypeError(f"task '{cls.name}': main metric '{cls.metric}' is not among its metrics")
    if cls.name in TASKS and TASKS[cls.name] is not cls:
        raise ConfigError(f"task '{cls.name}' registered twice ({TASKS[cls.name]} and {cls})")
    TASKS[cls.name] = cls
    return cls


def _discover() -> None:
    """Import every module of the ``downstream`` package: the task modules register themselves."""
    global _discovered
    if _discovered:
        return
    import downstream

    for module in pkgutil.iter_modules(downstream.__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"downstream.{module.name}")
    _discovered = True


def list_tasks() -> list[str]:
    """Names of every registered task, sorted."""
    _discover()
    return sorted(TASKS)


def task_class(name: str) -> type[Task]:
    _discover()
    if name not in TASKS:
        raise ConfigError(f"unknown task '{name}'; known: {', '.join(sorted(TASKS))}")
    return TASKS[name]


def get_task(name: str, **options: Any) -> Task:
    """A fresh instance of task ``name`` with its ``Config`` set from ``options``; a misspelt option raises."""
    cls = task_class(name)
    known = {f.name for f in dataclasses.fields(cls.Config)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(
            f"task '{name}': unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known - {'name'}))}"
        )
    return cls(cls.Config(**{**options, "name": name}))
