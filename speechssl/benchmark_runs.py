"""Benchmark runs as the report reads them: every ``results.json``, the run chosen on dev, the comparisons.

:func:`load_benchmark` reads every folder below a directory whose ``results.json``
has ``"kind": "benchmark"`` (other results, such as pretraining runs, are skipped)
into a :class:`Benchmark`: per (upstream, checkpoint, corpus, task) a
:class:`Sweep` of its runs and the one with the best **dev** metric, as SUPERB
picks the learning rate per task on dev. :func:`compare` gives each upstream's
:class:`Row` of a task (its test score, spread over init seeds, 95% bootstrap
interval) and every two rows' :class:`Difference`, bootstrapped paired where both
scored the same test utterances. :mod:`speechssl.report` renders all of it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from speechssl.bootstrap import (
    Ratio,
    excludes_zero,
    percentile_interval,
    read_outcomes,
    resample_indices,
    separated,
)
from speechssl.errors import ConfigError

log = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
METRICS_FILE = "metrics.jsonl"
TSV_COLUMNS = ["upstream", "ckpt", "layer", "trainable", "init", "init_seed", "corpus", "task", "metric", "dev", "test",
               "test_low", "test_high", "lr", "chosen", "run_dir"]


def task_name(task: str) -> str:
    """A task's name as SUPERB writes it: ``pr`` -> ``PR``, ``qbe`` -> ``QbE``."""
    return {"qbe": "QbE"}.get(task, task.upper())


@dataclass(frozen=True)
class BenchmarkRun:
    """One downstream run, as read from its ``results.json``."""

    run_dir: Path
    upstream: str
    ckpt: str | None
    corpus: str
    task: str
    metric: str
    higher_is_better: bool
    chance: float | None
    lr: float | None
    dev: float  # the main metric on dev
    test: float  # the main metric on test
    layer_weights: list[float] | None
    step: int | None
    layer: str | int = "weighted"  # the Featurizer's layer: SUPERB's weighted sum, or one hidden state
    trainable: bool = False  # the upstream fine-tuned with the head, not frozen
    data_root: str | None = None  # the corpus folder, told apart when two share a corpus name
    test_interval: tuple[float, float] | None = None  # 95% bootstrap interval of the test metric
    outcomes: str | None = None  # the per-utterance test outcomes (a TSV), relative to run_dir
    ratio: Ratio | None = None  # how the metric is made from the outcomes' columns
    init: str = "pretrained"  # or "random": the same architecture untrained, the control
    init_seed: int | None = None  # the random init's seed
    metric_label: str = ""  # how the metric is named in a table (``PER``); "" -> the metric's key
    unit: str = "%"  # "%": a fraction shown as a percentage; "": shown as it is
    order: int = 1000  # the task's column in SUPERB's table order (the task says it: Task.order)
    name: str | None = None  # the row's name given at benchmark time (label=); None: made from upstream and ckpt

    @property
    def metric_name(self) -> str:
        return self.metric_label or self.metric

    @property
    def arrow(self) -> str:
        """Which way is better: ``↑`` (higher) or ``↓`` (lower)."""
        return "↑" if self.higher_is_better else "↓"

    @property
    def column_header(self) -> str:
        """``KS accuracy ↑``: the task, its metric and which way is better."""
        return f"{task_name(self.task)} {self.metric_name} {self.arrow}"

    @property
    def table_key(self) -> tuple:
        """Upstream, corpus, then the task's column (SUPERB's table order, which the run's task wrote)."""
        return (self.label, self.corpus, self.order, self.task)

    @property
    def label(self) -> str:
        """The row name: ``apc`` for a baseline or default weights, ``apc (runs/apc/last)`` with a checkpoint.

        Runs outside SUPERB's protocol are rows of their own, never pooled with it:
        ``apc, layer=last`` (one hidden state), ``apc, fine-tuned`` (upstream trained).
        The random-init control is ``apc (random init)`` (``apc (random init, config of
        runs/apc/last)`` when built from a checkpoint's config), every init seed in one row.
        A run benchmarked with ``label=NAME`` is ``NAME`` (its control ``NAME (random init)``).
        """
        if self.name is not None:  # named at benchmark time (label=NAME): the name stands for upstream and ckpt
            label = self.name + (" (random init)" if self.init == "random" else "")
        elif self.init == "random":
            label = f"{self.upstream} (random init" + (f", config of {_short_path(self.ckpt)})" if self.ckpt else ")")
        else:
            label = self.upstream if self.ckpt is None else f"{self.upstream} ({_short_path(self.ckpt)})"
        if self.layer != "weighted":
            label += f", layer={self.layer}"
        return label + (", fine-tuned" if self.trainable else "")

    @property
    def row_key(self) -> tuple:
        """Where the row goes: by upstream and checkpoint, a random-init control right after its pretrained row."""
        return (self.upstream, self.ckpt or "", str(self.layer), self.trainable, self.init != "pretrained", self.label)

    @property
    def seed_key(self) -> int:
        """The init seed a control's lr is chosen within (every pretrained run: one group)."""
        return -1 if self.init != "random" or self.init_seed is None else self.init_seed

    def dev_rank(self) -> float:
        """The dev metric signed so that larger is better; a NaN (a diverged run) ranks last."""
        if math.isnan(self.dev):
            return -math.inf
        return self.dev if self.higher_is_better else -self.dev


@dataclass
class Sweep:
    """The runs of one (upstream, checkpoint, corpus, task), sorted by (init seed, lr), and the ones chosen on dev.

    ``chosen_runs``: the best-dev run of each init seed (one, but for a random-init
    control run with several seeds); ``chosen`` is the first of them (its plots stand for the row).
    """

    runs: list[BenchmarkRun]
    chosen: BenchmarkRun
    chosen_runs: list[BenchmarkRun] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.chosen_runs = self.chosen_runs or [self.chosen]

    def is_chosen(self, run: BenchmarkRun) -> bool:
        """Whether ``run`` is one of the chosen runs (by identity: two runs may hold equal numbers)."""
        return any(run is c for c in self.chosen_runs)


@dataclass
class Row:
    """A table cell: the chosen run(s) of one upstream on one task, summarised over init seeds."""

    label: str
    runs: list[BenchmarkRun]  # the chosen run of each init seed
    score: float  # test metric, the mean over seeds
    spread: float | None  # standard deviation over seeds (two or more)
    interval: tuple[float, float] | None  # 95% bootstrap interval of ``score`` over the test utterances
    resampled: np.ndarray | None = None  # (R,) ``score`` on each resample of the test utterances of ``utterances``
    utterances: tuple[str, ...] | None = None  # the test ids its outcomes cover, sorted


@dataclass
class Difference:
    """Two upstreams on one task: ``better`` scores ``delta`` better than ``worse`` on test."""

    better: str
    worse: str
    delta: float  # better's score minus worse's, in the metric's units
    interval: tuple[float, float] | None  # paired-bootstrap 95% interval of delta (None: not paired)
    separated: bool  # the interval excludes zero; unpaired: the two rows' intervals do not overlap


@dataclass
class Benchmark:
    """Every benchmark run under ``runs_dir``, grouped into sweeps."""

    runs_dir: Path
    runs: list[BenchmarkRun]
    sweeps: dict[tuple[str, str, str], Sweep]  # (label, corpus, task) -> sweep
    _compared: dict[tuple[str, str], tuple[dict[str, Row], list[Difference]]] = field(
        default_factory=dict, repr=False)  # (corpus, task) -> compare()'s answer, computed once

    @property
    def corpora(self) -> list[str]:
        return sorted({run.corpus for run in self.runs})

    def tasks(self, corpus: str) -> list[str]:
        """The tasks run on ``corpus``, in the order their runs give (SUPERB's table: ``Task.order``), then by name."""
        order = {r.task: r.order for r in self.runs if r.corpus == corpus}
        return sorted(order, key=lambda task: (order[task], task))

    def labels(self, corpus: str | None = None) -> list[str]:
        """Row names in :attr:`BenchmarkRun.row_key` order: a control follows its pretrained upstream."""
        runs = [r for r in self.runs if corpus is None or r.corpus == corpus]
        return list(dict.fromkeys(key[-1] for key in sorted({r.row_key for r in runs})))

    def task_info(self, corpus: str, task: str) -> BenchmarkRun:
        """Any run of the task (they agree on metric, direction and chance: checked when loading)."""
        return next(r for r in self.runs if r.corpus == corpus and r.task == task)


# -- reading -----------------------------------------------------------------------------


def read_run(path: Path) -> BenchmarkRun | None:
    """The benchmark run of a ``results.json``; ``None`` when it holds another kind of results."""
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict) or data.get("kind") != "benchmark":
        return None

    def field(key: str, types: type | tuple, optional: bool = False) -> Any:
        value = data.get(key)
        if value is None and optional:
            return None
        if not isinstance(value, types) or isinstance(value, bool) and bool not in _as_tuple(types):
            raise ConfigError(f"{path}: '{key}' should be {_type_names(types)}, found {value!r}")
        return value

    metric = field("metric", str)
    scores = {}
    for split in ("dev", "test"):
        values = field(split, dict)
        if split == "dev" and not values:  # a task without a dev split (ASV): nothing chosen on dev
            scores[split] = math.nan
            continue
        if not isinstance(values.get(metric), (int, float)) or isinstance(values.get(metric), bool):
            raise ConfigError(f"{path}: '{split}.{metric}' should be a number, found {values.get(metric)!r}")
        scores[split] = float(values[metric])
    weights = field("layer_weights", list, optional=True)
    if weights is not None and not all(isinstance(w, (int, float)) for w in weights):
        raise ConfigError(f"{path}: 'layer_weights' should be a list of numbers, found {weights!r}")
    interval = (field("test_interval", dict, optional=True) or {}).get(metric)
    if interval is not None and not (isinstance(interval, list) and len(interval) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in interval)):
        raise ConfigError(f"{path}: 'test_interval.{metric}' should be [low, high], found {interval!r}")
    ratio = (field("outcome_ratios", dict, optional=True) or {}).get(metric)
    if ratio is not None and not (isinstance(ratio, list) and len(ratio) == 2 and isinstance(ratio[0], str)
                                  and isinstance(ratio[1], (str, type(None)))):
        raise ConfigError(f"{path}: 'outcome_ratios.{metric}' should be [numerator, denominator or null], "
                          f"found {ratio!r}")
    init = _default(field("init", str, optional=True), "pretrained")
    if init not in ("pretrained", "random"):
        raise ConfigError(f"{path}: 'init' should be \"pretrained\" or \"random\", found {init!r}")
    info = (field("metrics", dict, optional=True) or {}).get(metric) or {}
    if (not isinstance(info, dict) or not isinstance(info.get("label", ""), str)
            or info.get("unit", "%") not in ("%", "")):
        raise ConfigError(f"{path}: 'metrics.{metric}' should be {{label, higher_is_better, unit: '%' or ''}}, "
                          f"found {info!r}")
    return BenchmarkRun(
        metric_label=info.get("label", ""),
        unit=info.get("unit", "%"),
        order=_default(field("order", int, optional=True), 1000),
        run_dir=path.parent,
        upstream=field("upstream", str),
        ckpt=field("ckpt", str, optional=True),
        corpus=field("corpus", str),
        task=field("task", str),
        metric=metric,
        higher_is_better=field("higher_is_better", bool),
        chance=_optional_float(field("chance", (int, float), optional=True)),
        lr=_optional_float(field("lr", (int, float), optional=True)),
        dev=scores["dev"],
        test=scores["test"],
        layer_weights=weights,
        step=field("step", int, optional=True),
        layer=_default(field("layer", (str, int), optional=True), "weighted"),
        trainable=bool(field("trainable", bool, optional=True)),
        data_root=field("data_root", str, optional=True),
        test_interval=None if interval is None else (float(interval[0]), float(interval[1])),
        outcomes=field("test_outcomes", str, optional=True),
        ratio=None if ratio is None else Ratio(*ratio),
        init=init,
        init_seed=field("init_seed", int, optional=True),
        name=field("label", str, optional=True),
    )


def load_benchmark(runs_dir: str | os.PathLike) -> Benchmark:
    """Every benchmark run below ``runs_dir`` (searched recursively), grouped and with the best-dev run chosen."""
    runs_dir = Path(runs_dir)
    if not runs_dir.exists():
        raise ConfigError(f"runs={runs_dir}: no such folder")
    if not runs_dir.is_dir():
        raise ConfigError(f"runs={runs_dir}: not a folder")
    found = sorted(runs_dir.rglob(RESULTS_FILE))
    runs = [run for run in map(read_run, found) if run is not None]
    if not runs:
        raise ConfigError(
            f"no benchmark results under {runs_dir.resolve()}: looked for {RESULTS_FILE} with \"kind\": \"benchmark\" "
            f"in every folder below it and found {len(found)} {RESULTS_FILE} file(s), none of a benchmark run"
        )
    runs = _tell_corpora_apart(runs)
    _check_tasks_agree(runs)
    groups: dict[tuple[str, str, str], list[BenchmarkRun]] = defaultdict(list)
    for run in runs:
        groups[run.label, run.corpus, run.task].append(run)
    sweeps = {}
    for key, group in groups.items():
        group.sort(key=lambda r: (r.seed_key, math.inf if r.lr is None else r.lr, str(r.run_dir)))
        seeds: dict[int, list[BenchmarkRun]] = defaultdict(list)
        for run in group:
            seeds[run.seed_key].append(run)
        chosen = [max(runs, key=BenchmarkRun.dev_rank) for runs in seeds.values()]  # max keeps the first of ties
        sweeps[key] = Sweep(group, chosen[0], chosen)
    skipped = len(found) - len(runs)
    log.info("read %d benchmark run(s) under %s (%d other results skipped)", len(runs), runs_dir, skipped)
    return Benchmark(runs_dir, runs, sweeps)


def _tell_corpora_apart(runs: list[BenchmarkRun]) -> list[BenchmarkRun]:
    """Runs on two folders of one corpus name (SUPERB-lite tiny and small) get ``name (folder)`` as corpus."""
    roots: dict[str, set] = defaultdict(set)
    for run in runs:
        roots[run.corpus].add(run.data_root)
    return [
        dataclasses.replace(run, corpus=f"{run.corpus} ({_short_path(run.data_root or '?')})")
        if len(roots[run.corpus]) > 1 else run
        for run in runs
    ]


def read_curves(run_dir: Path, metric: str) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """``(step, training loss)`` and ``(step, dev_<metric>)`` points from a run's ``metrics.jsonl``.

    A missing file gives no points; a line that is not JSON (a run killed while
    writing) is skipped with a warning naming it; of two values at one step the later is kept.
    """
    path = run_dir / METRICS_FILE
    losses: dict[int, float] = {}
    devs: dict[int, float] = {}
    if not path.exists():
        return [], []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            step = int(row["step"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            log.warning("%s:%d: not a metrics line with a step, skipped: %.80s", path, number, line)
            continue
        if isinstance(row.get("loss"), (int, float)):
            losses[step] = float(row["loss"])
        if isinstance(row.get(f"dev_{metric}"), (int, float)):
            devs[step] = float(row[f"dev_{metric}"])
    return sorted(losses.items()), sorted(devs.items())


# -- intervals and differences ------------------------------------------------------------


def compare(bench: Benchmark, corpus: str, task: str) -> tuple[dict[str, Row], list[Difference]]:
    """Each upstream's :class:`Row` of a task, and every two rows' :class:`Difference` (computed once).

    Rows whose chosen runs kept their outcomes of the same test utterances share one
    set of resamples (1000, seed 0, in the order of the first such run's file), so a
    difference is bootstrapped paired and a row of several init seeds gets the
    interval of their mean. A row of one run keeps the interval its ``results.json``
    holds (the same resamples when its file is the first of its test set). Other
    pairs are compared by whether their intervals overlap.
    """
    if (corpus, task) in bench._compared:
        return bench._compared[corpus, task]
    rows: dict[str, Row] = {}
    order: dict[tuple[str, ...], list[str]] = {}  # sorted ids -> the ids in the order resampled
    tables: dict[str, list[list[dict[str, int]]]] = {}
    for label in bench.labels(corpus):
        sweep = bench.sweeps.get((label, corpus, task))
        if sweep is None:
            continue
        runs = sweep.chosen_runs
        tests = [run.test for run in runs]
        score = sum(tests) / len(tests)
        spread = float(np.std(tests, ddof=1)) if len(tests) > 1 else None
        rows[label] = Row(label, runs, score, spread, runs[0].test_interval if len(runs) == 1 else None)
        outcomes = [_read_run_outcomes(run) for run in runs]
        if all(o is not None for o in outcomes) and len({tuple(sorted(ids)) for ids, _ in outcomes}) == 1:
            key = tuple(sorted(outcomes[0][0]))
            resampled_order = order.setdefault(key, outcomes[0][0])
            rows[label].utterances = key
            tables[label] = [[dict(zip(ids, table))[utt] for utt in resampled_order] for ids, table in outcomes]
    indices = {key: resample_indices(len(ids)) for key, ids in order.items()}
    for label, aligned in tables.items():
        row = rows[label]
        index = indices[row.utterances]
        row.resampled = np.mean([run.ratio.resampled(t, index) for run, t in zip(row.runs, aligned)], axis=0)
        if row.interval is None:
            row.interval = percentile_interval(row.resampled)
    differences = []
    labels = [label for label, row in rows.items() if not math.isnan(row.score)]
    for i, first in enumerate(labels):
        for second in labels[i + 1:]:
            a, b = rows[first], rows[second]
            if (a.score < b.score) == a.runs[0].higher_is_better and a.score != b.score:
                a, b = b, a
            delta = a.score - b.score
            if a.resampled is not None and b.resampled is not None and a.utterances == b.utterances:
                interval = percentile_interval(a.resampled - b.resampled)
                differences.append(Difference(a.label, b.label, delta, interval, excludes_zero(interval)))
            elif a.interval is not None and b.interval is not None:
                differences.append(Difference(a.label, b.label, delta, None, separated(a.interval, b.interval)))
    bench._compared[corpus, task] = rows, differences
    return rows, differences


def _read_run_outcomes(run: BenchmarkRun) -> tuple[list[str], list[dict[str, int]]] | None:
    """A run's ``(ids, outcomes)``; None without them (a run from before they were kept, or a file gone: warned)."""
    if run.outcomes is None or run.ratio is None:
        return None
    path = run.run_dir / run.outcomes
    if not path.exists():
        log.warning("%s: no such file (named by %s); its run is compared by its interval alone",
                    path, run.run_dir / RESULTS_FILE)
        return None
    ids, outcomes = read_outcomes(path)
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{path}: {len(ids) - len(set(ids))} utterance id(s) repeated")
    return ids, outcomes


# -- helpers -----------------------------------------------------------------------------


def _check_tasks_agree(runs: list[BenchmarkRun]) -> None:
    """Runs of one task on one corpus must share metric, direction and chance, or the table would mix them."""
    first: dict[tuple[str, str], BenchmarkRun] = {}
    for run in runs:
        ref = first.setdefault((run.corpus, run.task), run)
        mine, theirs = (run.metric, run.higher_is_better, run.chance), (ref.metric, ref.higher_is_better, ref.chance)
        if mine != theirs:
            raise ConfigError(
                f"{run.run_dir / RESULTS_FILE} scores task '{run.task}' on '{run.corpus}' as "
                f"(metric, higher_is_better, chance) = {mine}, but {ref.run_dir / RESULTS_FILE} as {theirs}"
            )


def _default(value: Any, default: Any) -> Any:
    return default if value is None else value


def _short_path(path: str) -> str:
    """A checkpoint path relative to the working folder when it lies below it, else as given."""
    try:
        return str(Path(path).relative_to(Path.cwd())) if Path(path).is_absolute() else path
    except ValueError:
        return path


def _optional_float(value: float | None) -> float | None:
    return None if value is None else float(value)


def _as_tuple(types: type | tuple) -> tuple:
    return types if isinstance(types, tuple) else (types,)


def _type_names(types: type | tuple) -> str:
    if float in _as_tuple(types):
        return "a number"
    return {str: "a string", dict: "an object", list: "a list", bool: "true or false", int: "an integer"}[types]
