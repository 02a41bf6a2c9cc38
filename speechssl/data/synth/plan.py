"""The corpus plan: every file to render, with its text, speaker and labels, for one size and seed.

The plan is a pure function of ``(size, seed)``: speakers, texts and task labels come
from generators seeded by ``(seed, task)``; acoustics are drawn later, per job, from a
generator seeded by ``(seed, job.index)`` (see :mod:`speechssl.data.synth.render`).

Speakers are split three ways: ``pretrain`` (pretraining audio and background
babble), ``train`` (downstream training and dev sets, SID, QbE queries) and
``unseen`` (test sets, ASV trials, QbE documents).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from speechssl.data.synth import text as T
from speechssl.data.synth.voices import EMOTIONS, Speaker, make_speakers
from speechssl.errors import ConfigError


@dataclass(frozen=True)
class Size:
    """How much of everything to make. Triples are (train, dev, test) counts."""

    speakers: tuple[int, int, int]  # pretrain, train, unseen
    pretrain: int
    asr: tuple[int, int, int]
    ks_per_class: tuple[int, int, int]
    sid_per_speaker: tuple[int, int, int]
    asv_per_speaker: int
    asv_trials: int
    ic: tuple[int, int, int]
    er_per_class: tuple[int, int, int]
    sd: tuple[int, int, int]
    sd_turns: tuple[int, int]
    qbe_terms: int
    qbe_docs: int
    sf: tuple[int, int, int]
    babble_tracks: int
    noise_seconds: float


SIZES = {
    "tiny": Size(
        speakers=(6, 6, 4), pretrain=24, asr=(24, 6, 8), ks_per_class=(4, 1, 2), sid_per_speaker=(3, 1, 1),
        asv_per_speaker=3, asv_trials=30, ic=(20, 6, 8), er_per_class=(4, 1, 2), sd=(3, 1, 2), sd_turns=(3, 4),
        qbe_terms=3, qbe_docs=6, sf=(12, 4, 6), babble_tracks=2, noise_seconds=5.0,
    ),
    # sized so that every task's head can learn and be told apart (issue 18): about 1 h of pretraining
    # speech, 600 PR/ASR and IC training utterances, dev and test sets of 200+ for PR, KS, SID, IC and ER
    # (dev sets of 40-96 made the learning-rate choice on dev a coin toss: benchmarks/RESULTS.md)
    "small": Size(
        speakers=(24, 16, 12), pretrain=1200, asr=(600, 200, 200), ks_per_class=(40, 17, 17),
        sid_per_speaker=(12, 13, 13), asv_per_speaker=5, asv_trials=400, ic=(600, 200, 200),
        er_per_class=(60, 50, 50), sd=(60, 20, 20),
        sd_turns=(4, 8), qbe_terms=30, qbe_docs=150, sf=(400, 100, 100), babble_tracks=6, noise_seconds=10.0,
    ),
    "base": Size(
        speakers=(28, 24, 14), pretrain=3200, asr=(2000, 200, 300), ks_per_class=(200, 30, 50),
        sid_per_speaker=(20, 4, 4), asv_per_speaker=10, asv_trials=4000, ic=(1000, 200, 300),
        er_per_class=(200, 40, 60), sd=(150, 30, 40), sd_turns=(4, 10), qbe_terms=30, qbe_docs=150,
        sf=(800, 150, 200), babble_tracks=12, noise_seconds=20.0,
    ),
}  # fmt: skip
SPLITS = ("train", "dev", "test")
KS_CLASSES = (*T.KEYWORDS, T.UNKNOWN, T.SILENCE)


@dataclass
class Job:
    """One audio file to render.

    ``kind``: speech | keyword | query | silence | conversation | babble | noise. ``path`` is
    relative to the corpus root. ``rows`` lists the (task, split) manifests the file
    appears in; ``labels`` holds the task columns known before rendering.
    """

    index: int
    kind: str
    id: str
    path: str
    speaker: str = ""
    utterance: T.Utterance | None = None
    emotion: str = "neutral"
    turns: list[tuple[str, T.Utterance]] = field(default_factory=list)
    labels: dict = field(default_factory=dict)
    rows: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Plan:
    size: str
    seed: int
    speakers: dict[str, Speaker]
    speaker_split: dict[str, list[str]]
    noise_jobs: list[Job]
    jobs: list[Job]
    asv_trials: list[tuple[int, str, str]]
    qbe_terms: dict[str, list[str]]


class _Builder:
    def __init__(self, size: Size, seed: int):
        self.size, self.seed = size, seed
        self.jobs: list[Job] = []
        self.noise_jobs: list[Job] = []
        self.count: dict[tuple[str, str], int] = {}
        speakers = make_speakers(sum(size.speakers), np.random.default_rng([seed, 1]))
        n_pre, n_train, _ = size.speakers
        self.speakers = {s.id: s for s in speakers}
        ids = [s.id for s in speakers]
        self.split = {"pretrain": ids[:n_pre], "train": ids[n_pre : n_pre + n_train], "unseen": ids[n_pre + n_train :]}

    def rng(self, name: str) -> np.random.Generator:
        return np.random.default_rng([self.seed, 2, zlib.crc32(name.encode())])

    def add(self, kind: str, group: str, split: str, **fields) -> Job:
        jobs = self.noise_jobs if kind in ("babble", "noise") else self.jobs
        number = self.count[(group, split)] = self.count.get((group, split), -1) + 1
        job_id = f"{group}-{split}-{number:05d}"
        index = len(self.noise_jobs) + len(self.jobs)
        job = Job(index=index, kind=kind, id=job_id, path=f"audio/{group}/{split}/{job_id}.wav", **fields)
        jobs.append(job)
        return job

    @staticmethod
    def speakers_for(split: str) -> str:
        return "unseen" if split == "test" else "train"

    def pick(self, rng: np.random.Generator, pool: str) -> str:
        ids = self.split[pool]
        return ids[int(rng.integers(len(ids)))]


def _noise_bank(b: _Builder) -> None:
    for i in range(b.size.babble_tracks):
        b.add("babble", "noise", "bank", labels={"noise": "babble", "seconds": b.size.noise_seconds})
    for name in ("white", "pink", "brown"):
        b.add("noise", "noise", "bank", labels={"noise": name, "seconds": b.size.noise_seconds})


def _pretrain_and_asr(b: _Builder) -> None:
    rng = b.rng("pretrain")
    for _ in range(b.size.pretrain):
        b.add("speech", "pretrain", "train", speaker=b.pick(rng, "pretrain"), utterance=T.sentence(rng),
              rows=[("pretrain", "train")])  # fmt: skip
    rng = b.rng("asr")
    for split, count in zip(SPLITS, b.size.asr):
        for _ in range(count):
            b.add("speech", "asr", split, speaker=b.pick(rng, b.speakers_for(split)), utterance=T.sentence(rng),
                  rows=[("asr", split), ("pr", split)])  # fmt: skip


def _ks(b: _Builder) -> None:
    rng = b.rng("ks")
    for split, per_class in zip(SPLITS, b.size.ks_per_class):
        for label in KS_CLASSES:
            for _ in range(per_class):
                if label == T.SILENCE:
                    b.add("silence", "ks", split, labels={"label": label}, rows=[("ks", split)])
                    continue
                word = T.unknown_word(rng) if label == T.UNKNOWN else label
                b.add("keyword", "ks", split, speaker=b.pick(rng, b.speakers_for(split)),
                      utterance=T.Utterance([word]), labels={"label": label}, rows=[("ks", split)])  # fmt: skip


def _sid_asv(b: _Builder) -> list[tuple[int, str, str]]:
    rng = b.rng("sid")
    for split, per_speaker in zip(SPLITS, b.size.sid_per_speaker):
        for speaker in b.split["train"]:
            for _ in range(per_speaker):
                rows = [("sid", split)] + ([("asv", "train")] if split != "test" else [])
                b.add("speech", "sid", split, speaker=speaker, utterance=T.sentence(rng), rows=rows)
    test = []
    for speaker in b.split["unseen"]:
        for _ in range(b.size.asv_per_speaker):
            test.append(b.add("speech", "asv", "test", speaker=speaker, utterance=T.sentence(rng), rows=[("asv", "test")]))
    trials = []
    for k in range(b.size.asv_trials):  # alternate target / non-target trials
        while True:
            i, j = (int(x) for x in rng.choice(len(test), size=2, replace=False))
            same = test[i].speaker == test[j].speaker
            if same == (k % 2 == 0):
                break
        trials.append((int(same), test[i].id, test[j].id))
    return trials


def _ic_er_sf(b: _Builder) -> None:
    rng = b.rng("ic")
    for split, count in zip(SPLITS, b.size.ic):
        for _ in range(count):
            utterance, (action, obj, location) = T.intent_command(rng)
            b.add("speech", "ic", split, speaker=b.pick(rng, b.speakers_for(split)), utterance=utterance,
                  labels={"action": action, "object": obj, "location": location}, rows=[("ic", split)])  # fmt: skip
    rng = b.rng("er")
    for split, per_class in zip(SPLITS, b.size.er_per_class):
        for emotion in EMOTIONS:
            for _ in range(per_class):
                b.add("speech", "er", split, speaker=b.pick(rng, b.speakers_for(split)), utterance=T.sentence(rng),
                      emotion=emotion, labels={"emotion": emotion}, rows=[("er", split)])  # fmt: skip
    rng = b.rng("sf")
    for split, count in zip(SPLITS, b.size.sf):
        for _ in range(count):
            utterance, intent = T.slot_command(rng)
            b.add("speech", "sf", split, speaker=b.pick(rng, b.speakers_for(split)), utterance=utterance,
                  labels={"intent": intent, "tags": " ".join(utterance.tags)}, rows=[("sf", split)])  # fmt: skip


def _sd(b: _Builder) -> None:
    rng = b.rng("sd")
    low, high = b.size.sd_turns
    for split, count in zip(SPLITS, b.size.sd):
        pool = b.split[b.speakers_for(split)]
        for _ in range(count):
            people = [pool[i] for i in rng.choice(len(pool), size=int(rng.integers(2, 4)), replace=False)]
            turns, last = [], None
            for t in range(int(rng.integers(low, high + 1))):
                # everyone speaks once first, then anyone but the previous speaker
                who = people[t] if t < len(people) else rng.choice([p for p in people if p != last])
                turns.append((str(who), T.short_sentence(rng)))
                last = who
            b.add("conversation", "sd", split, speaker=",".join(sorted(people)), turns=turns,
                  labels={"num_speakers": len(people)}, rows=[("sd", split)])  # fmt: skip


def _qbe(b: _Builder) -> dict[str, list[str]]:
    rng = b.rng("qbe")
    terms_of_split, used = {}, set()
    for split in ("dev", "test"):
        terms = T.query_terms(rng, b.size.qbe_terms, exclude=used)
        used |= set(terms)
        terms_of_split[split] = terms
        for term in terms:  # a query is a word spoken alone by a training speaker
            b.add("query", "qbe", f"{split}_queries", speaker=b.pick(rng, "train"), utterance=T.Utterance([term]),
                  labels={"term": term}, rows=[("qbe", f"{split}_queries")])  # fmt: skip
        for d in range(b.size.qbe_docs):  # documents by unseen speakers; two in three hold a term
            term = terms[d % len(terms)] if rng.random() < 2 / 3 else None
            utterance = T.sentence(rng, term)
            for _ in range(50):
                if term is None or term in utterance.tokens:
                    break
                utterance = T.sentence(rng, term)
            b.add("speech", "qbe", f"{split}_docs", speaker=b.pick(rng, "unseen"), utterance=utterance,
                  rows=[("qbe", f"{split}_docs")])  # fmt: skip
    return terms_of_split


def make_plan(size: str, seed: int) -> Plan:
    """Everything the corpus of ``size`` (tiny | small | base) and ``seed`` holds."""
    if size not in SIZES:
        raise ConfigError(f"unknown synthetic corpus size {size!r}; known: {', '.join(SIZES)}")
    b = _Builder(SIZES[size], seed)
    _noise_bank(b)
    _pretrain_and_asr(b)
    _ks(b)
    trials = _sid_asv(b)
    _ic_er_sf(b)
    _sd(b)
    terms = _qbe(b)
    return Plan(size, seed, b.speakers, b.split, b.noise_jobs, b.jobs, trials, terms)
