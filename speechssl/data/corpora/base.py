"""What every corpus loader shares: the splits, path checks, lengths at 16 kHz, stable shares.

A loader turns a corpus's own on-disk layout into manifest rows (see
:mod:`speechssl.data.manifest`): dicts with ``id``, ``path`` (absolute), ``num_samples``
(at 16 kHz), ``speaker`` ("" when unknown) and the task's label columns.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from speechssl.data.audio import resampled_length
from speechssl.errors import ConfigError

SPLITS = ("train", "dev", "test")


def check_split(corpus: str, split: str) -> None:
    if split not in SPLITS:
        raise ConfigError(f"corpus '{corpus}': unknown split '{split}'; known: {', '.join(SPLITS)}")


def require(path: Path, what: str) -> Path:
    """``path`` if it exists, else a :class:`ConfigError` naming it and what it should hold."""
    if not path.exists():
        raise ConfigError(f"{path}: no such file or folder ({what})")
    return path


def num_samples_16k(path: Path, listed_in: Path | None = None) -> int:
    """Length of an audio file in samples at 16 kHz, from its header.

    A file at another rate counts the samples it will have once resampled. A file a
    list names but that is not on disk is a :class:`ConfigError` naming both.
    """
    if not path.is_file():
        source = f" (listed in {listed_in})" if listed_in else ""
        raise ConfigError(f"{path}: no such audio file{source}; is the corpus complete?")
    return resampled_length(path)


def stable_percent(key: str) -> float:
    """A number in [0, 100) fixed by ``key`` alone (SHA-1), for deterministic shares."""
    return int(hashlib.sha1(key.encode("utf-8")).hexdigest(), 16) % 10000 / 100
