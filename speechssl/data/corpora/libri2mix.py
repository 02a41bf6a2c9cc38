"""Libri2Mix (Cosentino et al., 2020) for speaker diarization, in the Kaldi-style folders SUPERB reads.

s3prl's SD recipe mixes Libri2Mix (``wav16k/max``, ``mix_both``) and writes one Kaldi-style
data folder per split with ``prepare_diarization.py``; this loader reads those folders::

    root/train/wav.scp    # "<recording id> <path to .wav>" a line
    root/train/rttm       # "SPEAKER <recording id> 1 <start s> <duration s> <NA> <NA> <speaker> <NA> <NA>"
    root/dev/...          # the same for dev and test
    root/test/...

Relative audio paths resolve against ``root``; ``audio_root`` points them elsewhere. A
``wav.scp`` line that is a command (ends in ``|``) is refused: convert the audio first.
Each row's ``rttm`` is the split's RTTM; the SD task reads the lines of the row's id.
"""

from __future__ import annotations

from pathlib import Path

from speechssl.data.corpora.base import check_split, num_samples_16k, require
from speechssl.errors import ConfigError

NAME = "libri2mix"
TASKS = ("sd",)


def manifest(root: Path, task: str, split: str, *, audio_root: str | None = None) -> list[dict]:
    """Rows of a split: ``id`` (the recording), ``path``, ``num_samples``, ``rttm``, ``num_speakers``."""
    check_split(NAME, split)
    folder = require(root / split, f"Libri2Mix Kaldi-style {split} folder (wav.scp, rttm)")
    scp = require(folder / "wav.scp", f"Libri2Mix {split} recordings")
    rttm = require(folder / "rttm", f"Libri2Mix {split} reference turns")
    speakers: dict[str, set[str]] = {}
    for line in rttm.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 8 and fields[0] == "SPEAKER":
            speakers.setdefault(fields[1], set()).add(fields[7])
    base = Path(audio_root) if audio_root else root
    rows = []
    for number, line in enumerate(scp.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split(maxsplit=1)
        if len(fields) != 2 or fields[1].rstrip().endswith("|"):
            raise ConfigError(f"{scp}:{number}: expected '<recording id> <path to .wav>', found {line!r}")
        recording, path = fields[0], Path(fields[1].strip())
        path = path if path.is_absolute() else base / path
        if recording not in speakers:
            raise ConfigError(f"{rttm}: no turns of recording {recording} (listed in {scp}:{number})")
        rows.append({"id": recording, "path": str(path), "num_samples": num_samples_16k(path, listed_in=scp),
                     "speaker": ",".join(sorted(speakers[recording])), "rttm": str(rttm),
                     "num_speakers": str(len(speakers[recording]))})
    return rows
