"""Sentence generators for the synthetic corpus: a small English grammar over the lexicon.

Every generator takes a seeded ``numpy.random.Generator`` and returns lowercase
alphabetic tokens (one eSpeak word each) plus, where a task needs them, labels.
Spoken text is ``" ".join(tokens) + ending``; the ending (``.``, ``?``, ``!``) only
shapes eSpeak's intonation and is not part of the transcript.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from speechssl.data.synth import lexicon as lex

NOUNS = list(dict.fromkeys(lex.NOUNS))
VERBS_TRANSITIVE = list(lex.VERBS_REGULAR) + list(lex.VERBS_IRREGULAR)
KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
UNKNOWN = "_unknown_"
SILENCE = "_silence_"


@dataclass
class Utterance:
    """Tokens to speak, the ending punctuation, and per-token slot tags (SF only)."""

    tokens: list[str]
    ending: str = "."
    tags: list[str] = field(default_factory=list)

    @property
    def transcript(self) -> str:
        return " ".join(self.tokens)

    @property
    def spoken(self) -> str:
        return self.transcript + self.ending


def _pick(rng: np.random.Generator, items):
    return items[int(rng.integers(len(items)))]


def plural(noun: str) -> str:
    if noun in lex.IRREGULAR_PLURALS:
        return lex.IRREGULAR_PLURALS[noun]
    if noun.endswith(("s", "x", "z", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def past(verb: str) -> str:
    irregular = lex.VERBS_IRREGULAR.get(verb)
    if irregular:
        return irregular
    if verb.endswith("e"):
        return verb + "d"
    if verb.endswith("y") and verb[-2] not in "aeiou":
        return verb[:-1] + "ied"
    return verb + "ed"


def pseudo_word(rng: np.random.Generator, syllables: int | None = None) -> str:
    """A pronounceable non-word (for names, places, titles), 2-3 syllables by default."""
    n = syllables or int(rng.integers(2, 4))
    parts = []
    for i in range(n):
        coda = _pick(rng, lex.CODAS) if i == n - 1 else ""
        parts.append(_pick(rng, lex.ONSETS) + _pick(rng, lex.NUCLEI) + coda)
    return "".join(parts)


def noun_phrase(rng: np.random.Generator, noun: str | None = None, allow_plural: bool = True) -> list[str]:
    """Determiner, up to two adjectives, noun: ``the old brass lamp``, ``two muddy boots``."""
    noun = noun or _pick(rng, NOUNS)
    is_plural = allow_plural and rng.random() < 0.3
    adjectives = [_pick(rng, lex.ADJECTIVES) for _ in range(int(rng.choice(3, p=[0.45, 0.4, 0.15])))]
    if is_plural:
        det = _pick(rng, ["the", "some", "my", "our", "those", "these", "many"] + lex.NUMBERS[1:10])
        head = plural(noun)
    else:
        det = _pick(rng, ["the", "the", "a", "this", "that", "my", "your", "every", "one"])
        head = noun
    first = (adjectives or [head])[0]
    if det == "a" and first[0] in "aeiou":
        det = "an"
    return [det, *adjectives, head]


def _prep_phrase(rng: np.random.Generator) -> list[str]:
    return [_pick(rng, lex.PREPOSITIONS), *noun_phrase(rng, allow_plural=False)]


def sentence(rng: np.random.Generator, noun: str | None = None) -> Utterance:
    """One sentence from eleven templates.

    ``noun``, if given, heads the subject or the object (singular); templates without
    that phrase drop it, so a caller that needs the word checks the tokens.
    """
    in_subject = bool(rng.random() < 0.5)
    subject = noun_phrase(rng, noun if in_subject else None, allow_plural=noun is None)
    obj = noun_phrase(rng, None if in_subject else noun, allow_plural=noun is None)
    name = _pick(rng, lex.FIRST_NAMES)
    verb = _pick(rng, VERBS_TRANSITIVE)
    intransitive = _pick(rng, list(lex.VERBS_INTRANSITIVE))
    adverb = _pick(rng, lex.ADVERBS)
    template = int(rng.integers(11))
    if template == 0:
        tokens, end = [*subject, past(verb), *obj, *_prep_phrase(rng)], "."
    elif template == 1:
        tokens, end = [*subject, lex.VERBS_INTRANSITIVE[intransitive], adverb, *_prep_phrase(rng)], "."
    elif template == 2:
        tokens, end = [name, past(verb), *obj, adverb], "."
    elif template == 3:
        tokens, end = [*obj, "was", _pick(rng, lex.ADJECTIVES), *_prep_phrase(rng)], "."
    elif template == 4:
        tokens, end = ["did", name, verb, *obj], "?"
    elif template == 5:
        tokens, end = ["where", "did", *subject, intransitive], "?"
    elif template == 6:
        tokens, end = ["we", "will", verb, *obj, _pick(rng, ["tomorrow", "today", "soon", "later"])], "."
    elif template == 7:
        tokens, end = ["please", verb, *obj, *_prep_phrase(rng)], "."
    elif template == 8:
        tokens, end = [name, "and", *subject, past(verb), *obj], "."
    elif template == 9:
        tokens, end = ["i", "think", *subject, past(verb), *obj], "."
    else:
        tokens, end = ["after", name, lex.VERBS_INTRANSITIVE[intransitive], *subject, past(verb), *obj], "."
    return Utterance(tokens, end)


def short_sentence(rng: np.random.Generator) -> Utterance:
    """Three to seven words, for conversation turns."""
    name = _pick(rng, lex.FIRST_NAMES)
    choice = int(rng.integers(4))
    if choice == 0:
        return Utterance([*noun_phrase(rng), lex.VERBS_INTRANSITIVE[_pick(rng, list(lex.VERBS_INTRANSITIVE))]])
    if choice == 1:
        return Utterance(["did", "you", "see", *noun_phrase(rng)], "?")
    if choice == 2:
        return Utterance([name, past(_pick(rng, VERBS_TRANSITIVE)), *noun_phrase(rng)])
    return Utterance(["i", "like", *noun_phrase(rng, allow_plural=False), _pick(rng, lex.ADVERBS)])


def unknown_word(rng: np.random.Generator) -> str:
    """A single word for the keyword-spotting ``_unknown_`` class (never a keyword)."""
    pool = _pick(rng, [NOUNS, lex.ADJECTIVES, lex.NUMBERS, list(lex.VERBS_INTRANSITIVE)])
    word = _pick(rng, pool)
    return word if word not in KEYWORDS else "banana"


# Fluent Speech Commands style intents: (action, object, location).
_ROOMS = ("kitchen", "bedroom", "washroom")
INTENTS = (
    [("activate", "lights", room) for room in (*_ROOMS, "none")]
    + [("deactivate", "lights", room) for room in (*_ROOMS, "none")]
    + [("increase", "heat", room) for room in (*_ROOMS, "none")]
    + [("decrease", "heat", room) for room in (*_ROOMS, "none")]
    + [(a, o, "none") for a in ("activate", "deactivate") for o in ("lamp", "music")]
    + [(a, "volume", "none") for a in ("increase", "decrease")]
    + [("change language", lang, "none") for lang in ("chinese", "korean", "english", "german")]
    + [("bring", o, "none") for o in ("newspaper", "juice", "socks", "shoes")]
)
_OBJECT_WORDS = {
    "lights": ["the lights", "the light", "the lamps"], "lamp": ["the lamp", "the reading lamp"],
    "music": ["the music", "some music", "the tunes"], "heat": ["the heat", "the heating", "the temperature"],
    "volume": ["the volume", "the sound"], "newspaper": ["the newspaper", "the paper"],
    "juice": ["some juice", "the juice", "a glass of juice"], "socks": ["my socks", "the socks"],
    "shoes": ["my shoes", "the shoes"],
}  # fmt: skip
_ACTION_FRAMES = {
    "activate": ["turn on {o}", "switch on {o}", "turn {o} on", "{o} on", "activate {o}", "start {o}"],
    "deactivate": ["turn off {o}", "switch off {o}", "turn {o} off", "{o} off", "stop {o}", "kill {o}"],
    "increase": ["turn up {o}", "increase {o}", "raise {o}", "{o} up", "make {o} higher", "more {o}"],
    "decrease": ["turn down {o}", "decrease {o}", "lower {o}", "{o} down", "reduce {o}", "less {o}"],
    "change language": ["change the language to {o}", "switch to {o}", "set the language to {o}",
                        "i want {o}", "use {o}", "language {o}"],
    "bring": ["bring me {o}", "get me {o}", "fetch {o}", "go get {o}", "i need {o}", "bring {o}"],
}  # fmt: skip
_POLITE_PREFIX = ["", "", "", "please", "could you", "hey", "can you", "i would like you to"]
_POLITE_SUFFIX = ["", "", "", "please", "now", "for me"]


def intent_command(rng: np.random.Generator) -> tuple[Utterance, tuple[str, str, str]]:
    """A spoken command and its (action, object, location) intent, in varied wordings."""
    action, obj, location = INTENTS[int(rng.integers(len(INTENTS)))]
    words = _pick(rng, _OBJECT_WORDS.get(obj, [obj]))
    if location != "none":
        words = _pick(rng, [f"{words} in the {location}", f"the {location} {words.split()[-1]}"])
    text = _pick(rng, _ACTION_FRAMES[action]).format(o=words)
    if location != "none" and location not in text:
        text += f" in the {location}"
    prefix = "" if text.startswith("i ") else _pick(rng, _POLITE_PREFIX)
    text = " ".join(w for w in (prefix, text, _pick(rng, _POLITE_SUFFIX)) if w)
    return Utterance(text.split()), (action, obj, location)


# SNIPS-style slot filling: intent -> templates with {slot} placeholders.
_SF_TEMPLATES = {
    "get_weather": ["what is the weather in {city} {date}", "will it rain in {city} {date}",
                    "how cold is it in {city}", "tell me the forecast for {city} {date}"],
    "play_music": ["play {song} by {artist}", "play some {genre} music", "put on {artist}",
                   "i want to hear {song}"],
    "book_restaurant": ["book a table for {party_size} at {restaurant} {date}",
                        "reserve a table at {restaurant} for {party_size} people",
                        "find a {cuisine} restaurant in {city}"],
    "add_to_playlist": ["add {song} to my {playlist} playlist", "put {artist} on {playlist}"],
    "set_alarm": ["set an alarm for {time} {date}", "wake me up at {time}", "remind me at {time}"],
}  # fmt: skip
_GENRES = "jazz rock folk blues soul pop classical reggae country disco".split()
_CUISINES = "italian indian french thai greek mexican chinese spanish".split()
_TIMES = [f"{h} {m}" for h in ("six", "seven", "eight", "nine", "ten") for m in ("am", "pm", "thirty")]
_DATES = ["today", "tomorrow", "tonight", "this weekend", "next week"] + [f"on {d}" for d in lex.DAYS]


def _slot_value(rng: np.random.Generator, slot: str) -> str:
    if slot == "city":
        return pseudo_word(rng)
    if slot == "artist":
        return f"{_pick(rng, lex.FIRST_NAMES)} {pseudo_word(rng)}"
    if slot == "song":
        return f"the {_pick(rng, lex.ADJECTIVES)} {_pick(rng, NOUNS)}"
    if slot == "playlist":
        return f"{_pick(rng, lex.ADJECTIVES)} {_pick(rng, ['mix', 'songs', 'hits', 'mood'])}"
    if slot == "restaurant":
        return f"{pseudo_word(rng)} {_pick(rng, ['kitchen', 'garden', 'palace', 'house', 'bakery'])}"
    if slot == "party_size":
        return _pick(rng, lex.NUMBERS[1:12])
    return _pick(rng, {"genre": _GENRES, "cuisine": _CUISINES, "time": _TIMES, "date": _DATES}[slot])


def slot_command(rng: np.random.Generator) -> tuple[Utterance, str]:
    """A SNIPS-style request with BIO slot tags (one per token) and its intent."""
    intent = _pick(rng, sorted(_SF_TEMPLATES))
    tokens, tags = [], []
    for piece in _pick(rng, _SF_TEMPLATES[intent]).split():
        if piece.startswith("{"):
            slot = piece.strip("{}")
            value = _slot_value(rng, slot).split()
            tokens += value
            tags += [f"B-{slot}"] + [f"I-{slot}"] * (len(value) - 1)
        else:
            tokens.append(piece)
            tags.append("O")
    return Utterance(tokens, ".", tags), intent


def query_terms(rng: np.random.Generator, count: int, exclude: set[str] = frozenset()) -> list[str]:
    """Distinct nouns of at least six letters, for query-by-example."""
    pool = [n for n in NOUNS if len(n) >= 6 and n not in exclude and n not in lex.IRREGULAR_PLURALS]
    return [pool[i] for i in rng.choice(len(pool), size=count, replace=False)]
