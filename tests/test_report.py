"""`speechssl report`: choosing the best-dev run, the Markdown tables, the plots, the TSV, the errors."""

import csv
import json
import subprocess
import sys

import matplotlib.image
import pytest

from speechssl.cli import COMMANDS
from speechssl.errors import ConfigError
from speechssl.report import (
    format_score,
    load_benchmark,
    read_curves,
    report,
    results_tables,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TASKS = {  # task -> (metric, higher_is_better, chance)
    "ks": ("accuracy", True, 1 / 12),
    "pr": ("per", False, 0.95),
    "asr": ("wer", False, 1.0),
}
APC_CKPT = "runs/apc/last"


def write_run(folder, upstream, task, lr, dev, test, ckpt=None, layers=3, curves=True, **extra):
    metric, higher, chance = TASKS[task]
    folder.mkdir(parents=True)
    weights = [i + 1.0 for i in range(layers)]
    results = {
        "kind": "benchmark", "upstream": upstream, "ckpt": ckpt, "task": task, "corpus": "superb_lite",
        "metric": metric, "higher_is_better": higher, "chance": chance, "lr": lr,
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
    assert names == ["curves_ks.png", "curves_pr.png", "layer_weights_apc-runs-apc-last.png"]
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
    assert list(rows[0]) == ["upstream", "ckpt", "layer", "trainable", "corpus", "task", "metric", "dev", "test", "lr",
                             "chosen", "run_dir"]
    ks = [r for r in rows if r["upstream"] == "apc" and r["task"] == "ks"]
    assert [(float(r["lr"]), float(r["dev"]), float(r["test"]), r["chosen"]) for r in ks] == [
        (1e-4, 0.50, 0.60, "0"), (1e-3, 0.62, 0.58, "1"), (1e-2, 0.55, 0.70, "0")]
    assert {r["ckpt"] for r in ks} == {APC_CKPT} and ks[1]["run_dir"] == str(runs / "sweep" / "1")
    fbank = next(r for r in rows if r["upstream"] == "fbank" and r["task"] == "pr")
    assert (fbank["ckpt"], fbank["metric"], fbank["chosen"]) == ("", "per", "1")


def test_read_curves_skips_a_torn_line(tmp_path, caplog):
    lines = '{"step": 20, "loss": 3.0}\n{"step": 10, "loss": 2.0}\n{"step": 20, "dev_wer": 0.5, "loss": 1.0}\n{"st'
    (tmp_path / "metrics.jsonl").write_text(lines)
    losses, devs = read_curves(tmp_path, "wer")
    assert losses == [(10, 2.0), (20, 1.0)] and devs == [(20, 0.5)]  # by step; the later of two at a step
    assert "metrics.jsonl:4" in caplog.text


def test_format_score():
    assert format_score(0.4812, "accuracy") == "48.12%"
    assert format_score(0.0541, "per") == "5.41%"
    assert format_score(12.3456, "mse") == "12.35"
    assert format_score(None, "wer") == "–"
    assert format_score(float("nan"), "wer") == "nan"


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

    run = speechssl(f"runs={runs}", "out=table")
    assert run.returncode == 0, run.stderr
    assert "| fbank " in run.stdout and "58.00%" in run.stdout and "sweeps" not in run.stdout  # the tables only
    assert (tmp_path / "table" / "README.md").exists() and (tmp_path / "table" / "results.tsv").exists()
    run = speechssl(f"runs={tmp_path}/missing")
    assert run.returncode == 1 and "missing: no such folder" in run.stderr and "Traceback" not in run.stderr
