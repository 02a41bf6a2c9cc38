"""Query-by-example spoken term detection: detection scores from DTW, and TWV / MTWV.

No head is trained. For one layer's features, as s3prl's ``downstream/quesst14_dtw``
(SUPERB's QbE) does it::

    scores = score_queries(queries, query_lens, docs, doc_lens)    # (Q, N), higher = detected
    mtwv, threshold = maximum_term_weighted_value(scores, targets)  # targets: (Q, N) bool, QbESplit.targets()

1. every feature dimension standardised over all valid frames of the queries and
   documents together (s3prl's ``feature_normalization``);
2. :func:`speechssl.dtw.subsequence_dtw`: the normalised distance of the best alignment
   of each whole query with a stretch of each document;
3. score ``-distance``, standardised over each query's documents (mean 0, std 1);
   queries of fewer than 5 frames score 0 everywhere (s3prl: "too short").

Term-weighted value (NIST STD 2006 evaluation plan; QUESST's secondary metric), with
each (query, document) pair one trial, as QUESST 2014 scores it (a document either
holds the query or not; no time alignment):

    TWV(theta) = 1 - mean_q [ P_miss(q, theta) + beta * P_fa(q, theta) ]
    P_miss = 1 - hits / targets(q),   P_fa = false alarms / (documents - targets(q))

over the queries with at least one occurrence, a pair detected when its score is >=
theta. ``beta = 999.9`` is NIST's ``C/V * (1/P_target - 1)`` with ``C/V = 0.1`` and
``P_target = 1e-4``; the scorer QUESST 2014 ships (``scoring/score-TWV-Cnxe.sh``) sets its
own costs and prior, which we could not check, so pass ``beta`` to match it. MTWV is the
maximum over theta (0 when detecting nothing is best); ATWV is TWV at the system's own
threshold (s3prl's is 2.0 on the standardised scores, a pair detected when above it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from downstream.task import Metric, Task, TaskConfig, register_task
from speechssl.bootstrap import Ratio
from speechssl.data.qbe import QbESplit, check_occurrences
from speechssl.dtw import subsequence_dtw
from speechssl.errors import ConfigError
from speechssl.interface import lengths_to_mask

BETA = 999.9
MIN_QUERY_FRAMES = 5
S3PRL_THRESHOLD = 2.0  # s3prl's YES/NO decision on the standardised scores ("top 2.5%")


def standardize_features(
    queries: torch.Tensor,
    query_lens: torch.Tensor,
    docs: torch.Tensor,
    doc_lens: torch.Tensor,
    eps: float = 1e-9,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries ``(Q, Tq, D)`` and docs ``(N, Td, D)`` less the per-dimension mean, over the
    per-dimension standard deviation (unbiased, floored at ``eps``), both taken over every
    valid frame of both sets; padding is left out of the statistics."""
    q_mask = lengths_to_mask(query_lens.to(queries.device), queries.shape[1])
    d_mask = lengths_to_mask(doc_lens.to(docs.device), docs.shape[1])
    frames = torch.cat([queries[q_mask], docs[d_mask]])  # (F, D)
    mean, std = frames.mean(0), frames.std(0).clamp_min(eps)
    return (queries - mean) / std, (docs - mean) / std


def detection_scores(
    distances: torch.Tensor, query_lens: torch.Tensor, min_query_frames: int = MIN_QUERY_FRAMES
) -> torch.Tensor:
    """``(Q, N)`` DTW distances -> scores: ``-distance`` standardised along each row
    (population std, floored at 1e-9); 0 for queries shorter than ``min_query_frames``."""
    scores = -distances
    mean = scores.mean(1, keepdim=True)
    std = scores.std(1, correction=0, keepdim=True).clamp_min(1e-9)
    scores = (scores - mean) / std
    too_short = (query_lens.to(scores.device) < min_query_frames).unsqueeze(1)
    return scores.masked_fill(too_short, 0.0)


def score_queries(
    queries: torch.Tensor,
    query_lens: torch.Tensor,
    docs: torch.Tensor,
    doc_lens: torch.Tensor,
    *,
    distance: str = "cosine_exp",
    normalize_features: bool = True,
    min_query_frames: int = MIN_QUERY_FRAMES,
    max_cells: int = 2**24,
) -> torch.Tensor:
    """Detection scores ``(Q, N)`` of every query (``(Q, Tq, D)``, lengths ``(Q,)``) in every
    document (``(N, Td, D)``, lengths ``(N,)``), s3prl's recipe (module docstring)."""
    if normalize_features:
        queries, docs = standardize_features(queries, query_lens, docs, doc_lens)
    distances = subsequence_dtw(queries, query_lens, docs, doc_lens, distance=distance, max_cells=max_cells)
    return detection_scores(distances, query_lens, min_query_frames)


def _trial_weights(scores: torch.Tensor, targets: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores and TWV weights of the trials of queries with occurrences, flattened:
    ``1 / (Q' * targets(q))`` for a hit, ``-beta / (Q' * non-targets(q))`` for a false alarm."""
    if scores.shape != targets.shape or scores.dim() != 2:
        raise ValueError(f"expected scores and targets of one (Q, N) shape, found {tuple(scores.shape)} and "
                         f"{tuple(targets.shape)}")  # fmt: skip
    if bool(torch.isnan(scores).any()):
        raise ValueError("detection scores hold NaN")
    targets = targets.bool()
    n_true = targets.sum(1)
    scored = n_true > 0
    if not bool(scored.any()):
        raise ValueError("no query has an occurrence: TWV is undefined")
    scores, targets, n_true = scores[scored].double(), targets[scored], n_true[scored].double()
    n_false = (targets.shape[1] - n_true).clamp_min(1)  # a query in every document has no false alarms
    terms = scores.shape[0]
    hit, false_alarm = 1 / (terms * n_true), -beta / (terms * n_false)
    weights = torch.where(targets, hit[:, None], false_alarm[:, None])
    return scores.flatten(), weights.flatten()


def term_weighted_value(scores: torch.Tensor, targets: torch.Tensor, threshold: float, beta: float = BETA) -> float:
    """TWV with every pair of score >= ``threshold`` detected (ATWV at the system's threshold)."""
    flat, weights = _trial_weights(scores, targets, beta)
    return float(weights[flat >= threshold].sum())


def maximum_term_weighted_value(
    scores: torch.Tensor, targets: torch.Tensor, beta: float = BETA
) -> tuple[float, float]:
    """``(MTWV, threshold)``: the best TWV over every threshold, and the threshold reaching it
    (``inf`` when detecting nothing, TWV 0, is best). scores: ``(Q, N)``; targets: ``(Q, N)`` bool."""
    flat, weights = _trial_weights(scores, targets, beta)
    order = torch.argsort(flat, descending=True)
    flat, value = flat[order], torch.cumsum(weights[order], 0)
    group_end = torch.ones_like(flat, dtype=torch.bool)  # a threshold takes tied scores together
    group_end[:-1] = flat[:-1] != flat[1:]
    value, flat = value[group_end], flat[group_end]
    best = int(torch.argmax(value))
    if float(value[best]) <= 0:
        return 0.0, float("inf")
    return float(value[best]), float(flat[best])


@dataclass
class QbEConfig(TaskConfig):
    distance: str = "cosine_exp"  # speechssl.dtw's frame distance (s3prl's QUESST recipe)
    max_cells: int = 2**24  # DTW working memory bound (cells of one block)
    beta: float = BETA  # TWV's false-alarm weight: NIST STD 2006's 999.9 (QUESST 2014's own constants unverified)


@register_task
class QueryByExample(Task):
    """SUPERB QbE: no training; each layer's DTW detection scores, MTWV, the layer chosen on dev.

    As SUPERB reports QbE by its best layer, every hidden state is scored on the dev
    queries and documents; the one with the best dev MTWV (``layer=N`` fixes it) is
    scored on test. Metrics: test MTWV (at the test set's best threshold, as QUESST
    reports it) and ATWV at the threshold chosen on dev (a decision made before seeing
    test). A test outcome is one query's TWV term at each threshold,
    ``hits / targets - beta * false alarms / non-targets``; their means are the two
    metrics, so the intervals bootstrap the queries (with the thresholds held fixed).
    Queries that occur in no document are not scored, as in TWV.
    """

    name = "qbe"
    order = 6
    Config = QbEConfig
    splits = ("dev_queries", "dev_docs", "test_queries", "test_docs")
    resources = ("qbe_occurrences",)
    trains_head = False
    metric = "mtwv"
    metrics = {"mtwv": Metric("MTWV", higher_is_better=True, unit=""),
               "atwv": Metric("ATWV", higher_is_better=True, unit="")}
    ratios = {"mtwv": Ratio("twv"), "atwv": Ratio("twv_at_dev_threshold")}

    def fit(self, rows: list[dict]) -> None:
        pass

    def state(self) -> dict:
        return {}

    def encode(self, row: dict) -> torch.Tensor:
        return torch.zeros(0)

    def split(self, name: str, data: dict) -> QbESplit:
        """The QbE split ``name`` (dev or test) of cached features ``data``, its occurrences checked."""
        split = QbESplit(data[f"{name}_queries"].rows, data[f"{name}_docs"].rows,
                         self.corpus_resources["qbe_occurrences"][name])
        check_occurrences(split, f"the {name} occurrences")
        return split

    def layer_scores(self, data: dict, name: str, layers: list[int]) -> list[torch.Tensor]:
        """``(Q, N)`` detection scores of split ``name`` for each hidden state in ``layers``."""
        queries, docs = data[f"{name}_queries"], data[f"{name}_docs"]
        q_states = [queries.hidden(i) for i in range(len(queries))]
        d_states = [docs.hidden(i) for i in range(len(docs))]
        q_lens = torch.tensor([s[0].shape[0] for s in q_states])
        d_lens = torch.tensor([s[0].shape[0] for s in d_states])
        scores = []
        for k in layers:
            q = nn.utils.rnn.pad_sequence([s[k].float() for s in q_states], batch_first=True)
            d = nn.utils.rnn.pad_sequence([s[k].float() for s in d_states], batch_first=True)
            scores.append(score_queries(q, q_lens, d, d_lens, distance=self.config.distance,
                                        max_cells=self.config.max_cells))
        return scores

    def score_untrained(self, data: dict, *, layer: str | int = "weighted") -> dict:
        dev, test = self.split("dev", data), self.split("test", data)
        num_states = len(data["dev_queries"].hidden(0))
        if layer in ("weighted",):
            layers = list(range(num_states))
        elif layer == "last":
            layers = [num_states - 1]
        else:
            if not 0 <= int(layer) < num_states:
                raise ConfigError(f"layer={layer}: the upstream has hidden states 0..{num_states - 1}")
            layers = [int(layer)]
        dev_scores = self.layer_scores(data, "dev", layers)
        beta = self.config.beta
        dev_values = [maximum_term_weighted_value(s, dev.targets(), beta) for s in dev_scores]
        best = max(range(len(layers)), key=lambda i: dev_values[i][0])  # the first of ties
        chosen, (dev_mtwv, dev_threshold) = layers[best], dev_values[best]
        test_scores = self.layer_scores(data, "test", [chosen])[0]
        targets = test.targets()
        _, test_threshold = maximum_term_weighted_value(test_scores, targets, beta)
        outcomes, ids = [], []
        for q, row in enumerate(test.queries):
            if not bool(targets[q].any()):
                continue
            ids.append(row["id"])
            outcomes.append({"twv": query_twv(test_scores[q], targets[q], test_threshold, beta),
                             "twv_at_dev_threshold": query_twv(test_scores[q], targets[q], dev_threshold, beta)})
        return {
            "dev": {"mtwv": dev_mtwv},
            "test": {m: ratio(outcomes) for m, ratio in self.ratios.items()},
            "outcomes": outcomes,
            "outcome_ids": ids,
            "chosen_layer": chosen,  # SUPERB reports QbE by its best layer: the one best on dev
            "dev_mtwv_by_layer": {str(k): v for k, (v, _) in zip(layers, dev_values)},
            "thresholds": {"dev": dev_threshold, "test": test_threshold},
        }

    def chance(self, train_rows: list[dict], test_rows: list[dict]) -> float:
        """Detecting nothing: TWV 0 (and every TWV below it is worse than silence)."""
        return 0.0


def query_twv(scores: torch.Tensor, targets: torch.Tensor, threshold: float, beta: float = BETA) -> float:
    """One query's TWV term at ``threshold``: ``hits / targets - beta * false alarms / non-targets``
    (their mean over the scored queries is TWV; ``threshold = inf`` detects nothing: 0)."""
    detected = scores.double() >= threshold
    n_true = int(targets.sum())
    n_false = max(1, targets.numel() - n_true)
    hits, false_alarms = int((detected & targets).sum()), int((detected & ~targets).sum())
    return hits / n_true - beta * false_alarms / n_false
