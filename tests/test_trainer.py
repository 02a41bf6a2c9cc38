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


def job(corpus, run_dir, max_steps=30, save_every=5, noise=0.1, sleep=0.0, nproc=1, wait=True, lr=1e-2, dropout=0.0,
        die_at_step=0, crop_seconds=0.0, workers=0):
    args = [str(corpus), str(run_dir), str(max_steps), str(save_every), str(noise), str(sleep), str(lr), str(dropout),
            str(die_at_step), str(crop_seconds), str(workers)]
    if nproc == 1:
        cmd = [sys.executable, str(JOB), *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone", str(JOB), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    if wait:
        out, err = proc.communicate(timeout=180)
        assert (proc.returncode != 0) == bool(die_at_step), err[-3000:]
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
    # noise draws from the trainer's generator, dropout from the global RNG: both must resume
    job(corpus, tmp_path / "unbroken", max_steps=30, noise=0.1, dropout=0.2)
    killed = job(corpus, tmp_path / "killed", max_steps=30, noise=0.1, dropout=0.2, sleep=0.05, wait=False)
    deadline = time.monotonic() + 120
    while not (tmp_path / "killed" / "checkpoints" / "step_0000010").exists():
        assert killed.poll() is None and time.monotonic() < deadline, "job ended before the kill"
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed" / "results.json").exists(), "the job finished before it was killed"
    resumed_at = torch.load(tmp_path / "killed" / "last" / "trainer_state.pt", weights_only=True)["step"]
    assert 5 <= resumed_at < 30  # last may still name step 5 if the kill fell between rename and link
    job(corpus, tmp_path / "killed", max_steps=30, noise=0.1, dropout=0.2)
    a, b = final_weights(tmp_path / "unbroken"), final_weights(tmp_path / "killed")
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=0)
    steps = [json.loads(line)["step"] for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # no step logged twice after the resume


def test_sigkill_with_random_crops_and_two_workers_resumes_exactly(corpus, tmp_path):
    """Crops drawn from (seed, epoch, index) in the loader's worker processes repeat after a kill."""
    common = dict(max_steps=20, noise=0.1, crop_seconds=0.25, workers=2)
    job(corpus, tmp_path / "unbroken", **common)
    job(corpus, tmp_path / "killed", die_at_step=13, **common)
    assert torch.load(tmp_path / "killed" / "last" / "trainer_state.pt", weights_only=True)["step"] == 10
    job(corpus, tmp_path / "killed", **common)
    a, b = final_weights(tmp_path / "unbroken"), final_weights(tmp_path / "killed")
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=0, rtol=0)


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
    # the logged loss is the global batch's (the mean over ranks), not rank 0's half
    logged = [[json.loads(line)["loss"] for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
              for run in ("one", "two")]
    assert logged[1] == pytest.approx(logged[0], abs=1e-5)


@pytest.mark.slow
def test_ddp_killed_and_resumed_matches_an_unbroken_ddp_run(corpus, tmp_path):
    """Every rank resumes its own random states (noise, dropout)."""
    job(corpus, tmp_path / "unbroken", max_steps=10, noise=0.1, dropout=0.2, nproc=2)
    job(corpus, tmp_path / "killed", max_steps=10, noise=0.1, dropout=0.2, nproc=2, die_at_step=8)
    assert torch.load(tmp_path / "killed" / "last" / "trainer_state.pt", weights_only=True)["step"] == 5
    job(corpus, tmp_path / "killed", max_steps=10, noise=0.1, dropout=0.2, nproc=2)
    a, b = final_weights(tmp_path / "unbroken"), final_weights(tmp_path / "killed")
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=0)
    one = [json.loads(line) for line in (tmp_path / "unbroken" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in one] == [5, 10]  # one line a logged step


def test_logged_lr_is_the_rate_the_step_used(corpus, tmp_path):
    job(corpus, tmp_path / "run", max_steps=10, lr=1e-2)  # warm-up 5 steps, then linear decay to 0 at 10
    lrs = {m["step"]: m["lr"] for m in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())}
    assert lrs == {5: pytest.approx(1e-2), 10: pytest.approx(2e-3)}  # step 10 is update 9: 1 - 4/5 of the peak


def test_kill_between_the_best_and_last_links_keeps_the_best(tmp_path, monkeypatch):
    import speechssl.checkpoint as checkpoint

    manager = checkpoint.CheckpointManager(tmp_path, keep=1)
    weights, state = {"w": torch.zeros(2)}, {"step": 0}
    manager.save(5, weights, state, best=True)
    point, moved = checkpoint._point, []

    def point_then_die(link, target):
        if link.name == "last":
            raise KeyboardInterrupt  # the kill, with one of the two links moved
        moved.append(link.name)
        point(link, target)

    monkeypatch.setattr(checkpoint, "_point", point_then_die)
    with pytest.raises(KeyboardInterrupt):
        manager.save(10, weights, state, best=True)
    monkeypatch.setattr(checkpoint, "_point", point)
    assert moved == ["best"] and (tmp_path / "last").resolve().name == "step_0000005"
    # resumed from last (step 5), the run repeats step 10 exactly and saves it again
    manager.save(10, weights, state, best=True)
    assert (tmp_path / "best").resolve().name == (tmp_path / "last").resolve().name == "step_0000010"


def test_corrupt_trainer_states_are_checkpoint_errors(corpus, tmp_path):
    job(corpus, tmp_path / "run", max_steps=5)
    model = torch.nn.Linear(40, 40)
    state_file = tmp_path / "run" / "last" / "trainer_state.pt"
    state_file.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"unreadable training checkpoint \(EOFError\)"):
        Trainer(model, TrainerConfig(max_steps=10), tmp_path / "run").resume()
    torch.save({"step": 5}, state_file)
    with pytest.raises(CheckpointError, match="not a speechssl trainer state .missing batch_in_epoch, best, epoch"):
        Trainer(model, TrainerConfig(max_steps=10), tmp_path / "run").resume()


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
    for key, value, message in [
        ("save_every", 0, "trainer.save_every=0; expected at least 1"),
        ("log_every", 0, "trainer.log_every=0; expected at least 1"),
        ("num_workers", -1, "trainer.num_workers=-1; expected at least 0"),
        ("lr", -1e-3, "trainer.lr=-0.001; expected at least 0.0"),
        ("keep", 0, "trainer.keep=0; expected at least 1"),
        ("warmup_steps", -5, "trainer.warmup_steps=-5; expected at least 0"),
        ("batch_seconds", 0.0, "trainer.batch_seconds=0.0; expected seconds > 0"),
        ("betas", [0.9, 1.0], r"trainer.betas=\[0.9, 1.0\]; expected two values in \[0, 1\)"),
    ]:
        with pytest.raises(ConfigError, match=message):
            Trainer(model, TrainerConfig(**{key: value}), tmp_path)
