"""Upstream checkpoints: round trip, wrong model, corrupt file, foreign file, atomic writes."""

import pytest
import torch
from safetensors.torch import save_file

import speechssl
from speechssl.checkpoint import atomic_write, save_upstream
from speechssl.errors import CheckpointError


def test_round_trip_keeps_config(tmp_path):
    model = speechssl.load_upstream("fbank", num_mel_bins=40)
    path = save_upstream(model, tmp_path / "ckpt")
    assert path.name == "model.safetensors"
    loaded = speechssl.load_upstream("fbank", ckpt=tmp_path / "ckpt")
    assert loaded.config.num_mel_bins == 40
    wav = 0.1 * torch.randn(1, 4000)
    torch.testing.assert_close(loaded(wav).last, model(wav).last)


def test_wrong_model(tmp_path):
    save_upstream(speechssl.load_upstream("fbank"), tmp_path / "c.safetensors")
    with pytest.raises(CheckpointError, match="holds a 'fbank' upstream, not 'mfcc'"):
        speechssl.load_upstream("mfcc", ckpt=tmp_path / "c.safetensors")


def test_corrupt_missing_and_foreign(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match="not a readable safetensors checkpoint"):
        speechssl.load_upstream("fbank", ckpt=tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        speechssl.load_upstream("fbank", ckpt=tmp_path / "nope")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "hf.safetensors"))
    with pytest.raises(CheckpointError, match="not a speechssl upstream checkpoint"):
        speechssl.load_upstream("fbank", ckpt=tmp_path / "hf.safetensors")


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")

    def fail(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(target, fail)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]  # no temporary file left behind
