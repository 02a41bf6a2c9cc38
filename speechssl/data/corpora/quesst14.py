"""QUESST 2014 (MediaEval query-by-example search on speech; Anguera et al., 2014), SUPERB's QbE corpus.

Layout (``quesst14Database.tgz`` unpacked)::

    root/Audio/quesst14_00001.wav ...          # the documents searched, dev and eval alike
    root/dev_queries/quesst14_dev_0001.wav ...
    root/eval_queries/quesst14_eval_0001.wav ...
    root/scoring/language_key_utterances.lst   # "<top>/Audio/quesst14_00001.wav <language>" a line
    root/scoring/language_key_dev.lst          # the dev queries, likewise
    root/scoring/language_key_eval.lst
    root/scoring/groundtruth_quesst14_dev/quesst14_dev.rttm     # + ecf and tlist (for the NIST scorer)
    root/scoring/groundtruth_quesst14_eval/quesst14_eval.rttm

The lists give each file's path below a first folder that is dropped (as s3prl reads
them) and its language; SUPERB (s3prl's ``quesst14_dtw``) keeps the ``nnenglish`` lines
only: ``language=None`` keeps every language. An occurrence is an RTTM ``LEXEME`` line
``LEXEME <document> <channel> <start s> <duration s> <query id> ...``; occurrences of a
document or query left out by the language are dropped. SUPERB's ``test`` is the eval
query set. Audio is 8 kHz; ``num_samples`` and the occurrence times are at 16 kHz.
"""

from __future__ import annotations

from pathlib import Path

from speechssl.data.corpora.base import num_samples_16k, require
from speechssl.data.qbe import QBE_SPLITS, QbESplit
from speechssl.errors import ConfigError

NAME = "quesst14"
TASKS = ("qbe",)
QUERY_SETS = {"dev": "dev", "test": "eval"}
SR = 16000


def listed_files(listing: Path, folder: str, language: str | None) -> list[tuple[str, str]]:
    """``(path below the root, language)`` of each file a language key list names, in its order."""
    files = []
    for number, line in enumerate(listing.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2:
            raise ConfigError(f"{listing}:{number}: expected '<path>.wav <language>', found {line!r}")
        path, lang = fields
        if language is not None and lang != language:
            continue
        relative = path.split("/", 1)[1] if "/" in path else path  # drop the first folder, as s3prl does
        if not relative.startswith(f"{folder}/"):
            relative = f"{folder}/{Path(relative).name}"
        files.append((relative, lang))
    return files


def listed_audio(root: Path, listing: Path, folder: str, language: str | None) -> list[dict]:
    """Manifest rows of the files a language key list names, in its order (each header read for its length)."""
    return [{"id": Path(relative).stem, "path": str(root / relative),
             "num_samples": num_samples_16k(root / relative, listing), "speaker": "", "language": lang}
            for relative, lang in listed_files(listing, folder, language)]  # fmt: skip


def read_rttm(rttm: Path) -> list[dict]:
    """Occurrence rows of an RTTM's ``LEXEME`` lines (other line types are skipped)."""
    rows = []
    for number, line in enumerate(rttm.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0] != "LEXEME":
            continue
        try:
            start, duration = float(fields[3]), float(fields[4])
            rows.append({"query": fields[5], "doc": fields[1], "term": fields[5],
                         "start": round(start * SR), "end": round((start + duration) * SR)})  # fmt: skip
        except (IndexError, ValueError):
            raise ConfigError(
                f"{rttm}:{number}: expected 'LEXEME <document> <channel> <start> <duration> <query id> ...', "
                f"found {line!r}"
            ) from None
    return rows


def lists(root: str | Path, split: str) -> tuple[Path, Path, Path, Path, str]:
    """``(root, document list, query list, ground-truth RTTM, query set name)`` of ``split``, each checked."""
    if split not in QBE_SPLITS:
        raise ConfigError(f"corpus '{NAME}': unknown QbE split '{split}'; known: {', '.join(QBE_SPLITS)}")
    root = require(Path(root).expanduser(), "QUESST 2014 folder (quesst14Database)")
    name = QUERY_SETS[split]
    scoring = root / "scoring"
    doc_list = require(scoring / "language_key_utterances.lst", "QUESST 2014 document list")
    query_list = require(scoring / f"language_key_{name}.lst", f"QUESST 2014 {name} query list")
    truth = scoring / f"groundtruth_quesst14_{name}"
    rttm = require(truth / f"quesst14_{name}.rttm", f"QUESST 2014 {name} ground truth")
    return root, doc_list, query_list, rttm, name


def occurrences(root: str | Path, split: str, *, language: str | None = "nnenglish") -> list[dict]:
    """The RTTM occurrences of ``split``'s queries, those of a document or query the language leaves out
    dropped (read from the lists alone: no audio header is opened)."""
    root, doc_list, query_list, rttm, name = lists(root, split)
    kept_docs = {Path(f).stem for f, _ in listed_files(doc_list, "Audio", language)}
    kept_queries = {Path(f).stem for f, _ in listed_files(query_list, f"{name}_queries", language)}
    return [r for r in read_rttm(rttm) if r["doc"] in kept_docs and r["query"] in kept_queries]


def load(root: str | Path, split: str, *, language: str | None = "nnenglish") -> QbESplit:
    """The queries of ``split`` (dev, or test = eval), the documents and the occurrences.

    Raises :class:`ConfigError` naming the first missing list, RTTM or audio file.
    """
    root, doc_list, query_list, _, name = lists(root, split)
    documents = listed_audio(root, doc_list, "Audio", language)
    queries = listed_audio(root, query_list, f"{name}_queries", language)
    return QbESplit(queries, documents, occurrences(root, split, language=language))


def manifest(root: Path, task: str, split: str, *, language: str | None = "nnenglish") -> list[dict]:
    """Rows of one of the QbE task's splits: ``dev_queries``, ``dev_docs``, ``test_queries``, ``test_docs``
    (only that split's list is read, and its files' headers)."""
    name, _, kind = split.partition("_")
    if name not in QBE_SPLITS or kind not in ("queries", "docs"):
        raise ConfigError(
            f"corpus '{NAME}': unknown split '{split}'; known: dev_queries, dev_docs, test_queries, test_docs")
    root, doc_list, query_list, _, query_set = lists(root, name)
    if kind == "docs":
        return listed_audio(root, doc_list, "Audio", language)
    return listed_audio(root, query_list, f"{query_set}_queries", language)


def resource(root: Path, name: str, *, language: str | None = "nnenglish") -> dict[str, list[dict]]:
    """``qbe_occurrences``: ``{"dev": [...], "test": [...]}``, the RTTM occurrences of each query set."""
    if name != "qbe_occurrences":
        raise ConfigError(f"corpus '{NAME}' has no resource '{name}'; it has qbe_occurrences")
    return {split: occurrences(root, split, language=language) for split in QBE_SPLITS}
