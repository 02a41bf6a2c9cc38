"""IEMOCAP emotion recognition, SUPERB's four classes and five folds (Busso et al., 2008).

Layout (``IEMOCAP_full_release``)::

    root/Session{1..5}/sentences/wav/<dialog>/<utterance>.wav
    root/Session{1..5}/dialog/EmoEvaluation/<dialog>.txt
        # "[6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5000, 2.5000, 2.5000]"

Classes: neu -> neutral, hap and exc -> happy (excited merged into happy, as SUPERB does),
sad -> sad, ang -> angry; every other label (fru, sur, fea, dis, oth, xxx) is dropped.

Folds: ``fold=k`` (1..5) tests on Session k. The other four sessions make train and dev:
an utterance goes to dev when :func:`stable_percent` of its id is below ``dev_percent``
(20 by default, s3prl's ``valid_ratio``), so dev is a fixed, utterance-level share of the
same speakers; s3prl draws the same share at random with a seeded ``random_split``.
The speaker is the session and the speaking actor's gender (``Ses01F``, ``Ses01M``),
read from the utterance id's last part (``..._M013`` is the session's male actor).
"""

from __future__ import annotations

import re
from pathlib import Path

from speechssl.data.corpora.base import (
    check_split,
    num_samples_16k,
    require,
    stable_percent,
)
from speechssl.errors import ConfigError

NAME = "iemocap"
TASKS = ("er",)
SESSIONS = (1, 2, 3, 4, 5)
EMOTIONS = {"neu": "neutral", "hap": "happy", "exc": "happy", "sad": "sad", "ang": "angry"}
LABEL_LINE = re.compile(r"^\[\s*[\d.]+\s*-\s*[\d.]+\s*\]\s+(\S+)\s+(\w+)\s")  # [start - end] utt emo [V, A, D]


def manifest(root: Path, task: str, split: str, *, fold: int = 1, dev_percent: float = 20.0) -> list[dict]:
    """Rows of ``split`` for test session ``fold`` with ``emotion`` in neutral/happy/sad/angry."""
    check_split(NAME, split)
    if int(fold) not in SESSIONS:
        raise ConfigError(f"iemocap: fold must be one of 1..5 (the test session), got {fold!r}")
    if not 0 <= float(dev_percent) < 100:
        raise ConfigError(f"iemocap: dev_percent must be in [0, 100), got {dev_percent!r}")
    require(root, "IEMOCAP folder")
    sessions = [int(fold)] if split == "test" else [s for s in SESSIONS if s != int(fold)]
    rows = []
    for session in sessions:
        for row in session_rows(require(root / f"Session{session}", f"IEMOCAP session {session}")):
            if split == "test" or (stable_percent(row["id"]) < float(dev_percent)) == (split == "dev"):
                rows.append(row)
    return rows


def session_rows(folder: Path) -> list[dict]:
    """The four-class utterances of one session, in id order."""
    labels_dir = require(folder / "dialog" / "EmoEvaluation", "IEMOCAP emotion labels")
    rows = []
    for labels in sorted(p for p in labels_dir.glob("*.txt") if not p.name.startswith(".")):
        for line in labels.read_text(encoding="utf-8", errors="replace").splitlines():
            match = LABEL_LINE.match(line)
            if not match or match.group(2) not in EMOTIONS:
                continue
            utt = match.group(1)
            path = folder / "sentences" / "wav" / labels.stem / f"{utt}.wav"
            rows.append({
                "id": utt,
                "path": str(path),
                "num_samples": num_samples_16k(path, listed_in=labels),
                "speaker": utt[:5] + utt.rsplit("_", 1)[-1][0],
                "emotion": EMOTIONS[match.group(2)],
            })  # fmt: skip
    if not rows:
        raise ConfigError(f"{labels_dir}: no labelled utterances ('[start - end]<TAB>utt<TAB>emo<TAB>[V, A, D]' lines)")
    return sorted(rows, key=lambda r: r["id"])
