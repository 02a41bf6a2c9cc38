"""Pretraining through the engine: every pretrainable upstream on SUPERB-lite tiny, then loaded back.

The tests enumerate the registry, so a new model with an objective is tested here
without a line changed: a fixed batch's loss falls, a tiny config trains and its
checkpoint loads and extracts, a run stopped after a checkpoint resumes exactly.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import signals
import speechssl
from speechssl.data.dataset import AudioDataset, CropConfig
from speechssl.errors import CheckpointError, ConfigError
from speechssl.pretrain import pretrain, pretrainable_upstreams
from speechssl.registry import get_entry
from speechssl.trainer import Trainer, TrainerConfig

CFG = TrainerConfig(max_steps=24, warmup_steps=4, lr=2e-3, batch_seconds=12, log_every=4, save_every=12)
CROP = CropConfig(max_seconds=3)
PRETRAINABLE = pretrainable_upstreams()


def train_set(root, name=None, folder=None):
    """SUPERB-lite tiny's pretraining audio; for an objective that reads frame labels (HuBERT's cluster
    ids), a copy of the manifest in ``folder`` with learnable labels (:func:`signals.energy_labels`)."""
    manifest = root / "pretrain" / "train.tsv"
    if name is not None:
        upstream = signals.tiny(name)
        for column in get_entry(name).objective(upstream).frame_labels:
            clusters = getattr(upstream.config, "clusters", 8)
            manifest = signals.labelled_manifest(manifest, upstream, column, clusters, folder / f"{name}.tsv")
    return AudioDataset.from_manifest(manifest)


def test_the_generative_and_contrastive_families_are_pretrainable():
    assert {"mockingjay", "tera", "apc", "vq_apc", "cpc"} <= set(PRETRAINABLE)


@pytest.mark.parametrize("name", PRETRAINABLE)
def test_loss_falls_on_a_fixed_batch(name):
    upstream = signals.tiny(name)
    objective = get_entry(name).objective(upstream).train()
    items = [{"id": str(i), "wav": w[:n], "crop_offset": 0}
             for i, (w, n) in enumerate(zip(signals.tones(4, 1.0), [16000, 14000, 12000, 10000]))]
    for item in items:  # HuBERT's cluster ids: learnable labels of each frame
        for column in objective.frame_labels:
            item[column] = signals.energy_labels(item["wav"], upstream, upstream.config.clusters)
    batch = objective.collate(items)
    optimizer = torch.optim.Adam(objective.parameters(), lr=3e-3)
    losses = []
    for step in range(40):
        loss, logs = objective(batch, step=step, generator=torch.Generator().manual_seed(0))  # the same draws
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        assert all(v.dim() == 0 and not v.requires_grad for v in logs.values())
    assert sum(losses[-5:]) / 5 < 0.85 * losses[0], losses  # contrastive losses fall the slowest


@pytest.mark.parametrize("name", PRETRAINABLE)
def test_pretrain_then_load(name, superb_lite_tiny, tmp_path):
    dataset = train_set(superb_lite_tiny, name, tmp_path)
    results = pretrain(name, dataset, CFG, tmp_path / "run", crop=CROP, overrides=get_entry(name).tiny)
    assert results["upstream"] == name and results["step"] == 24
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert min(losses[-2:]) < losses[0]  # falling
    model = speechssl.load_upstream(name, ckpt=tmp_path / "run" / "last")
    assert model.config == speechssl.build_upstream(name, **get_entry(name).tiny).config
    # the checkpoint reproduces the weights the trainer ended with
    trained = load_file(tmp_path / "run" / "last" / "train.safetensors")
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, trained[f"upstream.{key}"])
    wav = speechssl.load_audio(dataset.utterances[0].path)
    feats = model(wav)
    assert len(feats.hidden_states) == model.num_layers and feats.lengths.item() == model.num_frames(torch.tensor([len(wav)])).item()


class Stop(Exception):
    pass


@pytest.mark.parametrize("name", PRETRAINABLE)
def test_a_run_stopped_after_a_checkpoint_resumes_exactly(name, superb_lite_tiny, tmp_path, monkeypatch):
    """Random crops, two loader workers, the objective's own draws: the resumed run ends on the same weights."""
    cfg = TrainerConfig(**{**CFG.__dict__, "max_steps": 12, "save_every": 6, "num_workers": 2})
    crop = CropConfig(max_seconds=1.5, crop="random")
    tiny = get_entry(name).tiny
    pretrain(name, train_set(superb_lite_tiny, name, tmp_path), cfg, tmp_path / "unbroken", crop=crop, overrides=tiny)
    save = Trainer.save

    def save_then_die(self, train_loss):
        save(self, train_loss)
        if self.step == 6:
            raise Stop

    monkeypatch.setattr(Trainer, "save", save_then_die)
    with pytest.raises(Stop):
        pretrain(name, train_set(superb_lite_tiny, name, tmp_path), cfg, tmp_path / "stopped", crop=crop, overrides=tiny)
    monkeypatch.setattr(Trainer, "save", save)
    assert torch.load(tmp_path / "stopped" / "last" / "trainer_state.pt", weights_only=True)["step"] == 6
    pretrain(name, train_set(superb_lite_tiny, name, tmp_path), cfg, tmp_path / "stopped", crop=crop, overrides=tiny)
    a = load_file(tmp_path / "unbroken" / "last" / "train.safetensors")
    b = load_file(tmp_path / "stopped" / "last" / "train.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=0, rtol=0)


def test_clips_shorter_than_the_receptive_field_are_left_out(superb_lite_tiny, caplog):
    dataset = train_set(superb_lite_tiny)
    dataset.utterances[0].num_samples = 100
    upstream = speechssl.build_upstream("apc")
    objective = get_entry("apc").objective(upstream)
    with caplog.at_level("WARNING"):
        kept = dataset.for_model(upstream, objective, CROP, seed=0)
    assert len(kept) == len(dataset) - 1 and dataset.utterances[0] not in kept.utterances
    assert "1 utterance(s) left out, shorter than apc's receptive field of 400 samples" in caplog.text
    assert str(dataset.utterances[0].path) in caplog.text
    for u in dataset.utterances:
        u.num_samples = 10
    with pytest.raises(ConfigError, match="every utterance of the training set is shorter than apc's receptive field"):
        dataset.for_model(upstream, objective, CROP, seed=0)


def test_baseline_has_no_objective(tmp_path):
    with pytest.raises(ConfigError, match="upstream 'fbank' has no pretraining objective; pretrainable: apc"):
        pretrain("fbank", None, CFG, tmp_path)


def test_cli_pretrain_resume_and_extract(superb_lite_tiny, tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "speechssl.cli", *args], cwd=tmp_path, capture_output=True,
                              text=True, timeout=300)

    common = ["upstream=apc_tiny", f"data.root={superb_lite_tiny}", "trainer=tiny", "trainer.save_every=4",
              "hydra.run.dir=runs/apc"]
    run = cli("pretrain", *common, "trainer.max_steps=4")
    assert run.returncode == 0, run.stderr[-2000:]
    run = cli("pretrain", *common, "trainer.max_steps=8")  # the same folder: resumes at step 4
    assert run.returncode == 0 and "resumed from" in run.stderr and "at step 4" in run.stderr
    assert json.loads((tmp_path / "runs/apc/results.json").read_text())["step"] == 8
    wav = superb_lite_tiny / "audio" / "pretrain" / "train" / "pretrain-train-00000.wav"
    run = cli("extract", "upstream=apc_tiny", "upstream.ckpt=runs/apc/last", f"input={wav}", "output=feats",
              "hydra.run.dir=runs/x")
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "feats" / "pretrain-train-00000.safetensors").exists()
    with pytest.raises(CheckpointError, match="holds a 'apc' upstream, not 'tera'"):
        speechssl.load_upstream("tera", ckpt=tmp_path / "runs/apc/last")


@pytest.mark.slow
def test_cli_under_torchrun_rank_0_alone_writes_the_log(superb_lite_tiny, tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", "-m", "speechssl.cli",
         "pretrain", "upstream=apc_tiny", f"data.root={superb_lite_tiny}", "trainer=tiny", "trainer.max_steps=4",
         "trainer.log_every=2", "trainer.save_every=4", "hydra.run.dir=run"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert run.returncode == 0, run.stderr[-2000:]
    log = (tmp_path / "run" / "pretrain.log").read_text()
    assert log.count("done: step 4") == 1 and log.count("step 2: loss") == 1
    assert json.loads((tmp_path / "run" / "results.json").read_text())["world_size"] == 2


def test_bf16_autocast_ends_near_fp32(superb_lite_tiny, tmp_path):
    dataset = train_set(superb_lite_tiny)
    final = {}
    for precision in ("fp32", "bf16"):
        cfg = TrainerConfig(**{**CFG.__dict__, "precision": precision})
        final[precision] = pretrain("mockingjay", dataset, cfg, tmp_path / precision, crop=CROP,
                                    overrides=get_entry("mockingjay").tiny)["train_loss"]
    assert final["bf16"] == pytest.approx(final["fp32"], rel=0.05)


def test_slurm_launcher_config_composes(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    run = subprocess.run([sys.executable, "-m", "speechssl.cli", "pretrain", "hydra/launcher=slurm", "--cfg", "hydra"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "SlurmLauncher" in run.stdout and "gpus_per_node: 1" in run.stdout
