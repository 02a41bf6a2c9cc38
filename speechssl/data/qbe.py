"""Query-by-example data: spoken queries, the documents searched, and where each query occurs.

A split is three plain tables, the same whatever the corpus:

- ``queries``: manifest rows (``id``, ``path``, ``num_samples`` at 16 kHz, ``speaker``, ...);
- ``documents``: manifest rows likewise;
- ``occurrences``: one row a spoken occurrence, ``query``, ``doc``, ``start``, ``end``
  (samples at 16 kHz) and ``term`` where the corpus names it.

SUPERB-lite (``speechssl synth``) writes ``qbe/<split>_queries.tsv``, ``<split>_docs.tsv``
and ``<split>_occurrences.tsv`` (:func:`superb_lite_qbe`); QUESST 2014 is read from its
own layout by :mod:`speechssl.data.corpora.quesst14`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from speechssl.data.manifest import read_manifest
from speechssl.errors import ConfigError

QBE_SPLITS = ("dev", "test")


@dataclass
class QbESplit:
    """One split of a QbE corpus (see the module docstring for the columns)."""

    queries: list[dict]
    documents: list[dict]
    occurrences: list[dict]

    def targets(self) -> torch.Tensor:
        """``(Q, N)`` bool, True where document ``n`` holds query ``q`` at least once."""
        q_index = {row["id"]: i for i, row in enumerate(self.queries)}
        d_index = {row["id"]: j for j, row in enumerate(self.documents)}
        targets = torch.zeros(len(q_index), len(d_index), dtype=torch.bool)
        for row in self.occurrences:
            targets[q_index[row["query"]], d_index[row["doc"]]] = True
        return targets


def check_occurrences(split: QbESplit, source: str) -> None:
    """A :class:`ConfigError` naming ``source`` if an occurrence names an unknown query or document."""
    queries = {row["id"] for row in split.queries}
    docs = {row["id"] for row in split.documents}
    for row in split.occurrences:
        if row["query"] not in queries or row["doc"] not in docs:
            raise ConfigError(
                f"{source}: occurrence of query {row['query']!r} in document {row['doc']!r}, "
                f"but {'the query' if row['query'] not in queries else 'the document'} is not in the split"
            )


def read_occurrences(listing: Path) -> list[dict]:
    """Occurrence rows of a ``query, doc, term, start, end`` TSV (SUPERB-lite's ``<split>_occurrences.tsv``);
    a missing file, another header or a bad line is a :class:`ConfigError` naming it."""
    if not listing.is_file():
        raise ConfigError(f"{listing}: no such file (QbE occurrences: query, doc, term, start, end)")
    lines = listing.read_text(encoding="utf-8").splitlines()
    columns = lines[0].split("\t") if lines else []
    if columns[:5] != ["query", "doc", "term", "start", "end"]:
        raise ConfigError(f"{listing}: header {columns}, expected query, doc, term, start, end")
    occurrences = []
    for number, line in enumerate(lines[1:], start=2):
        if not line:
            continue
        fields = line.split("\t")
        try:
            occurrences.append({"query": fields[0], "doc": fields[1], "term": fields[2],
                                "start": int(fields[3]), "end": int(fields[4])})  # fmt: skip
        except (IndexError, ValueError):
            raise ConfigError(f"{listing}:{number}: expected query, doc, term, start, end; found {line!r}") from None
    return occurrences


def superb_lite_qbe(root: str | os.PathLike, split: str) -> QbESplit:
    """SUPERB-lite's QbE ``split`` (dev or test) under ``root``."""
    if split not in QBE_SPLITS:
        raise ConfigError(f"QbE split {split!r}; known: {', '.join(QBE_SPLITS)}")
    folder = Path(root) / "qbe"
    listing = folder / f"{split}_occurrences.tsv"
    queries = read_manifest(folder / f"{split}_queries.tsv")
    documents = read_manifest(folder / f"{split}_docs.tsv")
    out = QbESplit(queries, documents, read_occurrences(listing))
    check_occurrences(out, str(listing))
    return out
