"""A ctypes driver for eSpeak NG, as shipped by the ``espeakng-loader`` wheel.

eSpeak NG is one global engine per process, with static state (glottal phase,
pitch flutter index, ...) that carries from one utterance to the next and that
``espeak_Terminate`` does not reset. Output is therefore a pure function of the
*sequence* of calls since the library was loaded: the corpus builder renders a
fixed chunk of utterances in a freshly forked process, so every chunk gives the
same bytes whatever the number of workers.

The engine runs in synchronous mode (``AUDIO_OUTPUT_SYNCHRONOUS``) with a synth
callback that collects 16-bit samples at 22.05 kHz, and phoneme events in IPA
(``espeakINITIALIZE_PHONEME_IPA``) that give each phone's start sample.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np

from speechssl.errors import SpeechSSLError

# espeak_AUDIO_OUTPUT, espeakINITIALIZE_*, espeak_EVENT_TYPE, espeak_PARAMETER from speak_lib.h
AUDIO_OUTPUT_SYNCHRONOUS = 2
INITIALIZE_PHONEME_EVENTS = 0x0001
INITIALIZE_PHONEME_IPA = 0x0002
INITIALIZE_DONT_EXIT = 0x8000
EVENT_LIST_TERMINATED, EVENT_WORD, EVENT_END, EVENT_PHONEME = 0, 1, 5, 7
PARAM_RATE, PARAM_VOLUME, PARAM_PITCH, PARAM_RANGE, PARAM_WORDGAP = 1, 2, 3, 4, 7
CHARS_UTF8 = 1
POS_CHARACTER = 1

STRESS_MARKS = "ˈˌ"


class SynthError(SpeechSSLError, RuntimeError):
    """eSpeak NG could not be loaded, or refused a voice or a text."""


class _Event(ctypes.Structure):
    """``espeak_EVENT``; the ``id`` union is read as its 8-byte ``string`` member."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", ctypes.c_char * 8),
    ]


_Callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


@dataclass(frozen=True)
class Voice:
    """eSpeak settings for one utterance.

    ``name`` is a voice with an optional variant (``"en-us+f3"``); ``rate`` in words a
    minute (80..450); ``pitch`` and ``pitch_range`` on eSpeak's 0..100 scale, relative to
    the variant's base pitch; ``word_gap`` in units of 10 ms.
    """

    name: str
    rate: int = 175
    pitch: int = 50
    pitch_range: int = 50
    word_gap: int = 0


@dataclass(frozen=True)
class Synthesis:
    """One synthesized text at :attr:`Espeak.sample_rate`.

    ``samples``: (S,) int16. ``phones``: ``(ipa, start, end)`` in samples, stress marks
    removed, pauses left out. ``words``: ``(token_index, start, end)`` in samples for each
    whitespace token of the text that eSpeak spoke, spanning its phones.
    """

    samples: np.ndarray
    phones: list[tuple[str, int, int]]
    words: list[tuple[int, int, int]]


class Espeak:
    """The process's eSpeak NG engine. Create it once per process, with :func:`engine`."""

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as e:
            raise SynthError("the synthetic corpus needs eSpeak NG: pip install espeakng-loader") from e
        self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self._lib.espeak_Initialize.restype = ctypes.c_int
        self._lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self._lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        self._lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
            ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        data = espeakng_loader.get_data_path().encode()
        options = INITIALIZE_PHONEME_EVENTS | INITIALIZE_PHONEME_IPA | INITIALIZE_DONT_EXIT
        rate = self._lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, data, options)
        if rate <= 0:
            raise SynthError(f"espeak_Initialize failed with data path {data.decode()}")
        self.sample_rate = rate
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, int, int, str]] = []  # (type, text_position, sample, phone)
        self._callback = _Callback(self._collect)  # keep a reference: eSpeak holds the pointer
        self._lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, num_samples, events) -> int:
        if num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        i = 0
        while events[i].type != EVENT_LIST_TERMINATED:
            e = events[i]
            phone = e.id.decode("utf-8", "replace") if e.type == EVENT_PHONEME else ""
            self._events.append((e.type, e.text_position, e.sample, phone))
            i += 1
        return 0

    def synthesize(self, text: str, voice: Voice, seed: int) -> Synthesis:
        """Speak ``text`` (plain ASCII words and punctuation) with ``voice``.

        ``seed`` seeds eSpeak's own generator (``espeak_ng_SetRandSeed``), used for
        the noise source of consonants and by the Klatt voices.
        """
        if self._lib.espeak_SetVoiceByName(voice.name.encode()) != 0:
            raise SynthError(f"eSpeak NG has no voice {voice.name!r}")
        for param, value in (
            (PARAM_RATE, voice.rate),
            (PARAM_PITCH, voice.pitch),
            (PARAM_RANGE, voice.pitch_range),
            (PARAM_WORDGAP, voice.word_gap),
            (PARAM_VOLUME, 100),
        ):
            self._lib.espeak_SetParameter(param, int(value), 0)
        self._lib.espeak_ng_SetRandSeed(int(seed) & 0x7FFFFFFF)
        self._chunks, self._events = [], []
        raw = text.encode("utf-8")
        status = self._lib.espeak_Synth(raw, len(raw) + 1, 0, POS_CHARACTER, 0, CHARS_UTF8, None, None)
        if status != 0:
            raise SynthError(f"espeak_Synth failed (status {status}) on {text!r}")
        samples = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        phones, words = _alignments(text, self._events, len(samples))
        return Synthesis(samples, phones, words)


def _alignments(text: str, events, num_samples: int):
    """Phone and word intervals from eSpeak's event list (phone end = next event's start)."""
    token_of_char = _token_index_of_chars(text)
    phones: list[tuple[str, int, int]] = []
    phone_token: list[int] = []
    token = -1
    marks = [e for e in events if e[0] in (EVENT_WORD, EVENT_PHONEME, EVENT_END)]
    for i, (kind, pos, sample, name) in enumerate(marks):
        if kind == EVENT_WORD:
            token = token_of_char.get(pos - 1, -1)  # text_position counts from 1
        elif kind == EVENT_PHONEME:
            ipa = name.strip("\x00").translate({ord(c): None for c in STRESS_MARKS})
            end = marks[i + 1][2] if i + 1 < len(marks) else num_samples
            start, end = min(sample, num_samples), min(max(end, sample), num_samples)
            if ipa and ipa != "_" and end > start:
                phones.append((ipa, start, end))
                phone_token.append(token)
    words: list[tuple[int, int, int]] = []
    for p, t in enumerate(phone_token):
        if t < 0:
            continue
        if words and words[-1][0] == t:
            words[-1] = (t, words[-1][1], phones[p][2])
        else:
            words.append((t, phones[p][1], phones[p][2]))
    return phones, words


def _token_index_of_chars(text: str) -> dict[int, int]:
    """Map each character offset of a non-space character to its whitespace token's index."""
    out, token, in_token = {}, -1, False
    for i, ch in enumerate(text):
        if ch.isspace():
            in_token = False
            continue
        if not in_token:
            token, in_token = token + 1, True
        out[i] = token
    return out


_ENGINE: Espeak | None = None


def engine() -> Espeak:
    """This process's engine, initialised on first use."""
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = Espeak()
    return _ENGINE
