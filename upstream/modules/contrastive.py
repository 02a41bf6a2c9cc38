"""Contrastive losses over negatives drawn from the same utterance.

- :func:`cosine_logits`: wav2vec 2.0's scores (Baevski et al. 2020, eq. 3): the
  cosine similarity of a prediction to its target and to ``N`` distractors,
  divided by a temperature ``kappa`` (0.1);
- :func:`info_nce`: the cross entropy with the positive as class 0 (van den Oord
  et al. 2018, eq. 4), over the valid rows, and which rows the positive wins.

:func:`cosine_logits` never copies ``N`` target vectors per prediction (fairseq and HF
build a ``(1 + N, B, P, D)`` tensor of targets): it computes one ``(B, P, P)``
similarity matrix of every prediction to every target of its utterance and
gathers the distractors' scores from it with the indices of
:func:`speechssl.masking.negative_indices`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cosine_logits(
    predictions: torch.Tensor,
    targets: torch.Tensor,
    negatives: torch.Tensor,
    temperature: float,
    target_codes: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scores of each prediction against its target (class 0) and its distractors.

    Args:
        predictions: ``(B, P, D)``, one per position.
        targets: ``(B, P, D)``, the target of each position.
        negatives: ``(B, P, N)`` long, for each position the positions whose targets
            are its distractors (never itself: :func:`speechssl.masking.negative_indices`).
        temperature: ``kappa``; the scores are ``cos / kappa``.
        target_codes: optional ``(B, P, G)`` code ids of the targets: a distractor with
            the positive's codes is the positive's own vector, and scores ``-inf``
            (fairseq's and HF's ``neg_is_pos``).

    Returns:
        ``(B, P, 1 + N)`` float32 logits.
    """
    with torch.autocast(predictions.device.type, enabled=False):
        p = F.normalize(predictions.float(), dim=-1, eps=1e-8)
        t = F.normalize(targets.float(), dim=-1, eps=1e-8)
        similarity = p @ t.transpose(1, 2)  # (B, P, P): prediction i against target j
        positive = similarity.diagonal(dim1=1, dim2=2)[..., None]  # (B, P, 1)
        negative = similarity.gather(2, negatives)  # (B, P, N)
    if target_codes is not None:
        B, P, G = target_codes.shape
        rows = torch.arange(B, device=negatives.device)[:, None, None]
        same = (target_codes[rows, negatives] == target_codes[:, :, None, :]).all(-1)  # (B, P, N)
        negative = negative.masked_fill(same, float("-inf"))
    return torch.cat([positive, negative], dim=-1) / temperature


def info_nce(logits: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross entropy with class 0 of ``logits`` (..., C), averaged over the ``valid`` (...) rows.

    Returns the loss and ``correct`` (...) bool: valid rows where the positive scores
    strictly above every distractor (ties count as wrong; chance is ``1 / C``).
    """
    per_row = torch.logsumexp(logits, dim=-1) - logits[..., 0]
    correct = valid & (logits[..., 0] > logits[..., 1:].amax(dim=-1))
    loss = torch.where(valid, per_row, 0.0).sum() / valid.sum().clamp(min=1)
    return loss, correct
