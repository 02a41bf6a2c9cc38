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
``P_target = 1e-4``. MTWV is the maximum over theta (0 when detecting nothing is best);
ATWV is TWV at the system's own threshold (s3prl's is 2.0 on the standardised scores).
"""

from __future__ import annotations

import torch

from speechssl.dtw import subsequence_dtw
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
