"""Render planned jobs to 16 kHz 16-bit WAV files, in a worker process.

Each job's acoustics come from ``numpy.random.default_rng([seed, job.index])``, so a
file depends only on the plan and the seed, and on the jobs rendered before it in
the same chunk (eSpeak's carried-over state, see :mod:`speechssl.data.synth.espeak`).
"""

from __future__ import annotations

import hashlib
import wave
from pathlib import Path

import numpy as np

from speechssl.data.synth import acoustics as A
from speechssl.data.synth.espeak import engine
from speechssl.data.synth.plan import Job, Plan
from speechssl.data.synth.voices import EMOTIONS

SR = A.SAMPLE_RATE
SPEECH_DBFS = -26.0


def write_wav(path: Path, pcm: np.ndarray) -> str:
    """Write int16 samples as mono 16 kHz WAV (the stdlib writer: a fixed header) and return its sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with wave.open(str(tmp), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(SR)
        f.writeframes(pcm.astype("<i2").tobytes())
    tmp.replace(path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as f:
        return np.frombuffer(f.readframes(f.getnframes()), dtype="<i2").astype(np.float64) / 32768.0


class Renderer:
    """Renders the jobs of one chunk; holds the noise bank once it is needed."""

    def __init__(self, plan: Plan, root: Path):
        self.plan, self.root = plan, root
        self._bank: list[np.ndarray] | None = None

    @property
    def bank(self) -> list[np.ndarray]:
        """Background noise files (babble, white, pink, brown), rendered in the first phase."""
        if self._bank is None:
            self._bank = [read_wav(self.root / j.path) for j in self.plan.noise_jobs]
        return self._bank

    def __call__(self, job: Job) -> dict:
        rng = np.random.default_rng([self.plan.seed, job.index])
        wav, labels = getattr(self, f"_{job.kind}")(job, rng)
        sha = write_wav(self.root / job.path, A.to_pcm16(wav))
        return {"index": job.index, "num_samples": len(wav), "sha256": sha, **labels}

    # speech: one utterance ------------------------------------------------------------
    def _voice(self, speaker_id: str, utterance, rng, emotion="neutral", speed=True):
        """Synthesize, resample to 16 kHz with a speed step, apply the speaker's timbre."""
        speaker = self.plan.speakers[speaker_id]
        preset = EMOTIONS[emotion]
        spoken = utterance.transcript + (preset.ending if emotion != "neutral" else utterance.ending)
        syn = engine().synthesize(spoken, speaker.espeak_voice(emotion), seed=int(rng.integers(2**31)))
        step = int(rng.choice(A.SPEED_STEPS)) if speed else 0
        y, factor = A.resample(syn.samples, step)
        y = A.colour(y, speaker.timbre, speaker.tilt_db + preset.tilt_db)

        def scale(sample: int) -> int:  # an eSpeak sample index at 16 kHz
            return min(round(sample * factor), len(y))

        phones = [(p, scale(s), scale(e)) for p, s, e in syn.phones]
        words = [(t, scale(s), scale(e)) for t, s, e in syn.words]
        return y, phones, words

    def _background(self, rng, n: int) -> np.ndarray:
        """``n`` samples of coloured noise (fresh) or of a bank file (babble or not), unit RMS."""
        if rng.random() < 0.5:
            return A.coloured_noise(rng, n, float(rng.uniform(0, 2)))
        source = self.bank[int(rng.integers(len(self.bank)))]
        start = int(rng.integers(max(1, len(source) - n)))
        piece = np.resize(source[start:], n)  # wraps around when the file is shorter
        return piece / A.rms(piece)

    def _room(self, rng, y: np.ndarray, probability: float = 0.6) -> np.ndarray:
        if rng.random() >= probability:
            return y
        rir = A.room_impulse_response(rng, rt60=float(rng.uniform(0.15, 0.7)), drr_db=float(rng.uniform(-2, 10)))
        return A.reverberate(y, rir)

    def _speech(self, job: Job, rng):
        y, phones, words = self._voice(job.speaker, job.utterance, rng, job.emotion)
        lead, tail = (int(rng.uniform(0.05, 0.3) * SR) for _ in range(2))
        y = np.concatenate([np.zeros(lead), y, np.zeros(tail)])
        phones = [(p, s + lead, e + lead) for p, s, e in phones]
        words = [(t, s + lead, e + lead) for t, s, e in words]
        y = self._room(rng, y)
        active = y[phones[0][1] : phones[-1][2]] if phones else y
        ref = 10 ** (SPEECH_DBFS / 20)
        y = y * (ref / A.rms(active))
        if rng.random() < 0.85:
            y = A.mix_at_snr(y, self._background(rng, len(y)), float(rng.uniform(5, 30)), ref)
        gain_db = EMOTIONS[job.emotion].gain_db + float(rng.uniform(-3, 3))
        y = A.set_level(y, 20 * np.log10(A.rms(y)) + gain_db)
        return y, {"phones": phones, "words": words}

    # keyword spotting and query-by-example: one word in a short clip ----------------
    def _keyword(self, job: Job, rng):
        """Speech Commands style: the word at a random offset in a 1-s clip."""
        return self._word(job, rng, clip_seconds=1.0)

    def _query(self, job: Job, rng):
        """A spoken query: the word alone, with short margins."""
        return self._word(job, rng, clip_seconds=None)

    def _word(self, job: Job, rng, clip_seconds: float | None):
        y, phones, _ = self._voice(job.speaker, job.utterance, rng)
        start = max(0, phones[0][1] - int(0.03 * SR)) if phones else 0
        end = min(len(y), phones[-1][2] + int(0.05 * SR)) if phones else len(y)
        word = y[start:end][:SR]
        if clip_seconds:
            offset = int(rng.integers(int(clip_seconds * SR) - len(word) + 1))
            clip = np.zeros(int(clip_seconds * SR))
        else:
            offset = int(rng.uniform(0.05, 0.15) * SR)
            clip = np.zeros(len(word) + 2 * offset)
        clip[offset : offset + len(word)] = word
        clip = self._room(rng, clip, probability=0.4) * (10 ** (SPEECH_DBFS / 20) / A.rms(word))
        clip = A.mix_at_snr(clip, self._background(rng, len(clip)), float(rng.uniform(10, 30)), 10 ** (SPEECH_DBFS / 20))
        return A.set_level(clip, 20 * np.log10(A.rms(clip)) + float(rng.uniform(-6, 4))), {}

    def _silence(self, job: Job, rng):
        """Speech Commands' ``_silence_``: a 1-s stretch of background noise at a low level."""
        return A.set_level(self._background(rng, SR), float(rng.uniform(-60, -30))), {}

    # speaker diarization: a conversation -------------------------------------------
    def _conversation(self, job: Job, rng):
        people = sorted({who for who, _ in job.turns})
        tracks: dict[str, list[tuple[int, np.ndarray]]] = {p: [] for p in people}
        segments, cursor, previous = [], int(rng.uniform(0.2, 0.5) * SR), 0
        free_at = {p: 0 for p in people}  # a speaker never overlaps themself
        for who, utterance in job.turns:
            y, phones, _ = self._voice(who, utterance, rng, speed=False)
            y = y[phones[0][1] : phones[-1][2]]  # the turn is its speech, no silence
            y = y * (10 ** ((SPEECH_DBFS + rng.uniform(-3, 3)) / 20) / A.rms(y))
            if segments and rng.random() < 0.35:  # overlap the previous turn
                start = cursor - int(rng.uniform(0.2, 0.5) * min(previous, len(y)))
            else:
                start = cursor + int(rng.uniform(0.1, 0.8) * SR)
            floor = free_at[who] + int(0.1 * SR)
            if segments:  # turns start in order
                floor = max(floor, segments[-1][1] + int(0.2 * SR))
            start = max(start, floor)
            tracks[who].append((start, y))
            segments.append((who, start, start + len(y)))
            free_at[who] = start + len(y)
            cursor, previous = max(cursor, start + len(y)), len(y)
        total = max(end for _, _, end in segments) + int(rng.uniform(0.3, 0.6) * SR)
        rt60 = float(rng.uniform(0.15, 0.6))
        mix = np.zeros(total)
        for who in people:  # each speaker in their own spot of the same room
            track = np.zeros(total)
            for start, y in tracks[who]:
                track[start : start + len(y)] += y
            if rt60 > 0.2:
                track = A.reverberate(track, A.room_impulse_response(rng, rt60, float(rng.uniform(0, 10))))
            mix += track
        mix = A.mix_at_snr(mix, self._background(rng, total), float(rng.uniform(10, 30)), 10 ** (SPEECH_DBFS / 20))
        mix = A.set_level(mix, 20 * np.log10(A.rms(mix)) + float(rng.uniform(-3, 3)))
        return mix, {"segments": segments}

    # the noise bank ----------------------------------------------------------------
    def _babble(self, job: Job, rng):
        """Five streams of sentences by pretraining speakers, summed."""
        from speechssl.data.synth import text as T

        n = int(job.labels["seconds"] * SR)
        mix = np.zeros(n)
        for _ in range(5):
            stream, pos = np.zeros(n), int(rng.uniform(0, 1) * SR)
            while pos < n:
                speaker = self.plan.speaker_split["pretrain"][int(rng.integers(len(self.plan.speaker_split["pretrain"])))]
                y, _, _ = self._voice(speaker, T.sentence(rng), rng)
                y = y[: n - pos]
                stream[pos : pos + len(y)] = y / A.rms(y)
                pos += len(y) + int(rng.uniform(0.0, 0.5) * SR)
            mix += stream
        return A.set_level(mix, -30.0), {}

    def _noise(self, job: Job, rng):
        alpha = {"white": 0.0, "pink": 1.0, "brown": 2.0}[job.labels["noise"]]
        return A.set_level(A.coloured_noise(rng, int(job.labels["seconds"] * SR), alpha), -30.0), {}
