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
from typing import Any

from speechssl.data.corpora import (
    fluent_commands,
    iemocap,
    libri2mix,
    librispeech,
    quesst14,
    speech_commands,
    voxceleb1,
)
from speechssl.data.corpora.base import require
from speechssl.data.manifest import read_manifest
from speechssl.data.qbe import QBE_SPLITS, read_occurrences
from speechssl.errors import ConfigError

__all__ = ["CORPORA", "Corpus", "corpus_manifest", "corpus_resource", "corpus_tasks"]


@dataclass(frozen=True)
class Corpus:
    """A corpus: the tasks it has labels for, the function that reads its rows, and the
    one that reads its other resources (``resource(root, name, **options)``: trial lists, occurrences)."""

    name: str
    tasks: tuple[str, ...]
    manifest: Callable[..., list[dict]]
    resource: Callable[..., Any] | None = None

    def options(self) -> list[str]:
        """The keyword options :attr:`manifest` accepts."""
        params = inspect.signature(self.manifest).parameters.values()
        return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]


SUPERB_LITE_TASKS = ("asr", "pr", "ks", "sid", "asv", "ic", "er", "sd", "sf", "qbe")
SUPERB_LITE_RESOURCES = ("asv_trials", "qbe_occurrences")
FILE_COLUMNS = ("rttm",)  # columns that name a file: made absolute as ``path`` is


def superb_lite_manifest(root: Path, task: str, split: str) -> list[dict]:
    """``root/<task>/<split>.tsv`` of the synthetic corpus (``speechssl synth``); a task's own
    splits (QbE's ``dev_queries``) are files beside the others."""
    require(root, "SUPERB-lite corpus, made by `speechssl synth`")
    path = root / task / f"{split}.tsv"
    if not path.is_file():
        known = sorted(p.stem for p in (root / task).glob("*.tsv") if not p.stem.startswith("_"))
        raise ConfigError(f"{path}: no such manifest (corpus 'superb_lite', task '{task}' has: {', '.join(known)})")
    rows = read_manifest(path)
    for row in rows:
        row.setdefault("speaker", "")
        for column in FILE_COLUMNS:
            if row.get(column):
                row[column] = str((path.parent / row[column]).resolve())
    return rows


def superb_lite_resource(root: Path, name: str) -> Any:
    """SUPERB-lite's ``asv_trials`` (``[(label, enroll id, test id), ...]``) or ``qbe_occurrences``
    (``{"dev": [{query, doc, term, start, end}, ...], "test": [...]}``, times in samples)."""
    if name not in SUPERB_LITE_RESOURCES:
        raise ConfigError(f"corpus 'superb_lite' has no resource '{name}'; it has {', '.join(SUPERB_LITE_RESOURCES)}")
    if name == "asv_trials":
        trials = read_table(root / "asv" / "trials.tsv", "SUPERB-lite asv_trials, made by `speechssl synth`")
        return [(int(r["label"]), r["enroll"], r["test"]) for r in trials]
    return {split: read_occurrences(root / "qbe" / f"{split}_occurrences.tsv") for split in QBE_SPLITS}


def read_table(path: Path, what: str) -> list[dict]:
    """A TSV with a header line as dicts; a missing file or a ragged line is a ConfigError naming it."""
    require(path, what)
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line]
    if not lines:
        raise ConfigError(f"{path}: empty ({what}; expected a header line)")
    header = lines[0].split("\t")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        values = line.split("\t")
        if len(values) != len(header):
            raise ConfigError(f"{path}:{number}: {len(values)} fields, expected {len(header)} ({', '.join(header)})")
        rows.append(dict(zip(header, values)))
    return rows


def superb_lite_tasks(root: Path) -> list[str]:
    """The sub-folders of a SUPERB-lite root that hold a task's manifests (``pretrain`` holds audio, no task)."""
    first = ("train", "test", "dev_queries")  # a manifest every task's folder has
    return sorted(d.name for d in Path(root).iterdir()
                  if d.is_dir() and d.name != "pretrain" and any((d / f"{s}.tsv").is_file() for s in first))


CORPORA: dict[str, Corpus] = {
    "superb_lite": Corpus("superb_lite", SUPERB_LITE_TASKS, superb_lite_manifest, superb_lite_resource),
    librispeech.NAME: Corpus(librispeech.NAME, librispeech.TASKS, librispeech.manifest),
    speech_commands.NAME: Corpus(speech_commands.NAME, speech_commands.TASKS, speech_commands.manifest),
    voxceleb1.NAME: Corpus(voxceleb1.NAME, voxceleb1.TASKS, voxceleb1.manifest, voxceleb1.resource),
    libri2mix.NAME: Corpus(libri2mix.NAME, libri2mix.TASKS, libri2mix.manifest),
    quesst14.NAME: Corpus(quesst14.NAME, quesst14.TASKS, quesst14.manifest, quesst14.resource),
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


def corpus_resource(name: str, root: str | os.PathLike, resource: str, **options) -> Any:
    """Resource ``resource`` of corpus ``name`` at ``root`` (a trial list, query occurrences): what a
    task declares in ``Task.resources`` beyond its manifests. A corpus without it is a ConfigError naming it."""
    corpus = get_corpus(name)
    if corpus.resource is None:
        raise ConfigError(f"corpus '{name}' has no resource '{resource}' (it provides manifests only)")
    if root is None or str(root) in ("", "???"):
        raise ConfigError(f"corpus '{name}': no root given (data.root=/path/to/{name})")
    return corpus.resource(Path(root).expanduser(), resource, **options)
