"""Acoustic front-ends on whole padded batches, on the input's device.

Every function takes ``wavs`` (B, S) and ``wav_lens`` (B,) samples and returns
``(feats (B, T, D), frame_lens (B,))``. The frames of an utterance are the same
whether it is alone or padded in a batch: each valid frame reads only valid
samples (or the zeros a single utterance would be padded with), and frames past
``frame_lens`` are zero.

- :func:`fbank`: Kaldi's log-mel filterbank (``torchaudio.compliance.kaldi.fbank``
  with its defaults, any of its windows), whose frames obey :func:`speechssl.frames.frames_snip_edges`.
- :func:`mfcc`: Kaldi's MFCC, optionally with deltas and delta-deltas: the 39-d
  features HuBERT's first iteration clusters (fairseq ``dump_mfcc_feature.py``).
- :func:`log_mel`: librosa's ``melspectrogram`` (Slaney mel, centred frames,
  constant padding), then ``log(mel + 1e-6)``; frames obey ``frames_centered``. Its
  options also give torchaudio's ``MelScale`` (HTK mel, no norm) on a reflect-padded STFT.
- :func:`cmvn`: utterance mean (and variance) normalisation over valid frames.
- :func:`rms_normalize`: each waveform scaled to an RMS level in dB.

The options that are not ours by default reproduce s3prl's front-ends exactly
(its APC, Mockingjay and TERA upstreams; their converters set them).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torchaudio.compliance.kaldi as kaldi
import torchaudio.functional as AF

from speechssl.frames import frames_centered, frames_snip_edges
from speechssl.interface import lengths_to_mask

SAMPLE_RATE = 16000
WINDOW = 400  # 25 ms
HOP = 160  # 10 ms
KALDI_FFT = 512  # Kaldi pads a window to the next power of two
FLOAT_EPS = torch.finfo(torch.float32).eps  # Kaldi's log floor


def _zero_padding(feats: torch.Tensor, frame_lens: torch.Tensor) -> torch.Tensor:
    return feats.masked_fill(~lengths_to_mask(frame_lens, feats.shape[1])[..., None], 0.0)


@lru_cache(maxsize=8)
def _kaldi_mel_banks(num_mel_bins: int, low_freq: float, high_freq: float) -> torch.Tensor:
    """``(KALDI_FFT // 2 + 1, num_mel_bins)`` Kaldi mel filterbank (torchaudio's own)."""
    banks, _ = kaldi.get_mel_banks(num_mel_bins, KALDI_FFT, float(SAMPLE_RATE), low_freq, high_freq, 100.0, -500.0, 1.0)
    banks = torch.nn.functional.pad(banks, (0, 1))  # (bins, FFT/2 + 1): Nyquist gets no weight
    return banks.T.contiguous()


# Kaldi's windows, as torchaudio.compliance.kaldi makes them (symmetric, WINDOW samples)
KALDI_WINDOWS = {
    "povey": lambda **kw: torch.hann_window(WINDOW, periodic=False, **kw).pow(0.85),
    "hamming": lambda **kw: torch.hamming_window(WINDOW, periodic=False, alpha=0.54, beta=0.46, **kw),
    "hanning": lambda **kw: torch.hann_window(WINDOW, periodic=False, **kw),
    "rectangular": lambda **kw: torch.ones(WINDOW, **kw),
    "blackman": lambda **kw: torch.blackman_window(WINDOW, periodic=False, **kw),  # Kaldi's blackman_coeff 0.42
}


def fbank(
    wavs: torch.Tensor,
    wav_lens: torch.Tensor,
    num_mel_bins: int = 80,
    *,
    preemphasis: float = 0.97,
    low_freq: float = 20.0,
    high_freq: float = 0.0,
    window: str = "povey",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Kaldi log-mel filterbank: ``(B, T, num_mel_bins)`` and ``(B,)`` frames.

    Matches ``torchaudio.compliance.kaldi.fbank(wav[None], num_mel_bins=..., window_type=window)``
    per utterance (dither 0, DC removal, pre-emphasis, the window, power spectrum, log
    floored at float32 eps); ``window`` is one of :data:`KALDI_WINDOWS` (s3prl's APC: hamming).
    ``high_freq <= 0`` counts down from Nyquist.
    """
    if window not in KALDI_WINDOWS:
        raise ValueError(f"fbank: window must be one of {', '.join(KALDI_WINDOWS)}, got {window!r}")
    frame_lens = frames_snip_edges(wav_lens, WINDOW, HOP)
    frames = _kaldi_frames(wavs, preemphasis, window)  # (B, T, KALDI_FFT)
    power = torch.fft.rfft(frames).abs().pow(2)  # (B, T, KALDI_FFT / 2 + 1)
    banks = _kaldi_mel_banks(num_mel_bins, low_freq, high_freq).to(power)
    feats = torch.clamp(power @ banks, min=FLOAT_EPS).log()  # (B, T, num_mel_bins)
    return _zero_padding(feats, frame_lens), frame_lens


def _kaldi_frames(wavs: torch.Tensor, preemphasis: float, window: str) -> torch.Tensor:
    """``(B, S)`` -> ``(B, T, KALDI_FFT)`` windowed, zero-padded Kaldi frames."""
    if wavs.shape[1] < WINDOW:
        raise ValueError(f"fbank: {wavs.shape[1]} samples, fewer than one {WINDOW}-sample window")
    frames = wavs.unfold(1, WINDOW, HOP)  # (B, T, WINDOW)
    frames = frames - frames.mean(dim=-1, keepdim=True)  # remove DC offset
    if preemphasis:
        previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)  # Kaldi repeats sample 0
        frames = frames - preemphasis * previous
    frames = frames * KALDI_WINDOWS[window](device=frames.device, dtype=frames.dtype)
    return torch.nn.functional.pad(frames, (0, KALDI_FFT - WINDOW))


@lru_cache(maxsize=8)
def _kaldi_dct(num_ceps: int, num_mel_bins: int, cepstral_lifter: float) -> torch.Tensor:
    """``(num_mel_bins, num_ceps)`` Kaldi DCT (orthonormal, flat first row) with liftering folded in."""
    dct = AF.create_dct(num_mel_bins, num_mel_bins, "ortho")
    dct[:, 0] = math.sqrt(1.0 / num_mel_bins)
    dct = dct[:, :num_ceps]
    i = torch.arange(num_ceps, dtype=dct.dtype)
    lifter = 1.0 + 0.5 * cepstral_lifter * torch.sin(math.pi * i / cepstral_lifter)
    return dct * lifter


def mfcc(
    wavs: torch.Tensor,
    wav_lens: torch.Tensor,
    num_ceps: int = 13,
    *,
    num_mel_bins: int = 23,
    cepstral_lifter: float = 22.0,
    deltas: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Kaldi MFCC without energy (``kaldi.mfcc(..., use_energy=False)``), ``(B, T, C)``.

    With ``deltas`` (default) Δ and ΔΔ follow, as ``torchaudio.functional.compute_deltas``
    computes them with edge frames repeated: ``C = 3 * num_ceps`` (39 by default).
    """
    log_banks, frame_lens = fbank(wavs, wav_lens, num_mel_bins)
    ceps = log_banks @ _kaldi_dct(num_ceps, num_mel_bins, cepstral_lifter).to(log_banks)  # (B, T, C)
    if deltas:
        d1 = compute_deltas(ceps, frame_lens)
        ceps = torch.cat([ceps, d1, compute_deltas(d1, frame_lens)], dim=-1)
    return _zero_padding(ceps, frame_lens), frame_lens


def compute_deltas(x: torch.Tensor, lengths: torch.Tensor, win_length: int = 5) -> torch.Tensor:
    """Regression deltas over time of ``(B, T, D)``, each utterance's edge frames repeated.

    ``d_t = sum_{k=1..n} k (x_{t+k} - x_{t-k}) / (2 sum_k k^2)`` with ``n = (win_length - 1) // 2``
    and indices clamped to ``[0, length - 1]``, as ``torchaudio.functional.compute_deltas``
    (replicate padding) on each utterance alone.
    """
    n = (win_length - 1) // 2
    T = x.shape[1]
    t = torch.arange(T, device=x.device)
    last = (lengths - 1).clamp(min=0)[:, None]  # (B, 1)
    out = torch.zeros_like(x)
    for k in range(1, n + 1):  # n is 2: a loop over the window, not the batch
        ahead = torch.minimum(t[None] + k, last).clamp(min=0)  # (B, T)
        behind = torch.minimum((t[None] - k).clamp(min=0), last)
        gather = lambda idx: x.gather(1, idx[..., None].expand(-1, -1, x.shape[2]))  # noqa: E731
        out = out + k * (gather(ahead) - gather(behind))
    return out / (n * (n + 1) * (2 * n + 1) / 3)


@lru_cache(maxsize=8)
def _mel_banks(n_fft: int, n_mels: int, f_min: float, f_max: float, scale: str, norm: str | None) -> torch.Tensor:
    return AF.melscale_fbanks(n_fft // 2 + 1, f_min, f_max, n_mels, SAMPLE_RATE, norm=norm, mel_scale=scale)


MEL_SCALES = ("slaney", "htk")
PAD_MODES = ("constant", "reflect")


def log_mel(
    wavs: torch.Tensor,
    wav_lens: torch.Tensor,
    n_mels: int = 80,
    *,
    n_fft: int = WINDOW,
    hop_length: int = HOP,
    f_min: float = 0.0,
    f_max: float | None = None,
    log_offset: float = 1e-6,
    mel_scale: str = "slaney",
    mel_norm: str | None = "slaney",
    pad_mode: str = "constant",
) -> tuple[torch.Tensor, torch.Tensor]:
    """librosa-compatible log-mel: ``log(librosa.feature.melspectrogram(...) + log_offset)``.

    librosa arguments: ``sr=16000, n_fft=n_fft, hop_length=hop_length, center=True,
    pad_mode="constant", power=2.0``, Slaney mel scale and norm. ``(B, T, n_mels)``.

    ``mel_scale="htk", mel_norm=None`` is torchaudio's ``MelScale`` instead;
    ``pad_mode="reflect"`` centres the frames as ``torch.stft(center=True, pad_mode="reflect")``
    does on each utterance alone (its own samples mirrored at its own end, not the
    batch's padding): an utterance then needs more than ``n_fft // 2`` samples.
    """
    if mel_scale not in MEL_SCALES or pad_mode not in PAD_MODES:
        raise ValueError(f"log_mel: mel_scale in {MEL_SCALES}, pad_mode in {PAD_MODES}; got {mel_scale!r}, {pad_mode!r}")
    frame_lens = frames_centered(wav_lens, hop_length)
    window = torch.hann_window(n_fft, device=wavs.device, dtype=wavs.dtype)
    if pad_mode == "constant":
        spec = torch.stft(wavs, n_fft, hop_length, window=window, center=True, pad_mode="constant", return_complex=True)
    else:
        centred = _reflect_each(wavs, wav_lens, n_fft // 2)  # (B, S + n_fft)
        spec = torch.stft(centred, n_fft, hop_length, window=window, center=False, return_complex=True)
    power = spec.abs().pow(2).transpose(1, 2)  # (B, T, n_fft/2 + 1)
    f_max = f_max if f_max is not None else SAMPLE_RATE / 2
    banks = _mel_banks(n_fft, n_mels, f_min, f_max, mel_scale, mel_norm).to(power)
    feats = (power @ banks + log_offset).log()  # (B, T, n_mels)
    return _zero_padding(feats, frame_lens), frame_lens


def _reflect_each(wavs: torch.Tensor, wav_lens: torch.Tensor, pad: int) -> torch.Tensor:
    """``(B, S)`` -> ``(B, S + 2 pad)``: ``pad`` samples each side of every utterance, mirrored
    about its first and last sample (``F.pad(wav[:n], (pad, pad), mode="reflect")``), zeros after."""
    i = torch.arange(-pad, wavs.shape[1] + pad, device=wavs.device).abs()  # (S + 2 pad,) mirrored at the start
    n = wav_lens[:, None]  # (B, 1)
    index = torch.where(i >= n, 2 * (n - 1) - i, i)  # (B, S + 2 pad) mirrored at each end
    beyond = i >= n + pad  # past the mirrored tail: only padding frames read there
    return wavs.gather(1, index.clamp(0, wavs.shape[1] - 1)).masked_fill(beyond, 0.0)


def rms_normalize(wavs: torch.Tensor, wav_lens: torch.Tensor, level_db: float, eps: float = 1e-10) -> torch.Tensor:
    """``(B, S)`` waveforms each scaled so that the RMS of its valid samples is ``level_db`` dB
    (s3prl's ``_normalize_wav_decibel``: ``wav * 10 ** (level_db / 20) / (rms + eps)``)."""
    valid = lengths_to_mask(wav_lens, wavs.shape[1]).to(wavs.dtype)  # (B, S)
    rms = ((wavs.pow(2) * valid).sum(dim=1, keepdim=True) / wav_lens.clamp(min=1)[:, None].to(wavs.dtype)).sqrt()
    return wavs * (10 ** (level_db / 20) / (rms + eps)) * valid


def cmvn(
    x: torch.Tensor,
    lengths: torch.Tensor,
    *,
    variance: bool = True,
    eps: float = 1e-5,
    unbiased: bool = False,
    eps_on_std: bool = False,
) -> torch.Tensor:
    """Utterance mean (and variance) normalisation of ``(B, T, D)`` over each one's valid frames.

    ``(x - mean) / sqrt(var + eps)`` with ``var`` over ``T`` frames; ``unbiased`` divides by
    ``T - 1`` instead, ``eps_on_std`` gives ``(x - mean) / (std + eps)``: both together are
    ``torch.std``'s normalisation, s3prl's CMVN. Padding neither counts in the statistics
    nor keeps a value (it is zero on output).
    """
    mask = lengths_to_mask(lengths, x.shape[1])[..., None].to(x.dtype)  # (B, T, 1)
    count = lengths.clamp(min=1)[:, None, None].to(x.dtype)
    mean = (x * mask).sum(dim=1, keepdim=True) / count
    x = x - mean
    if variance:
        dof = (count - 1).clamp(min=1) if unbiased else count
        var = (x.pow(2) * mask).sum(dim=1, keepdim=True) / dof
        x = x / (var.sqrt() + eps) if eps_on_std else x / torch.sqrt(var + eps)
    return x * mask
