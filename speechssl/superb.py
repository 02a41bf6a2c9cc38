"""SUPERB's published figures beside a benchmark, and how well the two orderings of upstreams agree.

``speechssl/data/superb_reference.tsv`` holds the paper's table (Yang et al.,
Interspeech 2021), as the SUPERB website's leaderboard code lists its "paper"
entries: one row per upstream, one column per task, in the units its first line
states (percentages as numbers of percent, QbE's MTWV as it is). For each task
of a report the rows whose upstream the paper also ran are ranked by our test
score and by the paper's, and the Spearman rank correlation of the two
orderings is the agreement (``None`` below three upstreams, or when one ordering
is all ties).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from speechssl.errors import ConfigError

REFERENCE = Path(__file__).resolve().parent / "data" / "superb_reference.tsv"

# our task -> (the paper's column, its metric name, percent?); ours and the paper's metric differ for
# ASR (we score CER on the synthetic corpus, the paper WER) and SF (we rank by slot-type F1, as it does)
COLUMNS = {
    "pr": ("PR_PER", "PER", True), "ks": ("KS_acc", "accuracy", True), "ic": ("IC_acc", "accuracy", True),
    "sid": ("SID_acc", "accuracy", True), "er": ("ER_acc", "accuracy", True), "asr": ("ASR_WER", "WER", True),
    "asv": ("ASV_EER", "EER", True), "sd": ("SD_DER", "DER", True), "qbe": ("QbE_MTWV", "MTWV", False),
    "sf": ("SF_F1", "slot-type F1", True),
}  # fmt: skip


@dataclass
class Reference:
    """The published table: ``scores[upstream][task]`` as fractions (percent columns divided by 100)."""

    source: str  # the file's first line: where the numbers come from
    scores: dict[str, dict[str, float]]

    def has(self, upstream: str, task: str) -> bool:
        return task in self.scores.get(upstream, {})


def read_reference(path: str | Path = REFERENCE) -> Reference:
    """The table of ``path``: a ``#`` line naming its source, then a TSV with ``upstream`` and the :data:`COLUMNS`."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read SUPERB's reference figures ({e.strerror})") from e
    source = lines[0].lstrip("# ").strip() if lines and lines[0].startswith("#") else ""
    reader = csv.DictReader([line for line in lines if not line.startswith("#")], delimiter="\t")
    by_column = {column: (task, percent) for task, (column, _, percent) in COLUMNS.items()}
    scores: dict[str, dict[str, float]] = {}
    comments = sum(1 for line in lines if line.startswith("#"))
    for number, row in enumerate(reader, 2 + comments):  # the file's line number (comments, header, then rows)
        upstream = row.get("upstream")
        if not upstream:
            raise ConfigError(f"{path}:{number}: a row without an upstream")
        scores[upstream] = {}
        for column, value in row.items():
            if column not in by_column or value in (None, ""):
                continue
            task, percent = by_column[column]
            try:
                scores[upstream][task] = float(value) / (100 if percent else 1)
            except ValueError:
                raise ConfigError(f"{path}:{number}: {column}={value!r} is not a number") from None
    return Reference(source, scores)


def spearman(ours: list[float], theirs: list[float]) -> float | None:
    """Spearman's rank correlation of two paired lists (ties share their mean rank); None when undefined."""
    from scipy.stats import spearmanr

    if len(ours) < 3 or len(set(ours)) < 2 or len(set(theirs)) < 2:
        return None
    rho = float(spearmanr(ours, theirs).statistic)
    return None if math.isnan(rho) else rho
