"""Front-ends against torchaudio's Kaldi compliance code and librosa, one utterance at a time."""

import librosa
import numpy as np
import pytest
import torch
import torchaudio
import torchaudio.compliance.kaldi as kaldi
import torchaudio.functional as AF

import speechssl
from speechssl import features
from speechssl.frames import (
    frames_centered,
    frames_conv_stack,
    frames_snip_edges,
    receptive_field,
)


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(0)
    t = torch.arange(24000) / 16000
    wavs = [
        0.3 * torch.sin(2 * torch.pi * 440 * t[:24000]) + 0.05 * torch.randn(24000, generator=g),
        0.1 * torch.randn(9001, generator=g),
        0.2 * torch.randn(401, generator=g),
    ]
    return wavs, *speechssl.collate(wavs)


def test_fbank_matches_kaldi_per_utterance(batch):
    wavs, padded, lens = batch
    feats, frame_lens = features.fbank(padded, lens, 80)
    for i, w in enumerate(wavs):
        ref = kaldi.fbank(w[None], num_mel_bins=80)
        assert frame_lens[i] == ref.shape[0]
        torch.testing.assert_close(feats[i, : frame_lens[i]], ref, atol=1e-3, rtol=0)
        assert (feats[i, frame_lens[i] :] == 0).all()


def test_mfcc_with_deltas_matches_hubert_recipe(batch):
    wavs, padded, lens = batch
    feats, frame_lens = features.mfcc(padded, lens)
    assert feats.shape[-1] == 39
    for i, w in enumerate(wavs):
        # fairseq examples/hubert/simple_kmeans/dump_mfcc_feature.py, written out
        m = kaldi.mfcc(w[None], sample_frequency=16000, use_energy=False).T  # (13, T)
        d = AF.compute_deltas(m)
        ref = torch.cat([m, d, AF.compute_deltas(d)]).T
        torch.testing.assert_close(feats[i, : frame_lens[i]], ref, atol=1e-3, rtol=0)


def test_fbank_baseline_is_superbs_240_d_fbank(batch):
    """s3prl's FBANK baseline: Kaldi fbank, Δ and ΔΔ (torchaudio's compute_deltas), utterance CMVN."""
    wavs, padded, lens = batch
    model = speechssl.load_upstream("fbank")
    assert model.hidden_sizes == [240] and speechssl.load_upstream("fbank", deltas=False).hidden_sizes == [80]
    feats = model(padded, lens)
    for i, w in enumerate(wavs):
        f = kaldi.fbank(w[None], num_mel_bins=80).T  # (80, T)
        d = AF.compute_deltas(f)
        ref = torch.cat([f, d, AF.compute_deltas(d)]).T  # (T, 240)
        ref = (ref - ref.mean(0)) / torch.sqrt(ref.var(0, unbiased=False) + 1e-5)
        T = int(feats.lengths[i])
        torch.testing.assert_close(feats.hidden_states[0][i, :T], ref, atol=2e-3, rtol=1e-3)


def test_log_mel_matches_librosa(batch):
    wavs, padded, lens = batch
    feats, frame_lens = features.log_mel(padded, lens, 80)
    for i, w in enumerate(wavs):
        mel = librosa.feature.melspectrogram(
            y=w.numpy(), sr=16000, n_fft=400, hop_length=160, n_mels=80, center=True, pad_mode="constant"
        )
        ref = torch.from_numpy(np.log(mel + 1e-6).T).float()
        assert frame_lens[i] == ref.shape[0]
        torch.testing.assert_close(feats[i, : frame_lens[i]], ref, atol=1e-3, rtol=0)


def test_cmvn_ignores_padding():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 50, 4, generator=g) * 3 + 5
    lengths = torch.tensor([50, 20])
    garbage = x.clone()
    garbage[1, 20:] = 1e6  # padding must not reach the statistics
    out = features.cmvn(garbage, lengths)
    valid = x[1, :20]
    ref = (valid - valid.mean(0)) / torch.sqrt(valid.var(0, unbiased=False) + 1e-5)
    torch.testing.assert_close(out[1, :20], ref)
    assert (out[1, 20:] == 0).all()
    torch.testing.assert_close(out[0].mean(0), torch.zeros(4), atol=1e-5, rtol=0)


@pytest.mark.parametrize("window", sorted(features.KALDI_WINDOWS))
def test_fbank_window_is_kaldis(batch, window):
    wavs, padded, lens = batch
    feats, frame_lens = features.fbank(padded, lens, 40, window=window)
    ref = kaldi.fbank(wavs[1][None], num_mel_bins=40, window_type=window)
    torch.testing.assert_close(feats[1, : frame_lens[1]], ref, atol=1e-3, rtol=0)


def test_log_mel_as_torchaudio_melscale_on_each_utterance_reflected_alone(batch):
    """s3prl's mel: ``torch.stft(center=True, pad_mode="reflect")`` of each utterance alone, torchaudio's
    ``MelScale`` (HTK, no norm), ``log(mel + 1e-10)``; the batch's zero padding is never reflected."""
    wavs, padded, lens = batch
    feats, frame_lens = features.log_mel(padded, lens, 80, mel_scale="htk", mel_norm=None, pad_mode="reflect", log_offset=1e-10)
    melscale = torchaudio.transforms.MelScale(n_mels=80, sample_rate=16000)
    for i, w in enumerate(wavs):
        spec = torch.stft(w, 400, 160, window=torch.hann_window(400), center=True, pad_mode="reflect", return_complex=True)
        ref = (melscale(spec.abs().pow(2)) + 1e-10).log().T
        assert frame_lens[i] == ref.shape[0]
        torch.testing.assert_close(feats[i, : frame_lens[i]], ref, atol=1e-3, rtol=0)
        assert (feats[i, frame_lens[i] :] == 0).all()


def test_s3prls_cmvn_and_level():
    g = torch.Generator().manual_seed(1)
    x, lengths = torch.randn(2, 50, 4, generator=g) * 3 + 5, torch.tensor([50, 20])
    out = features.cmvn(x, lengths, eps=1e-10, unbiased=True, eps_on_std=True)
    valid = x[1, :20]
    torch.testing.assert_close(out[1, :20], (valid - valid.mean(0)) / (valid.std(0) + 1e-10))  # s3prl's CMVN
    wavs = torch.randn(2, 800, generator=g) * (torch.arange(800) < torch.tensor([[800], [300]]))
    louder = features.rms_normalize(wavs, torch.tensor([800, 300]), -25.0)
    torch.testing.assert_close(louder[1, :300].pow(2).mean().sqrt(), torch.tensor(10 ** (-25 / 20)))
    assert (louder[1, 300:] == 0).all()


def test_compute_deltas_is_per_utterance():
    x = torch.randn(1, 30, 3)
    padded = torch.cat([x, torch.randn(1, 10, 3)], dim=1)
    ours = features.compute_deltas(padded, torch.tensor([30]))[:, :30]
    ref = AF.compute_deltas(x.transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(ours, ref)


@pytest.mark.parametrize("n", [0, 399, 400, 401, 559, 560, 16000])
def test_frame_rules(n):
    assert frames_snip_edges(n, 400, 160) == (0 if n < 400 else 1 + (n - 400) // 160)
    assert frames_centered(n, 160) == 1 + n // 160
    t = torch.tensor([n])
    assert int(frames_snip_edges(t, 400, 160)) == frames_snip_edges(n, 400, 160)
    # wav2vec 2.0's conv encoder: 400-sample receptive field, stride 320
    w2v = [(10, 5)] + [(3, 2)] * 4 + [(2, 2)] * 2
    expected = 0 if n < 400 else 1 + (n - 400) // 320
    assert frames_conv_stack(n, w2v) == expected
    assert receptive_field(w2v) == 400
