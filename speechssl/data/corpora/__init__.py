"""Real corpora in their own on-disk layout, read into the rows of a task manifest.

``corpus_manifest(name, root, task, split, **options)`` returns the rows one (task,
split) of a corpus provides, the same rows a SUPERB-lite ``<task>/<split>.tsv`` holds:
dicts with ``id``, ``path`` (absolute), ``num_samples`` (at 16 kHz), ``speaker`` ("" when
unknown) and the task's label columns::

    asr  text (lower-case words)     pr  phones (space-separated)
    ks   label (12 SUPERB classes)   sid speaker
    ic   action, object, location    er  emotion (neutral, happy, sad, angry)

Speech Commands rows also have ``offset``: the first sample to read, at 16 kHz (its
``_silence_`` rows are 1-s segments of long noise files). A row without ``offset``
starts at sample 0.

One module a corpus, each with ``NAME``, ``TASKS`` and ``manifest(root, task, split, **options)``;
a new corpus is a module and a line in :data:`CORPORA`.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from speechssl.data.corpora import (
    fluent_commands,
    iemocap,
    librispeech,
    speech_commands,
    voxceleb1,
)
from speechssl.data.corpora.base import SPLITS, check_split, require
from speechssl.data.manifest import read_manifest
from speechssl.errors import ConfigError

__all__ = ["CORPORA", "Corpus", "corpus_manifest", "corpus_tasks"]


@dataclass(frozen=True)
class Corpus:
    """A corpus: the tasks it has labels for and the function that reads its rows."""

    name: str
    tasks: tuple[str, ...]
    manifest: Callable[..., list[dict]]

    def options(self) -> list[str]:
        """The keyword options :attr:`manifest` accepts."""
        params = inspect.signature(self.manifest).parameters.values()
        return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]


SUPERB_LITE_TASKS = ("asr", "pr", "ks", "sid", "ic", "er", "sd", "sf")


def superb_lite_manifest(root: Path, task: str, split: str) -> list[dict]:
    """``root/<task>/<split>.tsv`` of the synthetic corpus (``speechssl synth``)."""
    check_split("superb_lite", split)
    require(root, "SUPERB-lite corpus, made by `speechssl synth`")
    rows = read_manifest(root / task / f"{split}.tsv")
    for row in rows:
        row.setdefault("speaker", "")
    return rows


def superb_lite_tasks(root: Path) -> list[str]:
    """The sub-folders of a SUPERB-lite root that hold a train, dev and test manifest."""
    return sorted(d.name for d in Path(root).iterdir() if all((d / f"{s}.tsv").is_file() for s in SPLITS))


CORPORA: dict[str, Corpus] = {
    "superb_lite": Corpus("superb_lite", SUPERB_LITE_TASKS, superb_lite_manifest),
    librispeech.NAME: Corpus(librispeech.NAME, librispeech.TASKS, librispeech.manifest),
    speech_commands.NAME: Corpus(speech_commands.NAME, speech_commands.TASKS, speech_commands.manifest),
    voxceleb1.NAME: Corpus(voxceleb1.NAME, voxceleb1.TASKS, voxceleb1.manifest),
    fluent_commands.NAME: Corpus(fluent_commands.NAME, fluent_commands.TASKS, fluent_commands.manifest),
    iemocap.NAME: Corpus(iemocap.NAME, iemocap.TASKS, iemocap.manifest),
}


def get_corpus(name: str) -> Corpus:
    if name not in CORPORA:
        raise ConfigError(f"unknown corpus '{name}'; known: {', '.join(CORPORA)}")
    return CORPORA[name]


def corpus_tasks(name: str, root: str | os.PathLike | None = None) -> list[str]:
    """Tasks ``name`` has labels for; for SUPERB-lite with a ``root``, those found there."""
    corpus = get_corpus(name)
    if name == "superb_lite" and root is not None:
        return superb_lite_tasks(require(Path(root), "SUPERB-lite corpus, made by `speechssl synth`"))
    return list(corpus.tasks)


def corpus_manifest(name: str, root: str | os.PathLike, task: str, split: str, **options) -> list[dict]:
    """Rows of ``task``'s ``split`` (train, dev or test) read from corpus ``name`` at ``root``.

    Raises :class:`ConfigError` for an unknown corpus or option, a task the corpus has no
    labels for, a split other than train/dev/test, or a missing or incomplete root
    (naming the missing path).
    """
    corpus = get_corpus(name)
    if root is None or str(root) in ("", "???"):
        raise ConfigError(f"corpus '{name}': no root given (data.root=/path/to/{name})")
    root = Path(root).expanduser()
    provided = corpus_tasks(name, root if name == "superb_lite" and root.is_dir() else None)
    if not provided:
        raise ConfigError(
            f"corpus '{name}': no manifests found under {root} (expected TASK/train.tsv, dev.tsv and test.tsv); "
            f"make the corpus with `speechssl synth out={root} size=small` or set data.root=DIR"
        )
    if task not in provided:
        raise ConfigError(f"corpus '{name}' has no labels for task '{task}'; it provides: {', '.join(provided)}")
    unknown = sorted(set(options) - set(corpus.options()))
    if unknown:
        known = ", ".join(corpus.options()) or "none"
        raise ConfigError(f"corpus '{name}': unknown option(s) {', '.join(unknown)}; known: {known}")
    return corpus.manifest(root, task, split, **options)
