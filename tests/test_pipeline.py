"""Pipelines (speechssl/pipeline.py): CLI stages in order, finished ones skipped on rerun."""

import json
import logging

import pytest

from speechssl.errors import ConfigError
from speechssl.pipeline import run_pipeline


def test_stages_run_in_order_and_a_rerun_skips_the_finished_ones(tmp_path, caplog):
    stages = [{"name": "one", "command": ["synth", "--help"]}, {"name": "two", "command": ["report", "--help"]}]
    times = run_pipeline("demo", stages, tmp_path)
    assert list(times) == ["one", "two"]
    assert json.loads((tmp_path / "stages" / "one.json").read_text())["command"] == ["synth", "--help"]
    summary = json.loads((tmp_path / "pipeline.json").read_text())
    assert [s["name"] for s in summary["stages"]] == ["one", "two"]
    with caplog.at_level(logging.INFO, logger="speechssl.pipeline"):
        again = run_pipeline("demo", stages, tmp_path)
    assert again == times
    assert "stage 1/2 one finished before" in caplog.text and "stage 2/2 two finished before" in caplog.text


def test_a_failing_stage_stops_the_pipeline_and_the_rerun_resumes_at_it(tmp_path):
    stages = [{"name": "ok", "command": ["synth", "--help"]}, {"name": "bad", "command": ["no-such-command"]},
              {"name": "after", "command": ["synth", "--help"]}]  # fmt: skip
    with pytest.raises(ConfigError, match=r"stage bad failed \(exit 2\)"):
        run_pipeline("demo", stages, tmp_path)
    assert (tmp_path / "stages" / "ok.json").exists() and not (tmp_path / "stages" / "bad.json").exists()
    assert not (tmp_path / "stages" / "after.json").exists()
    stages[1]["command"] = ["report", "--help"]  # fixed
    assert list(run_pipeline("demo", stages, tmp_path)) == ["ok", "bad", "after"]


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
                 "hydra.runtime.output_dir=" + str(tmp_path)]  # fmt: skip
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
