"""`speechssl report`: choosing the best-dev run, the Markdown tables, the plots, the TSV, the errors."""

import csv
import json
import shutil
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest

from speechssl.bootstrap import Ratio, bootstrap_interval, paired_difference_interval, separated, write_outcomes
from speechssl.cli import COMMANDS
from speechssl.errors import ConfigError
from speechssl.benchmark_runs import read_curves
from speechssl.report import (
    format_interval,
    format_score,
    load_benchmark,
    report,
    results_tables,
    task_name,
)
from speechssl.superb import read_reference, spearman

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TASKS = {  # task -> (metric, higher_is_better, chance, label, column order), as the tasks write them
    "ks": ("accuracy", True, 1 / 12, "accuracy", 1),
    "pr": ("per", False, 0.95, "PER", 0),
    "asr": ("wer", False, 1.0, "WER", 5),
}
APC_CKPT = "runs/apc/last"


def write_run(folder, upstream, task, lr, dev, test, ckpt=None, layers=3, curves=True, **extra):
    metric, higher, chance, label, order = TASKS[task]
    folder.mkdir(parents=True)
    weights = [i + 1.0 for i in range(layers)]
    results = {
        "kind": "benchmark", "upstream": upstream, "ckpt": ckpt, "task": task, "corpus": "superb_lite",
        "metric": metric, "higher_is_better": higher, "chance": chance, "lr": lr, "order": order,
        "metrics": {metric: {"label": label, "higher_is_better": higher, "unit": "%"}},
        "dev": {metric: dev, "loss": 1.0}, "test": {metric: test},
        "layer_weights": [w / sum(weights) for w in weights], "step": 300, **extra,
    }
    (folder / "results.json").write_text(json.dumps(results))
    if curves:
        lines = [{"step": s, "loss": 2.0 / s, "lr": lr, "grad_norm": 1.0} for s in (10, 20)]
        lines += [{"step": 20, f"dev_{metric}": dev / 2}, {"step": 30, f"dev_{metric}": dev, "loss": 0.05}]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


@pytest.fixture
def runs(tmp_path):
    """Two upstreams x three tasks; apc on KS is a 3-lr sweep (a Hydra -m folder); a pretraining run beside them."""
    root = tmp_path / "runs"
    write_run(root / "fbank_ks", "fbank", "ks", 1e-3, dev=0.40, test=0.41, layers=1)
    write_run(root / "fbank_pr", "fbank", "pr", 1e-3, dev=0.40, test=0.42, layers=1)
    write_run(root / "fbank_asr", "fbank", "asr", 1e-3, dev=0.80, test=0.82, layers=1, curves=False)
    # best test (0.70) is at lr 1e-2, best dev (0.62) at lr 1e-3: the table must show 58.00%
    for n, (lr, dev, test) in enumerate([(1e-4, 0.50, 0.60), (1e-3, 0.62, 0.58), (1e-2, 0.55, 0.70)]):
        write_run(root / "sweep" / str(n), "apc", "ks", lr, dev, test, ckpt=APC_CKPT)
    write_run(root / "apc_pr", "apc", "pr", 1e-3, dev=0.30, test=0.3125, ckpt=APC_CKPT)
    (root / "pretrain").mkdir()
    (root / "pretrain" / "results.json").write_text(json.dumps({"step": 100, "train_loss": 1.5, "best": None}))
    return root


def main_table(readme: str) -> dict[str, list[str]]:
    """The first table of the README as {first cell: other cells}, the header under 'upstream'."""
    section = readme.split("### superb_lite", 1)[1].split("\n\n", 2)[1]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines() if "---" not in line]
    return {row[0]: row[1:] for row in rows}


def test_report_table_picks_best_dev_run(runs):
    readme = report(runs)
    assert readme == runs / "report" / "README.md"
    text = readme.read_text()
    table = main_table(text)
    label = f"apc ({APC_CKPT})"
    assert table["upstream"] == ["PR PER ↓", "KS accuracy ↑", "ASR WER ↓"]  # SUPERB's task order
    assert table[label] == ["**31.25%**", "**58.00%**", "–"]  # KS: test of the best-dev lr, not the best test
    assert table["fbank"] == ["42.00%", "41.00%", "82.00%"]  # ASR has one upstream: nothing to bold
    assert table["*chance*"] == ["*95.00%*", "*8.33%*", "*100.00%*"]
    assert "70.00%" not in text.split("## Learning-rate sweeps")[0]
    assert "pretrain" not in text  # the pretraining run is not a benchmark run
    assert "7 run(s)" in text


def test_sweep_table_marks_the_chosen_lr(runs):
    text = report(runs).read_text()
    sweeps = text.split("## Learning-rate sweeps", 1)[1].split("\n## ", 1)[0]
    assert sweeps.count("### ") == 1 and f"### apc ({APC_CKPT}) · KS accuracy ↑ · superb_lite" in sweeps
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in sweeps.splitlines() if line.startswith("| ")]
    assert rows[0] == ["lr", "dev accuracy", "test accuracy", "steps", "run", "chosen"]
    assert rows[1:] == [
        ["0.0001", "50.00%", "60.00%", "300", "`sweep/0`", ""],
        ["0.001", "62.00%", "58.00%", "300", "`sweep/1`", "✓"],
        ["0.01", "55.00%", "70.00%", "300", "`sweep/2`", ""],
    ]


def test_lower_is_better_picks_lowest_dev(tmp_path):
    for n, (dev, test) in enumerate([(0.30, 0.10), (0.20, 0.25), (0.40, 0.05)]):
        write_run(tmp_path / str(n), "mfcc", "pr", 10.0 ** -n, dev, test, curves=False)
    bench = load_benchmark(tmp_path)
    (sweep,) = bench.sweeps.values()
    assert sweep.chosen.run_dir == tmp_path / "1" and "25.00%" in results_tables(bench)


def test_ties_share_the_bold_and_an_all_tie_has_none(tmp_path):
    write_run(tmp_path / "a_ks", "fbank", "ks", 1e-3, dev=0.5, test=0.25, layers=1)
    write_run(tmp_path / "b_ks", "mfcc", "ks", 1e-3, dev=0.5, test=0.25, layers=1)
    write_run(tmp_path / "c_ks", "mel", "ks", 1e-3, dev=0.5, test=0.10, layers=1)
    for name in ("fbank", "mfcc"):  # ASR: every upstream at 100% WER, nobody is ahead
        write_run(tmp_path / f"{name}_asr", name, "asr", 1e-3, dev=1.0, test=1.0, layers=1, curves=False)
    table = main_table(report(tmp_path).read_text())
    assert table["upstream"] == ["KS accuracy ↑", "ASR WER ↓"]
    assert table["fbank"] == ["**25.00%**", "100.00%"]
    assert table["mfcc"] == ["**25.00%**", "100.00%"]
    assert table["mel"] == ["10.00%", "–"]


def test_runs_outside_the_protocol_and_other_corpus_folders_are_not_pooled(tmp_path):
    """A fine-tuned or one-layer run never becomes the frozen weighted-sum result; nor do two corpus folders mix."""
    common = {"data_root": "/data/superb_lite_small"}
    write_run(tmp_path / "frozen", "fbank", "ks", 1e-3, dev=0.50, test=0.40, layers=1, **common)
    write_run(tmp_path / "tuned", "fbank", "ks", 1e-3, dev=0.90, test=0.95, layers=1, trainable=True, **common)
    write_run(tmp_path / "top", "fbank", "ks", 1e-3, dev=0.70, test=0.60, layers=1, layer="last", **common)
    write_run(tmp_path / "first", "fbank", "ks", 1e-3, dev=0.65, test=0.55, layers=1, layer=0, **common)
    write_run(tmp_path / "tiny", "fbank", "ks", 1e-3, dev=0.99, test=0.99, layers=1, data_root="/data/superb_lite_tiny")
    text = report(tmp_path).read_text()
    small = text.split("### superb_lite (/data/superb_lite_small)", 1)[1].split("###", 1)[0]
    rows = {row[0]: row[1:] for row in ([c.strip() for c in line.strip("|").split("|")]
                                         for line in small.splitlines() if line.startswith("| ") and "---" not in line)}
    assert rows["fbank"] == ["40.00%"]
    assert rows["fbank, fine-tuned"] == ["**95.00%**"]
    assert rows["fbank, layer=last"] == ["60.00%"] and rows["fbank, layer=0"] == ["55.00%"]
    assert "99.00%" in text.split("### superb_lite (/data/superb_lite_tiny)", 1)[1]


def test_plots_are_png_files(runs):
    readme = report(runs, runs.parent / "out")
    out = readme.parent
    names = sorted(p.name for p in out.glob("*.png"))
    # fbank has one hidden state: no layer-weight plot; ASR has no metrics.jsonl: no curves
    assert names == ["curves_ks.png", "curves_pr.png", "layer_weights_apc-runs-apc-last.png", "scores.png"]
    text = readme.read_text()
    for name in names:
        data = (out / name).read_bytes()
        assert data[:8] == PNG_SIGNATURE
        height, width, _ = matplotlib.image.imread(out / name).shape
        assert height > 200 and width > 300
        assert f"]({name})" in text  # embedded in the README


def test_results_tsv(runs):
    out = report(runs).parent
    with open(out / "results.tsv") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert len(rows) == 7  # every benchmark run; not the pretraining run
    assert list(rows[0]) == ["upstream", "ckpt", "layer", "trainable", "init", "init_seed", "corpus", "task", "metric",
                             "dev", "test", "test_low", "test_high", "lr", "chosen", "run_dir"]
    ks = [r for r in rows if r["upstream"] == "apc" and r["task"] == "ks"]
    assert [(float(r["lr"]), float(r["dev"]), float(r["test"]), r["chosen"]) for r in ks] == [
        (1e-4, 0.50, 0.60, "0"), (1e-3, 0.62, 0.58, "1"), (1e-2, 0.55, 0.70, "0")]
    assert {r["ckpt"] for r in ks} == {APC_CKPT} and ks[1]["run_dir"] == str(runs / "sweep" / "1")
    fbank = next(r for r in rows if r["upstream"] == "fbank" and r["task"] == "pr")
    assert (fbank["ckpt"], fbank["metric"], fbank["chosen"]) == ("", "per", "1")
    assert (fbank["init"], fbank["init_seed"], fbank["test_low"]) == ("pretrained", "", "")  # runs without intervals


def test_read_curves_skips_a_torn_line(tmp_path, caplog):
    lines = '{"step": 20, "loss": 3.0}\n{"step": 10, "loss": 2.0}\n{"step": 20, "dev_wer": 0.5, "loss": 1.0}\n{"st'
    (tmp_path / "metrics.jsonl").write_text(lines)
    losses, devs = read_curves(tmp_path, "wer")
    assert losses == [(10, 2.0), (20, 1.0)] and devs == [(20, 0.5)]  # by step; the later of two at a step
    assert "metrics.jsonl:4" in caplog.text


def test_format_score():
    assert [task_name(t) for t in ("pr", "qbe", "sid")] == ["PR", "QbE", "SID"]  # as SUPERB writes them
    assert format_score(0.4812, "%") == "48.12%"
    assert format_score(0.0541, "%") == "5.41%"
    assert format_score(12.3456, "") == "12.35"
    assert format_score(None, "%") == "–"
    assert format_score(float("nan"), "%") == "nan"


def test_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such folder"):
        report(tmp_path / "missing")

    (tmp_path / "pretrain").mkdir()
    (tmp_path / "pretrain" / "results.json").write_text(json.dumps({"step": 3}))
    with pytest.raises(ConfigError, match=rf"no benchmark results under {tmp_path}.*found 1 results.json"):
        report(tmp_path)

    write_run(tmp_path / "bad", "fbank", "ks", 1e-3, 0.1, 0.1)
    (tmp_path / "bad" / "results.json").write_text('{"kind": "benchmark", "upstream": ')
    with pytest.raises(ConfigError, match=rf"{tmp_path / 'bad' / 'results.json'}: not valid JSON"):
        report(tmp_path)

    results = {"kind": "benchmark", "upstream": "fbank", "task": "ks", "corpus": "c", "metric": "accuracy",
               "higher_is_better": True, "dev": {"accuracy": 0.5}, "test": {"f1": 0.5}}
    (tmp_path / "bad" / "results.json").write_text(json.dumps(results))
    with pytest.raises(ConfigError, match=r"bad/results.json: 'test.accuracy' should be a number, found None"):
        report(tmp_path)

    results["test"] = {"accuracy": 0.5}
    results["higher_is_better"] = "yes"
    (tmp_path / "bad" / "results.json").write_text(json.dumps(results))
    with pytest.raises(ConfigError, match=r"bad/results.json: 'higher_is_better' should be true or false, found 'yes'"):
        report(tmp_path)


def test_runs_disagreeing_on_a_task_metric(tmp_path):
    write_run(tmp_path / "a", "fbank", "ks", 1e-3, 0.5, 0.5)
    write_run(tmp_path / "b", "mfcc", "ks", 1e-3, 0.5, 0.5)
    results = json.loads((tmp_path / "b" / "results.json").read_text())
    results["metric"], results["dev"], results["test"] = "f1", {"f1": 0.5}, {"f1": 0.5}
    (tmp_path / "b" / "results.json").write_text(json.dumps(results))
    message = r"b/results.json scores task 'ks' on 'superb_lite' as .*'f1'.* but .*a/results.json as .*'accuracy'"
    with pytest.raises(ConfigError, match=message):
        load_benchmark(tmp_path)


@pytest.mark.skipif("report" not in COMMANDS, reason="speechssl report is not wired into cli.py yet")
def test_cli(runs, tmp_path):
    def speechssl(*args):
        command = [sys.executable, "-m", "speechssl.cli", "report", *args, f"hydra.run.dir={tmp_path}/hydra"]
        return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)

    run = speechssl(f"runs={runs}", "out=table", "name=REPORT.md")
    assert run.returncode == 0, run.stderr
    assert "| fbank " in run.stdout and "58.00%" in run.stdout and "sweeps" not in run.stdout  # the tables only
    assert (tmp_path / "table" / "REPORT.md").exists() and (tmp_path / "table" / "results.tsv").exists()
    assert "## Beside SUPERB's published figures" in (tmp_path / "table" / "REPORT.md").read_text()
    run = speechssl(f"runs={runs}", "out=table", "name=../x.md")
    assert run.returncode == 1 and "ending in .md" in run.stderr
    run = speechssl(f"runs={runs}", "out=table", f"stages={tmp_path}/none.json")
    assert run.returncode == 1 and "none.json: no such file" in run.stderr
    run = speechssl(f"runs={tmp_path}/missing")
    assert run.returncode == 1 and "missing: no such folder" in run.stderr and "Traceback" not in run.stderr


# -- intervals, differences, the random-init control ----------------------------------------

ACCURACY = Ratio("correct")


def flags(n, p, seed):
    return [{"correct": int(c)} for c in np.random.default_rng(seed).random(n) < p]


def write_scored_run(folder, upstream, outcomes, dev, *, ids=None, lr=1e-3, **extra):
    """A KS run whose test score, interval and outcomes file are those of ``outcomes`` (as benchmark() writes them)."""
    ids = ids or [f"ks-test-{i:04d}" for i in range(len(outcomes))]
    write_run(folder, upstream, "ks", lr, dev, ACCURACY(outcomes), layers=2, curves=False,
              test_interval={"accuracy": list(bootstrap_interval(outcomes, ACCURACY))},
              test_outcomes="test_outcomes.tsv", outcome_ratios={"accuracy": ["correct", None]}, **extra)
    write_outcomes(folder / "test_outcomes.tsv", ids, outcomes)


def difference_rows(text):
    section = text.split("## Differences between upstreams", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines()
            if line.startswith("| ") and "---" not in line]
    return {(row[1], row[2]): row[3:] for row in rows[1:]}


def test_cells_show_intervals_and_paired_differences(tmp_path):
    fbank = flags(300, 0.6, 0)
    apc = [{"correct": 1} if i < 24 else dict(o) for i, o in enumerate(fbank)]  # right on 24 more: +8 points at most
    mfcc = [dict(o) for o in fbank]
    mfcc[next(i for i, o in enumerate(fbank) if not o["correct"])]["correct"] = 1  # right on one more than fbank
    write_scored_run(tmp_path / "fbank", "fbank", fbank, dev=0.5)
    write_scored_run(tmp_path / "apc", "apc", apc, dev=0.6, ckpt=APC_CKPT)
    write_scored_run(tmp_path / "mfcc", "mfcc", mfcc, dev=0.5)
    other_ids = [f"other-{i}" for i in range(300)]  # scored another test set: only its interval compares
    write_scored_run(tmp_path / "mel", "mel", flags(300, 0.95, 1), dev=0.9, ids=other_ids)
    text = report(tmp_path).read_text()
    table = main_table(text)
    low, high = bootstrap_interval(fbank, ACCURACY)
    assert table["fbank"] == [f"{100 * ACCURACY(fbank):.2f}% [{100 * low:.2f}–{100 * high:.2f}]"]
    assert table["mel"][0].startswith("**")  # the best, and its own interval beside it

    differences = difference_rows(text)
    label = f"apc ({APC_CKPT})"
    paired = paired_difference_interval(apc, fbank, ACCURACY)  # the same resamples, in the files' order
    gain = ACCURACY(apc) - ACCURACY(fbank)
    assert differences[label, "fbank"] == [f"{100 * gain:+.2f}", f"[{100 * paired[0]:+.2f}, {100 * paired[1]:+.2f}]",
                                           "✓ (paired)"]
    assert not separated(bootstrap_interval(apc, ACCURACY), (low, high))  # the intervals alone overlap
    assert differences["mfcc", "fbank"][0] == f"{100 / 300:+.2f}" and differences["mfcc", "fbank"][2] == "no (paired)"
    assert differences["mel", label][1:] == ["–", "✓ (intervals)"]  # other utterances: not paired


def test_random_init_control_is_a_row_beside_its_upstream_with_seed_mean_and_spread(tmp_path):
    pretrained = flags(200, 0.8, 0)
    write_scored_run(tmp_path / "apc", "apc", pretrained, dev=0.7, ckpt=APC_CKPT, init="pretrained")
    controls = {}
    for seed in (0, 1, 2):  # per seed two lrs; the better dev is lr 1e-2 for seed 1 only
        for lr, dev in ((1e-3, 0.40), (1e-2, 0.45 if seed == 1 else 0.35)):
            outcomes = flags(200, 0.3 + 0.05 * seed + (0.1 if lr == 1e-2 else 0.0), 10 * seed + int(lr * 1000))
            write_scored_run(tmp_path / f"random{seed}" / f"lr{lr:g}", "apc", outcomes, dev, lr=lr, ckpt=APC_CKPT,
                             init="random", init_seed=seed)
            if (lr == 1e-2) == (seed == 1):
                controls[seed] = outcomes
    write_scored_run(tmp_path / "fbank", "fbank", flags(200, 0.5, 5), dev=0.5)
    text = report(tmp_path).read_text()
    control = f"apc (random init, config of {APC_CKPT})"
    table = main_table(text)
    assert list(table) == ["upstream", f"apc ({APC_CKPT})", control, "fbank", "*chance*"]  # beside its upstream

    scores = [ACCURACY(controls[s]) for s in (0, 1, 2)]  # the best-dev lr of each seed
    index = np.random.default_rng(0).integers(0, 200, size=(1000, 200))  # resample_indices(200), written out
    means = np.mean([[np.mean([controls[s][i]["correct"] for i in row]) for row in index] for s in (0, 1, 2)], axis=0)
    low, high = np.quantile(means, [0.025, 0.975])
    assert table[control] == [f"{100 * np.mean(scores):.2f}% ± {100 * np.std(scores, ddof=1):.2f} "
                              f"[{100 * low:.2f}–{100 * high:.2f}] (3 seeds)"]
    differences = difference_rows(text)
    assert differences[f"apc ({APC_CKPT})", control][2] == "✓ (paired)"  # pretraining beats its control

    sweeps = text.split("## Learning-rate sweeps", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in sweeps.splitlines() if line.startswith("| ")]
    assert rows[0][:2] == ["init seed", "lr"]
    assert [(r[0], r[1], r[-1]) for r in rows[1:]] == [("0", "0.001", "✓"), ("0", "0.01", ""), ("1", "0.001", ""),
                                                       ("1", "0.01", "✓"), ("2", "0.001", "✓"), ("2", "0.01", "")]
    with open(tmp_path / "report" / "results.tsv") as f:
        tsv = [r for r in csv.DictReader(f, delimiter="\t") if r["init"] == "random"]
    assert sorted((r["init_seed"], r["lr"]) for r in tsv if r["chosen"] == "1") == [
        ("0", "0.001"), ("1", "0.01"), ("2", "0.001")]


def test_a_missing_outcomes_file_falls_back_to_the_intervals(tmp_path, caplog):
    write_scored_run(tmp_path / "fbank", "fbank", flags(100, 0.5, 0), dev=0.5)
    write_scored_run(tmp_path / "mfcc", "mfcc", flags(100, 0.9, 1), dev=0.5)
    (tmp_path / "mfcc" / "test_outcomes.tsv").unlink()
    text = report(tmp_path).read_text()
    assert "mfcc/test_outcomes.tsv: no such file" in caplog.text
    assert difference_rows(text)["mfcc", "fbank"][1:] == ["–", "✓ (intervals)"]
    assert "[" in main_table(text)["mfcc"][0]  # results.json's interval is still shown


def test_format_interval():
    assert format_interval((0.557, 0.591), "%") == "[55.70–59.10]"
    assert format_interval((1.5, 2.25), "") == "[1.5–2.25]"
    assert format_interval(None, "%") == ""


def test_the_report_takes_a_task_metric_description_from_results(tmp_path):
    """No task list in the report: a task it has never heard of shows with its own label, unit, direction and column."""
    root = tmp_path / "runs"
    write_run(root / "ks", "fbank", "ks", 1e-3, dev=0.40, test=0.41, layers=1)
    write_run(root / "toy", "fbank", "ks", 1e-3, dev=0.40, test=0.41, layers=1, curves=False)
    toy = json.loads((root / "toy" / "results.json").read_text())
    toy.update(task="toy", metric="mse", higher_is_better=False, order=0, chance=None, dev={"mse": 2.5},
               test={"mse": 3.25}, metrics={"mse": {"label": "MSE", "higher_is_better": False, "unit": ""}})
    (root / "toy" / "results.json").write_text(json.dumps(toy))
    lines = results_tables(load_benchmark(root)).splitlines()
    header = next(line for line in lines if line.startswith("| upstream"))
    assert [c.strip() for c in header.strip("|").split("|")] == ["upstream", "TOY MSE ↓", "KS accuracy ↑"]  # order 0 first
    cells = next(line for line in lines if line.startswith("| fbank"))
    assert "3.25" in cells and "3.25%" not in cells and "41.00%" in cells


def test_a_task_without_dev_split_is_reported(tmp_path):
    """ASV scores its last checkpoint: no dev metric, and the table still shows its test score."""
    root = tmp_path / "runs"
    write_run(root / "asv", "fbank", "ks", 1e-3, dev=0.40, test=0.41, layers=1, curves=False)
    run = json.loads((root / "asv" / "results.json").read_text())
    run.update(task="asv", metric="eer", higher_is_better=False, order=8, chance=0.5, dev={},
               test={"eer": 0.125, "min_dcf": 0.5}, metrics={"eer": {"label": "EER", "higher_is_better": False,
                                                                      "unit": "%"}})
    (root / "asv" / "results.json").write_text(json.dumps(run))
    lines = results_tables(load_benchmark(root)).splitlines()
    assert "ASV EER ↓" in next(line for line in lines if line.startswith("| upstream"))
    assert "12.50%" in next(line for line in lines if line.startswith("| fbank"))


# -- the reading, SUPERB's figures, the stage times ------------------------------------------


def section(text, title):
    return text.split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def test_the_reading_names_the_best_its_ties_fbank_and_the_control(tmp_path):
    fbank = flags(300, 0.6, 0)
    apc = [{"correct": 1} if i < 60 else dict(o) for i, o in enumerate(fbank)]  # far ahead of fbank, paired
    mfcc = [dict(o) for o in apc]
    mfcc[next(i for i, o in enumerate(apc) if o["correct"])]["correct"] = 0  # one behind apc: not separable
    control = [{"correct": 0} if i < 60 else dict(o) for i, o in enumerate(fbank)]  # far behind
    write_scored_run(tmp_path / "fbank", "fbank", fbank, dev=0.5)
    write_scored_run(tmp_path / "apc", "apc", apc, dev=0.6, ckpt=APC_CKPT, label="apc")
    write_scored_run(tmp_path / "apc_random", "apc", control, dev=0.4, ckpt=APC_CKPT, label="apc", init="random",
                     init_seed=0)
    write_scored_run(tmp_path / "mfcc", "mfcc", mfcc, dev=0.6)
    text = report(tmp_path).read_text()
    assert list(main_table(text)) == ["upstream", "apc", "apc (random init)", "fbank", "mfcc", "*chance*"]
    reading = section(text, "Reading")
    ks = next(line for line in reading.splitlines() if line.startswith("- **KS**"))
    assert ks.startswith(f"- **KS** (accuracy ↑): apc is best at {100 * ACCURACY(apc):.2f}%; "
                         "the test set cannot separate it from mfcc.")
    assert "Above fbank, separated: apc;" in ks  # mfcc is a baseline feature, not a pretrained upstream
    assert "apc beats its random-init control" in ks
    assert "no better than chance" not in ks
    assert "on the most tasks (1 of 1): apc, mfcc." in reading


def test_the_reading_says_when_nothing_is_separated_and_what_is_at_chance(tmp_path):
    for name, seed in (("fbank", 0), ("mel", 1)):  # 12 classes: chance 1/12; both at about 8%
        write_scored_run(tmp_path / name, name, flags(60, 1 / 12, seed), dev=0.1)
    line = next(l for l in section(report(tmp_path).read_text(), "Reading").splitlines() if l.startswith("- **KS**"))
    assert "but the test set separates it from none of the others" in line
    assert line.endswith("; no better than chance (8.33%): fbank, mel.")  # both intervals reach chance


def test_superb_figures_beside_ours_with_the_rank_correlation(tmp_path):
    reference = read_reference()
    assert reference.scores["hubert"]["ks"] == pytest.approx(0.9630) and reference.scores["apc"]["qbe"] == 0.0310
    assert "Yang et al." in reference.source
    # KS in SUPERB: fbank 8.63 < apc 91.01 < wav2vec2 96.23 < hubert 96.30; ours swap the last two
    for name, score in (("fbank", 0.2), ("apc", 0.5), ("wav2vec2", 0.9), ("hubert", 0.8)):
        write_run(tmp_path / name, name, "ks", 1e-3, dev=score, test=score, layers=2, curves=False,
                  ckpt=None if name == "fbank" else f"runs/{name}/last")
    write_run(tmp_path / "control", "apc", "ks", 1e-3, dev=0.1, test=0.1, curves=False, init="random")
    write_run(tmp_path / "pr_fbank", "fbank", "pr", 1e-3, dev=0.8, test=0.8, curves=False)
    text = report(tmp_path).read_text()
    table = section(text, "Beside SUPERB's published figures")
    rows = {r[0]: r[1:] for r in ([c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()
                                  if line.startswith("| ") and "---" not in line)}
    assert rows["hubert (runs/hubert/last)"][1] == "80.00% / 96.30%"
    assert rows["fbank"] == ["80.00% / 82.01%", "20.00% / 8.63%"]
    assert "apc (random init)" not in table  # the paper has no controls
    ours, theirs = [0.2, 0.5, 0.9, 0.8], [8.63, 91.01, 96.23, 96.30]
    rho = np.corrcoef(np.argsort(np.argsort(ours)), np.argsort(np.argsort(theirs)))[0, 1]  # ranks, no ties
    assert rho == pytest.approx(0.8)
    assert rows["*rank correlation*"] == ["*ρ: – (n = 1)*", f"*ρ = {rho:+.2f} (n = 4)*"]


def test_spearman_ranks_ties_by_their_mean():
    ours, theirs = [1.0, 2.0, 2.0, 3.0], [10.0, 20.0, 30.0, 40.0]
    ranks = np.array([1, 2.5, 2.5, 4])  # the tied pair shares ranks 2 and 3
    assert spearman(ours, theirs) == pytest.approx(np.corrcoef(ranks, [1, 2, 3, 4])[0, 1])
    assert spearman([1.0, 2.0], [1.0, 2.0]) is None and spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) is None


def test_a_malformed_reference_is_named(tmp_path):
    path = tmp_path / "ref.tsv"
    path.write_text("# source\nupstream\tKS_acc\napc\tninety\n")
    with pytest.raises(ConfigError, match="ref.tsv:3: KS_acc='ninety' is not a number"):
        read_reference(path)


def test_stage_times_and_the_machine_from_a_pipeline(tmp_path, runs):
    summary = {"pipeline": "demo", "jobs": 2, "threads_per_stage": "1", "seconds": 30.0, "wall_seconds": 20.0,
               "finished": 2, "total": 3, "machine": {"cpu": "Test CPU", "cores": 2, "torch": "2.0", "gpu": None},
               "stages": [{"name": "synth", "seconds": 10.0}, {"name": "pretrain_apc", "seconds": 20.0}]}
    (tmp_path / "pipeline.json").write_text(json.dumps(summary))
    text = report(runs, tmp_path / "out", name="REPORT.md", stages=tmp_path / "pipeline.json").read_text()
    times = section(text, "Machine and stage times")
    assert "Machine: Test CPU, 2 cores, torch 2.0, no GPU; pipeline `demo`, 2 stage(s) at a time" in times
    assert "| `pretrain_apc`     |      20 |" in times and "*all stages (sum)*" in times and "2 of 3 stages" in times


def test_with_many_upstreams_the_report_keeps_the_key_pairs_and_the_sweeps_in_short(tmp_path):
    runs = tmp_path / "runs"
    accuracy = {"fbank": 0.6, "apc": 0.7, "tera": 0.65, "cpc": 0.5, "mockingjay": 0.55, "hubert": 0.9}
    for n, (name, p) in enumerate(accuracy.items()):
        ckpt = None if name == "fbank" else f"runs/{name}/last"
        for lr, dev in ((1e-3, p - 0.1), (1e-2, p)):  # the higher rate wins on dev
            write_scored_run(runs / name / str(lr), name, flags(300, p, n), dev=dev, lr=lr, ckpt=ckpt, label=name)
    write_scored_run(runs / "apc_random" / "0", "apc", flags(300, 0.3, 9), dev=0.3, ckpt="runs/apc/last",
                     label="apc", init="random", init_seed=0)
    text = report(runs, tmp_path / "out").read_text()
    labels = [*accuracy, "apc (random init)"]
    pairs = {frozenset(pair) for pair in difference_rows(text)}
    key = {frozenset((a, b)) for a in labels for b in labels if a != b and {a, b} & {"hubert", "fbank"}}
    assert pairs == key | {frozenset(("apc", "apc (random init)"))}  # the best's, fbank's, and the control's
    every = difference_rows((tmp_path / "out" / "differences.md").read_text().replace("# Differences", "## Differences"))
    assert len(every) == 7 * 6 // 2 and "(differences.md)" in text

    short = section(text, "Learning-rate sweeps")
    assert "| hubert " in short and "0.001: 80.00% · **0.01: 90.00%**" in short and "(sweeps.md)" in short
    assert "apc (random init)" not in short  # one run: no sweep
    full = (tmp_path / "out" / "sweeps.md").read_text()
    assert full.count("\n### ") == 6 and "`hubert/0.01`" in full and "Part of [the report](README.md)" in full

    # rewritten into the same folder with fewer upstreams: the report holds every pair again, the appendices go
    for name in ("tera", "cpc", "mockingjay", "hubert", "apc_random"):
        shutil.rmtree(runs / name)
    text = report(runs, tmp_path / "out").read_text()
    assert not (tmp_path / "out" / "differences.md").exists() and not (tmp_path / "out" / "sweeps.md").exists()
    assert "(differences.md)" not in text and "(sweeps.md)" not in text
    assert len(difference_rows(text)) == 1
    mine = tmp_path / "other" / "differences.md"  # a file the report did not write is left as it is
    mine.parent.mkdir()
    mine.write_text("# Differences\n\nMy own notes.\n")
    report(runs, tmp_path / "other")
    assert mine.read_text() == "# Differences\n\nMy own notes.\n"
