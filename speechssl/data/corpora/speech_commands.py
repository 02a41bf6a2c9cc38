"""Speech Commands v0.01 with SUPERB's keyword-spotting split (12 classes).

Layout (Warden, 2018; ``speech_commands_v0.01.tar.gz``)::

    root/<word>/<speaker hash>_nohash_<n>.wav     # 1-s clips, 30 words
    root/validation_list.txt, root/testing_list.txt  # "<word>/<file>.wav" a line
    root/_background_noise_/*.wav                  # long noise recordings

Labels: the ten keywords (yes, no, up, down, left, right, on, off, stop, go), ``_unknown_``
for the other twenty words, ``_silence_`` for background noise. train = every clip in
neither list, dev = ``validation_list.txt``. test = SUPERB's separate test set
(``speech_commands_test_set_v0.01``, folders named by class, ``_silence_`` and
``_unknown_`` included) when ``test_root`` is given, else ``testing_list.txt``.

``_silence_`` rows: every ``_background_noise_`` file is cut into non-overlapping 1-s
segments; segment k goes to dev when k % 10 == 0, to test when k % 10 == 1, else to
train. With ``test_root`` the test share is unused (SUPERB's test set has its own
``_silence_`` clips) so that train and dev do not depend on where the test set comes from.
s3prl instead crops one random second per noise file and per epoch; fixed segments keep
the manifest deterministic and the splits disjoint. So that rows can point into a long
file, every row of this corpus has an ``offset`` column: the first sample to read, at
16 kHz (0 for word clips); ``num_samples`` is then the segment's length (16000).
"""

from __future__ import annotations

import logging
from pathlib import Path

from speechssl.data.audio import SAMPLE_RATE
from speechssl.data.corpora.base import check_split, num_samples_16k, require
from speechssl.errors import ConfigError

log = logging.getLogger(__name__)

NAME = "speech_commands"
TASKS = ("ks",)
KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
UNKNOWN, SILENCE = "_unknown_", "_silence_"
CLASSES = KEYWORDS + (UNKNOWN, SILENCE)
NOISE = "_background_noise_"


def manifest(root: Path, task: str, split: str, *, test_root: str | None = None) -> list[dict]:
    """Rows with ``label`` (one of :data:`CLASSES`) and ``offset`` (first sample, 16 kHz)."""
    check_split(NAME, split)
    require(root, "Speech Commands v0.01 folder")
    if split == "test" and test_root:
        return test_set_rows(require(Path(test_root), "Speech Commands test set (test_root)"))
    if split == "test":
        log.warning(
            "speech_commands: testing on testing_list.txt; SUPERB's KS scores speech_commands_test_set_v0.01 "
            "(data.options.test_root=DIR), so these numbers are not comparable with SUPERB's"
        )
    listed = {
        name: read_list(require(root / f"{name}_list.txt", "Speech Commands split list"))
        for name in ("validation", "testing")
    }
    if split == "train":
        held_out = listed["validation"] | listed["testing"]
        clips = sorted(
            p.relative_to(root).as_posix() for p in root.glob("*/*.wav") if not p.parent.name.startswith("_")
        )
        clips = [c for c in clips if c not in held_out]
        source = root
    else:
        name = "validation" if split == "dev" else "testing"
        clips, source = sorted(listed[name]), root / f"{name}_list.txt"
    rows = [clip_row(root / clip, clip, word_label(clip.split("/")[0]), source) for clip in clips]
    return rows + silence_rows(require(root / NOISE, "background noise for _silence_"), split)


def read_list(path: Path) -> set[str]:
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def word_label(word: str) -> str:
    return word if word in CLASSES else UNKNOWN


def clip_row(path: Path, clip_id: str, label: str, listed_in: Path) -> dict:
    """A word (or ready-cut silence) clip; the speaker is the hash before ``_nohash_``."""
    speaker = path.name.split("_nohash_")[0] if "_nohash_" in path.name else ""
    return {
        "id": clip_id.removesuffix(".wav"),
        "path": str(path),
        "num_samples": num_samples_16k(path, listed_in=listed_in),
        "speaker": speaker,
        "label": label,
        "offset": 0,
    }


def silence_rows(noise_dir: Path, split: str) -> list[dict]:
    """1-s ``_silence_`` segments of the noise files that fall in ``split`` (see module doc)."""
    rows = []
    for path in sorted(noise_dir.glob("*.wav")):
        for k in range(num_samples_16k(path) // SAMPLE_RATE):
            if {0: "dev", 1: "test"}.get(k % 10, "train") == split:
                rows.append({
                    "id": f"{NOISE}/{path.stem}-{k:04d}",
                    "path": str(path),
                    "num_samples": SAMPLE_RATE,
                    "speaker": "",
                    "label": SILENCE,
                    "offset": k * SAMPLE_RATE,
                })  # fmt: skip
    return rows


def test_set_rows(test_root: Path) -> list[dict]:
    """SUPERB's test set: ``test_root/<class>/*.wav``, the folder names the class."""
    rows = [
        clip_row(path, f"test_set/{path.relative_to(test_root).as_posix()}", word_label(path.parent.name), test_root)
        for path in sorted(test_root.glob("*/*.wav"))
    ]
    if not rows:
        raise ConfigError(f"{test_root}: no <class>/*.wav clips; is this speech_commands_test_set_v0.01?")
    return rows
