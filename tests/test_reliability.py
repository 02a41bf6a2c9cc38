"""Faults survived and bad inputs refused in one line (issue 23): full disks, file modes,
unwritable folders, re-runs, bad manifests, truncated files, NaN losses, kills while pruning."""

import csv
import errno
import json
import logging
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

import speechssl.checkpoint as checkpoint
from speechssl.checkpoint import CheckpointManager, atomic_write, save_tensors
from speechssl.data.audio import audio_info, load_audio
from speechssl.data.dataset import AudioDataset, CropConfig, Utterance
from speechssl.errors import AudioError, CheckpointError, ConfigError, TrainingError
from speechssl.extract import extract
from speechssl.feature_cache import FeatureCache
from speechssl.registry import build_upstream
from speechssl.trainer import Trainer, TrainerConfig


def write_clips(folder, seconds=(0.5, 0.5, 0.5, 0.5)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, s in enumerate(seconds):
        sf.write(folder / f"u{i}.wav", (0.1 * rng.standard_normal(int(16000 * s))).astype(np.float32), 16000)
    return folder


class Regress(torch.nn.Module):
    """A linear layer fit to the batch; its loss is NaN on the calls listed in ``nan_calls``,
    and it runs out of device memory on those in ``oom_calls``."""

    def __init__(self, nan_calls=(), oom_calls=()):
        super().__init__()
        self.proj = torch.nn.Linear(4, 1)
        self.nan_calls, self.oom_calls, self.calls = set(nan_calls), set(oom_calls), 0

    def forward(self, batch, *, step, generator=None):
        self.calls += 1
        if self.calls in self.oom_calls:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        loss = (self.proj(batch) - 1).pow(2).mean()
        return (loss * float("nan") if self.calls in self.nan_calls else loss), {}


class Points(torch.utils.data.Dataset):
    def __len__(self):
        return 16

    def __getitem__(self, i):
        return torch.full((4,), i / 16)

    def num_samples(self):
        return [1600] * 16


def fit(model, run_dir, **cfg):
    cfg = TrainerConfig(**{"max_steps": 6, "warmup_steps": 1, "batch_seconds": 0.4, "log_every": 1, "save_every": 3,
                           "lr": 1e-2, **cfg})
    return Trainer(model, cfg, run_dir).fit(Points(), torch.stack)


# -- checkpoints: a full disk, file modes, a kill while pruning ---------------------------


def test_a_full_disk_keeps_the_previous_checkpoint_and_removes_the_partial_one(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path, keep=2)
    manager.save(5, {"w": torch.ones(3)}, {"step": 5})
    write_bytes = Path.write_bytes

    def disk_full(self, data):
        write_bytes(self, data[: len(data) // 2])  # a partial file, then the error a full disk gives
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_bytes", disk_full)
    with pytest.raises(CheckpointError) as caught:
        manager.save(10, {"w": torch.zeros(3)}, {"step": 10})
    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    message = str(caught.value)
    assert "step_0000010: checkpoint not saved, the disk is full" in message and "\n" not in message
    assert f"{tmp_path / 'last'} (step_0000005) is intact" in message
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_0000005"]  # no partial folder
    assert torch.equal(load_file(manager.last / checkpoint.TRAIN_WEIGHTS)["w"], torch.ones(3))


def test_a_full_disk_during_pretraining_is_one_line_in_the_run_log(tmp_path, monkeypatch):
    from speechssl.cli import main

    data, run = write_clips(tmp_path / "clips"), tmp_path / "run"
    save = checkpoint.save_tensors

    def full_at_step_4(path, tensors, metadata):
        if "step_0000004" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        save(path, tensors, metadata)

    monkeypatch.setattr(checkpoint, "save_tensors", full_at_step_4)
    status = main(["pretrain", "upstream=apc_tiny", "data=folder", f"data.root={data}", "trainer.max_steps=4",
                   "trainer.save_every=2", "trainer.warmup_steps=1", "trainer.batch_seconds=1", f"hydra.run.dir={run}"])
    logging.shutdown()
    text = (run / "pretrain.log").read_text()
    assert status == 1 and "checkpoint not saved, the disk is full" in text and "Traceback" not in text
    assert (run / "last").resolve().name == "step_0000002"
    assert not list((run / "checkpoints").glob(".step_*"))


def test_a_full_disk_or_a_denied_write_anywhere_in_a_command_is_one_line(tmp_path, monkeypatch):
    import speechssl.cli as cli

    for error, message in [(OSError(errno.ENOSPC, "No space left on device", "/runs/x/metrics.jsonl"),
                            "/runs/x/metrics.jsonl: the disk is full (No space left on device); free space"),
                           (PermissionError(errno.EACCES, "Permission denied", "/shared/cache"),
                            "/shared/cache: Permission denied; choose a path you can write")]:
        def fail(cfg, error=error):
            raise error

        monkeypatch.setitem(cli.COMMANDS, "synth", (fail, ""))
        run = tmp_path / str(error.errno)
        assert cli.main(["synth", f"hydra.run.dir={run}"]) == 1
        logging.shutdown()
        text = (run / "synth.log").read_text()
        assert message in text and "Traceback" not in text


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_files_are_as_readable_as_the_umask_allows(tmp_path, monkeypatch, umask, mode):
    monkeypatch.setattr(checkpoint, "_UMASK", umask)
    save_tensors(tmp_path / "f.safetensors", {"x": torch.zeros(2)}, {})
    atomic_write(tmp_path / "t.txt", lambda tmp: Path(tmp).write_text("x"))
    folder = CheckpointManager(tmp_path / "run").save(1, {"w": torch.zeros(2)}, {"step": 1})
    files = [tmp_path / "f.safetensors", tmp_path / "t.txt", *folder.iterdir()]
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in files} == {p.name: mode for p in files}


def test_a_kill_while_pruning_leaves_no_half_deleted_checkpoint(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path, keep=1)
    manager.save(1, {"w": torch.zeros(2)}, {"step": 1})
    rmtree = checkpoint.shutil.rmtree

    def killed(path, *args, **kwargs):
        (Path(path) / checkpoint.TRAIN_WEIGHTS).unlink()  # half deleted, then the kill
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        manager.save(2, {"w": torch.ones(2)}, {"step": 2})
    monkeypatch.setattr(checkpoint.shutil, "rmtree", rmtree)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == [".trash_step_0000001", "step_0000002"]  # the half-deleted one is under its trash name
    CheckpointManager(tmp_path, keep=1).clean()  # as a run does when it starts
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_0000002"]


# -- non-finite losses --------------------------------------------------------------------


def test_non_finite_steps_are_skipped_and_counted(tmp_path):
    model = Regress(nan_calls={2, 3})
    results = fit(model, tmp_path / "run")
    assert results["step"] == 6 and results["nonfinite_steps"] == 2
    assert json.loads((tmp_path / "run" / "results.json").read_text())["nonfinite_steps"] == 2
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_too_many_non_finite_steps_in_a_row_stop_with_a_usable_checkpoint(tmp_path):
    model = Regress(nan_calls=range(5, 100))  # steps 1-4 fine, then NaN for ever
    with pytest.raises(TrainingError, match=r"NaN or Inf for 3 steps in a row after step 4 .trainer.max_nonfinite_steps=3"):
        fit(model, tmp_path / "run", max_steps=20, save_every=3, max_nonfinite_steps=3)
    last = (tmp_path / "run" / "last").resolve()
    assert last.name == "step_0000004"  # the progress since step 3's checkpoint was saved
    weights, state = CheckpointManager(tmp_path / "run").load(last)
    assert state["nonfinite_steps"] == 3 and all(torch.isfinite(w).all() for w in weights.values())


def test_a_batch_out_of_device_memory_is_skipped_and_counted(tmp_path, caplog):
    with caplog.at_level("WARNING"):
        results = fit(Regress(oom_calls={2}), tmp_path / "run")
    assert results["step"] == 6 and results["oom_steps"] == 1 and results["nonfinite_steps"] == 0
    assert "step 2: out of memory on a batch of shape (4, 4) (CUDA out of memory. Tried to allocate 20.00 GiB)" in caplog.text
    with pytest.raises(TrainingError, match="batches ran out of device memory for 2 steps in a row after step 6 .*"
                                            "lower trainer.batch_seconds"):
        fit(Regress(oom_calls=range(7, 100)), tmp_path / "again", max_steps=10, max_nonfinite_steps=2)


def test_an_unreadable_file_in_a_worker_is_one_line(tmp_path):
    class Unreadable(Points):
        def __getitem__(self, i):
            if i == 5:
                raise AudioError("/data/u5.wav: cannot decode audio (Error : flac decoder lost sync.)")
            return super().__getitem__(i)

    cfg = TrainerConfig(max_steps=6, warmup_steps=1, batch_seconds=0.4, num_workers=1)
    with pytest.raises(AudioError) as caught:
        Trainer(Regress(), cfg, tmp_path / "run").fit(Unreadable(), torch.stack)
    assert str(caught.value) == "/data/u5.wav: cannot decode audio (Error : flac decoder lost sync.)"


def test_a_misspelt_trainer_key_is_named(tmp_path):
    from speechssl.cli import main

    with pytest.raises(ConfigError, match=r"^unknown key trainer.max_stpes; did you mean trainer.max_steps\?$"):
        TrainerConfig.from_dict({"max_stpes": 5})
    status = main(["pretrain", "+trainer.max_stpes=5", "data=folder", f"data.root={tmp_path}",
                   f"hydra.run.dir={tmp_path / 'run'}"])  # the key Hydra itself suggests adding with +
    logging.shutdown()
    text = (tmp_path / "run" / "pretrain.log").read_text()
    assert status == 1 and "unknown key trainer.max_stpes; did you mean trainer.max_steps?" in text
    assert "Traceback" not in text


# -- audio and manifests --------------------------------------------------------------------


def test_a_truncated_wav_is_an_error(tmp_path):
    write_clips(tmp_path, seconds=(1.0,))
    whole = (tmp_path / "u0.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(whole[: len(whole) // 2])
    for read in (audio_info, load_audio):
        with pytest.raises(AudioError, match=r"cut.wav: truncated WAV: its header promises 16000 samples, the file holds 7989"):
            read(tmp_path / "cut.wav")
    assert len(load_audio(tmp_path / "u0.wav")) == 16000


def test_pretraining_data_is_checked_up_front(tmp_path):
    clips = write_clips(tmp_path, seconds=(0.5, 0.5, 0.01))  # the last too short: left out either way
    (tmp_path / "broken.wav").write_bytes(b"RIFF0000WAVEjunk")
    utterances = [Utterance(p.stem, p, 8000) for p in sorted(clips.glob("u*.wav"))[:2]]
    utterances += [Utterance("gone", tmp_path / "gone.wav", 8000), Utterance("broken", tmp_path / "broken.wav", 8000),
                   Utterance("short", tmp_path / "u2.wav", 160)]
    upstream = build_upstream("mfcc")
    objective = type("NoColumns", (), {"columns": (), "frame_labels": (), "crop": "first"})()
    with pytest.raises(AudioError, match=r"gone.wav: no such file \(utterance gone\); .* data.on_error=skip"):
        AudioDataset(utterances).for_model(upstream, objective, CropConfig(), seed=0)
    data = AudioDataset(utterances).for_model(upstream, objective, CropConfig(on_error="skip"), seed=0)
    assert [u.id for u in data.utterances] == ["u0", "u1"]
    reasons = dict(data.skipped)
    assert "no such file" in reasons[str(tmp_path / "gone.wav")]
    assert "cannot decode audio" in reasons[str(tmp_path / "broken.wav")]
    assert "160 samples, shorter than mfcc's receptive field of 400 samples" in reasons[str(tmp_path / "u2.wav")]
    with pytest.raises(ConfigError, match="data.on_error='ignore'; expected one of raise, skip"):
        CropConfig(on_error="ignore").check()


def test_skipped_utterances_are_counted_in_the_results(tmp_path):
    from speechssl.pretrain import pretrain

    clips = write_clips(tmp_path / "clips", seconds=(0.5, 0.5))
    (clips / "gone.wav").write_bytes(b"")
    dataset = AudioDataset.from_folder(clips)  # the empty file's header length is 0: reported by the check
    cfg = TrainerConfig(max_steps=2, warmup_steps=1, batch_seconds=1.0, save_every=2)
    results = pretrain("apc", dataset, cfg, tmp_path / "run", crop=CropConfig(on_error="skip"),
                       overrides={"hidden_size": 16, "num_layers": 1})
    written = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["skipped_utterances"] == written["skipped_utterances"] == 1
    assert written["skipped_files"] == [{"path": str(clips / "gone.wav"), "reason": f"{clips / 'gone.wav'}: empty file (0 bytes)"}]


def test_an_empty_corpus_root_says_no_manifests_found(tmp_path):
    from speechssl.data.corpora import corpus_manifest

    with pytest.raises(ConfigError, match=f"corpus 'superb_lite': no manifests found under {tmp_path}"):
        corpus_manifest("superb_lite", tmp_path, "ks", "train")


# -- extraction -------------------------------------------------------------------------------


def index_ids(folder):
    with open(folder / "index.tsv") as f:
        return [row["id"] for row in csv.DictReader(f, delimiter="\t")]


def test_extracting_again_into_a_folder_adds_to_its_index(tmp_path):
    mfcc = build_upstream("mfcc")
    write_clips(tmp_path / "a", seconds=(0.3, 0.3))
    write_clips(tmp_path / "b", seconds=(0.3,))
    (tmp_path / "b" / "u0.wav").rename(tmp_path / "b" / "v0.wav")
    extract(mfcc, tmp_path / "a", tmp_path / "out")
    extract(mfcc, tmp_path / "b", tmp_path / "out")
    extract(mfcc, tmp_path / "a" / "u1.wav", tmp_path / "out")  # again: its row replaced, not doubled
    assert index_ids(tmp_path / "out") == ["u0", "u1", "v0"]
    with pytest.raises(ConfigError, match="holds features of upstream 'mfcc' layer all .*; these would be 'mfcc' "
                                          "layer last: choose another output=DIR, or overwrite=true"):
        extract(mfcc, tmp_path / "b", tmp_path / "out", layer="last")
    extract(mfcc, tmp_path / "b", tmp_path / "out", layer="last", overwrite=True)
    assert index_ids(tmp_path / "out") == ["v0"]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.safetensors")) == ["v0.safetensors"]


def test_an_unwritable_output_is_refused_before_any_audio_is_read(tmp_path, monkeypatch):
    import speechssl.extract as extract_module

    write_clips(tmp_path / "a", seconds=(0.3,))
    (tmp_path / "file").write_text("")
    read = []
    monkeypatch.setattr(extract_module, "load_audio", lambda path: read.append(path))
    with pytest.raises(ConfigError, match=r"^output=.*file/out: cannot write there \(Not a directory\); choose a folder"):
        extract(build_upstream("mfcc"), tmp_path / "a", tmp_path / "file" / "out")

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(checkpoint.tempfile, "TemporaryFile", denied)
    with pytest.raises(ConfigError, match=r"output=.*out: cannot write there \(Permission denied\)"):
        extract(build_upstream("mfcc"), tmp_path / "a", tmp_path / "out")
    assert read == []
    with pytest.raises(ConfigError, match=r"^cache.dir=.*cache/mfcc-[0-9a-f]{16}/corpus: cannot write there \(Permission denied\)"):
        FeatureCache(tmp_path / "cache", build_upstream("mfcc"), "corpus")


def test_too_long_inputs_are_refused_from_their_header(tmp_path, monkeypatch):
    import speechssl.extract as extract_module

    write_clips(tmp_path / "a", seconds=(0.3, 2.0))
    read = []
    load = extract_module.load_audio
    monkeypatch.setattr(extract_module, "load_audio", lambda path: read.append(path.name) or load(path))
    report = extract(build_upstream("mfcc"), tmp_path / "a", tmp_path / "out", max_seconds=1.0)
    assert report.written == ["u0"] and read == ["u0.wav"]
    assert "u1.wav: 2.0 s, longer than max_seconds=1: 'mfcc' takes an utterance whole" in report.skipped[0][1]


def test_paths_hydra_cannot_lex_are_quoted():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from speechssl.cli import quote_unlexable

    parser = OverridesParser.create()
    for path in ["/data/é.wav", "/data/a=b.wav", "/data/it's=é.wav", "a\\b=é"]:
        (arg,) = quote_unlexable([f"input={path}"])
        assert parser.parse_override(arg).value() == path
    assert quote_unlexable(["input=/a/b.wav", "layer=3"]) == ["input=/a/b.wav", "layer=3"]


@pytest.mark.parametrize("name", ["fbank", "mfcc", "mel"])
def test_long_inputs_are_chunked_into_the_frames_of_the_whole_input(tmp_path, monkeypatch, name):
    import speechssl.extract as extract_module

    write_clips(tmp_path / "a", seconds=(3.37,))
    upstream = build_upstream(name, cmvn=False)
    assert build_upstream(name).chunk_context is None  # CMVN: statistics of the whole utterance
    whole = extract(upstream, tmp_path / "a", tmp_path / "whole")
    monkeypatch.setattr(extract_module, "CHUNK_SECONDS", 1)  # four chunks of 1 s (the last 0.37 s)
    read = []
    load = extract_module.load_audio
    monkeypatch.setattr(extract_module, "load_audio", lambda path, **kw: read.append(kw) or load(path, **kw))
    chunked = extract(upstream, tmp_path / "a", tmp_path / "chunked", max_seconds=2.0)
    assert whole.written == chunked.written == ["u0"] and len(read) == 4
    assert max(kw["stop"] - kw["start"] for kw in read) == 16000 + 2 * 1600  # a chunk and its context
    a, b = load_file(tmp_path / "whole" / "u0.safetensors"), load_file(tmp_path / "chunked" / "u0.safetensors")
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    for k in a:
        assert torch.equal(b[k], a[k])  # exactly the frames of the whole input
    assert index_ids(tmp_path / "chunked") == ["u0"]


def test_sigkill_at_random_moments_never_corrupts_a_checkpoint(tmp_path):
    """Ten SIGKILLs of a forked run at seeded random moments (a checkpoint and a pruning each step,
    so many land in writes): every kill leaves loadable checkpoints, the resumed run ends with
    the weights of an unbroken one."""
    import signal
    import time

    def run(run_dir):
        torch.manual_seed(0)
        fit(Regress(), run_dir, max_steps=16, save_every=1, keep=1, log_every=4)

    run(tmp_path / "unbroken")
    start = time.monotonic()
    run(tmp_path / "timed")  # imports done: how long a run takes
    duration = time.monotonic() - start
    rng, leftovers = np.random.default_rng(23), []
    for kill in range(10):
        pid = os.fork()
        if pid == 0:  # the child trains (resuming) until killed
            try:
                run(tmp_path / "killed")
            finally:
                os._exit(0)
        time.sleep(rng.uniform(0.2, 1.0) * duration)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        manager = CheckpointManager(tmp_path / "killed", keep=1)
        leftovers.extend(p.name for p in (tmp_path / "killed" / "checkpoints").glob(".*"))
        for folder in (tmp_path / "killed" / "checkpoints").glob("step_*"):
            manager.load(folder)  # raises CheckpointError if any is corrupt
    run(tmp_path / "killed")
    final = {k: load_file(tmp_path / d / "last" / checkpoint.TRAIN_WEIGHTS) for k, d in [("a", "unbroken"), ("b", "killed")]}
    assert final["a"].keys() == final["b"].keys()
    assert all(torch.equal(final["a"][k], final["b"][k]) for k in final["a"])
    print("left by the kills:", leftovers)  # partial step folders and trash: kills that hit a write or a pruning (-s shows it)


def test_the_progress_bar_counts_audio_once_it_is_processed(tmp_path, monkeypatch):
    import speechssl.extract as extract_module

    events = []

    class Bar:
        def __init__(self, total, **kwargs):
            events.append(("total", total))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, seconds):
            events.append(("update", seconds))

    monkeypatch.setattr(extract_module, "tqdm", Bar)
    write_clips(tmp_path / "a", seconds=(0.5, 0.5, 1.0))
    upstream = build_upstream("mfcc")
    upstream.register_forward_hook(lambda *args: events.append(("forward",)))
    extract(upstream, tmp_path / "a", tmp_path / "out", batch_seconds=1.0)  # two batches: 1 s and 2 x 0.5 s
    assert events == [("total", 2.0), ("forward",), ("update", 1.0), ("forward",), ("update", 1.0)]
