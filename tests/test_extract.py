"""`speechssl extract` end to end, and the batching it relies on."""

import csv
import subprocess
import sys

import numpy as np
import soundfile as sf
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import speechssl
from speechssl.data.audio import find_audio
from speechssl.data.sampler import plan_batches
from speechssl.extract import extract


def speechssl_cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "speechssl.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def make_folder(root):
    rng = np.random.default_rng(0)
    (root / "in" / "spk1").mkdir(parents=True)
    sf.write(root / "in" / "a.wav", 0.1 * rng.standard_normal(16000), 16000)
    sf.write(root / "in" / "spk1" / "b.flac", 0.1 * rng.standard_normal((11025, 2)), 22050)
    sf.write(root / "in" / "spk1" / "c.wav", 0.1 * rng.standard_normal(5000), 16000)
    (root / "in" / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEjunk")
    (root / "in" / "notes.txt").write_text("not audio, not listed")


def test_extract_folder_with_a_corrupt_file(tmp_path):
    make_folder(tmp_path)
    run = speechssl_cli(
        "extract", "upstream=mfcc", "input=in", "output=out", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path
    )
    assert run.returncode == 1, run.stderr
    assert "corrupt.wav" in run.stderr and "skipped 1 file(s)" in run.stderr
    with open(tmp_path / "out" / "index.tsv") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert [r["id"] for r in rows] == ["a", "spk1/b", "spk1/c"]
    model = speechssl.load_upstream("mfcc")
    for row in rows:
        tensors = load_file(tmp_path / "out" / row["features"])
        assert list(tensors) == ["hidden_state_00"]
        wav = speechssl.load_audio(tmp_path / "in" / row["source"].split("in/", 1)[1])
        ref = model(wav[None]).hidden_states[0][0]
        assert int(row["num_frames"]) == ref.shape[0] == tensors["hidden_state_00"].shape[0]
        torch.testing.assert_close(tensors["hidden_state_00"], ref, atol=1e-5, rtol=0)
    with safe_open(tmp_path / "out" / "a.safetensors", "pt") as f:
        assert f.metadata()["upstream"] == "mfcc" and f.metadata()["downsample_rate"] == "160"
    assert (tmp_path / "run" / ".hydra" / "config.yaml").exists()  # the run folder holds the config


def test_extract_one_file_one_layer(tmp_path):
    sf.write(tmp_path / "x.wav", 0.1 * np.random.default_rng(1).standard_normal(8000), 16000)
    run = speechssl_cli(
        "extract", "upstream=fbank", "upstream.num_mel_bins=40", "input=x.wav", "output=o", "layer=last",
        f"hydra.run.dir={tmp_path}/run", cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert load_file(tmp_path / "o" / "x.safetensors")["features"].shape == (48, 120)  # 40 bins, Δ, ΔΔ


def test_cli_errors_and_help(tmp_path):
    run = speechssl_cli("extract", "upstream=mfcc", "input=missing", "output=o", f"hydra.run.dir={tmp_path}/r", cwd=tmp_path)
    assert run.returncode == 1 and "input missing: no such file or folder" in run.stderr
    assert "Traceback" not in run.stderr
    run = speechssl_cli("extract", "upstream=hubret", "input=x", "output=o", cwd=tmp_path)
    assert run.returncode != 0 and "Could not find 'upstream/hubret'" in run.stderr and "mfcc" in run.stderr
    run = speechssl_cli("extract", "upstream.num_cep=3", "input=x", "output=o", cwd=tmp_path)
    assert run.returncode != 0 and "Key 'num_cep' not in" in run.stderr
    run = speechssl_cli("--help", cwd=tmp_path)
    assert run.returncode == 0 and "extract" in run.stdout
    run = speechssl_cli("extract", "--help", cwd=tmp_path)
    assert run.returncode == 0 and "usage: speechssl extract" in run.stdout
    choices = next(line for line in run.stdout.splitlines() if line.startswith("upstream: "))
    assert set(speechssl.list_upstreams()) <= set(choices[len("upstream: "):].split(", "))  # every one, by its yaml
    run = speechssl_cli("pretrian", cwd=tmp_path)
    assert run.returncode == 2 and "unknown command 'pretrian'" in run.stderr
    sf.write(tmp_path / "x.wav", np.zeros(1600, np.float32), 16000)
    for key, message in [("layer=top", "layer='top'; expected all | weighted | last | an integer index"),
                         ("device=gpu", "device='gpu': not a device; expected cpu, cuda or cuda:N")]:
        run = speechssl_cli("extract", "upstream=mfcc", "input=x.wav", "output=o", key, f"hydra.run.dir={tmp_path}/r",
                            cwd=tmp_path)
        assert run.returncode == 1 and message in run.stderr and "Traceback" not in run.stderr, run.stderr[-2000:]


def test_files_differing_only_by_extension_keep_apart(tmp_path):
    rng = np.random.default_rng(2)
    (tmp_path / "in").mkdir()
    sf.write(tmp_path / "in" / "a.wav", 0.1 * rng.standard_normal(16000), 16000)
    sf.write(tmp_path / "in" / "a.flac", 0.1 * rng.standard_normal(8000), 16000)
    sf.write(tmp_path / "in" / "b.wav", 0.1 * rng.standard_normal(4000), 16000)
    assert [i for i, _ in find_audio(tmp_path / "in")] == ["a.flac", "a.wav", "b"]
    report = extract(speechssl.load_upstream("mfcc"), tmp_path / "in", tmp_path / "out")
    assert len(report.written) == 3 and not report.skipped
    frames = {name: load_file(tmp_path / "out" / f"{name}.safetensors")["hidden_state_00"].shape[0]
              for name in ("a.wav", "a.flac", "b")}
    assert frames == {"a.wav": 98, "a.flac": 48, "b": 23}  # each file its own features


def test_find_audio_list_file(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "list.txt").write_text("in/a.wav\n\nin/spk1/c.wav\tignored column\n")
    found = find_audio(tmp_path / "list.txt")
    assert [i for i, _ in found] == ["a", "spk1/c"]
    assert all(p.is_absolute() and p.exists() for _, p in found)


def test_plan_batches_bounds_padded_duration():
    lengths = [100, 900, 300, 250, 800, 120, 5000]
    batches = plan_batches(lengths, max_samples=1000)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 1000
    assert batches[0] == [6]  # longest first, alone when over budget
