"""Fluent Speech Commands intent classification (Lugosch et al., 2019), as in SUPERB's IC.

Layout (``fluent_speech_commands_dataset``)::

    root/data/{train,valid,test}_data.csv  # ",path,speakerId,transcription,action,object,location"
    root/wavs/speakers/<speakerId>/<uuid>.wav   # the csv's path column, relative to root

valid is our dev split. Rows carry the three slots (``action``, ``object``, ``location``,
as written in the csv) and ``text`` (the transcription).
"""

from __future__ import annotations

import csv
from pathlib import Path

from speechssl.data.corpora.base import check_split, num_samples_16k, require
from speechssl.errors import ConfigError

NAME = "fluent_speech_commands"
TASKS = ("ic",)
CSV = {"train": "train_data.csv", "dev": "valid_data.csv", "test": "test_data.csv"}
COLUMNS = ("path", "speakerId", "transcription", "action", "object", "location")


def manifest(root: Path, task: str, split: str) -> list[dict]:
    """Rows of ``split`` with ``action``, ``object``, ``location`` and ``text``."""
    check_split(NAME, split)
    table = require(
        require(root, "Fluent Speech Commands folder") / "data" / CSV[split], "Fluent Speech Commands split table"
    )
    with table.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ConfigError(
                f"{table}: missing column(s) {', '.join(missing)}; found {', '.join(reader.fieldnames or [])}"
            )
        rows = []
        for record in reader:
            path = root / record["path"]
            rows.append({
                "id": f"{record['speakerId']}/{Path(record['path']).stem}",
                "path": str(path),
                "num_samples": num_samples_16k(path, listed_in=table),
                "speaker": record["speakerId"],
                "action": record["action"],
                "object": record["object"],
                "location": record["location"],
                "text": record["transcription"],
            })  # fmt: skip
    return rows
