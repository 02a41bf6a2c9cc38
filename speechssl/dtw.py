"""Batched subsequence DTW between spoken queries and documents, on the features' device.

Query-by-example search (SUPERB's QbE, s3prl's ``downstream/quesst14_dtw``) aligns every
query with every document by subsequence DTW: the query must be matched whole, but may
start and end anywhere in the document. s3prl runs one ``dtw-python`` call a pair in a
process pool; here the pairs of a block of queries and documents are aligned together,
and the one Python loop runs over query frames::

    distances = subsequence_dtw(queries, query_lens, docs, doc_lens)   # (Q, N)

What each pair gets is exactly s3prl's ``match()`` with its default config
(``dist_method: cosine_exp``, ``minmax_norm: True``, ``step_pattern: asymmetric``,
``subsequence: True``):

1. the local cost ``C[i, j]`` between query frame ``i`` and document frame ``j``: the
   cosine distance ``1 - cos(q_i, d_j)``, or ``exp(that) - 1`` for ``cosine_exp``;
2. each row of ``C`` min-max normalised over the document's frames (``minmax_norm``);
3. the cumulative cost of ``dtw-python``'s ``asymmetric`` step pattern with an open begin
   and an open end (Giorgino 2009, Sec. 3.4; Tormene et al. 2009)::

       G[0, j] = C[0, j]
       G[i, j] = C[i, j] + min(G[i-1, j], G[i-1, j-1], G[i-1, j-2])

   every step advances the query by one frame and the document by 0, 1 or 2;
4. ``min_j G[Tq-1, j] / Tq``: ``dtw-python``'s ``normalizedDistance`` (the pattern's
   normalisation is by the query's length).

s3prl's detection score is ``-distance``, then standardised over the documents of each
query (:func:`downstream.qbe.detection_scores`).

Padding never changes a distance: padded document frames are left out of the row
normalisation and of the final minimum, and the recurrence only reads columns to the
left of the one it writes, so padding (even NaN) to the right of a document's last frame
never reaches a valid cell; padded query rows are computed and discarded.
"""

from __future__ import annotations

import torch

from speechssl.interface import lengths_to_mask

DISTANCES = ("cosine", "cosine_exp")


def frame_distances(queries: torch.Tensor, docs: torch.Tensor, distance: str = "cosine_exp") -> torch.Tensor:
    """Local costs between every query frame and every document frame.

    queries: ``(Q, Tq, D)``; docs: ``(N, Td, D)``. Returns ``(Tq, Q, N, Td)`` (query frames
    first, so that each DTW step reads one contiguous slice): ``1 - cos`` for ``cosine``,
    ``exp(1 - cos) - 1`` for ``cosine_exp`` (s3prl's ``cosine_exp``).
    """
    if distance not in DISTANCES:
        raise ValueError(f"unknown DTW distance {distance!r}; known: {', '.join(DISTANCES)}")
    q = torch.nn.functional.normalize(queries, dim=-1)
    d = torch.nn.functional.normalize(docs, dim=-1)
    cost = 1 - torch.einsum("qid,njd->iqnj", q, d)  # (Tq, Q, N, Td)
    return torch.expm1(cost) if distance == "cosine_exp" else cost


def minmax_rows(cost: torch.Tensor, doc_mask: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """Each query frame's costs scaled to [0, 1] over the document's valid frames.

    cost: ``(Tq, P, Td)``; doc_mask: ``(P, Td)``, True on valid document frames. s3prl's
    ``minmax_norm``, with its ``1e-9`` floor on the range.
    """
    valid = doc_mask.unsqueeze(0)
    low = torch.where(valid, cost, torch.inf).amin(-1, keepdim=True)
    high = torch.where(valid, cost, -torch.inf).amax(-1, keepdim=True)
    return (cost - low) / (high - low).clamp_min(eps)


def subsequence_dtw_cost(cost: torch.Tensor, query_lens: torch.Tensor, doc_mask: torch.Tensor) -> torch.Tensor:
    """Open-begin, open-end DTW with the asymmetric step pattern, for ``P`` pairs at once.

    cost: ``(Tq, P, Td)`` local costs; query_lens: ``(P,)`` valid query frames of each pair;
    doc_mask: ``(P, Td)``. Returns ``(P,)``: the cheapest alignment of each whole query with
    any stretch of its document, divided by the query's length (``normalizedDistance``).
    """
    steps, pairs, _ = cost.shape
    inf = torch.tensor(torch.inf, dtype=cost.dtype, device=cost.device)
    last = (query_lens - 1).clamp_min(0)
    best = torch.full((pairs,), torch.inf, dtype=cost.dtype, device=cost.device)
    g = cost[0]  # open begin: any document frame may take the query's first frame
    for i in range(steps):
        if i > 0:
            reach = g.clone()  # G[i-1, j], then the moves from j-1 and j-2
            reach[:, 1:] = torch.minimum(reach[:, 1:], g[:, :-1])
            reach[:, 2:] = torch.minimum(reach[:, 2:], g[:, :-2])
            g = cost[i] + reach
        end = torch.where(doc_mask, g, inf).amin(-1)  # open end: the best last document frame
        best = torch.where(last == i, end, best)
    return best / query_lens.to(cost.dtype)


def subsequence_dtw(
    queries: torch.Tensor,
    query_lens: torch.Tensor,
    docs: torch.Tensor,
    doc_lens: torch.Tensor,
    *,
    distance: str = "cosine_exp",
    minmax_norm: bool = True,
    max_cells: int = 2**24,
) -> torch.Tensor:
    """Normalised subsequence-DTW distance of every query in every document.

    queries: ``(Q, Tq, D)`` padded, with query_lens ``(Q,)`` valid frames; docs: ``(N, Td,
    D)`` padded, with doc_lens ``(N,)``. Returns ``(Q, N)`` float distances, lower = better
    match, on the inputs' device and dtype (see the module docstring for the recipe).

    The documents are taken in blocks so that one block's local costs (all queries x the
    block's documents x Tq x Td) hold at most ``max_cells`` values (64 MiB in float32 by
    default); each block is trimmed to its longest document.
    """
    if queries.dim() != 3 or docs.dim() != 3 or queries.shape[-1] != docs.shape[-1]:
        raise ValueError(
            f"expected queries (Q, Tq, D) and docs (N, Td, D) with the same D, found {tuple(queries.shape)} "
            f"and {tuple(docs.shape)}"
        )
    if query_lens.shape != queries.shape[:1] or doc_lens.shape != docs.shape[:1]:
        raise ValueError(
            f"expected lengths ({queries.shape[0]},) and ({docs.shape[0]},), found {tuple(query_lens.shape)} "
            f"and {tuple(doc_lens.shape)}"
        )
    if query_lens.numel() and bool((query_lens < 1).any() | (query_lens > queries.shape[1]).any()):
        raise ValueError(f"query lengths must be in [1, {queries.shape[1]}], found {query_lens.tolist()}")
    if doc_lens.numel() and bool((doc_lens < 1).any() | (doc_lens > docs.shape[1]).any()):
        raise ValueError(f"document lengths must be in [1, {docs.shape[1]}], found {doc_lens.tolist()}")
    Q, N = queries.shape[0], docs.shape[0]
    out = torch.empty(Q, N, dtype=queries.dtype, device=queries.device)
    if Q == 0 or N == 0:
        return out
    query_lens, doc_lens = query_lens.to(queries.device), doc_lens.to(queries.device)
    queries = queries[:, : int(query_lens.max())]
    Tq = queries.shape[1]
    order = torch.argsort(doc_lens)  # blocks of similar lengths waste less on padding
    lens_sorted = doc_lens[order].tolist()
    start = 0
    while start < N:
        stop = start + 1  # grow the block while it fits in max_cells
        while stop < N and Q * (stop + 1 - start) * Tq * lens_sorted[stop] <= max_cells:
            stop += 1
        index = order[start:stop]
        Td = lens_sorted[stop - 1]
        block, block_lens = docs[index, :Td], doc_lens[index]
        cost = frame_distances(queries, block, distance).reshape(Tq, Q * len(index), Td)  # (Tq, P, Td)
        doc_mask = lengths_to_mask(block_lens, Td).repeat(Q, 1)  # (P, Td), pairs query-major
        if minmax_norm:
            cost = minmax_rows(cost, doc_mask)
        pair_query_lens = query_lens.repeat_interleave(len(index))
        out[:, index] = subsequence_dtw_cost(cost, pair_query_lens, doc_mask).reshape(Q, len(index))
        start = stop
    return out
