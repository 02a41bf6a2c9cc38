"""Pseudo-speakers: an eSpeak accent and variant, pitch, pitch range, rate and a fixed timbre filter.

Emotions are prosody presets applied on top of a speaker: pitch, range, rate,
word gap, energy and spectral tilt, plus the sentence ending that drives eSpeak's
intonation contour.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from speechssl.data.synth.espeak import Voice

# English accents of espeak-ng 1.52 (espeak-ng-data/lang/gmw) and natural-sounding variants.
ACCENTS = ("en-us", "en", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-us-nyc", "en-gb-x-gbclan", "en-gb-x-gbcwmd")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "klatt", "klatt2", "klatt3")


@dataclass(frozen=True)
class Speaker:
    """One pseudo-speaker. ``timbre``: peaking filters ``(centre Hz, gain dB, Q)``;
    ``tilt_db``: gain of a first-order high shelf at 2 kHz."""

    id: str
    voice: str
    pitch: int
    pitch_range: int
    rate: int
    timbre: tuple[tuple[float, float, float], ...]
    tilt_db: float

    def espeak_voice(self, emotion: str = "neutral") -> Voice:
        preset = EMOTIONS[emotion]
        return Voice(
            name=self.voice,
            rate=int(np.clip(self.rate * preset.rate, 80, 400)),
            pitch=int(np.clip(self.pitch + preset.pitch, 0, 99)),
            pitch_range=int(np.clip(self.pitch_range * preset.range_scale + preset.range_add, 0, 99)),
            word_gap=preset.word_gap,
        )


@dataclass(frozen=True)
class Emotion:
    """Prosody preset: offsets to pitch (0..100 scale), range, rate; energy (dB) and tilt (dB)."""

    pitch: int
    range_scale: float
    range_add: int
    rate: float
    word_gap: int
    gain_db: float
    tilt_db: float
    ending: str


EMOTIONS = {
    "neutral": Emotion(pitch=0, range_scale=1.0, range_add=0, rate=1.0, word_gap=0, gain_db=0.0, tilt_db=0.0, ending="."),
    "happy": Emotion(pitch=18, range_scale=1.3, range_add=25, rate=1.15, word_gap=0, gain_db=3.0, tilt_db=2.0, ending="!"),
    "sad": Emotion(pitch=-15, range_scale=0.3, range_add=0, rate=0.78, word_gap=3, gain_db=-6.0, tilt_db=-6.0, ending="."),
    "angry": Emotion(pitch=6, range_scale=1.0, range_add=30, rate=1.2, word_gap=0, gain_db=6.0, tilt_db=6.0, ending="!"),
}  # fmt: skip


def make_speakers(count: int, rng: np.random.Generator) -> list[Speaker]:
    """``count`` speakers with distinct (accent, variant) pairs while they last."""
    pairs = list(itertools.product(ACCENTS, VARIANTS))
    order = rng.permutation(len(pairs))
    speakers = []
    for i in range(count):
        accent, variant = pairs[order[i % len(pairs)]]
        timbre = tuple(
            (float(np.exp(rng.uniform(np.log(300), np.log(5000)))), float(rng.uniform(-6, 6)), float(rng.uniform(0.7, 2.0)))
            for _ in range(3)
        )
        speakers.append(
            Speaker(
                id=f"spk{i:03d}",
                voice=f"{accent}+{variant}",
                pitch=int(rng.integers(20, 81)),
                pitch_range=int(rng.integers(20, 81)),
                rate=int(rng.integers(140, 201)),
                timbre=timbre,
                tilt_db=float(rng.uniform(-4, 4)),
            )
        )
    return speakers
