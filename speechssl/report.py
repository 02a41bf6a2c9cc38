"""Benchmark results -> a Markdown table, per-lr sweep tables, plots and a TSV.

Used by ``speechssl report runs=DIR``. Every folder below ``DIR`` whose
``results.json`` has ``"kind": "benchmark"`` is one downstream run (Hydra ``-m``
sweeps put them in ``DIR/<N>/``); other results (pretraining runs) are skipped.
For each (upstream, checkpoint, corpus, task) the run with the best **dev**
metric is chosen, as SUPERB picks the learning rate per task on dev, and its
**test** metric is what the table shows, with its 95% bootstrap interval over the
test utterances. A random-init control (``init=random``: the same architecture
untrained) is a row of its own, ``apc (random init)``; with several init seeds
the lr is chosen per seed and the cell gives their mean and standard deviation.
The report folder gets:

- ``README.md``: one table per corpus, upstreams x tasks, each column with its
  metric, direction (↑ higher is better, ↓ lower) and a row of chance levels;
  per task, which differences between upstreams the test set separates (a
  paired bootstrap where two runs scored the same utterances, from their
  ``test_outcomes.tsv``; else whether their intervals overlap); a table per
  swept (upstream, task): lr -> dev, test, the chosen run marked; the plots
  below, embedded.
- ``layer_weights_<upstream>.png``: per upstream, a bar chart per task of the
  chosen run's learned weights of the hidden states (SUPERB's weighted sum).
- ``curves_<task>.png``: training loss and dev metric against step, one line
  per upstream (chosen runs), from each run's ``metrics.jsonl``.
- ``results.tsv``: every run, one row each, raw numbers, the chosen ones marked.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import re
from collections import defaultdict
from collections.abc import Iterable
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
from speechssl.checkpoint import atomic_write
from speechssl.errors import ConfigError

log = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
METRICS_FILE = "metrics.jsonl"
TSV_COLUMNS = ["upstream", "ckpt", "layer", "trainable", "init", "init_seed", "corpus", "task", "metric", "dev", "test",
               "test_low", "test_high", "lr", "chosen", "run_dir"]

# The order of SUPERB's tables (Yang et al., 2021, Table 1); other tasks follow by name.
TASK_ORDER = ["pr", "ks", "ic", "sid", "er", "asr"]
# Metrics stored as fractions in [0, 1] and shown as percentages.
PERCENT_METRICS = {"accuracy", "per", "wer", "cer", "eer", "f1"}
METRIC_NAMES = {"accuracy": "accuracy", "per": "PER", "wer": "WER", "cer": "CER", "eer": "EER", "f1": "F1"}


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

    @property
    def label(self) -> str:
        """The row name: ``apc`` for a baseline or default weights, ``apc (runs/apc/last)`` with a checkpoint.

        Runs outside SUPERB's protocol are rows of their own, never pooled with it:
        ``apc, layer=last`` (one hidden state), ``apc, fine-tuned`` (upstream trained).
        The random-init control is ``apc (random init)`` (``apc (random init, config of
        runs/apc/last)`` when built from a checkpoint's config), every init seed in one row.
        """
        if self.init == "random":
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
        return sorted({r.task for r in self.runs if r.corpus == corpus}, key=_task_key)

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
    return BenchmarkRun(
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


# -- Markdown ----------------------------------------------------------------------------


def format_score(value: float | None, metric: str) -> str:
    """``0.4812`` -> ``48.12%`` for accuracy, PER, WER...; other metrics to 4 significant digits."""
    if value is None:
        return "–"
    if math.isnan(value):
        return "nan"
    return f"{100 * value:.2f}%" if metric in PERCENT_METRICS else f"{value:.4g}"


def format_interval(interval: tuple[float, float] | None, metric: str) -> str:
    """``(0.557, 0.591)`` -> ``[55.70–59.10]`` (percentage points for a percent metric); None -> ``""``."""
    if interval is None:
        return ""
    if metric in PERCENT_METRICS:
        return f"[{100 * interval[0]:.2f}–{100 * interval[1]:.2f}]"
    return f"[{interval[0]:.4g}–{interval[1]:.4g}]"


def format_cell(row: Row, metric: str) -> str:
    """``58.00% [55.70–59.10]``; several init seeds: ``58.00% ± 1.20 [55.70–59.10] (3 seeds)``."""
    parts = [format_score(row.score, metric)]
    if row.spread is not None:
        parts.append(f"± {100 * row.spread:.2f}" if metric in PERCENT_METRICS else f"± {row.spread:.4g}")
    parts.append(format_interval(row.interval, metric))
    if len(row.runs) > 1:
        parts.append(f"({len(row.runs)} seeds)")
    return " ".join(p for p in parts if p)


def _format_delta(value: float, metric: str) -> str:
    return f"{100 * value:+.2f}" if metric in PERCENT_METRICS else f"{value:+.4g}"


def column_header(run: BenchmarkRun) -> str:
    """``KS accuracy ↑``: the task, its metric and which way is better."""
    arrow = "↑" if run.higher_is_better else "↓"
    return f"{run.task.upper()} {METRIC_NAMES.get(run.metric, run.metric)} {arrow}"


def results_tables(bench: Benchmark) -> str:
    """The main tables, one per corpus: upstreams x tasks, test metric of the best-dev run, and chance levels."""
    parts = []
    for corpus in bench.corpora:
        tasks = bench.tasks(corpus)
        infos = [bench.task_info(corpus, task) for task in tasks]
        rows = [["upstream", *map(column_header, infos)]]
        compared = {task: compare(bench, corpus, task)[0] for task in tasks}
        best = {task: _best_labels(compared[task]) for task in tasks}
        for label in bench.labels(corpus):
            row = [label]
            for task, info in zip(tasks, infos):
                cells = compared[task]
                cell = format_cell(cells[label], info.metric) if label in cells else "–"
                row.append(f"**{cell}**" if label in best[task] else cell)
            rows.append(row)
        rows.append(["*chance*", *(f"*{format_score(i.chance, i.metric)}*" for i in infos)])
        parts.append(f"### {corpus}\n\n{_markdown_table(rows, right=range(1, len(rows[0])))}")
    footnote = (
        "Each cell: the **test** score of the run with the best **dev** score among the learning rates tried "
        "for that upstream and task (SUPERB's protocol); ↑ higher is better, ↓ lower is better; "
        "the best upstream of each column in bold (none where all tie); –: not run; "
        "[low–high]: the 95% percentile-bootstrap interval over the test utterances (1000 resamples); "
        "a random-init control with several init seeds: their mean ± standard deviation, the lr chosen per seed; "
        "*chance*: the task's chance level, as its runs report it."
    )
    return "\n\n".join(parts) + "\n\n" + footnote


def difference_tables(bench: Benchmark) -> str:
    """Per corpus, every two upstreams of a task: the test difference, its paired interval, whether it is separated.

    Empty when no two rows of a task have intervals (runs from before they were recorded).
    """
    parts = []
    for corpus in bench.corpora:
        rows = [["task", "better", "than", "Δ", "95% interval of Δ", "separated"]]
        for task in bench.tasks(corpus):
            info = bench.task_info(corpus, task)
            for d in compare(bench, corpus, task)[1]:
                interval = "–" if d.interval is None else (
                    f"[{_format_delta(d.interval[0], info.metric)}, {_format_delta(d.interval[1], info.metric)}]")
                how = "paired" if d.interval is not None else "intervals"
                rows.append([column_header(info), d.better, d.worse, _format_delta(d.delta, info.metric), interval,
                             f"{'✓' if d.separated else 'no'} ({how})"])
        if len(rows) > 1:
            parts.append(f"### {corpus}\n\n{_markdown_table(rows, right={3, 4})}")
    if not parts:
        return ""
    footnote = (
        "Δ: the first upstream's test score minus the second's (percentage points for percent metrics), the first "
        "scoring better. *paired*: both runs scored the same test utterances, and Δ's 95% interval comes from "
        "resampling those utterances with replacement (1000 resamples, the same for both): ✓ when it excludes 0. "
        "*intervals*: the runs scored different utterances, and ✓ means their own 95% intervals do not overlap "
        "(a stricter test). no: this test set does not tell the two apart."
    )
    return "\n\n".join(parts) + "\n\n" + footnote


def sweep_tables(bench: Benchmark) -> str:
    """One table per swept (upstream, corpus, task): lr, dev, test, steps, run folder; the chosen run marked ✓."""
    parts = []
    for (label, corpus, task), sweep in sorted(bench.sweeps.items(), key=lambda kv: _sweep_key(kv[0])):
        if len(sweep.runs) < 2:
            continue
        info = sweep.chosen
        metric = METRIC_NAMES.get(info.metric, info.metric)
        seeds = len(sweep.chosen_runs) > 1  # a control of several init seeds: its lr is chosen per seed
        rows = [[*(["init seed"] if seeds else []), "lr", f"dev {metric}", f"test {metric}", "steps", "run", "chosen"]]
        for run in sweep.runs:
            test = " ".join(filter(None, [format_score(run.test, run.metric),
                                          format_interval(run.test_interval, run.metric)]))
            rows.append([
                *([str(run.init_seed)] if seeds else []),
                "–" if run.lr is None else f"{run.lr:g}",
                format_score(run.dev, run.metric),
                test,
                "–" if run.step is None else str(run.step),
                f"`{_relative(run.run_dir, bench.runs_dir)}`",
                "✓" if any(run is c for c in sweep.chosen_runs) else "",
            ])
        right = {int(seeds) + i for i in (1, 2, 3)}
        parts.append(f"### {label} · {column_header(info)} · {corpus}\n\n{_markdown_table(rows, right=right)}")
    return "\n\n".join(parts)


def _markdown_table(rows: list[list[str]], right: Iterable[int]) -> str:
    """A padded Markdown table, header first; the columns in ``right`` (numbers) aligned right."""
    right = set(right)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(rows[0], widths)) + " |"]
    lines.append("|" + "|".join("-" * (w + 1) + (":" if i in right else "-") for i, w in enumerate(widths)) + "|")
    for row in rows[1:]:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- plots -------------------------------------------------------------------------------


def plot_layer_weights(bench: Benchmark, label: str, path: Path) -> bool:
    """Bar charts of the chosen runs' layer weights of one upstream, a subplot per (corpus, task).

    Returns ``False`` (and writes nothing) when no chosen run has more than one
    weight: a baseline such as ``fbank`` has a single hidden state.
    """
    chosen = [s.chosen for (lab, _, _), s in sorted(bench.sweeps.items(), key=lambda kv: _sweep_key(kv[0]))
              if lab == label and s.chosen.layer_weights and len(s.chosen.layer_weights) > 1]
    if not chosen:
        return False
    cols = min(3, len(chosen))
    rows = math.ceil(len(chosen) / cols)
    figure = _figure(width=max(4.5, 3.6 * cols), height=0.5 + 2.8 * rows)
    axes = figure.subplots(rows, cols, sharey=True, squeeze=False)
    for ax, run in zip(axes.flat, chosen):
        ax.bar(range(len(run.layer_weights)), run.layer_weights, color="tab:blue")
        # uniform over the states that take part (the Featurizer gives states of another size weight 0)
        used = sum(1 for w in run.layer_weights if w > 0) or len(run.layer_weights)
        ax.axhline(1 / used, color="gray", linestyle="--", linewidth=1)
        corpus = f" · {run.corpus}" if len(bench.corpora) > 1 else ""
        ax.set_title(f"{run.task.upper()}{corpus}" + (f" (lr {run.lr:g})" if run.lr is not None else ""))
        ax.set_xlabel("hidden state (0 = encoder input)")
        ax.xaxis.get_major_locator().set_params(integer=True)
    for ax in axes.flat[len(chosen):]:
        ax.set_axis_off()
    for ax in axes[:, 0]:
        ax.set_ylabel("learned weight")
    figure.suptitle(f"{label}: learned layer weights (dashed: uniform)")
    _save(figure, path)
    return True


def plot_curves(bench: Benchmark, corpus: str, task: str, path: Path) -> bool:
    """Training loss and dev metric against step for a task, one line per upstream (its chosen run).

    Returns ``False`` (and writes nothing) when no chosen run logged any metrics.
    """
    info = bench.task_info(corpus, task)
    percent = info.metric in PERCENT_METRICS
    lines = []
    for label in bench.labels(corpus):
        sweep = bench.sweeps.get((label, corpus, task))
        if sweep is not None:
            losses, devs = read_curves(sweep.chosen.run_dir, info.metric)
            if losses or devs:
                lines.append((label, losses, devs))
    if not lines:
        return False
    figure = _figure(width=10.0, height=3.8)
    loss_ax, dev_ax = figure.subplots(1, 2)
    for i, (label, losses, devs) in enumerate(lines):
        color = f"C{i}"  # one colour per upstream in both panels
        if losses:
            loss_ax.plot(*zip(*losses), color=color, label=label)
        if devs:
            dev_ax.plot([s for s, _ in devs], [100 * v if percent else v for _, v in devs], color=color, marker="o",
                        label=label)
    metric = METRIC_NAMES.get(info.metric, info.metric)
    loss_ax.set(title="training loss", xlabel="step", ylabel="loss")
    dev_ax.set(title=f"dev {metric} {'↑' if info.higher_is_better else '↓'}", xlabel="step",
               ylabel=f"{metric} (%)" if percent else metric)
    for ax in (loss_ax, dev_ax):
        ax.grid(alpha=0.3)
    (dev_ax if any(devs for _, _, devs in lines) else loss_ax).legend(fontsize="small")
    figure.suptitle(f"{task.upper()} on {corpus}: learning curves of the chosen runs")
    _save(figure, path)
    return True


def _figure(width: float, height: float):
    """A Matplotlib figure drawn by Agg: no pyplot, no global backend, no display needed."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _save(figure, path: Path) -> None:
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110))


# -- the report --------------------------------------------------------------------------


def write_report(bench: Benchmark, out_dir: str | os.PathLike | None = None) -> Path:
    """Write ``README.md``, ``results.tsv`` and the plots of ``bench`` into ``out_dir`` (default ``runs_dir/report``).

    Returns the README's path.
    """
    out_dir = bench.runs_dir / "report" if out_dir is None else Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_tsv(bench, out_dir / "results.tsv")

    sections = [f"# Benchmark results\n\n{len(bench.runs)} run(s) under `{bench.runs_dir}`.", "## Results",
                results_tables(bench)]
    differences = difference_tables(bench)
    if differences:
        sections += ["## Differences between upstreams", differences]
    sweeps = sweep_tables(bench)
    if sweeps:
        sections += ["## Learning-rate sweeps", sweeps]
    weights = []
    for label in bench.labels():
        name = f"layer_weights_{_slug(label)}.png"
        if plot_layer_weights(bench, label, out_dir / name):
            weights.append(f"![layer weights of {label}]({name})")
    if weights:
        sections += ["## Learned layer weights", "Chosen runs; hidden state 0 is the encoder's input.", *weights]
    curves = []
    multi_corpus = len(bench.corpora) > 1
    for corpus in bench.corpora:
        for task in bench.tasks(corpus):
            name = f"curves_{_slug(corpus) + '_' if multi_corpus else ''}{_slug(task)}.png"
            if plot_curves(bench, corpus, task, out_dir / name):
                curves.append(f"![learning curves of {task.upper()} on {corpus}]({name})")
    if curves:
        sections += ["## Learning curves", *curves]
    readme = out_dir / "README.md"
    text = "\n\n".join(sections) + "\n"
    atomic_write(readme, lambda tmp: Path(tmp).write_text(text))
    log.info("wrote %s (%d plot(s))", readme, len(weights) + len(curves))
    return readme


def report(runs_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> Path:
    """Read the benchmark runs under ``runs_dir`` and write the report to ``out_dir`` (default ``runs_dir/report``)."""
    return write_report(load_benchmark(runs_dir), out_dir)


def _write_tsv(bench: Benchmark, path: Path) -> None:
    chosen = {id(run) for s in bench.sweeps.values() for run in s.chosen_runs}

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f, delimiter="\t", lineterminator="\n")
            writer.writerow(TSV_COLUMNS)
            for run in sorted(bench.runs, key=lambda r: (_sweep_key((r.label, r.corpus, r.task)), r.seed_key,
                                                         r.lr or 0.0)):
                low, high = ("", "") if run.test_interval is None else map(repr, run.test_interval)
                writer.writerow([run.upstream, run.ckpt or "", run.layer, int(run.trainable), run.init,
                                 "" if run.init_seed is None else run.init_seed, run.corpus, run.task,
                                 run.metric, repr(run.dev), repr(run.test), low, high,
                                 "" if run.lr is None else repr(run.lr), int(id(run) in chosen), str(run.run_dir)])

    atomic_write(path, write)


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


def _best_labels(rows: dict[str, Row]) -> set[str]:
    """The upstreams with the best test score of a task (ties share it); none when no upstream is ahead."""
    scored = {label: row.score if row.runs[0].higher_is_better else -row.score
              for label, row in rows.items() if not math.isnan(row.score)}
    if len(rows) < 2 or not scored:
        return set()
    top = max(scored.values())
    best = {label for label, score in scored.items() if score == top}
    return set() if len(best) == len(rows) else best  # all tied: nobody is best


def _task_key(task: str) -> tuple[int, str]:
    return (TASK_ORDER.index(task) if task in TASK_ORDER else len(TASK_ORDER), task)


def _sweep_key(key: tuple[str, str, str]) -> tuple:
    label, corpus, task = key
    return (label, corpus, _task_key(task))


def _default(value: Any, default: Any) -> Any:
    return default if value is None else value


def _short_path(path: str) -> str:
    """A checkpoint path relative to the working folder when it lies below it, else as given."""
    try:
        return str(Path(path).relative_to(Path.cwd())) if Path(path).is_absolute() else path
    except ValueError:
        return path


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _slug(text: str) -> str:
    """A file-name-safe form: ``apc (runs/apc/last)`` -> ``apc-runs-apc-last``."""
    return re.sub(r"[^A-Za-z0-9_.]+", "-", text).strip("-.") or "x"


def _optional_float(value: float | None) -> float | None:
    return None if value is None else float(value)


def _as_tuple(types: type | tuple) -> tuple:
    return types if isinstance(types, tuple) else (types,)


def _type_names(types: type | tuple) -> str:
    if float in _as_tuple(types):
        return "a number"
    return {str: "a string", dict: "an object", list: "a list", bool: "true or false", int: "an integer"}[types]
