"""load_audio: every way a file can be bad has its own message; resampling and downmix."""

import logging

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

import speechssl
from speechssl.errors import AudioError


def test_reads_16k_mono(tmp_path):
    wav = np.random.default_rng(0).uniform(-0.5, 0.5, 8000).astype(np.float32)
    sf.write(tmp_path / "a.wav", wav, 16000, subtype="FLOAT")
    out = speechssl.load_audio(tmp_path / "a.wav")
    assert out.dtype == torch.float32 and out.shape == (8000,)
    np.testing.assert_allclose(out.numpy(), wav)


def test_resamples_to_16k(tmp_path):
    t = np.arange(44100) / 44100
    wav = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    sf.write(tmp_path / "a.flac", wav, 44100)
    out = speechssl.load_audio(tmp_path / "a.flac")
    assert out.shape == (16000,)
    ref = AF.resample(torch.from_numpy(sf.read(tmp_path / "a.flac", dtype="float32")[0]), 44100, 16000)
    torch.testing.assert_close(out, ref)
    # still a 1 kHz tone: the spectral peak sits at 1000 Hz
    peak = torch.fft.rfft(out).abs().argmax().item() * 16000 / len(out)
    assert abs(peak - 1000) < 2
    with pytest.raises(AudioError, match="sample rate 44100 Hz, expected 16000 Hz"):
        speechssl.load_audio(tmp_path / "a.flac", resample=False)


def test_stereo_is_averaged_with_a_warning(tmp_path, caplog):
    left, right = np.full(1600, 0.5, np.float32), np.full(1600, -0.1, np.float32)
    sf.write(tmp_path / "s.wav", np.stack([left, right], 1), 16000, subtype="FLOAT")
    with caplog.at_level(logging.WARNING):
        out = speechssl.load_audio(tmp_path / "s.wav")
    torch.testing.assert_close(out, torch.full((1600,), 0.2))
    assert "2 channels, averaged to mono" in caplog.text


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: None, "no such file"),
        (lambda p: p.write_bytes(b""), r"empty file \(0 bytes\)"),
        (lambda p: p.write_bytes(b"RIFF\x00\x01junk that is not a wave file"), "cannot decode audio"),
        (lambda p: sf.write(p, np.zeros(0, np.float32), 16000), r"0 samples \(empty audio\)"),
        (lambda p: sf.write(p, np.array([0.1, np.nan, 0.2], np.float32), 16000, subtype="FLOAT"), "NaN or Inf"),
        (lambda p: sf.write(p, np.array([0.1, np.inf], np.float32), 16000, subtype="FLOAT"), "NaN or Inf"),
    ],
    ids=["missing", "empty-file", "corrupt", "zero-samples", "nan", "inf"],
)
def test_bad_files_name_the_file_and_the_reason(tmp_path, make, message):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(AudioError, match=message) as info:
        speechssl.load_audio(path)
    assert str(path) in str(info.value)


def test_directory_is_not_audio(tmp_path):
    with pytest.raises(AudioError, match="is a directory"):
        speechssl.load_audio(tmp_path)


def test_collate_pads_with_zeros():
    wavs, lens = speechssl.collate([torch.ones(3), torch.ones(5)])
    assert wavs.shape == (2, 5) and lens.tolist() == [3, 5] and lens.dtype == torch.long
    assert wavs[0, 3:].eq(0).all() and wavs[0, :3].eq(1).all()
    with pytest.raises(ValueError, match=r"waveform 1: expected shape \(S,\)"):
        speechssl.collate([torch.ones(3), torch.ones(2, 3)])
