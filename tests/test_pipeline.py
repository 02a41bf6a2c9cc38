"""Pipelines (speechssl/pipeline.py): CLI stages in order, finished ones skipped on rerun."""

import json
import logging
import sys

import pytest

from speechssl import pipeline
from speechssl.errors import ConfigError
from speechssl.pipeline import expand_stages, run_pipeline

# a stand-in for the speechssl CLI that starts in milliseconds: ``log FILE NAME [SECONDS]`` appends
# "NAME start TIME" and "NAME end TIME" around a sleep, ``threads FILE`` writes OMP_NUM_THREADS, ``fail``
# prints a line and exits 3
FAKE_CLI = """
import os, sys, time
args = sys.argv[1:]
if args[0] == "log":
    with open(args[1], "a") as f:
        f.write(f"{args[2]} start {time.time()}\\n")
    time.sleep(float(args[3]) if len(args) > 3 else 0)
    with open(args[1], "a") as f:
        f.write(f"{args[2]} end {time.time()}\\n")
elif args[0] == "threads":
    open(args[1], "w").write(os.environ.get("OMP_NUM_THREADS", "unset"))
elif args[0] == "fail":
    print("something broke here")
    sys.exit(3)
"""


@pytest.fixture
def fake_cli(monkeypatch):
    monkeypatch.setattr(pipeline, "COMMAND", (sys.executable, "-c", FAKE_CLI))


def _events(path):
    events = {}
    for line in path.read_text().splitlines():
        name, what, when = line.split()
        events[name, what] = float(when)
    return events


def test_stages_run_in_order_and_a_rerun_skips_the_finished_ones(tmp_path, fake_cli, caplog):
    log = tmp_path / "events"
    stages = [{"name": "one", "command": ["log", str(log), "one"]}, {"name": "two", "command": ["log", str(log), "two"]}]
    times = run_pipeline("demo", stages, tmp_path)
    assert list(times) == ["one", "two"]
    events = _events(log)
    assert events["one", "end"] <= events["two", "start"]
    assert json.loads((tmp_path / "stages" / "one.json").read_text())["command"] == ["log", str(log), "one"]
    summary = json.loads((tmp_path / "pipeline.json").read_text())
    assert [s["name"] for s in summary["stages"]] == ["one", "two"]
    log.unlink()
    with caplog.at_level(logging.INFO, logger="speechssl.pipeline"):
        again = run_pipeline("demo", stages, tmp_path)
    assert again == times and not log.exists()
    assert "stage 1/2 one finished before" in caplog.text and "stage 2/2 two finished before" in caplog.text


def test_a_failing_stage_stops_the_pipeline_and_the_rerun_resumes_at_it(tmp_path, fake_cli):
    log = tmp_path / "events"
    stages = [{"name": "ok", "command": ["log", str(log), "ok"]}, {"name": "bad", "command": ["fail"]},
              {"name": "after", "command": ["log", str(log), "after"]}]  # fmt: skip
    with pytest.raises(ConfigError, match=r"stage bad failed \(exit 3\)"):
        run_pipeline("demo", stages, tmp_path)
    assert (tmp_path / "stages" / "ok.json").exists() and not (tmp_path / "stages" / "bad.json").exists()
    assert not (tmp_path / "stages" / "after.json").exists()
    stages[1]["command"] = ["log", str(log), "bad"]  # fixed
    assert list(run_pipeline("demo", stages, tmp_path)) == ["ok", "bad", "after"]
    assert [name for name, what in _events(log) if what == "start"] == ["ok", "bad", "after"]


def test_a_real_stage_runs_the_speechssl_cli(tmp_path):
    times = run_pipeline("demo", [{"name": "help", "command": ["report", "--help"]}], tmp_path)
    assert list(times) == ["help"] and (tmp_path / "stages" / "help.json").exists()


def test_malformed_stages_are_refused_before_running():
    with pytest.raises(ConfigError, match="stage 1 needs a name and a command"):
        run_pipeline("demo", [{"name": "x"}], "/nonexistent/never-made")


def test_hubert_two_iterations_composes_to_four_cli_stages_on_the_run_folder(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from speechssl import cli

    cli._register_schemas()
    overrides = ["upstream=hubert_tiny", "pipeline=two_iterations", "data.root=/corpus", f"hydra.run.dir={tmp_path}",
                 "pipeline.steps_2=700", "hydra.runtime.output_dir=" + str(tmp_path)]  # fmt: skip
    with initialize_config_dir(str(cli.CONFIG_DIR), version_base=None):
        cfg = compose("pretrain", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    pipeline = OmegaConf.to_container(cfg.pipeline, resolve=True)
    names = [stage["name"] for stage in pipeline["stages"]]
    assert names == ["cluster_mfcc", "iteration_1", "cluster_layer", "iteration_2"]
    commands = {stage["name"]: stage["command"] for stage in pipeline["stages"]}
    assert commands["cluster_mfcc"][:3] == ["cluster", "manifest=/corpus/pretrain/train.tsv", "upstream=mfcc"]
    assert f"out={tmp_path}/clusters_1" in commands["cluster_mfcc"]
    assert f"++data.manifests.pretrain.train={tmp_path}/clusters_1/train.tsv" in commands["iteration_1"]
    assert "upstream=hubert_tiny" in commands["iteration_2"] and "upstream.iteration=2" in commands["iteration_2"]
    assert f"upstream.ckpt={tmp_path}/iteration_1/last" in commands["cluster_layer"]
    assert "trainer=tiny" in commands["iteration_1"]
    assert "trainer.max_steps=300" in commands["iteration_1"]  # trainer=tiny's steps, unless pipeline.steps_1 says
    assert "trainer.max_steps=700" in commands["iteration_2"]


def test_foreach_repeats_a_stage_per_combination_and_needs_resolve_names_and_patterns():
    stages = [
        {"name": "make", "command": ["synth"]},
        {"name": "train_{up.name}", "foreach": {"up": [[{"name": "a", "steps": 1}], [{"name": "b", "steps": None}]]},
         "needs": ["make"], "command": ["pretrain", "upstream={up.name}", "steps={up.steps}"]},
        {"name": "bench_{up}_{task}", "foreach": {"up": ["a", "b"], "task": ["pr", "ks"]}, "needs": ["train_{up}"],
         "command": ["benchmark", "task={task}", "hydra.sweep.subdir=${task.name}"]},
        {"name": "report", "needs": ["bench_*"], "command": ["report"]},
        {"name": "after", "command": ["report"]},
    ]
    plan = {s["name"]: s for s in expand_stages("p", stages)}
    assert list(plan) == ["make", "train_a", "train_b", "bench_a_pr", "bench_a_ks", "bench_b_pr", "bench_b_ks",
                          "report", "after"]
    assert plan["train_a"]["command"] == ["pretrain", "upstream=a", "steps=1"]
    assert plan["train_b"]["command"] == ["pretrain", "upstream=b", "steps=null"]
    assert plan["bench_b_ks"]["needs"] == ["train_b"]
    assert plan["bench_b_ks"]["command"][-1] == "hydra.sweep.subdir=${task.name}"  # Hydra's own interpolation kept
    assert plan["report"]["needs"] == ["bench_a_pr", "bench_a_ks", "bench_b_pr", "bench_b_ks"]
    assert plan["after"]["needs"] == ["report"]  # no needs key: the stage before it
    assert plan["make"]["needs"] == []


@pytest.mark.parametrize("stages, message", [
    ([{"name": "a", "command": ["x"], "needs": ["b"]}, {"name": "b", "command": ["x"]}],
     "stage 'a' needs 'b', which names no stage listed before it"),
    ([{"name": "a/b", "command": ["x"]}], "may hold only letters"),
    ([{"name": "a", "command": ["x"], "after": ["b"]}], "unknown key\\(s\\) after"),
    ([{"name": "a_{v}", "command": ["x"], "foreach": {"v": "ab"}}], "foreach.v must be a list"),
    ([{"name": "a_{v}", "command": ["{v}"], "foreach": {"v": [{"k": 1}]}}], "is a mapping"),
    ([{"name": "a_{v.j}", "command": ["x"], "foreach": {"v": [{"k": 1}]}}], "has no key 'j'"),
    ([{"name": "a", "command": ["x"]}, {"name": "a", "command": ["y"]}], "stage name 'a' used twice"),
])
def test_malformed_graphs_are_refused_before_anything_runs(stages, message):
    with pytest.raises(ConfigError, match=message):
        run_pipeline("p", stages, "/nonexistent/never-made")


def test_jobs_run_independent_stages_side_by_side_and_a_stage_after_its_needs(tmp_path, fake_cli):
    log = tmp_path / "events"
    stages = [{"name": f"slow_{i}", "needs": [], "command": ["log", str(log), f"slow_{i}", "1.0"]} for i in (1, 2)]
    stages += [{"name": "last", "needs": ["slow_*"], "command": ["log", str(log), "last"]},
               {"name": "threads", "command": ["threads", str(tmp_path / "threads")]}]
    run_pipeline("p", stages, tmp_path / "run", jobs=2)
    events = _events(log)
    assert events["slow_2", "start"] < events["slow_1", "end"]  # the two ran at the same time
    assert events["last", "start"] >= max(events["slow_1", "end"], events["slow_2", "end"])
    summary = json.loads((tmp_path / "run" / "pipeline.json").read_text())
    assert summary["jobs"] == 2 and summary["finished"] == summary["total"] == 4
    assert summary["machine"]["cores"] >= 1 and summary["wall_seconds"] < summary["seconds"]
    expected = summary["threads_per_stage"]
    assert (tmp_path / "threads").read_text() == expected  # the environment's, or cores // jobs
    assert (tmp_path / "run" / "stages" / "slow_1.log").exists()  # side by side: each stage's output in its log


def test_a_failure_lets_running_stages_finish_starts_nothing_new_and_shows_the_log(tmp_path, fake_cli, caplog):
    log = tmp_path / "events"
    stages = [{"name": "bad", "needs": [], "command": ["fail"]},
              {"name": "slow", "needs": [], "command": ["log", str(log), "slow", "0.5"]},
              {"name": "later", "needs": [], "command": ["log", str(log), "later"]}]  # fmt: skip
    with caplog.at_level(logging.ERROR, logger="speechssl.pipeline"):
        with pytest.raises(ConfigError, match=r"stage bad failed \(exit 3\).*1 of 3 stages finished"):
            run_pipeline("p", stages, tmp_path / "run", jobs=2)
    assert "something broke here" in caplog.text  # the end of the failed stage's log
    assert (tmp_path / "run" / "stages" / "slow.json").exists()  # it was running: it finished and counts
    assert ("later", "start") not in _events(log)


def test_a_rerun_reruns_a_stage_whose_need_ran_again(tmp_path, fake_cli, caplog):
    log = tmp_path / "events"
    stages = [{"name": "a", "command": ["log", str(log), "a"]}, {"name": "b", "command": ["log", str(log), "b"]},
              {"name": "c", "needs": [], "command": ["log", str(log), "c"]}]  # fmt: skip
    run_pipeline("p", stages, tmp_path / "run")
    (tmp_path / "run" / "stages" / "a.json").unlink()  # as if stage a had been added, or its result removed
    log.unlink()
    with caplog.at_level(logging.INFO, logger="speechssl.pipeline"):
        run_pipeline("p", stages, tmp_path / "run")
    ran = {name for name, what in _events(log) if what == "start"}
    assert ran == {"a", "b"}  # b needs a, which ran again; c needs nothing and is skipped
    assert "stage 3/3 c finished before" in caplog.text


def test_jobs_must_be_a_positive_whole_number(tmp_path):
    with pytest.raises(ConfigError, match="jobs=0"):
        run_pipeline("p", [{"name": "a", "command": ["x"]}], tmp_path, jobs=0)
