"""Seeded signal processing for the synthetic corpus: resampling with speed perturbation,
timbre filters, synthetic rooms, coloured noise, mixing at an SNR, level and PCM.

Waveforms here are 1-D float64 NumPy arrays; every random choice takes a
``numpy.random.Generator``.
"""

from __future__ import annotations

import numpy as np
from scipy import signal

SAMPLE_RATE = 16000
ESPEAK_RATE = 22050
# 22050 Hz -> 16000 Hz is 320/441; a speed step s resamples by (320 + s)/441 and plays the
# result at 16 kHz, so s = +-16 is a speed factor of 1 -+ 5 % (pitch moves with it, as in Kaldi).
SPEED_STEPS = (-16, -8, 0, 0, 8, 16)


def resample(x: np.ndarray, speed_step: int = 0) -> tuple[np.ndarray, float]:
    """eSpeak's 22.05 kHz int16 output to float at 16 kHz, with a speed step.

    Returns the waveform and the factor mapping an input sample index to an output one.
    """
    up, down = 320 + speed_step, 441
    y = signal.resample_poly(x.astype(np.float64) / 32768.0, up, down)
    return y, up / down


def _peaking(freq: float, gain_db: float, q: float) -> np.ndarray:
    """RBJ audio-EQ-cookbook peaking biquad as one second-order section."""
    a = 10 ** (gain_db / 40)
    w = 2 * np.pi * freq / SAMPLE_RATE
    alpha = np.sin(w) / (2 * q)
    b0, b1, b2 = 1 + alpha * a, -2 * np.cos(w), 1 - alpha * a
    a0, a1, a2 = 1 + alpha / a, -2 * np.cos(w), 1 - alpha / a
    return np.array([b0, b1, b2, a0, a1, a2]) / a0


def _high_shelf(gain_db: float, freq: float = 2000.0) -> np.ndarray:
    """RBJ high shelf (slope 1) as one second-order section."""
    a = 10 ** (gain_db / 40)
    w = 2 * np.pi * freq / SAMPLE_RATE
    alpha = np.sin(w) / 2 * np.sqrt(2)
    c, s2 = np.cos(w), 2 * np.sqrt(a) * alpha
    b = [a * ((a + 1) + (a - 1) * c + s2), -2 * a * ((a - 1) + (a + 1) * c), a * ((a + 1) + (a - 1) * c - s2)]
    den = [(a + 1) - (a - 1) * c + s2, 2 * ((a - 1) - (a + 1) * c), (a + 1) - (a - 1) * c - s2]
    return np.array(b + den) / den[0]


def colour(x: np.ndarray, peaks, tilt_db: float) -> np.ndarray:
    """Apply peaking filters ``(Hz, dB, Q)`` and a high-shelf tilt (dB): a speaker's timbre."""
    sos = np.stack([_peaking(*p) for p in peaks] + [_high_shelf(tilt_db)])
    return signal.sosfilt(sos, x)


def room_impulse_response(rng: np.random.Generator, rt60: float, drr_db: float) -> np.ndarray:
    """A synthetic RIR: a unit direct path, then exponentially decaying noise (60 dB in ``rt60`` s)
    whose energy sits ``drr_db`` below the direct path's, low-passed as walls absorb highs."""
    n = int(rt60 * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    tail = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)
    tail = signal.lfilter([0.4], [1, -0.6], tail)
    tail[: int(0.002 * SAMPLE_RATE)] = 0  # first reflections arrive after 2 ms
    tail *= 10 ** (-drr_db / 20) / np.sqrt(np.sum(tail**2) + 1e-12)
    tail[0] = 1.0
    return tail


def reverberate(x: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """Convolve and keep the input's length (the tail past the end is cut)."""
    return signal.fftconvolve(x, rir)[: len(x)]


def coloured_noise(rng: np.random.Generator, n: int, alpha: float) -> np.ndarray:
    """Gaussian noise with a 1/f^alpha power spectrum (0 white, 1 pink, 2 brown), unit RMS."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n)
    f[0] = f[1] if n > 1 else 1.0
    y = np.fft.irfft(spectrum / f ** (alpha / 2), n)
    return y / (np.sqrt(np.mean(y**2)) + 1e-12)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x**2)) + 1e-12)


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float, speech_rms: float | None = None) -> np.ndarray:
    """``speech + g * noise`` with ``g`` set for the SNR (speech power measured on ``speech_rms``)."""
    level = speech_rms if speech_rms is not None else rms(speech)
    return speech + noise * (level / rms(noise)) * 10 ** (-snr_db / 20)


def set_level(x: np.ndarray, dbfs: float, peak: float = 0.9) -> np.ndarray:
    """Scale to an RMS of ``dbfs`` dB full scale, then down if needed so no sample passes ``peak``."""
    y = x * (10 ** (dbfs / 20) / rms(x))
    top = float(np.max(np.abs(y)))
    return y * (peak / top) if top > peak else y


def to_pcm16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 32767.0), -32767, 32767).astype("<i2")
