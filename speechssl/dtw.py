"""Batched subsequence DTW between spoken queries and documents, on the features' device.

Query-by-example search (SUPERB's QbE, s3prl's ``downstream/quesst14_dtw``) aligns every
query with every document by subsequence DTW: the query must be matched whole, but may
start and end anywhere in the document. s3prl runs one ``dtw-python`` call a pair in a
process pool; here every query is aligned with a block of documents at once, and the one
Python loop runs over query frames::

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

How: the valid frames of all queries (sorted by decreasing length, frame index first)
meet a block of documents (sorted by length, padded to the longest with their own last
frame) in one matrix product; step ``i`` of the loop makes the local costs of query
frame ``i`` for every query still that long and every document of the block, and
advances the recurrence on them. A block's similarities hold at most ``max_cells``
values, so memory stays bounded whatever the corpus.

Padding never changes a distance: padded query frames are never read; padded document
frames repeat the last valid one, so a row's min and max (for the normalisation) are
those of its valid frames, the recurrence only reads columns to the left of the one it
writes, and the final minimum skips them.
"""

from __future__ import annotations

import math

import torch

from speechssl.interface import lengths_to_mask

DISTANCES = ("cosine", "cosine_exp")


def edge_padded(x: torch.Tensor, lengths: torch.Tensor, index: torch.Tensor, width: int) -> torch.Tensor:
    """Utterances ``index`` of ``x`` (``(B, T, D)``, lengths ``(B,)``) cut or padded to ``width``
    frames, every padded frame a copy of the utterance's last valid one: ``(len(index), width, D)``."""
    frames = torch.arange(width, device=x.device)
    source = torch.minimum(frames[None, :], (lengths[index] - 1)[:, None]) + index[:, None] * x.shape[1]
    return x.reshape(-1, x.shape[2])[source]  # one row copy a frame


def query_frame_rows(queries: torch.Tensor, query_lens: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """The valid frames of queries sorted by decreasing length, frame index first.

    queries: ``(Q, Tq, D)``, query_lens ``(Q,)`` non-increasing. Returns ``(R, D)``, R the
    total of the lengths: frame 0 of every query, then frame 1 of the queries that have
    one, ...; and ``active``: how many queries have frame ``i``, for each ``i``. Step ``i`` of
    the DTW reads rows ``sum(active[:i])`` to ``sum(active[:i + 1])``.
    """
    valid = lengths_to_mask(query_lens, queries.shape[1]).T  # (Tq, Q)
    active = valid.sum(1).tolist()  # planning, once
    return queries.transpose(0, 1)[valid], active


def subsequence_dtw_cost(
    neg_cos: torch.Tensor,
    active: list[int],
    query_lens: torch.Tensor,
    doc_mask: torch.Tensor,
    distance: str = "cosine_exp",
    minmax_norm: bool = True,
) -> torch.Tensor:
    """Open-begin, open-end DTW with the asymmetric step pattern, for every query and document.

    neg_cos: ``(R, N, Td)`` negative cosine similarities of the query frame rows of
    :func:`query_frame_rows` with the document frames, whose padded frames repeat the
    document's last one (:func:`edge_padded`), so that a row's extremes are those of its
    valid frames; active: from :func:`query_frame_rows`; query_lens: ``(Q,)``, non-increasing;
    doc_mask: ``(N, Td)``, True on valid document frames. Returns ``(Q, N)``: the cheapest
    alignment of each whole query with any stretch of each document, over the query's length.

    The local costs are made one query frame at a time, as ``a * f(x) + b`` with ``x = -cos``
    (``cosine``: ``f(x) = x``, ``a = b = 1``; ``cosine_exp``: ``f = exp``, ``a = e``, ``b = -1``),
    with min-max normalisation folded into ``a`` and ``b`` per row: both costs increase with
    ``x``, so a row's extremes are ``a * f(min x) + b`` and ``a * f(max x) + b``; for
    ``cosine_exp``, ``log a`` is added to ``neg_cos`` in place (``a * exp(x) = exp(x + log a)``).
    A query leaves the loop after its last frame (the queries are sorted by decreasing
    length).
    """
    Q, (N, Td) = len(query_lens), doc_mask.shape
    exp = distance == "cosine_exp"
    a = torch.full((neg_cos.shape[0], N, 1), math.e if exp else 1.0, dtype=neg_cos.dtype, device=neg_cos.device)
    b = torch.full_like(a, -1.0 if exp else 1.0)
    if minmax_norm:  # s3prl's minmax_norm, with its 1e-9 floor on the range
        x_min, x_max = neg_cos.amin(-1, keepdim=True), neg_cos.amax(-1, keepdim=True)  # (R, N, 1)
        f_min, f_max = (x_min.exp(), x_max.exp()) if exp else (x_min, x_max)
        scale = 1 / (a * (f_max - f_min)).clamp_min(1e-9)
        a, b = a * scale, -a * f_min * scale
    if exp:  # one pass here instead of a product a step
        neg_cos.add_(a.log())
    padding = ~doc_mask
    out = torch.empty(Q, N, dtype=neg_cos.dtype, device=neg_cos.device)
    buffers = [torch.empty(Q, N, Td, dtype=neg_cos.dtype, device=neg_cos.device) for _ in range(3)]
    views = {}  # the slices each step uses, made again only when the number of queries left changes
    for i, (x, a_i, b_i) in enumerate(zip(neg_cos.split(active), a.split(active), b.split(active))):
        k = len(x)  # the first k queries have a frame i: (k, N, Td)
        if k not in views:
            views.clear()
            views[k] = [(t[:k], t[:k, :, 1:], t[:k, :, :-1], t[:k, :, 2:], t[:k, :, :-2], t[:k, :, 0]) for t in buffers]
        new = views[k][i % 2][0]  # ping-pong between two buffers: G[i] and G[i-1]
        _, g_1, g_0, _, g_00, g_c0 = views[k][1 - i % 2]
        reach, reach_1, _, reach_2, _, reach_c0 = views[k][2]
        if exp:
            torch.exp(x, out=new).add_(b_i)  # the local costs of query frame i
        else:
            torch.addcmul(b_i, x, a_i, out=new)
        if i > 0:  # G[i-1, j], and the moves from j-1 and j-2; at i = 0 (open begin) G = C
            torch.minimum(g_1, g_0, out=reach_1)  # g_1[j-1] = G[i-1, j], g_0[j-1] = G[i-1, j-1]
            reach_c0.copy_(g_c0)
            torch.minimum(reach_2, g_00, out=reach_2)
            new.add_(reach)
        done = active[i + 1] if i + 1 < len(active) else 0
        if done < k:  # open end: the best last document frame of the queries ending here
            out[done:k] = new[done:k].masked_fill(padding, torch.inf).amin(-1)
    return out / query_lens.to(neg_cos.dtype)[:, None]


def runs(lengths: list[int], fits) -> list[slice]:
    """Consecutive runs of ``lengths``, each as long as ``fits(start, stop)`` allows (one item at least)."""
    out, start = [], 0
    while start < len(lengths):
        stop = start + 1
        while stop < len(lengths) and fits(start, stop + 1):
            stop += 1
        out.append(slice(start, stop))
        start = stop
    return out


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

    Memory is bounded by ``max_cells`` (64 MiB of float32 similarities by default): the
    queries, sorted by length, go in groups whose frames against the longest document fit
    in it, and the documents, sorted by length, in blocks of lengths within 25% of one
    another whose similarities with the group's frames fit in it (at least one query and
    one document each). Each group meets each block in one matrix product.
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
    if distance not in DISTANCES:
        raise ValueError(f"unknown DTW distance {distance!r}; known: {', '.join(DISTANCES)}")
    Q, N = queries.shape[0], docs.shape[0]
    out = torch.empty(Q, N, dtype=queries.dtype, device=queries.device)
    if Q == 0 or N == 0:
        return out
    query_lens, doc_lens = query_lens.to(queries.device), doc_lens.to(queries.device)
    by_length = torch.argsort(query_lens, descending=True, stable=True)
    queries, q_lens = torch.nn.functional.normalize(queries[by_length], dim=-1), query_lens[by_length]
    order = torch.argsort(doc_lens)  # blocks of similar lengths waste less on padding
    q_sorted, d_sorted = q_lens.tolist(), doc_lens[order].tolist()  # planning, once
    budget = max_cells // d_sorted[-1]  # query frames a group, against the longest document
    for group in runs(q_sorted, lambda a, b: sum(q_sorted[a:b]) <= budget):
        frames, active = query_frame_rows(queries[group], q_lens[group])
        frames = -frames  # (R, D): the product gives -cos
        R = len(frames)
        for block in runs(d_sorted, lambda a, b: R * (b - a) * d_sorted[b - 1] <= max_cells
                          and d_sorted[b - 1] <= 1.25 * d_sorted[a]):  # fmt: skip
            index, Td = order[block], d_sorted[block.stop - 1]
            docs_b = torch.nn.functional.normalize(edge_padded(docs, doc_lens, index, Td), dim=-1)
            neg_cos = (frames @ docs_b.reshape(-1, docs_b.shape[-1]).T).view(R, len(index), Td)  # (R, Nb, Td)
            doc_mask = lengths_to_mask(doc_lens[index], Td)  # (Nb, Td)
            distances = subsequence_dtw_cost(neg_cos, active, q_lens[group], doc_mask, distance, minmax_norm)
            out[by_length[group, None], index[None, :]] = distances  # (Qg, Nb)
    return out
