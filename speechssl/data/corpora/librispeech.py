"""LibriSpeech: ASR (lower-cased transcripts) and PR (phones from a lexicon the user gives).

Layout (Panayotov et al., 2015, as distributed on openslr.org/12)::

    root/<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac
    root/<subset>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt   # "<utt id> WORDS IN CAPITALS"

Splits follow SUPERB: train = train-clean-100, dev = dev-clean, test = test-clean; any
split may list several subsets (``subsets={"train": ["train-clean-100", "train-clean-360"]}``).

PR phones come from a pronunciation lexicon (``lexicon=PATH``, or a list of paths read in
order): one word a line, ``WORD PH1 PH2 ...`` (CMUdict, or LibriSpeech's
``librispeech-lexicon.txt``). The first pronunciation of a word is used, as s3prl does
(CMUdict's ``WORD(2)`` variants and later files' entries are ignored; ``# ...`` comments
too). Stress digits are stripped (``AH0`` -> ``AH``, 39 ARPAbet phones) unless
``strip_stress=False``: SUPERB's PR keeps them (s3prl's ``vocab/phoneme.txt``, vowels with
stress 0/1/2) and reads two G2P lexicons, ``librispeech-lexicon-200k-g2p.txt`` then
``librispeech-lexicon-allothers-g2p.txt`` (s3prl's ``downstream/ctc/libriphone.yaml``; its
plain ``librispeech-lexicon.txt`` is commented out there): pass those two, in that order,
and ``strip_stress=False`` for SUPERB's labels. A transcript word
missing from the lexicon is an error naming it and the utterance; with
``missing_words="skip"`` such utterances are dropped instead and their count logged.
"""

from __future__ import annotations

import functools
import logging
import re
from pathlib import Path

from speechssl.data.corpora.base import check_split, num_samples_16k, require
from speechssl.errors import ConfigError

log = logging.getLogger(__name__)

NAME = "librispeech"
TASKS = ("asr", "pr")
SUBSETS = {"train": ("train-clean-100",), "dev": ("dev-clean",), "test": ("test-clean",)}


def manifest(
    root: Path,
    task: str,
    split: str,
    *,
    subsets: dict | None = None,
    lexicon: str | list[str] | None = None,
    strip_stress: bool = True,
    missing_words: str = "error",
) -> list[dict]:
    """Rows of the ``split`` subsets: ``text`` (lower-case words) for ASR, ``phones`` for PR."""
    check_split(NAME, split)
    if missing_words not in ("error", "skip"):
        raise ConfigError(f"librispeech: missing_words must be 'error' or 'skip', got {missing_words!r}")
    if task == "pr" and not lexicon:
        raise ConfigError(
            "librispeech: task 'pr' needs a pronunciation lexicon: lexicon=PATH (lines 'WORD PH1 PH2 ...')"
        )
    require(root, "LibriSpeech folder")
    chosen = {**SUBSETS, **(subsets or {})}[split]
    chosen = [chosen] if isinstance(chosen, str) else list(chosen)
    rows = [
        row
        for subset in chosen
        for row in subset_rows(require(root / subset, f"LibriSpeech subset of split '{split}'"))
    ]
    if task == "pr":
        files = (lexicon,) if isinstance(lexicon, (str, Path)) else tuple(lexicon)
        rows = with_phones(rows, read_lexicon(tuple(map(str, files)), strip_stress), missing_words)
    return rows


def subset_rows(folder: Path) -> list[dict]:
    """Every transcribed utterance of one subset folder, in id order."""
    transcripts = sorted(folder.glob("*/*/*.trans.txt"))
    if not transcripts:
        raise ConfigError(f"{folder}: no <speaker>/<chapter>/*.trans.txt files; is this a LibriSpeech subset folder?")
    rows = []
    for trans in transcripts:
        for number, line in enumerate(trans.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            utt_id, _, words = line.strip().partition(" ")
            if not words:
                raise ConfigError(f"{trans}:{number}: expected '<utt id> WORDS', found {line!r}")
            path = trans.parent / f"{utt_id}.flac"
            rows.append({
                "id": utt_id,
                "path": str(path),
                "num_samples": num_samples_16k(path, listed_in=trans),
                "speaker": utt_id.split("-")[0],
                "text": words.lower(),
            })  # fmt: skip
    return rows


@functools.lru_cache(maxsize=4)
def read_lexicon(paths: tuple[str, ...], strip_stress: bool = True) -> dict[str, tuple[str, ...]]:
    """Lower-cased word -> phones (its first pronunciation), from ``WORD PH1 PH2 ...`` files."""
    lexicon: dict[str, tuple[str, ...]] = {}
    for file in map(Path, paths):
        if not file.is_file():
            raise ConfigError(f"{file}: no such lexicon file")
        for number, line in enumerate(file.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
            line = line.split(" #")[0]  # cmudict.dict's comments
            if not line.strip() or line.startswith(";;;"):  # CMUdict's header comments
                continue
            word, *phones = line.split()
            if not phones:
                raise ConfigError(f"{file}:{number}: word {word!r} has no phones")
            word = re.sub(r"\(\d+\)$", "", word).lower()
            if strip_stress:
                phones = [re.sub(r"\d+$", "", p) for p in phones]
            lexicon.setdefault(word, tuple(phones))
    if not lexicon:
        raise ConfigError(f"{', '.join(paths)}: empty lexicon")
    return lexicon


def with_phones(rows: list[dict], lexicon: dict[str, tuple[str, ...]], missing_words: str) -> list[dict]:
    """Rows with a ``phones`` column (space-separated) added."""
    out, skipped = [], 0
    for row in rows:
        missing = [w for w in row["text"].split() if w not in lexicon]
        if missing and missing_words == "error":
            raise ConfigError(
                f"librispeech {row['id']}: word(s) {', '.join(repr(w) for w in missing)} not in the lexicon; "
                "add them, or pass missing_words=skip to drop such utterances"
            )
        if missing:
            skipped += 1
            continue
        phones = " ".join(p for w in row["text"].split() for p in lexicon[w])
        out.append(row | {"phones": phones})
    if skipped:
        log.warning("librispeech: %d of %d utterances skipped: words missing from the lexicon", skipped, len(rows))
    return out
