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
  below, embedded. With many upstreams (``MANY_UPSTREAMS``) it keeps the pairs
  the reading rests on and the sweeps in short; ``differences.md`` and
  ``sweeps.md`` then hold every pair and every sweep table.
- ``layer_weights_<upstream>.png``: per upstream, a bar chart per task of the
  chosen run's learned weights of the hidden states (SUPERB's weighted sum).
- ``curves_<task>.png``: training loss and dev metric against step, one line
  per upstream (chosen runs), from each run's ``metrics.jsonl``.
- ``results.tsv``: every run, one row each, raw numbers, the chosen ones marked.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
from collections.abc import Iterable
from pathlib import Path

from speechssl.benchmark_runs import (
    TSV_COLUMNS,
    Benchmark,
    BenchmarkRun,
    Row,
    compare,
    load_benchmark,
    task_name,
)
from speechssl.checkpoint import atomic_write
from speechssl.errors import ConfigError
from speechssl.plots import plot_curves, plot_layer_weights, plot_scores
from speechssl.superb import COLUMNS, REFERENCE, Reference, read_reference, spearman

BASELINES = ("fbank", "mfcc", "mel")  # features, not pretrained upstreams: the reading compares upstreams with fbank
# From this many upstreams on a corpus (the demo has 12: 66 pairs a task), the report lists only the key
# pairs of each task and the sweeps in short; every pair and every sweep table go to DIFFERENCES and SWEEPS.
MANY_UPSTREAMS = 6
DIFFERENCES = "differences.md"
SWEEPS = "sweeps.md"

log = logging.getLogger(__name__)

# -- Markdown ----------------------------------------------------------------------------


def format_score(value: float | None, unit: str) -> str:
    """``0.4812`` -> ``48.12%`` for a percent metric (``unit="%"``); others to 4 significant digits."""
    if value is None:
        return "–"
    if math.isnan(value):
        return "nan"
    return f"{100 * value:.2f}%" if unit == "%" else f"{value:.4g}"


def format_interval(interval: tuple[float, float] | None, unit: str) -> str:
    """``(0.557, 0.591)`` -> ``[55.70–59.10]`` (percentage points for a percent metric); None -> ``""``."""
    if interval is None:
        return ""
    if unit == "%":
        return f"[{100 * interval[0]:.2f}–{100 * interval[1]:.2f}]"
    return f"[{interval[0]:.4g}–{interval[1]:.4g}]"


def format_cell(row: Row, unit: str) -> str:
    """``58.00% [55.70–59.10]``; several init seeds: ``58.00% ± 1.20 [55.70–59.10] (3 seeds)``."""
    parts = [format_score(row.score, unit)]
    if row.spread is not None:
        parts.append(f"± {100 * row.spread:.2f}" if unit == "%" else f"± {row.spread:.4g}")
    parts.append(format_interval(row.interval, unit))
    if len(row.runs) > 1:
        parts.append(f"({len(row.runs)} seeds)")
    return " ".join(p for p in parts if p)


def _format_delta(value: float, unit: str) -> str:
    return f"{100 * value:+.2f}" if unit == "%" else f"{value:+.4g}"


def results_tables(bench: Benchmark) -> str:
    """The main tables, one per corpus: upstreams x tasks, test metric of the best-dev run, and chance levels."""
    parts = []
    for corpus in bench.corpora:
        tasks = bench.tasks(corpus)
        infos = [bench.task_info(corpus, task) for task in tasks]
        rows = [["upstream", *(info.column_header for info in infos)]]
        compared = {task: compare(bench, corpus, task)[0] for task in tasks}
        best = {task: _best_labels(compared[task]) for task in tasks}
        for label in bench.labels(corpus):
            row = [label]
            for task, info in zip(tasks, infos):
                cells = compared[task]
                cell = format_cell(cells[label], info.unit) if label in cells else "–"
                row.append(f"**{cell}**" if label in best[task] else cell)
            rows.append(row)
        rows.append(["*chance*", *(f"*{format_score(i.chance, i.unit)}*" for i in infos)])
        parts.append(f"### {corpus}\n\n{_markdown_table(rows, right=range(1, len(rows[0])))}")
    footnote = (
        "Each cell: the **test** score of the run with the best **dev** score among the learning rates tried "
        "for that upstream and task (SUPERB's protocol); ↑ higher is better, ↓ lower is better; "
        "the best upstream of each column in bold (none where all tie); –: not run; "
        "[low–high]: the 95% percentile-bootstrap interval over the scored test items "
        "(utterances; ASV's trials, QbE's queries; 1000 resamples); "
        "a random-init control with several init seeds: their mean ± standard deviation, the lr chosen per seed; "
        "*chance*: the task's chance level, as its runs report it."
    )
    return "\n\n".join(parts) + "\n\n" + footnote


def difference_tables(bench: Benchmark, key_pairs: bool = False) -> str:
    """Per corpus, every two upstreams of a task: the test difference, its paired interval, whether it is separated.

    ``key_pairs``: only the pairs the reading rests on (those with the task's best upstream, with a
    baseline such as fbank, and a pretrained upstream with its random-init control). Empty when no two
    rows of a task have intervals (runs from before they were recorded).
    """
    parts = []
    for corpus in bench.corpora:
        rows = [["task", "better", "than", "Δ", "95% interval of Δ", "separated"]]
        for task in bench.tasks(corpus):
            info = bench.task_info(corpus, task)
            cells, differences = compare(bench, corpus, task)
            best = _best_labels(cells)
            for d in differences:
                if key_pairs and not _key_pair(cells, best, d.better, d.worse):
                    continue
                interval = "–" if d.interval is None else (
                    f"[{_format_delta(d.interval[0], info.unit)}, {_format_delta(d.interval[1], info.unit)}]")
                how = "paired" if d.interval is not None else "intervals"
                rows.append([info.column_header, d.better, d.worse, _format_delta(d.delta, info.unit), interval,
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
    for (label, corpus, task), sweep in sorted(bench.sweeps.items(), key=lambda kv: kv[1].chosen.table_key):
        if len(sweep.runs) < 2:
            continue
        info = sweep.chosen
        metric = info.metric_name
        seeds = len(sweep.chosen_runs) > 1  # a control of several init seeds: its lr is chosen per seed
        rows = [[*(["init seed"] if seeds else []), "lr", f"dev {metric}", f"test {metric}", "steps", "run", "chosen"]]
        for run in sweep.runs:
            test = " ".join(filter(None, [format_score(run.test, run.unit),
                                          format_interval(run.test_interval, run.unit)]))
            rows.append([
                *([str(run.init_seed)] if seeds else []),
                "–" if run.lr is None else f"{run.lr:g}",
                format_score(run.dev, run.unit),
                test,
                "–" if run.step is None else str(run.step),
                f"`{_relative(run.run_dir, bench.runs_dir)}`",
                "✓" if sweep.is_chosen(run) else "",
            ])
        right = {int(seeds) + i for i in (1, 2, 3)}
        parts.append(f"### {label} · {info.column_header} · {corpus}\n\n{_markdown_table(rows, right=right)}")
    return "\n\n".join(parts)


def sweep_summary(bench: Benchmark) -> str:
    """The sweeps in short: per corpus and task, each upstream's learning rates with their dev scores, the
    chosen one(s) in bold (a control of several init seeds: one group per seed)."""
    parts = []
    for corpus in bench.corpora:
        for task in bench.tasks(corpus):
            rows, info = [], bench.task_info(corpus, task)
            for label in bench.labels(corpus):
                sweep = bench.sweeps.get((label, corpus, task))
                if sweep is None or len(sweep.runs) < 2:
                    continue
                seeds = len(sweep.chosen_runs) > 1
                cells = []
                for run in sweep.runs:
                    cell = f"{'–' if run.lr is None else f'{run.lr:g}'}: {format_score(run.dev, run.unit)}"
                    cell = f"**{cell}**" if sweep.is_chosen(run) else cell
                    cells.append(f"seed {run.init_seed} {cell}" if seeds else cell)
                rows.append([label, " · ".join(cells)])
            if rows:
                header = [["upstream", f"lr: dev {info.metric_name} (chosen in bold)"]]
                parts.append(f"### {info.column_header} · {corpus}\n\n{_markdown_table(header + rows, right=())}")
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


def reading(bench: Benchmark) -> str:
    """A few sentences per corpus, written from the numbers: who is best on each task, which rows the
    test set cannot tell from the best, which pretrained rows beat fbank and their random-init control,
    and which rows stay within their interval of chance."""
    parts = []
    for corpus in bench.corpora:
        lines, wins = [], {}
        for task in bench.tasks(corpus):
            info = bench.task_info(corpus, task)
            rows, differences = compare(bench, corpus, task)
            scored = {label: row for label, row in rows.items() if not math.isnan(row.score)}
            if not scored:
                continue
            sign = 1 if info.higher_is_better else -1
            ranked = sorted(scored, key=lambda label: -sign * scored[label].score)
            best = ranked[0]
            separated = {(d.better, d.worse): d.separated for d in differences}
            ties = [label for label in ranked[1:] if not separated.get((best, label), False)
                    and not separated.get((label, best), False)]  # fmt: skip
            for label in [best, *ties]:
                wins[label] = wins.get(label, 0) + 1
            head = f"**{task_name(task)}** ({info.metric_name} {info.arrow}): "
            head += f"{best} is best at {format_score(scored[best].score, info.unit)}"
            if len(scored) == 1:
                line = head + ", the only row."
            elif not ties:
                line = head + f", separated from all {len(scored) - 1} other rows."
            elif len(ties) == len(scored) - 1:
                line = head + ", but the test set separates it from none of the others."
            else:
                line = head + f"; the test set cannot separate it from {_names(ties)}."
            extra = []
            baseline = next((label for label in scored if scored[label].runs[0].upstream == "fbank"
                             and scored[label].runs[0].init == "pretrained"), None)  # fmt: skip
            if baseline is not None:
                above = [label for label in ranked if separated.get((label, baseline)) and _pretrained(scored[label])]
                extra.append(f"above fbank, separated: {_names(above) if above else 'none'}")
            for label in ranked:
                control = _control_of(scored, label)
                if control is not None:
                    verdict = ("beats its random-init control" if separated.get((label, control)) else
                               "is below its random-init control" if separated.get((control, label)) else
                               "is not separated from its random-init control")
                    extra.append(f"{label} {verdict}")
            if info.chance is not None:
                at_chance = [label for label, row in scored.items() if row.interval is not None
                             and (row.interval[0] <= info.chance if info.higher_is_better
                                  else row.interval[1] >= info.chance)]  # fmt: skip  # the interval reaches chance
                if at_chance:
                    extra.append(f"no better than chance ({format_score(info.chance, info.unit)}): {_names(at_chance)}")
            extra = "; ".join(extra)
            lines.append("- " + line + ("" if not extra else f" {extra[0].upper()}{extra[1:]}."))
        if wins:
            most = max(wins.values())
            leaders = sorted(label for label, n in wins.items() if n == most)
            lines.append(f"- Best, or not separated from the best, on the most tasks ({most} of {len(bench.tasks(corpus))}): "
                         f"{_names(leaders)}.")
        heading = f"### {corpus}\n\n" if len(bench.corpora) > 1 else ""
        parts.append(heading + "\n".join(lines))
    note = ("Written by `speechssl report` from the numbers above: \"separated\" means the paired bootstrap "
            "interval of the difference excludes zero (or, unpaired, the two intervals do not overlap); \"tied\" "
            "rows are ones the test set cannot tell from the best.")
    return "\n\n".join(parts) + "\n\n" + note


def superb_table(bench: Benchmark, reference: Reference) -> str:
    """Per corpus: our test score beside SUPERB's published one for every upstream the paper ran, and per
    task the Spearman rank correlation of the two orderings (``ρ``, over ``n`` upstreams)."""
    parts = []
    for corpus in bench.corpora:
        tasks = [task for task in bench.tasks(corpus) if task in COLUMNS]
        compared = {task: compare(bench, corpus, task)[0] for task in tasks}
        matched: dict[str, str] = {}  # upstream -> the first row of it run with pretrained weights
        for label in bench.labels(corpus):
            runs = next((compared[t][label].runs for t in tasks if label in compared[t]), None)
            if runs and _pretrained_run(runs[0]) and runs[0].upstream in reference.scores:
                matched.setdefault(runs[0].upstream, label)
        if not matched or not tasks:
            continue
        arrows = {task: bench.task_info(corpus, task).arrow for task in tasks}
        header = ["upstream", *(f"{task_name(task)} {COLUMNS[task][1]} {arrows[task]} ours / SUPERB" for task in tasks)]
        rows, pairs = [header], {task: ([], []) for task in tasks}
        for upstream, label in matched.items():
            row = [label]
            for task in tasks:
                unit = bench.task_info(corpus, task).unit
                ours = compared[task].get(label)
                theirs = reference.scores[upstream].get(task)
                row.append(f"{format_score(None if ours is None else ours.score, unit)} / "
                           f"{format_score(theirs, '%' if COLUMNS[task][2] else '')}")
                if ours is not None and theirs is not None and not math.isnan(ours.score):
                    pairs[task][0].append(ours.score)
                    pairs[task][1].append(theirs)
            rows.append(row)
        correlations = []
        for task in tasks:
            rho = spearman(*pairs[task])
            correlations.append(f"ρ = {rho:+.2f} (n = {len(pairs[task][0])})" if rho is not None
                                else f"ρ: – (n = {len(pairs[task][0])})")
        rows.append(["*rank correlation*", *(f"*{c}*" for c in correlations)])
        parts.append(f"### {corpus}\n\n{_markdown_table(rows, right=range(1, len(header)))}")
    if not parts:
        return ""
    footnote = (f"SUPERB: {reference.source} Ours: the test score of the table above (its best-dev run). "
                "ρ: Spearman's rank correlation between the two orderings of the upstreams listed (the random-init "
                "controls are not in the paper); +1: the same order, 0: unrelated, –: fewer than three upstreams or "
                "all tied. Our ASR column is a CER, the paper's a WER; the tiny configs here are trained minutes, "
                "not days, on synthetic speech, so agreement is not expected and not the point.")
    return "\n\n".join(parts) + "\n\n" + footnote


def stages_table(path: str | os.PathLike) -> str:
    """The machine and each stage's time of the pipeline whose ``pipeline.json`` is ``path``."""
    from speechssl.pipeline import describe_machine

    try:
        summary = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"stages={path}: no such file (a pipeline writes RUN_DIR/pipeline.json)") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"stages={path}: not valid JSON ({e})") from None
    rows = [["stage", "seconds"]]
    rows += [[f"`{s['name']}`", f"{s['seconds']:.0f}"] for s in summary.get("stages", [])]
    rows.append(["*all stages (sum)*", f"*{summary.get('seconds', 0):.0f}*"])
    jobs = summary.get("jobs", 1)
    text = (f"Machine: {describe_machine(summary.get('machine', {}))}; pipeline `{summary.get('pipeline', '?')}`, "
            f"{jobs} stage(s) at a time"
            + (f", {summary['threads_per_stage']} torch thread(s) each" if summary.get("threads_per_stage") else "")
            + f". {summary.get('finished', len(rows) - 2)} of {summary.get('total', '?')} stages had finished when "
            f"this report was written (the report is the last); the wall time of the last invocation: "
            f"{summary.get('wall_seconds', 0):.0f} s (a rerun's skipped stages count their first time).")
    return text + "\n\n" + _markdown_table(rows, right={1})


# -- the report --------------------------------------------------------------------------


def write_report(bench: Benchmark, out_dir: str | os.PathLike | None = None, name: str = "README.md",
                 stages: str | os.PathLike | None = None, reference: str | os.PathLike | None = REFERENCE) -> Path:
    """Write the report ``name``, ``results.tsv`` and the plots of ``bench`` into ``out_dir`` (default
    ``runs_dir/report``); ``stages``: a pipeline's ``pipeline.json``, whose machine and stage times it
    lists; ``reference``: SUPERB's published figures to set beside ours (None: left out).

    Returns the report's path.
    """
    out_dir = bench.runs_dir / "report" if out_dir is None else Path(out_dir)
    if not name or "/" in name or not name.endswith(".md"):
        raise ConfigError(f"name={name!r}: the report's file name, ending in .md (its folder is out=)")
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_tsv(bench, out_dir / "results.tsv")

    sections = [f"# Benchmark results\n\n{len(bench.runs)} run(s) under `{bench.runs_dir}`.", "## Results",
                results_tables(bench)]
    for corpus in bench.corpora:
        plot = f"scores{'_' + _slug(corpus) if len(bench.corpora) > 1 else ''}.png"
        if plot_scores(bench, corpus, out_dir / plot):
            sections.append(f"![test scores on {corpus}]({plot})")
    sections += ["## Reading", reading(bench)]
    superb = superb_table(bench, read_reference(reference)) if reference is not None else ""
    if superb:
        sections += ["## Beside SUPERB's published figures", superb]
    many = max((len(bench.labels(corpus)) for corpus in bench.corpora), default=0) >= MANY_UPSTREAMS
    differences = difference_tables(bench)
    if differences and many:
        _write_appendix(out_dir / DIFFERENCES, "Differences between upstreams: every pair", differences, name)
        differences = (f"The pairs the reading rests on: with each task's best upstream, with fbank, and each "
                       f"pretrained upstream with its random-init control. Every pair: [{DIFFERENCES}]({DIFFERENCES})."
                       f"\n\n{difference_tables(bench, key_pairs=True)}")
    else:
        _remove_appendix(out_dir / DIFFERENCES, name)  # an earlier report's, with more upstreams: now stale
    if differences:
        sections += ["## Differences between upstreams", differences]
    sweeps = sweep_tables(bench)
    if sweeps and many:
        _write_appendix(out_dir / SWEEPS, "Learning-rate sweeps", sweeps, name)
        sweeps = (f"Each upstream's dev score at each learning rate tried; the test score in the table is the "
                  f"chosen rate's. Each sweep's runs, their test scores and folders: [{SWEEPS}]({SWEEPS})."
                  f"\n\n{sweep_summary(bench)}")
    else:
        _remove_appendix(out_dir / SWEEPS, name)
    if sweeps:
        sections += ["## Learning-rate sweeps", sweeps]
    weights = []
    for label in bench.labels():
        plot = f"layer_weights_{_slug(label)}.png"
        if plot_layer_weights(bench, label, out_dir / plot):
            weights.append(f"![layer weights of {label}]({plot})")
    if weights:
        sections += ["## Learned layer weights", "Chosen runs; hidden state 0 is the encoder's input.", *weights]
    curves = []
    multi_corpus = len(bench.corpora) > 1
    for corpus in bench.corpora:
        for task in bench.tasks(corpus):
            plot = f"curves_{_slug(corpus) + '_' if multi_corpus else ''}{_slug(task)}.png"
            if plot_curves(bench, corpus, task, out_dir / plot):
                curves.append(f"![learning curves of {task_name(task)} on {corpus}]({plot})")
    if curves:
        sections += ["## Learning curves", *curves]
    if stages is not None:
        sections += ["## Machine and stage times", stages_table(stages)]
    readme = out_dir / name
    text = "\n\n".join(sections) + "\n"
    atomic_write(readme, lambda tmp: Path(tmp).write_text(text))
    log.info("wrote %s (%d plot(s))", readme, len(weights) + len(curves))
    return readme


def report(runs_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, **options) -> Path:
    """Read the benchmark runs under ``runs_dir`` and write the report to ``out_dir`` (default ``runs_dir/report``);
    ``options``: :func:`write_report`'s."""
    return write_report(load_benchmark(runs_dir), out_dir, **options)


def _write_tsv(bench: Benchmark, path: Path) -> None:
    chosen = {id(run) for s in bench.sweeps.values() for run in s.chosen_runs}

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f, delimiter="\t", lineterminator="\n")
            writer.writerow(TSV_COLUMNS)
            for run in sorted(bench.runs, key=lambda r: (r.table_key, r.seed_key, r.lr or 0.0)):
                low, high = ("", "") if run.test_interval is None else map(repr, run.test_interval)
                writer.writerow([run.upstream, run.ckpt or "", run.layer, int(run.trainable), run.init,
                                 "" if run.init_seed is None else run.init_seed, run.corpus, run.task,
                                 run.metric, repr(run.dev), repr(run.test), low, high,
                                 "" if run.lr is None else repr(run.lr), int(id(run) in chosen), str(run.run_dir)])

    atomic_write(path, write)


# -- helpers -----------------------------------------------------------------------------


def _appendix_line(report: str) -> str:
    return f"Part of [the report]({report}) (`speechssl report`)."


def _write_appendix(path: Path, title: str, body: str, report: str) -> None:
    text = f"# {title}\n\n{_appendix_line(report)}\n\n{body}\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _remove_appendix(path: Path, report: str) -> None:
    """Remove an appendix an earlier ``report`` of this name wrote here; any other file is left as it is."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = [f.readline() for _ in range(3)]
    except FileNotFoundError:
        return
    if lines[0].startswith("# ") and lines[2].rstrip("\n") == _appendix_line(report):
        path.unlink()
        log.info("removed %s: this report lists every pair and sweep itself", path)


def _key_pair(rows: dict[str, Row], best: set[str], first: str, second: str) -> bool:
    """A pair the reading rests on: one of them the task's best or a baseline, or an upstream and its control."""
    pair = {first, second}
    if pair & best or any(rows[label].runs[0].upstream in BASELINES for label in pair):
        return True
    return _control_of(rows, first) == second or _control_of(rows, second) == first


def _names(labels: list[str]) -> str:
    return ", ".join(labels)


def _pretrained_run(run: BenchmarkRun) -> bool:
    """A run of SUPERB's protocol on pretrained weights (not a control, a single layer or fine-tuning)."""
    return run.init == "pretrained" and run.layer == "weighted" and not run.trainable


def _pretrained(row: Row) -> bool:
    return _pretrained_run(row.runs[0]) and row.runs[0].upstream not in BASELINES


def _control_of(rows: dict[str, Row], label: str) -> str | None:
    """The random-init control's row of ``label``'s upstream and checkpoint, if ``label`` is pretrained and has one."""
    run = rows[label].runs[0]
    if not _pretrained_run(run):
        return None
    return next((other for other, row in rows.items() if row.runs[0].init == "random"
                 and (row.runs[0].upstream, row.runs[0].ckpt) == (run.upstream, run.ckpt)), None)  # fmt: skip


def _best_labels(rows: dict[str, Row]) -> set[str]:
    """The upstreams with the best test score of a task (ties share it); none when no upstream is ahead."""
    scored = {label: row.score if row.runs[0].higher_is_better else -row.score
              for label, row in rows.items() if not math.isnan(row.score)}
    if len(rows) < 2 or not scored:
        return set()
    top = max(scored.values())
    best = {label for label, score in scored.items() if score == top}
    return set() if len(best) == len(rows) else best  # all tied: nobody is best


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _slug(text: str) -> str:
    """A file-name-safe form: ``apc (runs/apc/last)`` -> ``apc-runs-apc-last``."""
    return re.sub(r"[^A-Za-z0-9_.]+", "-", text).strip("-.") or "x"
