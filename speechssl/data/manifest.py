"""Manifests: plain TSV tables, one utterance a row, with a header line.

Required columns: ``id``, ``path``, ``num_samples``; any others (``speaker``, ``text``,
``phones``, ...) are task labels kept as strings. A relative ``path`` is relative to the
directory holding the manifest, so a corpus can be moved or copied as a whole;
:func:`read_manifest` resolves it to an absolute path. Values may not hold tabs or
newlines.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch

from speechssl.errors import ConfigError

REQUIRED = ("id", "path", "num_samples")


def read_manifest(path: str | os.PathLike, root: str | os.PathLike | None = None) -> list[dict]:
    """Rows of a manifest as dicts; ``path`` made absolute, ``num_samples`` an int.

    Relative paths resolve against ``root``, by default the manifest's directory.
    Raises :class:`ConfigError` naming the file and line for a missing file or column,
    a row of the wrong width or a bad ``num_samples``.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such manifest")
    base = Path(root) if root is not None else path.parent
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines:
        raise ConfigError(f"{path}: empty manifest (no header line)")
    columns = lines[0].split("\t")
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise ConfigError(f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(columns)}")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        if not line:
            continue
        values = line.split("\t")
        if len(values) != len(columns):
            raise ConfigError(f"{path}:{number}: {len(values)} fields, expected {len(columns)}")
        row = dict(zip(columns, values))
        try:
            row["num_samples"] = int(row["num_samples"])
        except ValueError:
            raise ConfigError(f"{path}:{number}: num_samples {row['num_samples']!r} is not an integer") from None
        row["path"] = str((base / row["path"]).resolve()) if not os.path.isabs(row["path"]) else row["path"]
        rows.append(row)
    return rows


def write_manifest(path: str | os.PathLike, rows: Iterable[Mapping], columns: Sequence[str]) -> None:
    """Write ``rows`` (mappings with at least ``columns``) as TSV; ``path`` values are written
    as given, so pass them relative to the manifest's directory for a movable corpus."""
    path = Path(path)
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise ValueError(f"{path}: manifest columns must include {', '.join(missing)}")
    lines = ["\t".join(columns)]
    for row in rows:
        values = [str(row[c]) for c in columns]
        for c, v in zip(columns, values):
            if "\t" in v or "\n" in v:
                raise ValueError(f"{path}: column {c!r} value {v!r} holds a tab or newline")
        lines.append("\t".join(values))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def load_utterance(row: Mapping) -> torch.Tensor:
    """The waveform of a manifest row: its file, or ``num_samples`` from ``offset`` when the row has one.

    (Speech Commands' ``_silence_`` rows are 1-s segments of longer noise files.)
    """
    from speechssl.data.audio import load_audio

    wav = load_audio(row["path"])
    if "offset" not in row:
        return wav
    offset = int(row["offset"] or 0)
    return wav[offset : offset + int(row["num_samples"])]
