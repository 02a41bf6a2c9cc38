"""The training loop: schedule, falling loss, SIGKILL and resume, DDP equivalence, checkpoints."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from speechssl.checkpoint import TRAIN_WEIGHTS
from speechssl.errors import CheckpointError, ConfigError
from speechssl.trainer import Trainer, TrainerConfig, lr_factor

JOB = Path(__file__).with_name("trainer_job.py")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """12 clips of 0.5 s (equal lengths: DDP halves have equal frame counts)."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    t = np.arange(8000) / 16000
    for i in range(12):
        f0 = 120 + 20 * i
        wav = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6)) * 0.1
        sf.write(root / f"u{i:02d}.wav", (wav + 0.01 * rng.standard_normal(8000)).astype(np.float32), 16000)
    return root


def job(corpus, run_dir, max_steps=30, save_every=5, noise=0.1, sleep=0.0, nproc=1, wait=True, lr=1e-2):
    args = [str(corpus), str(run_dir), str(max_steps), str(save_every), str(noise), str(sleep), str(lr)]
    if nproc == 1:
        cmd = [sys.executable, str(JOB), *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone", str(JOB), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    if wait:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err[-3000:]
    return proc


def final_weights(run_dir):
    return load_file(Path(run_dir) / "last" / TRAIN_WEIGHTS)


def test_lr_schedule():
    cfg = TrainerConfig(max_steps=110, warmup_steps=10, decay="linear")
    assert lr_factor(0, cfg) == pytest.approx(0.1) and lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(60, cfg) == pytest.approx(0.5) and lr_factor(110, cfg) == pytest.approx(0.0)
    cos = TrainerConfig(max_steps=110, warmup_steps=10, decay="cosine")
    assert lr_factor(60, cos) == pytest.approx(0.5) and lr_factor(35, cos) == pytest.approx(0.5 * (1 + np.cos(np.pi / 4)))


def test_loss_falls_and_run_folder_is_complete(corpus, tmp_path):
    job(corpus, tmp_path / "run", max_steps=30)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [5, 10, 15, 20, 25, 30]
    assert lines[-1]["loss"] < 0.9 * lines[0]["loss"]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["step"] == 30 and results["trainer"]["max_steps"] == 30
    steps = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert steps[-1] == "step_0000030" and len(steps) <= 3  # keep 2, plus best if older
    assert (tmp_path / "run" / "last").resolve().name == "step_0000030"
    assert (tmp_path / "run" / "best").exists()
    assert list((tmp_path / "run" / "tb").iterdir())  # TensorBoard event file
    state = torch.load(tmp_path / "run" / "last" / "trainer_state.pt", weights_only=True)
    assert state["step"] == 30


def test_sigkill_then_resume_matches_an_unbroken_run(corpus, tmp_path):
    job(corpus, tmp_path / "unbroken", max_steps=30, noise=0.1)
    killed = job(corpus, tmp_path / "killed", max_steps=30, noise=0.1, sleep=0.05, wait=False)
    deadline = time.monotonic() + 120
    while not (tmp_path / "killed" / "checkpoints" / "step_0000010").exists():
        assert killed.poll() is None and time.monotonic() < deadline, "job ended before the kill"
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed" / "results.json").exists(), "the job finished before it was killed"
    resumed_at = torch.load(tmp_path / "killed" / "last" / "trainer_state.pt", weights_only=True)["step"]
    assert 5 <= resumed_at < 30  # last may still name step 5 if the kill fell between rename and link
    job(corpus, tmp_path / "killed", max_steps=30, noise=0.1)
    a, b = final_weights(tmp_path / "unbroken"), final_weights(tmp_path / "killed")
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=0)
    steps = [json.loads(line)["step"] for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # no step logged twice after the resume


@pytest.mark.slow
def test_ddp_two_processes_match_one(corpus, tmp_path):
    # Adam turns float rounding of tiny gradients into lr-sized steps: a small lr keeps
    # the comparison about DDP, not about summation order.
    job(corpus, tmp_path / "one", max_steps=10, noise=0.0, lr=1e-3)
    job(corpus, tmp_path / "two", max_steps=10, noise=0.0, nproc=2, lr=1e-3)
    a, b = final_weights(tmp_path / "one"), final_weights(tmp_path / "two")
    assert json.loads((tmp_path / "two" / "results.json").read_text())["world_size"] == 2
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=0)


def test_checkpoint_of_another_model_is_refused(corpus, tmp_path):
    job(corpus, tmp_path / "run", max_steps=5)
    other = torch.nn.Linear(3, 3)
    with pytest.raises(CheckpointError, match="checkpoint of another model or config"):
        Trainer(other, TrainerConfig(max_steps=10), tmp_path / "run").resume()
    (tmp_path / "run" / "last" / "trainer_state.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="unreadable training checkpoint"):
        Trainer(other, TrainerConfig(max_steps=10), tmp_path / "run").resume()


def test_config_errors(tmp_path):
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ConfigError, match="fp16 needs CUDA"):
        Trainer(model, TrainerConfig(precision="fp16"), tmp_path)
    with pytest.raises(ConfigError, match="trainer.precision='fp8'"):
        Trainer(model, TrainerConfig(precision="fp8"), tmp_path)
