"""The report's plots, drawn by Matplotlib's Agg canvas (no pyplot, no display): each writes one PNG
atomically and returns ``False``, writing nothing, when there is nothing to draw.

- :func:`plot_scores`: the results table as bars, a panel per task, the 95% interval as a whisker.
- :func:`plot_layer_weights`: an upstream's learned layer weights, a panel per task.
- :func:`plot_curves`: training loss and dev metric against step, a line per upstream.
"""

from __future__ import annotations

import math
from pathlib import Path

from speechssl.benchmark_runs import Benchmark, compare, read_curves, task_name
from speechssl.checkpoint import atomic_write


def plot_layer_weights(bench: Benchmark, label: str, path: Path) -> bool:
    """Bar charts of the chosen runs' layer weights of one upstream, a subplot per (corpus, task).

    Returns ``False`` (and writes nothing) when no chosen run has more than one
    weight: a baseline such as ``fbank`` has a single hidden state.
    """
    chosen = [s.chosen for (lab, _, _), s in sorted(bench.sweeps.items(), key=lambda kv: kv[1].chosen.table_key)
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
        ax.set_title(f"{task_name(run.task)}{corpus}" + (f" (lr {run.lr:g})" if run.lr is not None else ""))
        ax.set_xlabel("hidden state (0 = encoder input)")
        ax.xaxis.get_major_locator().set_params(integer=True)
    for ax in axes.flat[len(chosen):]:
        ax.set_axis_off()
    for ax in axes[:, 0]:
        ax.set_ylabel("learned weight")
    figure.suptitle(f"{label}: learned layer weights (dashed: uniform)")
    _save(figure, path)
    return True


def plot_scores(bench: Benchmark, corpus: str, path: Path) -> bool:
    """The results table as bars: a panel per task, a bar per upstream (its test score, the 95%
    interval as a whisker), the chance level dashed. Returns ``False`` when there is nothing to draw."""
    tasks = bench.tasks(corpus)
    labels = bench.labels(corpus)
    if not tasks or not labels:
        return False
    cols = min(5, len(tasks))
    rows = math.ceil(len(tasks) / cols)
    figure = _figure(width=2.2 + 2.3 * cols, height=0.8 + (0.25 * len(labels) + 0.9) * rows)
    axes = figure.subplots(rows, cols, sharey=True, squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        info = bench.task_info(corpus, task)
        scale = 100 if info.unit == "%" else 1
        cells = compare(bench, corpus, task)[0]
        for y, label in enumerate(labels):
            row = cells.get(label)
            if row is None or math.isnan(row.score):
                continue
            control = row.runs[0].init == "random"
            ax.barh(y, scale * row.score, color="lightgray" if control else f"C{y % 10}", height=0.7)
            if row.interval is not None:
                low, high = (scale * v for v in row.interval)
                ax.errorbar(scale * row.score, y, xerr=[[scale * row.score - low], [high - scale * row.score]],
                            color="black", capsize=2, linewidth=1)
        if info.chance is not None:
            ax.axvline(scale * info.chance, color="gray", linestyle="--", linewidth=1)
        ax.set_title(info.column_header, fontsize="medium")
        ax.set_xlabel("%" if info.unit == "%" else info.metric_name)
        ends = [scale * v for row in cells.values() if not math.isnan(row.score)
                for v in (row.score, *(row.interval or ()))] + [scale * (info.chance or 0.0)]  # fmt: skip
        low, high = min(0.0, *ends), max(ends)  # bars start at 0 (an MTWV may go below it)
        ax.set_xlim(low, 1.05 * high if high > low else low + (100 if info.unit == "%" else 1))
        ax.grid(axis="x", alpha=0.3)
    for ax in axes.flat[len(tasks):]:
        ax.set_axis_off()
    for ax in axes[:, 0]:
        ax.set_yticks(range(len(labels)), labels, fontsize="small")
        ax.invert_yaxis()
    figure.suptitle(f"{corpus}: test scores with 95% intervals (dashed: chance; gray: random-init controls)")
    _save(figure, path)
    return True


def plot_curves(bench: Benchmark, corpus: str, task: str, path: Path) -> bool:
    """Training loss and dev metric against step for a task, one line per upstream (its chosen run).

    Returns ``False`` (and writes nothing) when no chosen run logged any metrics.
    """
    info = bench.task_info(corpus, task)
    percent = info.unit == "%"
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
    metric = info.metric_name
    loss_ax.set(title="training loss", xlabel="step", ylabel="loss")
    dev_ax.set(title=f"dev {metric} {info.arrow}", xlabel="step",
               ylabel=f"{metric} (%)" if percent else metric)
    for ax in (loss_ax, dev_ax):
        ax.grid(alpha=0.3)
    (dev_ax if any(devs for _, _, devs in lines) else loss_ax).legend(fontsize="small")
    figure.suptitle(f"{task_name(task)} on {corpus}: learning curves of the chosen runs")
    _save(figure, path)
    return True


def _figure(width: float, height: float):
    """A Matplotlib figure drawn by Agg: no pyplot, no global backend, no display needed."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _save(figure, path: Path) -> None:
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110))
