"""VoxCeleb1 speaker identification with the official split (Nagrani et al., 2017).

Layout (``vox1_dev_wav.zip`` and ``vox1_test_wav.zip`` unpacked into one folder)::

    root/wav/<speaker id>/<video id>/<n>.wav
    root/iden_split.txt      # "<1|2|3> id10001/1zcIwhmdeo4/00001.wav" a line

1 = train, 2 = dev, 3 = test, as in SUPERB's SID. ``split_file`` points elsewhere when
the list is not in the root (s3prl ships it beside its recipe). The audio may also sit
in several ``root/*/wav`` folders (``root/dev/wav``, ``root/test/wav``), as s3prl reads it.
The speaker id (``id10001``) is the label.
"""

from __future__ import annotations

from pathlib import Path

from speechssl.data.corpora.base import check_split, num_samples_16k, require
from speechssl.errors import ConfigError

NAME = "voxceleb1"
TASKS = ("sid",)
SPLIT_CODES = {"train": "1", "dev": "2", "test": "3"}


def manifest(root: Path, task: str, split: str, *, split_file: str | None = None) -> list[dict]:
    """Rows of ``split``; ``speaker`` is the label. Ids are ``<speaker>/<video>/<n>``."""
    check_split(NAME, split)
    require(root, "VoxCeleb1 folder")
    listing = require(Path(split_file) if split_file else root / "iden_split.txt", "VoxCeleb1 identification split")
    wav_dirs = [d for d in [root / "wav", *sorted(root.glob("*/wav"))] if d.is_dir()]
    if not wav_dirs:
        raise ConfigError(f"{root / 'wav'}: no such folder (VoxCeleb1 audio, wav/<speaker>/<video>/<n>.wav)")
    rows = []
    for number, line in enumerate(listing.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or fields[0] not in ("1", "2", "3"):
            raise ConfigError(f"{listing}:{number}: expected '<1|2|3> <speaker>/<video>/<n>.wav', found {line!r}")
        if fields[0] != SPLIT_CODES[split]:
            continue
        relative = fields[1]
        path = next((d / relative for d in wav_dirs if (d / relative).is_file()), wav_dirs[0] / relative)
        rows.append({
            "id": relative.removesuffix(".wav"),
            "path": str(path),
            "num_samples": num_samples_16k(path, listed_in=listing),
            "speaker": relative.split("/")[0],
        })  # fmt: skip
    return rows
