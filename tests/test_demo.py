"""The demo (issue 24): `make demo`'s pipeline end to end at DEMO_SIZE=tiny, its report, and a rerun that skips."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from speechssl import cli
from speechssl.pipeline import expand_stages

REPO = Path(__file__).resolve().parent.parent
UPSTREAMS = ["mockingjay", "tera", "apc", "vq_apc", "cpc", "wav2vec2", "vq_wav2vec", "hubert", "delores"]
ROWS = sorted(["fbank", *UPSTREAMS, "apc (random init)", "wav2vec2 (random init)"])
CORE = ["PR PER ↓", "KS accuracy ↑", "IC accuracy ↑", "SID accuracy ↑", "ER accuracy ↑"]


def demo_plan(tmp_path, *overrides):
    cli._register_schemas()
    with initialize_config_dir(str(cli.CONFIG_DIR), version_base=None):
        cfg = compose("run", overrides=[f"hydra.run.dir={tmp_path}", f"hydra.runtime.output_dir={tmp_path}",
                                        *overrides], return_hydra_config=True)  # fmt: skip
    HydraConfig.instance().set_config(cfg)
    pipeline = OmegaConf.to_container(cfg.pipeline, resolve=True)
    return {stage["name"]: stage for stage in expand_stages(pipeline["name"], pipeline["stages"])}


def table_rows(text: str) -> dict[str, list[str]]:
    """The report's main table as {first cell: other cells} (the header under 'upstream')."""
    section = text.split("## Results", 1)[1].split("\n\n", 3)[2]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines() if "---" not in line]
    return {row[0]: row[1:] for row in rows}


def test_make_demo_is_the_demo_pipeline_with_its_size_and_tasks():
    run = subprocess.run(["make", "-n", "-C", str(REPO), "demo", "DEMO_SIZE=tiny", "DEMO_TASKS=all", "DEMO=/x/demo"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert ("speechssl run pipeline=demo jobs=2 pipeline.size=tiny pipeline.task_set=all "
            "hydra.run.dir=/x/demo_tiny") in " ".join(run.stdout.replace("\\\n", " ").split())


def test_the_demo_stages_for_each_size_and_task_set(tmp_path):
    small = demo_plan(tmp_path)
    assert [n for n in small if n.startswith("pretrain_")] == [f"pretrain_{u}" for u in UPSTREAMS[:7] + ["delores",
                                                                                                         "hubert"]]
    bench = [n for n in small if n.startswith("benchmark_")]
    assert len(bench) == 12 * 2 and small["report"]["needs"] == bench  # 12 rows, each PR and the utterance tasks
    command = small["benchmark_hubert_utterance"]["command"]
    assert "task=ks,ic,sid,er" in command and "label=hubert" in command
    assert f"upstream.ckpt={tmp_path}/pretrain/hubert/iteration_2/last" in command
    assert small["benchmark_hubert_utterance"]["needs"] == ["pretrain_hubert"]
    control = small["benchmark_apc_random_init_pr"]["command"]
    assert "init=random" in control and "label=apc" in control and "hydra.sweep.subdir=${task.name}" in control
    assert "size=small" in small["synth"]["command"] and "pipeline=two_iterations" in small["pretrain_hubert"]["command"]

    every = demo_plan(tmp_path, "pipeline.task_set=all")
    tasks = {part.split("=", 1)[1] for name, stage in every.items() if name.startswith("benchmark_fbank")
             for part in stage["command"] if part.startswith("task=")}
    assert set(",".join(tasks).split(",")) == {"pr", "ks", "ic", "sid", "er", "asr", "sf", "asv", "sd", "qbe"}
    tiny = demo_plan(tmp_path, "pipeline.size=tiny", "pipeline.task_set=all")
    assert "trainer.max_steps=20" in tiny["pretrain_apc"]["command"]
    assert "data.root=data/superb_lite_tiny" in tiny["benchmark_fbank_other"]["command"]


@pytest.mark.slow
def test_the_tiny_demo_runs_end_to_end_and_a_rerun_skips_every_stage(tmp_path):
    run_dir = tmp_path / "runs" / "demo_tiny"
    command = [sys.executable, "-m", "speechssl.cli", "run", "pipeline=demo", "jobs=2", "pipeline.size=tiny",
               f"hydra.run.dir={run_dir}"]  # what `make demo DEMO_SIZE=tiny` runs, here below tmp_path
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]

    text = (run_dir / "REPORT.md").read_text()
    rows = table_rows(text)
    assert rows["upstream"] == CORE  # a column for every task, in SUPERB's order
    assert sorted(label for label in rows if label not in ("upstream", "*chance*")) == ROWS  # a row per upstream
    for label in ROWS:
        assert all(re.search(r"\d", cell) for cell in rows[label]), (label, rows[label])  # every cell was run
    assert "![test scores on superb_lite](scores.png)" in text and (run_dir / "scores.png").stat().st_size > 10_000
    assert (run_dir / "curves_pr.png").exists() and "(curves_pr.png)" in text
    reading = text.split("## Reading", 1)[1].split("\n## ", 1)[0]
    assert all(f"- **{task}**" in reading for task in ("PR", "KS", "IC", "SID", "ER"))
    superb = text.split("## Beside SUPERB's published figures", 1)[1].split("\n## ", 1)[0]
    assert "| hubert " in superb and "*rank correlation*" in superb and "delores" not in superb
    assert "## Machine and stage times" in text and "`pretrain_hubert`" in text
    summary = json.loads((run_dir / "pipeline.json").read_text())
    assert summary["finished"] == summary["total"] == 1 + 9 + 12 + 1  # synth, 9 pretrain, 12 benchmark, report
    assert (run_dir / "pretrain" / "hubert" / "clusters_2" / "quality.md").exists()  # the two-iteration pipeline ran

    markers = {p.name: p.stat().st_mtime_ns for p in (run_dir / "stages").glob("*.json")}
    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (again.stdout + again.stderr).count("finished before") == summary["total"]
    assert {p.name: p.stat().st_mtime_ns for p in (run_dir / "stages").glob("*.json")} == markers  # nothing re-ran
